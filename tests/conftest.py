"""Fixtures shared by the suite: small random CLIP checkpoints on disk and an isolated cache."""

from __future__ import annotations

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
