"""Fixtures shared by the suite: small random CLIP checkpoints on disk and an isolated cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.model_factory import tiny_reference_clip

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
