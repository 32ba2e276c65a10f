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


def synthetic_records(n: int, dim: int, seed: int = 0, start: int = 0) -> list:
    """``n`` image records with random unit vectors and varied metadata, written straight through
    ``Store._write`` by collection-job tests (no model run needed)."""
    import uuid

    import numpy as np

    from clip_embeddings.adapters.base import Record

    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    records = []
    for i in range(n):
        meta = {"album": ["a", "b", "c"][i % 3], "n": start + i}
        if i % 2:
            meta["score"] = i / 7
        records.append(Record(str(uuid.uuid5(uuid.NAMESPACE_URL, f"{seed}-{start + i}")), "image", vectors[i],
                              f"digest-{start + i}", source=f"/photos/{start + i}.jpg",
                              document=f"caption {start + i}" if i % 3 else None, metadata=meta))
    return records


@pytest.fixture
def open_synthetic(tmp_path, tiny_model_path):
    """``open_synthetic(kind, n)``: a store of ``kind`` holding ``n`` synthetic image records."""
    import clip_embeddings as ce
    from clip_embeddings.adapters import open_store

    def make(kind: str, n: int, name: str = "synthetic"):
        store = open_store(kind, str(tmp_path / kind), name, ce.ClipEF(str(tiny_model_path), cache=False))
        records = synthetic_records(n, store.ef.dim)
        for start in range(0, n, 256):
            store._write(records[start:start + 256])
        return store

    return make


CROP = 0.02  # per edge: 8 % of the area. At 4 % the tiny 32-px model moves a crop as far as another picture


def planted_duplicates(folder: Path, originals: int = 300, seed: int = 0) -> list[list[Path]]:
    """``originals`` distinct synthetic pictures, each with 0-3 near copies, as groups of JPEG paths.

    A picture is a random noise texture with random shapes on it (its own seed, so no two are
    alike); its copies are ``0..3`` of (chosen per picture): a re-encode at JPEG quality 60, a
    resize to 80 %, a crop of 2 % per edge, a 5 % brightness change. Copies are named
    ``<original>_copy<variant>.jpg``.
    """
    import os

    import numpy as np
    from PIL import Image, ImageDraw, ImageEnhance

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    groups = []
    for n in range(originals):
        size = int(rng.integers(96, 160))
        noise = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
        image = Image.fromarray(noise).resize((size, size), Image.BILINEAR)
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(3, 7))):
            x0, y0 = rng.integers(0, size, 2)
            x1, y1 = x0 + rng.integers(10, size // 2), y0 + rng.integers(10, size // 2)
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            shape = [draw.ellipse, draw.rectangle, draw.line][int(rng.integers(0, 3))]
            shape([int(x0), int(y0), int(x1), int(y1)], fill=colour, **({"width": 6} if shape == draw.line else {}))
        original = folder / f"img{n:04d}.jpg"
        image.save(original, quality=95)
        variants = [
            lambda im: im,
            lambda im: im.resize((int(im.width * 0.8), int(im.height * 0.8)), Image.LANCZOS),
            lambda im: im.crop((int(im.width * CROP), int(im.height * CROP), im.width - int(im.width * CROP),
                                im.height - int(im.height * CROP))),
            lambda im: ImageEnhance.Brightness(im).enhance(1.05),
        ]
        group = [original]
        for v in sorted(rng.choice(4, size=int(rng.integers(0, 4)), replace=False)):
            copy = folder / f"img{n:04d}_copy{v}.jpg"
            variants[v](image).save(copy, quality=60 if v == 0 else 90)
            os.utime(copy, (1_700_000_000 + n + v + 1,) * 2)  # copies are younger than their original
            group.append(copy)
        os.utime(original, (1_700_000_000 + n,) * 2)
        groups.append(group)
    return groups


@pytest.fixture(scope="session")
def planted(tmp_path_factory) -> list[list[Path]]:
    """The session's planted-duplicate picture set (see :func:`planted_duplicates`)."""
    return planted_duplicates(tmp_path_factory.mktemp("planted"))


class Planted:
    """The planted pictures embedded once by ``ClipEF`` (records any store can take as they are)."""

    def __init__(self, groups: list[list[Path]], model: str):
        import clip_embeddings as ce
        from clip_embeddings.adapters.base import Record, item_id

        self.model = model
        self.paths = [str(p) for g in groups for p in g]
        encoded = ce.ClipEF(model, cache=False).encode_images(self.paths, on_error="raise")
        self.ids = [item_id("image", d) for d in encoded.digests]
        self.records = [Record(i, "image", v, d, source=str(Path(p).resolve()))
                        for i, v, d, p in zip(self.ids, encoded.embeddings, encoded.digests, self.paths)]
        by_path = dict(zip(self.paths, self.ids))
        self.groups = {frozenset(by_path[str(p)] for p in g) for g in groups if len(g) > 1}
        self.originals = {by_path[str(g[0])] for g in groups}

    def store(self, kind: str, location: Path, only: set[str] | None = None):
        """A ``kind`` store at ``location`` holding the planted records (those in ``only`` if given)."""
        import clip_embeddings as ce
        from clip_embeddings.adapters import open_store

        store = open_store(kind, str(location), "planted", ce.ClipEF(self.model, cache=False))
        store.write_records([r for r in self.records if only is None or r.id in only])
        return store


@pytest.fixture(scope="session")
def tiny_planted(planted, tiny_model_path) -> Planted:
    """The planted set embedded once per session by the tiny model."""
    return Planted(planted, str(tiny_model_path))
