"""Read-only commands create nothing: no database folder at a mistyped --location, no file in cwd."""

from __future__ import annotations

import pytest

from clip_embeddings.apps import cli
from tests.test_cli import tiny_env  # noqa: F401  (a fixture)

KINDS = ["chroma", "qdrant", "lancedb"]


def tree(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    folder = tmp_path / "cwd"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


@pytest.mark.parametrize("kind", KINDS)
def test_search_at_a_missing_location_creates_nothing(kind, tmp_path, cwd, tiny_env, capsys):
    location = tmp_path / "typo-db"
    for extra in ([], ["--model", str(tiny_env)]):
        assert cli.main(["search", "a cat", "--db", kind, "--location", str(location), "--collection", "photos",
                         *extra]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: no {kind} collection 'photos' at {location}")
        assert "clip-embeddings index" in err and err.count("\n") == 1
        assert not location.exists() and tree(cwd) == []
    # A relative location, resolved against cwd, is not created either.
    assert cli.main(["search", "a cat", "--db", kind, "--location", "db", "--collection", "photos"]) == 1
    assert tree(cwd) == []


@pytest.mark.parametrize("kind", KINDS)
def test_search_in_a_folder_without_a_database_leaves_it_as_it_was(kind, tmp_path, cwd, capsys):
    folder = tmp_path / "photos-not-a-db"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    assert cli.main(["search", "a cat", "--db", kind, "--location", str(folder), "--collection", "photos"]) == 1
    assert f"no {kind} collection 'photos' at {folder}" in capsys.readouterr().err
    assert tree(folder) == ["notes.txt"] and tree(cwd) == []


def test_search_at_a_file_location_says_so(tmp_path, cwd, capsys):
    file = tmp_path / "db.sqlite3"
    file.write_bytes(b"x")
    assert cli.main(["search", "a cat", "--location", str(file), "--collection", "photos"]) == 1
    assert "is a file" in capsys.readouterr().err
    assert file.read_bytes() == b"x" and tree(cwd) == []


def test_classify_writes_nothing_in_cwd(cwd, tiny_env, sample_images, isolated_cache, capsys):
    before = tree(isolated_cache)
    assert cli.main(["classify", str(sample_images[0]), "--labels", "cat,dog"]) == 0
    assert tree(cwd) == []
    # The embedding cache is the one place it may write, and that lives in CLIP_CACHE_DIR.
    assert set(tree(isolated_cache)) >= set(before)


def test_search_at_host_port_without_scheme_says_the_fix(cwd, capsys):
    assert cli.main(["search", "a cat", "--location", "localhost:8000", "--collection", "photos"]) == 1
    err = capsys.readouterr().err
    assert "without a scheme" in err and "http://localhost:8000" in err and err.count("\n") == 1
    assert tree(cwd) == []
