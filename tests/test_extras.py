"""A missing optional dependency names the extra to install, from Python and from the command line.

The dependencies are installed here, so each test makes them unimportable in a fresh interpreter
(``sys.modules[name] = None`` is how Python itself marks a module as not importable) and checks
what a user without them would read.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from clip_embeddings._extras import require
from clip_embeddings.errors import ClipError, MissingExtraError

ROOT = Path(__file__).resolve().parent.parent

# (module to hide, what to import, the extra that installs it)
CASES = [
    ("chromadb", "clip_embeddings.adapters.chroma", "chroma"),
    ("qdrant_client", "clip_embeddings.adapters.qdrant", "qdrant"),
    ("lancedb", "clip_embeddings.adapters.lancedb", "lancedb"),
    ("pyarrow", "clip_embeddings.adapters.lancedb", "lancedb"),
    ("langchain_core", "clip_embeddings.integrations.langchain", "langchain"),
]

WITHOUT = textwrap.dedent("""
    import importlib, json, sys
    hidden, target = sys.argv[1], sys.argv[2]
    sys.modules[hidden] = None  # as if it were not installed
    import clip_embeddings  # must still import: the core needs no database
    try:
        importlib.import_module(target)
    except ImportError as e:
        print(json.dumps({"type": type(e).__name__, "message": str(e), "extra": getattr(e, "extra", None),
                          "clip_error": isinstance(e, clip_embeddings.ClipError)}))
    else:
        print(json.dumps(None))
""")


def without(hidden: str, code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, hidden, *args], capture_output=True, text=True,
                          timeout=180, cwd=ROOT)


@pytest.mark.parametrize("hidden, target, extra", CASES, ids=[f"{c[1].rsplit('.', 1)[1]}-without-{c[0]}" for c in CASES])
def test_python_api_names_the_extra(hidden, target, extra):
    done = without(hidden, WITHOUT, target)
    assert done.returncode == 0, done.stderr[-3000:]
    error = json.loads(done.stdout.strip().splitlines()[-1])
    assert error is not None, f"{target} imported although {hidden} is hidden"
    assert error["type"] == "MissingExtraError" and error["clip_error"] and error["extra"] == extra
    assert f"pip install 'clip-embeddings[{extra}]'" in error["message"]


CLI = textwrap.dedent("""
    import sys
    sys.modules[sys.argv[1]] = None
    from clip_embeddings.apps.cli import main
    sys.exit(main(sys.argv[2:]))
""")


@pytest.mark.parametrize("db, hidden", [("qdrant", "qdrant_client"), ("lancedb", "lancedb"), ("chroma", "chromadb")])
def test_cli_names_the_extra_in_one_line(db, hidden, tmp_path, tiny_model_path):
    for command in (["search", "a cat"], ["index", str(tmp_path)]):
        done = without(hidden, CLI, *command, "--db", db, "--location", str(tmp_path / "db"), "--collection", "c",
                       "--model", str(tiny_model_path))
        assert done.returncode == 1 and done.stdout == ""
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith("error: ") and f"pip install 'clip-embeddings[{db}]'" in line, done.stderr
        assert not (tmp_path / "db").exists()


def test_require_returns_the_module_and_keeps_other_import_errors(tmp_path, monkeypatch):
    assert require("json", extra="x") is json
    with pytest.raises(MissingExtraError) as info:
        require("clip_embeddings_no_such_module", extra="qdrant")
    assert isinstance(info.value, ClipError) and isinstance(info.value, ImportError)
    assert info.value.name == "clip_embeddings_no_such_module"
    # A module that is there but fails inside is a broken install, not a missing extra: its own error.
    (tmp_path / "broken_mod_for_test.py").write_text("from json import no_such_name\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError, match="no_such_name") as info:
        require("broken_mod_for_test", extra="qdrant")
    assert not isinstance(info.value, MissingExtraError)
