"""The example scripts run end to end, offline, with the tiny model's weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ["chroma_quickstart.py", "qdrant_quickstart.py", "lancedb_quickstart.py", "text_to_image_rag.py",
            "pgvector_quickstart.py", "milvus_quickstart.py", "llamaindex_multimodal.py"]
NAMES = {p.name for p in (ROOT / "examples" / "images").glob("*.jpg")}


def run(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], capture_output=True, text=True,
                          timeout=240, cwd=ROOT, env={**os.environ, **(env or {})})


def test_every_example_has_help():
    for script in EXAMPLES:
        done = run(script, "--help")
        assert done.returncode == 0, done.stderr
        assert "--model" in done.stdout and "CLIP_WEIGHTS" in done.stdout


def test_qdrant_quickstart(tiny_model_path, tmp_path):
    done = run("qdrant_quickstart.py", "--model", str(tiny_model_path), "--location", str(tmp_path / "q"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "new 7, updated 0, already present 0, duplicates 0, skipped 0" in done.stdout
    # The probe image is its own nearest image.
    assert "image -> image: astronaut.jpg\n  1.000  astronaut.jpg" in done.stdout


def test_lancedb_quickstart_takes_weights_from_the_environment(tiny_model_path, tmp_path):
    done = run("lancedb_quickstart.py", "--db", str(tmp_path / "l"), env={"CLIP_WEIGHTS": str(tiny_model_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "indexed 7 images" in done.stdout
    assert "image -> image (PIL query): astronaut.jpg\n  1.000  astronaut.jpg" in done.stdout


def test_text_to_image_rag(tiny_model_path, tmp_path):
    # LanceDB here: the Qdrant quickstart already runs the Qdrant path, and each run starts Python anew.
    done = run("text_to_image_rag.py", "--model", str(tiny_model_path), "--store", "lancedb",
               "--location", str(tmp_path / "lancedb"), "-k", "2", "What is in the sky?")
    assert done.returncode == 0, done.stderr[-3000:]
    photos = [line for line in done.stdout.splitlines() if line.startswith("- ")]
    assert len(photos) == 2 and all(line[2:].split(" ")[0] in NAMES for line in photos)
    assert "Question: What is in the sky?" in done.stdout


def test_chroma_quickstart(tiny_model_path, tmp_path):
    done = run("chroma_quickstart.py", "--model", str(tiny_model_path), "--db", str(tmp_path / "c"))
    assert done.returncode == 0, done.stderr[-3000:]
    # The query image is in the collection, so it is its own nearest image.
    assert "cat.jpg looks like ['cat'," in done.stdout
    answers = [line for line in done.stdout.splitlines() if line.startswith("  '") and " → " in line]
    assert len(answers) == 3 and all(line.split(" → ")[1].split()[0] + ".jpg" in NAMES for line in answers)


@pytest.mark.slow  # a fresh Python (and torch import) per example
def test_without_weights_examples_print_the_clis_one_line_error(tmp_path):
    """No such weights: each example says what the CLI says, in one line, with no traceback."""
    missing = str(tmp_path / "no-such-weights.pt")
    cli = subprocess.run([sys.executable, "-m", "clip_embeddings.apps.cli", "classify", str(ROOT / "examples/images/cat.jpg"),
                          "--labels", "a,b", "--model", missing], capture_output=True, text=True, timeout=240, cwd=ROOT)
    (expected,) = cli.stderr.strip().splitlines()
    assert cli.returncode == 1 and expected.startswith("error: ") and missing in expected
    for script in EXAMPLES:
        done = run(script, "--model", missing, *(["--location", str(tmp_path / "q")] if "qdrant" in script else []))
        assert done.returncode == 1, (script, done.stdout, done.stderr)
        assert done.stderr.strip().splitlines() == [expected], script


def test_offline_without_clip_weights_the_line_says_how(tmp_path):
    # A download that cannot connect (a proxy on a closed port), no CLIP_WEIGHTS, an empty model cache.
    env = {"CLIP_WEIGHTS": "", "CLIP_CACHE_DIR": str(tmp_path / "cache"), "https_proxy": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": ""}
    done = run("qdrant_quickstart.py", env=env)
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: ") and "CLIP_WEIGHTS" in line and "Traceback" not in done.stderr


@pytest.mark.slow  # a fresh Python (and torch import) per example
def test_examples_leave_no_temporary_folders(tiny_model_path, tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    for script in ("chroma_quickstart.py", "lancedb_quickstart.py"):
        done = run(script, "--model", str(tiny_model_path), env={"TMPDIR": str(scratch)})
        assert done.returncode == 0, done.stderr[-3000:]
        assert list(scratch.iterdir()) == [], script


def test_pgvector_quickstart_on_the_sessions_postgres(tiny_model_path, postgres_database):
    done = run("pgvector_quickstart.py", "--model", str(tiny_model_path), "--location", postgres_database())
    assert done.returncode == 0, done.stderr[-3000:]
    assert "new 7, updated 0, already present 0, duplicates 0, skipped 0" in done.stdout
    assert "image -> image: astronaut.jpg\n  1.000  astronaut.jpg" in done.stdout
    space = done.stdout.split("album 'space' only")[1].splitlines()[1:]
    assert len(space) == 3 and {line.split()[1] for line in space} == {"astronaut.jpg", "galaxies.jpg", "rocket.jpg"}


def test_milvus_quickstart(tiny_model_path, tmp_path):
    done = run("milvus_quickstart.py", "--model", str(tiny_model_path), "--location", str(tmp_path / "photos.db"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "new 7, updated 0, already present 0, duplicates 0, skipped 0" in done.stdout
    assert "image -> image: astronaut.jpg\n  1.000  astronaut.jpg" in done.stdout


def test_llamaindex_multimodal(tiny_model_path, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "llamaindex_multimodal.py"), "--model",
                           str(tiny_model_path), "--storage", str(tmp_path / "storage")],
                          capture_output=True, text=True, timeout=240, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "image -> image: astronaut.jpg\n  1.000  astronaut.jpg" in done.stdout
    first = [line.split()[1] for line in done.stdout.split("text -> image")[1].splitlines()[1:4]]
    assert f"text -> image gives {first}" in done.stdout  # the reloaded index answers as the built one
    assert (tmp_path / "storage" / "clip_embeddings.json").exists()
