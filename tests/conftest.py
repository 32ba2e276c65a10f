"""Fixtures shared by the suite: small random CLIP checkpoints on disk and an isolated cache."""

from __future__ import annotations

import itertools
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from tests.model_factory import tiny_reference_clip
from tests.servers import chroma_command, chroma_server_at

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "images"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch) -> Path:
    """Every test gets its own model/embedding cache dir, so no test sees another's cache."""
    path = tmp_path_factory.mktemp("clip-cache")
    monkeypatch.setenv("CLIP_CACHE_DIR", str(path))
    return path


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    """A tiny random ViT CLIP (32 px, 64-d embeddings) saved as a plain state dict."""
    path = tmp_path_factory.mktemp("weights") / "tiny-vit.pt"
    torch.save(tiny_reference_clip("vit", seed=0).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def other_tiny_model_path(tmp_path_factory) -> Path:
    """Same architecture as ``tiny_model_path``, other random weights: for mismatch tests."""
    path = tmp_path_factory.mktemp("weights-other") / "tiny-vit-other.pt"
    torch.save(tiny_reference_clip("vit", seed=1).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def sample_images() -> list[Path]:
    """The real photos shipped in examples/images (see SOURCES.md there)."""
    return sorted(EXAMPLES.glob("*.jpg"))



@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory):
    """A real ``chroma run`` server shared by the session; yields (host, port)."""
    if chroma_command() is None:
        pytest.skip("the `chroma` command (from chromadb) is not installed")
    with chroma_server_at(tmp_path_factory.mktemp("chroma-server")) as address:
        yield address


@pytest.fixture(scope="session")
def postgres_server():
    """One PostgreSQL with pgvector for the whole session (the ``pgserver`` wheel ships both and
    runs them offline; as root it runs them as a ``pgserver`` user); stopped at the end."""
    pgserver = pytest.importorskip("pgserver")
    # Not under pytest's temp root: pytest makes that 0700 on each start, which would shut the
    # server's own user out of its data folder if another session starts meanwhile.
    data = tempfile.mkdtemp(prefix="clip-embeddings-postgres-")
    server = pgserver.get_server(data, cleanup_mode="delete")
    yield server
    server.cleanup()
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_database(request):
    """``postgres_database()``: the URL of a new, empty database on the session's PostgreSQL."""

    def make() -> str:
        import psycopg

        server = request.getfixturevalue("postgres_server")
        database = f"t{next(_DATABASES)}"
        with psycopg.connect(server.get_uri(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {database}")  # a name made here, no user input
        return server.get_uri(database)

    return make


@pytest.fixture
def store_location(request, tmp_path):
    """``store_location(kind, tag="")``: a fresh, empty place for a store of ``kind`` in this test.

    A folder for Chroma, Qdrant and LanceDB, a ``.db`` file for Milvus Lite, and for pgvector a
    URL to a new database on the session's PostgreSQL. ``tag`` tells apart two places of one
    kind in one test; ``missing=True`` gives a place where no database is.
    """
    made: dict[tuple[str, str], str] = {}

    def location(kind: str, tag: str = "", *, missing: bool = False) -> str:
        if (kind, tag) in made:
            return made[(kind, tag)]
        if kind == "pgvector" and missing:
            made[(kind, tag)] = request.getfixturevalue("postgres_server").get_uri(f"t{next(_DATABASES)}")
        elif kind == "pgvector":
            made[(kind, tag)] = request.getfixturevalue("postgres_database")()
        elif kind == "milvus":
            made[(kind, tag)] = str(tmp_path / f"milvus{tag}.db")
        else:
            made[(kind, tag)] = str(tmp_path / f"{kind}{tag}")
        return made[(kind, tag)]

    return location


_DATABASES = itertools.count()


@pytest.fixture
def no_proxy(monkeypatch):
    """Loopback test servers must be reached directly, whatever proxy the environment names."""
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
