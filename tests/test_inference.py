"""The CPU inference rewrite: where it applies, where it must not, and its fallback.

That it computes openai/CLIP's values for all nine architectures is checked in
test_model_parity (every case runs the rewritten model too).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

import clip_embeddings as ce
from clip_embeddings.runtime import inference
from clip_embeddings.embedding.loaded import shared_model
from clip_embeddings.runtime.inference import FoldedConv, PackedLinear, optimize_for_inference
from tests.model_factory import save_state_dict, tiny_reference_clip
from tests.reference import reference_tokenize


def _kinds(model: nn.Module) -> set[type]:
    return {type(m) for m in model.modules()}


def test_clipef_runs_the_rewritten_model_and_load_returns_the_original(tmp_path):
    reference = tiny_reference_clip("rn")
    save_state_dict(reference, tmp_path / "rn.pt")
    shared = shared_model(str(tmp_path / "rn.pt"), "cpu", "fp32").model
    assert {FoldedConv, PackedLinear} <= _kinds(shared)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in shared.modules())

    loaded, _ = ce.load(tmp_path / "rn.pt")
    assert FoldedConv not in _kinds(loaded) and PackedLinear not in _kinds(loaded)
    assert any(isinstance(m, nn.BatchNorm2d) for m in loaded.modules())
    assert loaded.training is False and all(p.requires_grad for p in loaded.parameters())


def test_without_onednn_linear_only_the_batch_norms_are_folded(monkeypatch):
    monkeypatch.setattr(inference, "_packed_linear_works", lambda *args: False)
    reference = tiny_reference_clip("rn")
    model = optimize_for_inference(optimize_for_inference(ce.build_model(reference.state_dict())))  # twice: a no-op, not an error
    assert FoldedConv in _kinds(model) and PackedLinear not in _kinds(model)
    images, tokens = torch.randn(3, 3, 64, 64), reference_tokenize(["a red car", "two dogs"])
    with torch.inference_mode():
        assert float((model.encode_image(images) - reference.encode_image(images)).abs().max()) < 1e-5
        assert float((model.encode_text(tokens) - reference.encode_text(tokens)).abs().max()) < 1e-5


def test_half_precision_models_are_left_alone():
    model = ce.core.model.cast_weights(ce.build_model(tiny_reference_clip("rn").state_dict()), torch.bfloat16)
    before = copy.deepcopy(model.state_dict())
    optimize_for_inference(model)
    assert FoldedConv not in _kinds(model) and PackedLinear not in _kinds(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_folded_convolution_equals_conv_then_batch_norm_then_relu():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, 3, stride=2, padding=1, dilation=1, groups=4, bias=True)
    bn = nn.BatchNorm2d(12).eval()
    with torch.no_grad():
        bn.running_mean.normal_(0, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_(1, 0.3)
        bn.bias.normal_(0, 0.3)
    x = torch.randn(2, 8, 9, 11)
    with torch.inference_mode():
        expected = torch.relu(bn(conv(x)))
        for relu in (True, False):
            got = FoldedConv(conv, bn, relu=relu)(x)
            want = expected if relu else bn(conv(x))
            assert got.shape == want.shape
            assert float((got - want).abs().max()) < 1e-5
