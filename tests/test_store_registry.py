"""The one list of store kinds (each adapter's KIND, read without importing it) and the one address form."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import clip_embeddings as ce
from clip_embeddings.adapters import format_address, open_store, parse_address, parse_sink
from clip_embeddings.adapters.registry import StoreKind, kind_names, kinds, read_kind

ROOT = Path(__file__).resolve().parent.parent
ADAPTERS = ROOT / "clip_embeddings" / "adapters"


def test_every_adapter_module_with_a_store_declares_its_kind():
    declared = set(kinds())
    with_store = {p.stem for p in ADAPTERS.glob("*.py") if "(Store)" in p.read_text(encoding="utf-8")}
    assert {"chroma", "qdrant", "lancedb"} <= declared
    assert with_store == declared


@pytest.mark.parametrize("kind", sorted(kinds()))
def test_the_kind_read_from_source_is_the_modules_own(kind):
    entry = kinds()[kind]
    try:
        module = importlib.import_module(entry.module)
    except ce.MissingExtraError:
        pytest.skip(f"{entry.client} not installed")
    assert module.KIND == entry
    assert issubclass(getattr(module, entry.store_class), ce.Store)
    assert callable(getattr(module, entry.store_class).open_location)


def test_listing_the_kinds_imports_no_client():
    code = ("import sys, clip_embeddings.adapters as a; from clip_embeddings.apps.cli import common; "
            "print(a.KINDS, common.DBS); "
            "print([m for m in ('chromadb', 'qdrant_client', 'lancedb', 'psycopg', 'pymilvus') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_a_new_kind_is_one_module(tmp_path, monkeypatch):
    """A module with a KIND is listed, by the CLI, open_store and the address parser alike."""
    source = ('from .registry import StoreKind\n'
              'KIND = StoreKind(kind="toydb", store_class="ToyStore", extra="toydb", client="toydb_client", '
              'distribution="toydb-client", purpose="ToyDB", servers=("http",), locations="a folder")\n')
    entry = read_kind(source)
    assert entry == StoreKind(kind="toydb", store_class="ToyStore", extra="toydb", client="toydb_client",
                              distribution="toydb-client", purpose="ToyDB", servers=("http",), locations="a folder")
    monkeypatch.setitem(kinds(), "toydb", entry)
    assert "toydb" in kind_names()
    assert parse_address("toydb+http://h:1#c") == ("toydb", "http://h:1", "c")
    (tmp_path / "db").mkdir()
    with pytest.raises(ce.MissingExtraError, match=r"toydb-client is not installed \(needed for ToyDB\): "
                                                   r"pip install 'clip-embeddings\[toydb\]'"):
        open_store("toydb", str(tmp_path / "db"), "c", create=False)


@pytest.mark.parametrize("address, parts", [
    ("chroma+http://host:8000/photos", ("chroma", "http://host:8000", "photos")),
    ("chroma+http://host:8000#photos", ("chroma", "http://host:8000", "photos")),
    ("chroma:///path/db#photos", ("chroma", "/path/db", "photos")),
    ("qdrant:///path/db#photos", ("qdrant", "/path/db", "photos")),
    ("qdrant+https://host:6333/photos", ("qdrant", "https://host:6333", "photos")),
    ("lancedb:///path#photos", ("lancedb", "/path", "photos")),
    ("lancedb:///data/db/photos", ("lancedb", "/data/db", "photos")),  # the older Ray form
    ("lancedb+s3://bucket/prefix#photos", ("lancedb", "s3://bucket/prefix", "photos")),
    ("chroma://:memory:#photos", ("chroma", ":memory:", "photos")),
    ("chroma+https://host/prefix#my%23photos", ("chroma", "https://host/prefix", "my#photos")),
])
def test_the_documented_forms(address, parts):
    assert parse_address(address) == parts
    assert parse_sink(address) == parts
    assert parse_address(format_address(*parts)) == parts


@pytest.mark.parametrize("address, message", [
    ("photos", "not a store address"), ("mongo:///x#y", "unknown store scheme"), ("chroma:///x#", "no collection"),
    ("chroma+http://#photos", "expected"), ("lancedb+http://host:1#t", "no http server mode"),
    ("chroma+ftp://host/x#y", "location is"), ("qdrant://host:6333#y", "without a scheme"),
    ("chroma+http://127.0.0.1:8000/", "no collection"), ("lancedb://photos", "no collection"),
])
def test_bad_addresses_say_what_is_wrong(address, message):
    with pytest.raises(ce.StoreAddressError, match=message):
        parse_address(address)


_names = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=20)
_segment = st.text(st.sampled_from("abcXYZ019_-. #%@"), min_size=1, max_size=8).filter(lambda s: s not in (".", ".."))
_paths = st.builds(lambda absolute, parts: ("/" if absolute else "") + "/".join(parts),
                   st.booleans(), st.lists(_segment, min_size=1, max_size=4))
_hosts = st.sampled_from(["localhost", "db.example.org", "10.0.0.5", "[::1]"])


@st.composite
def _store(draw):
    kind = draw(st.sampled_from(sorted(kinds())))
    entry = kinds()[kind]
    forms = []
    if entry.local == "folder":
        forms.append(draw(_paths.filter(lambda p: ":" not in p and not os.path.isfile(p))))
    if entry.local == "file":
        forms.append(draw(_paths.filter(lambda p: ":" not in p)) + entry.suffix)
    if entry.memory:
        forms.append(":memory:")
    for scheme in entry.servers:
        port = draw(st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}")))
        path = draw(st.one_of(st.just(""), _paths.filter(lambda p: "#" not in p).map(lambda p: "/" + p.lstrip("/"))))
        forms.append(f"{scheme}://{draw(_hosts)}{port}{path}")
    return kind, draw(st.sampled_from(forms)), draw(_names)


@settings(max_examples=300, deadline=None)
@given(_store())
def test_parse_and_format_round_trip(store):
    assert parse_address(format_address(*store)) == store


def test_open_store_takes_an_address(tmp_path, tiny_model_path):
    pytest.importorskip("chromadb")
    ef = ce.ClipEF(str(tiny_model_path))
    address = format_address("chroma", str(tmp_path / "db"), "photos")
    store = open_store(address, ef)
    store.add_texts(["a cat"], ids=["t1"])
    reopened = open_store(address)  # from its stored config, no function given
    assert reopened.count("text") == 1 and reopened.ef.expected_fingerprint == ef.fingerprint
    assert open_store("chroma", tmp_path / "db", "photos").count("text") == 1  # the three-part form still works


def test_cli_store_option(tmp_path, tiny_model_path, capsys):
    pytest.importorskip("chromadb")
    from clip_embeddings.apps import cli

    store = open_store("chroma", str(tmp_path / "db"), "photos", ce.ClipEF(str(tiny_model_path)))
    store.add_texts(["a cat on a mat", "a rocket"], ids=["cat", "rocket"])
    assert cli.main(["search", "a cat", "--modality", "text", "--json",
                     "--store", f"chroma://{tmp_path / 'db'}#photos"]) == 0
    out = capsys.readouterr().out
    assert '"collection": "photos"' in out and '"cat"' in out
    assert cli.main(["search", "a cat", "--store", "chroma:///x#y", "--collection", "z"]) == 2
    assert cli.main(["search", "a cat", "--location", str(tmp_path / "db")]) == 2
    assert "--store" in capsys.readouterr().err
