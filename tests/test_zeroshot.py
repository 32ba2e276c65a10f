"""Zero-shot classification, similarity and moderation, checked where the answer is known exactly.

Random weights carry no semantics, so the tests *construct* a model whose answers are known:
:func:`build_constructed_model` rewrites the tiny ViT's image tower so that the image made of
class ``k``'s tile embeds to a chosen direction ``u_k``, picked so that its cosine with class
``k``'s prompt-ensembled text prototype is ``c_k > 0`` and with every other prototype exactly 0.
The text tower is untouched, so the prototypes are those of the random model.
"""

from __future__ import annotations

import io
import json
import math
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import clip_embeddings as ce
from clip_embeddings.tasks import zeroshot
from clip_embeddings.core.preprocess import Preprocess
from clip_embeddings.tasks.zeroshot import (
    DEFAULT_TEMPLATES, IMAGENET_CLASSES, IMAGENET_SELECTED_TEMPLATES, IMAGENET_TEMPLATES, ZeroShotClassifier,
    classify, clear_prototype_cache, moderate, similarity,
)
from tests.model_factory import tiny_reference_clip
from tests.reference import reference_tokenize

LABELS = ["a cat", "a dog", "a weapon", "blood", "a landscape", "food"]
UNSAFE, SAFE = LABELS[2:4], LABELS[:2] + LABELS[4:]


def direct_prototypes(ef: ce.ClipEF, labels, templates) -> np.ndarray:
    """The prompt ensemble computed by hand: embed every filled template, average, renormalise."""
    rows = []
    for label in labels:
        mean = ef.embed_texts([t.format(label) for t in templates]).astype(np.float64).mean(axis=0)
        rows.append(mean / np.linalg.norm(mean))
    return np.stack(rows)


def build_constructed_model(base_path: Path, out_path: Path, labels, templates, seed: int = 0):
    """Write a CLIP whose image tower maps class ``k``'s tile image to a known direction.

    Returns ``(images, c)``: one 32x32 uint8 image per label (an 8x8 random tile repeated) and
    ``c[k]``, the cosine of image ``k`` with prototype ``k`` (all other cosines are 0).

    How: with zero class/positional embeddings, block 0 made uniform attention with identity
    value/output maps and block 1 an identity, the class token ends as the (layer-normed) patch
    embedding, which is the same for every patch of a tiled image: ``conv1(tile_k) = s_k`` for a
    zero-mean ``s_k`` that layer norms only rescale. ``proj`` then maps ``s_k`` to ``u_k``, the
    normalised ``k``-th column of the pseudo-inverse of the prototypes, so ``P @ u_k = c_k e_k``.
    """
    state = torch.load(base_path, weights_only=True)
    base = ce.ClipEF(str(base_path), device="cpu", cache=False)
    prototypes = direct_prototypes(base, labels, templates)
    dual = np.linalg.pinv(prototypes)  # [dim, C]
    norms = np.linalg.norm(dual, axis=0)
    targets = (dual / norms).T

    rng = np.random.default_rng(seed)
    tiles = rng.integers(0, 256, (len(labels), 8, 8, 3), dtype=np.uint8)
    images = [np.tile(tile, (4, 4, 1)) for tile in tiles]
    pre = Preprocess(32)
    patches = np.stack([pre(Image.fromarray(im))[:, :8, :8].numpy().reshape(-1) for im in images], 1).astype(np.float64)
    width = state["visual.conv1.weight"].shape[0]
    codes = rng.normal(size=(width, len(labels)))
    codes = (codes - codes.mean(axis=0)) / codes.std(axis=0)  # zero mean: layer norm keeps the direction

    f32 = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    v, b0, b1 = "visual.", "visual.transformer.resblocks.0.", "visual.transformer.resblocks.1."
    state[v + "conv1.weight"] = f32((codes @ np.linalg.pinv(patches)).reshape(width, 3, 8, 8))
    state[v + "proj"] = f32(np.linalg.pinv(codes.T) @ targets)
    state[v + "class_embedding"].zero_()
    state[v + "positional_embedding"].zero_()
    for norm in (v + "ln_pre", v + "ln_post", b0 + "ln_1"):
        state[norm + ".weight"].fill_(1)
        state[norm + ".bias"].zero_()
    value_only = torch.zeros_like(state[b0 + "attn.in_proj_weight"])
    value_only[2 * width:] = torch.eye(width)  # q = k = 0: uniform attention; v = identity
    state[b0 + "attn.in_proj_weight"] = value_only
    state[b0 + "attn.in_proj_bias"].zero_()
    state[b0 + "attn.out_proj.weight"] = torch.eye(width)
    state[b0 + "attn.out_proj.bias"].zero_()
    for name in (b0 + "mlp.c_proj", b1 + "mlp.c_proj", b1 + "attn.out_proj"):
        state[name + ".weight"].zero_()
        state[name + ".bias"].zero_()
    state["logit_scale"] = torch.tensor(math.log(100.0))  # OpenAI's checkpoints' value
    torch.save(state, out_path)
    return images, 1.0 / norms


@pytest.fixture(scope="module")
def constructed(tiny_model_path, tmp_path_factory):
    path = tmp_path_factory.mktemp("constructed") / "constructed.pt"
    images, c = build_constructed_model(tiny_model_path, path, LABELS, DEFAULT_TEMPLATES)
    return ce.ClipEF(str(path), device="cpu", cache=False), images, c


def expected_probs(c: np.ndarray, n_labels: int) -> np.ndarray:
    """Softmax of 100 * (c_k on the diagonal, 0 elsewhere), row by row."""
    big = np.exp(100.0 * c)
    probs = np.full((len(c), n_labels), 0.0)
    probs[:] = (1.0 / (big + n_labels - 1))[:, None]
    probs[np.arange(len(c)), np.arange(len(c))] = big / (big + n_labels - 1)
    return probs


# --- data -------------------------------------------------------------------------------------

def test_imagenet_data_files():
    assert len(IMAGENET_TEMPLATES) == len(set(IMAGENET_TEMPLATES)) == 80
    assert all(t.count("{}") == 1 for t in IMAGENET_TEMPLATES)
    assert set(IMAGENET_SELECTED_TEMPLATES) <= set(IMAGENET_TEMPLATES) and len(IMAGENET_SELECTED_TEMPLATES) == 7
    assert len(IMAGENET_CLASSES) == 1000
    assert IMAGENET_CLASSES[:3] == ("tench", "goldfish", "great white shark") and IMAGENET_CLASSES[-1] == "toilet paper"
    for name in ("imagenet_templates.json", "imagenet_classes.json"):
        data = json.loads(resources.files("clip_embeddings").joinpath("data", name).read_text())
        assert "Prompt_Engineering_for_ImageNet.ipynb" in data["source"]
    assert all(t.count("{}") == 1 for t in DEFAULT_TEMPLATES)


# --- classification ---------------------------------------------------------------------------

def test_constructed_images_get_their_constructed_labels(constructed):
    ef, images, c = constructed
    result = ZeroShotClassifier(ef, LABELS).predict(images)
    assert result.predictions == LABELS
    assert result.indices == list(range(len(LABELS))) and result.skipped == []
    np.testing.assert_allclose(result.cosine, np.diag(c), atol=2e-5)
    np.testing.assert_allclose(result.probs, expected_probs(c, len(LABELS)), atol=2e-4)
    assert result.logit_scale == pytest.approx(100.0, rel=1e-6)
    assert [len(row) for row in result.top_labels] == [5] * len(LABELS)
    assert all(scores == sorted(scores, reverse=True) for scores in result.top_scores)
    # top_k is capped at the number of labels
    assert [len(row) for row in ZeroShotClassifier(ef, LABELS).predict(images, top_k=50).top_labels] == [6] * 6


def test_control_accuracy_is_exactly_what_the_construction_predicts(constructed):
    ef, images, _ = constructed
    predictions = classify(images, LABELS, ef=ef, top_k=1).predictions
    deranged = LABELS[1:] + LABELS[:1]  # every image labelled as another class
    assert np.mean([p == t for p, t in zip(predictions, deranged)]) == 0.0
    half = LABELS[:3] + [LABELS[4], LABELS[5], LABELS[3]]  # 3 of 6 labels kept
    assert np.mean([p == t for p, t in zip(predictions, half)]) == 0.5


def test_every_input_kind_gives_the_same_answer(constructed, tmp_path):
    ef, images, _ = constructed
    path = tmp_path / "img.png"
    Image.fromarray(images[3]).save(path)
    buffer = io.BytesIO()
    Image.fromarray(images[3]).save(buffer, format="PNG")
    inputs = [path, str(path), buffer.getvalue(), Image.fromarray(images[3]), images[3]]
    result = ZeroShotClassifier(ef, LABELS).predict(inputs, top_k=1)
    assert result.predictions == [LABELS[3]] * len(inputs)
    assert np.ptp(result.probs, axis=0).max() < 1e-6
    assert ZeroShotClassifier(ef, LABELS).predict(str(path)).predictions == [LABELS[3]]  # one path, not chars


def test_prompt_ensemble_equals_direct_computation(tiny_model_path):
    ef = ce.ClipEF(str(tiny_model_path), device="cpu", cache=False)
    labels, templates = ["red", "a small boat", "Zebra"], IMAGENET_SELECTED_TEMPLATES
    prototypes = ZeroShotClassifier(ef, labels, templates).prototypes
    assert prototypes.shape == (3, 64) and prototypes.dtype == np.float32
    np.testing.assert_allclose(prototypes, direct_prototypes(ef, labels, templates), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(prototypes, axis=1), 1.0, atol=1e-6)


class CountingEF(ce.ClipEF):
    """Counts text-encoder calls; otherwise the real embedding function."""

    calls = 0

    def embed_texts(self, texts):
        CountingEF.calls += 1
        return super().embed_texts(texts)


def test_prototype_cache_skips_the_text_encoder(tiny_model_path, monkeypatch):
    clear_prototype_cache()
    CountingEF.calls = 0
    make = lambda: CountingEF(str(tiny_model_path), device="cpu", cache=False)  # noqa: E731
    image = np.zeros((32, 32, 3), np.uint8)
    first = ZeroShotClassifier(make(), ["cat", "dog"]).prototypes
    assert CountingEF.calls == 1
    again = ZeroShotClassifier(make(), ["cat", "dog"])  # another instance, same model/labels/templates
    again.predict([image])
    classify([image], ["cat", "dog"], ef=make())
    assert CountingEF.calls == 1 and again.prototypes is first
    ZeroShotClassifier(make(), ["dog", "cat"]).prototypes  # other label order: other classifier
    ZeroShotClassifier(make(), ["cat", "dog"], ["{}"]).prototypes  # other templates
    assert CountingEF.calls == 3

    monkeypatch.setattr(zeroshot, "_PROTOTYPE_CACHE_SIZE", 2)
    ZeroShotClassifier(make(), ["bird"]).prototypes  # evicts the least recently used: cat, dog
    ZeroShotClassifier(make(), ["cat", "dog"]).prototypes
    assert CountingEF.calls == 5
    with pytest.raises(ValueError):
        first[0, 0] = 1.0  # shared arrays are read-only


def test_argument_validation(tiny_model_path):
    ef = ce.ClipEF(str(tiny_model_path), device="cpu", cache=False)
    with pytest.raises(ValueError, match="distinct"):
        ZeroShotClassifier(ef, ["cat", "cat"])
    with pytest.raises(ValueError, match="empty"):
        ZeroShotClassifier(ef, [])
    with pytest.raises(TypeError):
        ZeroShotClassifier(ef, "cat")
    with pytest.raises(ValueError, match="'{}'"):
        ZeroShotClassifier(ef, ["cat"], ["a photo"])
    with pytest.raises(ValueError, match="top_k"):
        ZeroShotClassifier(ef, ["cat"]).predict([np.zeros((8, 8, 3), np.uint8)], top_k=0)


def test_bad_images_follow_the_embedding_functions_policy(constructed, tmp_path):
    ef, images, _ = constructed
    inputs = [images[0], tmp_path / "missing.png", images[1]]
    with pytest.raises(ce.ImageLoadError, match="missing.png"):
        ZeroShotClassifier(ef, LABELS).predict(inputs)
    result = ZeroShotClassifier(ef, LABELS).predict(inputs, on_error="skip")
    assert result.indices == [0, 2] and result.predictions == LABELS[:2]
    assert [s.index for s in result.skipped] == [1] and "not found" in result.skipped[0].reason
    skipping = ce.ClipEF(ef.model_name, device="cpu", cache=False, on_error="skip")
    assert ZeroShotClassifier(skipping, LABELS).predict(inputs).indices == [0, 2]


# --- similarity -------------------------------------------------------------------------------

def test_similarity_equals_the_reference_models_softmaxed_logits(tiny_model_path):
    rng = np.random.default_rng(1)
    arrays = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((32, 32, 3), (48, 40, 3), (20, 70, 3))]
    texts = ["a photo of a cat", "a diagram", "two dogs playing in the snow", "x"]
    result = similarity(arrays, texts, ef=ce.ClipEF(str(tiny_model_path), device="cpu", cache=False))

    reference = tiny_reference_clip("vit", seed=0)  # the weights tiny_model_path holds
    pixels = Preprocess(32).batch([Image.fromarray(a) for a in arrays])
    with torch.no_grad():
        logits_per_image, _ = reference(pixels, reference_tokenize(texts))
    np.testing.assert_allclose(result.probs, logits_per_image.softmax(dim=-1).numpy(), atol=1e-5)
    np.testing.assert_allclose(result.cosine * result.logit_scale, logits_per_image.numpy(), atol=1e-4)
    assert result.probs.shape == (3, 4) and result.indices == [0, 1, 2]


# --- moderation -------------------------------------------------------------------------------

def test_moderation_flags_exactly_the_unsafe_images(constructed):
    ef, images, c = constructed
    results = moderate(images, UNSAFE, SAFE, ef=ef)
    assert [r.flagged for r in results] == [label in UNSAFE for label in LABELS]
    expected = expected_probs(c, len(LABELS))  # per label, whatever the column order
    for r in results:
        assert r.unsafe_score == pytest.approx(expected[r.index, 2:4].sum(), abs=2e-4)
        assert r.top_label == LABELS[r.index]
    assert [(r.index, r.top_unsafe_label) for r in results.flagged] == [(2, "a weapon"), (3, "blood")]
    assert results.skipped == []

    # every threshold between two constructed scores flags exactly the images scored above it
    scores = np.sort(expected[:, 2:4].sum(axis=1))
    for low, high in zip(scores[:-1], scores[1:]):
        if high - low > 1e-6 * high:  # the two unsafe images both score ~1: no threshold between them
            threshold = float(np.sqrt(low * high))
            flagged = [r.index for r in moderate(images, UNSAFE, SAFE, threshold=threshold, ef=ef).flagged]
            assert flagged == [i for i in range(len(LABELS)) if expected[i, 2:4].sum() > threshold]
    assert len(moderate(images, UNSAFE, SAFE, threshold=0.0, ef=ef).flagged) == len(images)


def test_moderation_validation_and_skipped_images(constructed, tmp_path):
    ef, images, _ = constructed
    with pytest.raises(ValueError, match="both unsafe and safe"):
        moderate(images, ["blood"], ["blood", "food"], ef=ef)
    with pytest.raises(ValueError, match="threshold"):
        moderate(images, UNSAFE, SAFE, threshold=1.5, ef=ef)
    results = moderate([images[2], tmp_path / "gone.jpg"], UNSAFE, SAFE, ef=ef, on_error="skip")
    assert [r.index for r in results] == [0] and results[0].flagged
    assert [s.index for s in results.skipped] == [1]
