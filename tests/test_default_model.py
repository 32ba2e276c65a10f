"""``$CLIP_WEIGHTS`` is the default model everywhere, and a model that cannot exist fails at construction."""

from __future__ import annotations

import numpy as np
import pytest

import clip_embeddings as ce
from clip_embeddings.embedding import loaded as embedding
from tests.reference import reference_embeddings


def test_clip_ef_and_classify_use_clip_weights(monkeypatch, tiny_model_path, sample_images):
    monkeypatch.setenv("CLIP_WEIGHTS", str(tiny_model_path))
    ef = ce.ClipEF(cache=False)
    assert ef.model_name == str(tiny_model_path) and ef.get_config()["model"] == str(tiny_model_path)
    # The tiny model's own embeddings, from openai/CLIP's code: the environment really chose the weights.
    _, expected = reference_embeddings(tiny_model_path, images=[], texts=["a cat"])
    np.testing.assert_allclose(ef.embed_texts(["a cat"]), expected, atol=1e-5)

    labels = ["a cat", "a rocket"]
    by_env = ce.classify(str(sample_images[0]), labels)
    explicit = ce.classify(str(sample_images[0]), labels, ef=ce.ClipEF(str(tiny_model_path)))
    assert by_env.top_labels == explicit.top_labels
    np.testing.assert_allclose(by_env.top_scores, explicit.top_scores, atol=1e-6)


def test_without_clip_weights_the_default_is_vit_b_32(monkeypatch, tiny_model_path):
    monkeypatch.delenv("CLIP_WEIGHTS", raising=False)
    assert ce.ClipEF().model_name == "ViT-B/32"  # nothing is downloaded until it is used
    monkeypatch.setenv("CLIP_WEIGHTS", str(tiny_model_path))
    assert ce.ClipEF("RN50").model_name == "RN50"  # an explicit model wins over the environment


@pytest.mark.parametrize("model, message", [
    ("ViT-B/23", "Unknown model 'ViT-B/23'. Did you mean 'ViT-B/32'?"),
    ("vit-large", "Available models: RN50"),
    ("/no/such/weights.pt", "/no/such/weights.pt: no such file or directory"),
    ("./tuned.safetensors", "no such file or directory"),
])
def test_a_model_that_cannot_exist_fails_when_the_function_is_built(model, message, monkeypatch):
    loads = embedding.model_load_count()
    with pytest.raises(ce.ModelLoadError) as info:
        ce.ClipEF(model)
    assert message in str(info.value)
    monkeypatch.setenv("CLIP_WEIGHTS", model)
    with pytest.raises(ce.ModelLoadError, match="no such file|Unknown model"):
        ce.ClipEF()  # a bad $CLIP_WEIGHTS too
    assert embedding.model_load_count() == loads


def test_a_rebuilt_function_still_opens_and_fails_on_use(tiny_model_path):
    """A collection's config naming weights this machine lacks: open it, and say why on first use."""
    config = {"model": "/elsewhere/tuned.pt", "fingerprint": "0" * 16, "dim": 64}
    ef = ce.ClipEF.build_from_config(config)
    with pytest.raises(ce.ModelMismatchError, match="cannot be loaded here"):
        ef.embed_texts(["a cat"])
