"""Contrastive fine-tuning and linear probes, on the tiny random CLIP and synthetic data.

The fine-tuning data is designed so that held-out generalisation is possible: the caption is a
colour name and the image a random shape of that colour on a random grey background, so a new
image of a seen colour can be matched to its caption only if the model learned colour -> name.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import clip_embeddings as ce
from clip_embeddings.tasks.finetune import contrastive_loss, finetune, linear_probe, parameter_groups

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (235, 220, 40),
           "purple": (140, 40, 170), "orange": (245, 140, 20), "black": (15, 15, 15), "white": (245, 245, 245)}


@pytest.fixture(autouse=True)
def one_thread():
    # The tiny model's ops are too small to gain from threads, and on a busy 2-core machine two
    # spinning OpenMP threads make each step ~10x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def shape_image(rgb, rng) -> np.ndarray:
    background = tuple(int(v) for v in rng.integers(90, 160, 3))
    image = Image.new("RGB", (32, 32), background)
    x0, y0 = (int(v) for v in rng.integers(0, 14, 2))
    box = (x0, y0, x0 + int(rng.integers(12, 18)), y0 + int(rng.integers(12, 18)))
    draw = ImageDraw.Draw(image)
    (draw.ellipse if rng.integers(0, 2) else draw.rectangle)(box, fill=rgb)
    return np.asarray(image)


def colour_pairs(per_colour: int, seed: int) -> list[tuple[np.ndarray, str]]:
    rng = np.random.default_rng(seed)
    return [(shape_image(rgb, rng), name) for _ in range(per_colour) for name, rgb in COLOURS.items()]


def recall_at_1(model, pairs) -> float:
    """Image -> caption retrieval among the colour names: how often the best caption is the right one."""
    pre, names = ce.Preprocess(model.visual.input_resolution), list(COLOURS)
    with torch.no_grad():
        images = model.encode_image(torch.stack([pre(Image.fromarray(a)) for a, _ in pairs]))
        texts = model.encode_text(ce.tokenize(names))
    best = (torch.nn.functional.normalize(images, dim=-1) @ torch.nn.functional.normalize(texts, dim=-1).T).argmax(1)
    return float(np.mean([names[b] == caption for b, (_, caption) in zip(best.tolist(), pairs)]))


# --- the loss -----------------------------------------------------------------------------------

def test_contrastive_loss_is_symmetric_infonce():
    torch.manual_seed(0)
    image, text, scale = torch.randn(6, 16), torch.randn(6, 16), 14.3
    i, t = image / image.norm(dim=1, keepdim=True), text / text.norm(dim=1, keepdim=True)
    logits = scale * i @ t.T
    by_rows = -torch.log_softmax(logits, dim=1).diag().mean()
    by_columns = -torch.log_softmax(logits, dim=0).diag().mean()
    assert contrastive_loss(image, text, scale).item() == pytest.approx(((by_rows + by_columns) / 2).item(), rel=1e-6)
    assert contrastive_loss(image, text, scale).item() == pytest.approx(contrastive_loss(text, image, scale).item(), rel=1e-6)
    assert contrastive_loss(torch.eye(4), torch.eye(4), 100.0).item() < 1e-6
    assert contrastive_loss(image, text, torch.tensor(0.0)).item() == pytest.approx(math.log(6), rel=1e-6)


def test_no_weight_decay_on_gains_biases_embeddings_or_temperature(tiny_model_path):
    model, _ = ce.load(tiny_model_path, device="cpu")
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = (sorted(names[id(p)] for p in g["params"]) for g in parameter_groups(model, 0.2))
    assert {"logit_scale", "token_embedding.weight", "positional_embedding", "visual.class_embedding",
            "visual.positional_embedding", "ln_final.weight", "ln_final.bias",
            "visual.transformer.resblocks.0.attn.in_proj_bias"} <= set(no_decay)
    assert {"text_projection", "visual.proj", "visual.conv1.weight",
            "transformer.resblocks.0.attn.in_proj_weight", "transformer.resblocks.1.mlp.c_fc.weight"} <= set(decay)
    assert all(model.get_parameter(n).ndim >= 2 for n in decay)
    assert len(decay) + len(no_decay) == len(names)


# --- fine-tuning ------------------------------------------------------------------------------

def test_finetuning_lowers_the_loss_and_generalises(tiny_model_path, tmp_path):
    train, held_out = colour_pairs(4, seed=0), colour_pairs(2, seed=1)
    model, _ = ce.load(tiny_model_path, device="cpu")
    before = recall_at_1(model, held_out)
    output = tmp_path / "tuned" / "model.pt"
    # lr 1e-3: the tiny model learns from scratch here; pretrained models want ~1e-5
    result = finetune(model, train, epochs=8, lr=1e-3, batch_size=8, warmup_steps=2, device="cpu",
                      output=output, progress=False)
    after = recall_at_1(result.model, held_out)
    print(f"\nloss per epoch {np.round(result.epoch_losses, 3).tolist()}; held-out recall@1 {before:.3f} -> {after:.3f}")
    assert len(result.losses) == 8 * 4 and len(result.epoch_losses) == 8
    assert result.epoch_losses[-1] < result.epoch_losses[0]
    assert after >= before + 0.25
    assert recall_at_1(model, held_out) == before  # the model passed in was not changed

    # the saved checkpoint is a plain state dict in OpenAI's layout that load() and ClipEF read back
    state = torch.load(output, weights_only=True)
    assert list(state) == list(model.state_dict()) and all(v.dtype == torch.float32 for v in state.values())
    reloaded, _ = ce.load(output, device="cpu")
    pixels = torch.stack([ce.Preprocess(32)(Image.fromarray(a)) for a, _ in held_out[:4]])
    tokens = ce.tokenize(list(COLOURS))
    with torch.no_grad():
        torch.testing.assert_close(reloaded.encode_image(pixels), result.model.encode_image(pixels), atol=1e-6, rtol=0)
        torch.testing.assert_close(reloaded.encode_text(tokens), result.model.encode_text(tokens), atol=1e-6, rtol=0)
        expected = torch.nn.functional.normalize(result.model.encode_text(tokens), dim=-1).numpy()
    np.testing.assert_allclose(ce.ClipEF(str(output), device="cpu", cache=False).embed_texts(list(COLOURS)), expected, atol=1e-6)


def test_frozen_towers_do_not_change_and_the_temperature_is_clipped(tiny_model_path):
    model, _ = ce.load(tiny_model_path, device="cpu")
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100.0) - 1e-3)  # one big step would push it past 100
    original = {k: v.clone() for k, v in model.state_dict().items()}
    pairs = colour_pairs(2, seed=2)
    for frozen, flag in (("visual.", "freeze_image"), ("", "freeze_text")):
        result = finetune(model, pairs, epochs=1, lr=0.05, batch_size=8, device="cpu", progress=False, **{flag: True})
        tuned = result.model.state_dict()
        is_frozen = (lambda k: k.startswith("visual.")) if frozen else (lambda k: not k.startswith("visual.") and k != "logit_scale")
        assert all(torch.equal(tuned[k], original[k]) for k in tuned if is_frozen(k))
        assert any(not torch.equal(tuned[k], original[k]) for k in tuned if not is_frozen(k) and k != "logit_scale")
        assert result.logit_scale <= 100.0 + 1e-4
        assert all(p.requires_grad for p in result.model.parameters())
    with pytest.raises(ValueError, match="only the temperature"):
        finetune(model, pairs, freeze_image=True, freeze_text=True, progress=False)


def test_resnet_batchnorm_statistics_stay_frozen():
    torch.manual_seed(0)
    model = ce.CLIP(64, 32, (1, 1, 1, 1), 8, None, 77, 49408, 64, 1, 1).eval()  # a small ResNet CLIP
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}
    rng = np.random.default_rng(4)
    pairs = [(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), name) for name in ("red", "blue", "green", "black")]
    result = finetune(model, pairs, batch_size=4, lr=1e-3, device="cpu", progress=False)
    tuned = result.model.state_dict()
    assert stats and all(torch.equal(tuned[k], v) for k, v in stats.items())
    assert not torch.equal(tuned["visual.bn1.weight"], model.state_dict()["visual.bn1.weight"])  # affine still learns


def test_unreadable_images_raise_or_are_skipped(tiny_model_path, tmp_path):
    pairs = colour_pairs(1, seed=3)[:7]
    pairs.insert(2, (tmp_path / "missing.png", "a missing picture"))  # 8 pairs: two full batches of 4
    with pytest.raises(ce.ImageLoadError, match="missing.png"):
        finetune(tiny_model_path, pairs, batch_size=4, device="cpu", progress=False)
    result = finetune(tiny_model_path, pairs, epochs=2, batch_size=4, device="cpu", progress=False, on_error="skip")
    assert [(s.index, s.reason) for s in result.skipped] == [(2, "file not found")]
    assert len(result.losses) == 2 * 2


# --- linear probes ----------------------------------------------------------------------------

def test_linear_probe_separates_separable_features():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 64)) * 0.5
    names = np.array(["cat", "dog", "car"])

    def sample(n):
        y = rng.integers(0, 3, n)
        x = centres[y] + rng.normal(scale=0.3, size=(n, 64))
        return x / np.linalg.norm(x, axis=1, keepdims=True), names[y]

    (train_x, train_y), (test_x, test_y) = sample(150), sample(300)
    probe = linear_probe(train_x, train_y, test_x, test_y)
    assert probe.test_accuracy >= 0.95 and probe.train_accuracy >= 0.95
    assert set(probe.classes) == set(names) and probe.predict(test_x[:5]).dtype == names.dtype
    np.testing.assert_allclose(probe.predict_proba(test_x).sum(axis=1), 1.0)
    assert probe.score(test_x, test_y) == probe.test_accuracy

    # it minimises scikit-learn's objective C * sum(CE) + |W|^2 / 2: the gradient vanishes there
    onehot = (train_y[:, None] == probe.classes[None, :]).astype(np.float64)
    residual = probe.predict_proba(train_x) - onehot
    np.testing.assert_allclose(probe.C * residual.T @ train_x + probe.weight, 0.0, atol=1e-4)
    np.testing.assert_allclose(probe.C * residual.sum(axis=0), 0.0, atol=1e-4)  # the bias is not penalised


def test_linear_probe_on_random_labels_is_at_chance():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(1200, 64)), rng.integers(0, 4, 1200)
    probe = linear_probe(x[:200], y[:200], x[200:], y[200:], C=1.0)
    assert abs(probe.test_accuracy - 0.25) < 0.06
    with pytest.raises(ValueError, match="2 classes"):
        linear_probe(x[:10], np.zeros(10))
