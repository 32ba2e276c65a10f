"""int8 linear layers (``dtype="int8"``, ``clip_embeddings/runtime/int8.py``): what they compute,
where ``auto`` may take them, and that the 8-bit products do not overflow on AVX2.

The expected values come from the quantization written out in float64 here, not from the module:
each activation row and each weight row (output channel) scaled by its largest magnitude to the
integer range, rounded, multiplied exactly, and scaled back.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import clip_embeddings as ce
from clip_embeddings.embedding.loaded import shared_model
from clip_embeddings.runtime import auto as runtime
from clip_embeddings.runtime.auto import Capabilities, PathResult, decide
from clip_embeddings.runtime.int8 import Int8Linear, int8_available, weight_levels
from tests.model_factory import tiny_reference_clip
from tests.reference import reference_embeddings

pytestmark = pytest.mark.skipif(not int8_available(), reason="this torch has no exact int8 matrix multiply on the CPU")

AVX2_ONLY = Capabilities("AMD EPYC 7R13", ("avx2",), "AVX2", "2.13.0+cpu")
AMD_BF16 = Capabilities("AMD EPYC 9R14", ("avx2", "avx512f", "avx512_bf16"), "AVX512", "2.13.0+cpu")


def quantized_linear_in_float64(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, levels: int) -> torch.Tensor:
    x, weight = x.double(), weight.double()
    sx = x.abs().amax(dim=1, keepdim=True) / 127
    sw = weight.abs().amax(dim=1, keepdim=True) / levels
    qx, qw = torch.round(x / sx), torch.round(weight / sw)
    return (qx @ qw.T) * sx * sw.T + bias.double()


def test_an_int8_linear_is_the_exact_integer_product_of_its_rounded_inputs():
    generator = torch.Generator().manual_seed(3)
    x, weight, bias = (torch.randn(shape, generator=generator) for shape in ((37, 96), (80, 96), (80,)))
    x[5] *= 40  # rows of very different sizes: each gets its own scale
    layer = Int8Linear(weight, bias)
    got = layer(x)
    assert int(layer.weight_t.abs().max()) == weight_levels()
    expected = quantized_linear_in_float64(x, weight, bias, weight_levels())
    assert float((got.double() - expected).abs().max() / expected.abs().max()) < 1e-5
    exact = F.linear(x, weight, bias)
    assert float((got - exact).abs().max()) > 1e-4  # it really is rounded: the test could fail
    assert float(F.cosine_similarity(got, exact).min()) > 0.999


def test_the_swish_activation_and_a_batch_shape_are_kept():
    generator = torch.Generator().manual_seed(4)
    x, weight, bias = (torch.randn(shape, generator=generator) for shape in ((2, 5, 48), (64, 48), (64,)))
    got = Int8Linear(weight, bias, "swish")(x)
    assert got.shape == (2, 5, 64)
    expected = F.silu(quantized_linear_in_float64(x.reshape(10, 48), weight, bias, weight_levels())).reshape(2, 5, 64)
    assert float((got.double() - expected).abs().max()) < 1e-4
    with pytest.raises(ValueError, match="activation"):
        Int8Linear(weight, bias, "relu")


def test_weights_keep_seven_bits_where_8_bit_products_overflow():
    # oneDNN held to AVX2 (as on a CPU without VNNI) adds u8 x s8 pairs in saturating 16-bit lanes.
    script = textwrap.dedent("""
        import torch
        from clip_embeddings.runtime.int8 import Int8Linear, weight_levels
        big = torch.full((1, 64), 127, dtype=torch.int8)
        print(int(torch._int_mm(big, big.t().contiguous())[0, 0]) == 127 * 127 * 64, weight_levels())
        x = torch.full((3, 64), 5.0)  # large positive activations and weights: the overflowing case
        layer = Int8Linear(torch.full((8, 64), 0.5), torch.zeros(8))
        print(float((layer(x) - 160.0).abs().max()))
    """)
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out[:2] == ["False", "63"]  # the full range overflows there, so weights use 7 bits
    assert float(out[2]) < 1e-3  # and the result is right: 64 x 5 x 0.5


def test_int8_embeddings_stay_close_to_the_reference(tiny_model_path, sample_images):
    ef = ce.ClipEF(model=str(tiny_model_path), device="cpu", dtype="int8", cache=False, fast_decode=False)
    info = ef.runtime_info()
    assert (info["dtype"], info["precision"], info["source"]) == ("int8", "int8", "asked")
    model = ef.loaded_model().model
    for tower in (model.visual, model.transformer):
        assert any(isinstance(m, Int8Linear) for m in tower.modules())
        assert not any(isinstance(m, torch.nn.Linear) for m in tower.modules())
    texts = ["a photo of a cat", "two dogs playing in the snow", "a red car"]
    images = [Image.open(p).convert("RGB") for p in sample_images[:3]]
    expected_images, expected_texts = reference_embeddings(tiny_model_path, images=images, texts=texts)
    got_images, got_texts = ef.embed_images([str(p) for p in sample_images[:3]]), ef.embed_texts(texts)
    for got, expected in ((got_images, expected_images), (got_texts, expected_texts)):
        cosines = (got * expected).sum(axis=1)
        assert cosines.min() > 0.99
        assert np.abs(got - expected).max() > 1e-5  # int8, not fp32 under another name


def test_int8_runs_on_a_cpu_only(tiny_model_path):
    with pytest.raises(ValueError, match="CPU only"):
        shared_model(str(tiny_model_path), "cuda", "int8")


# --- what auto does with it ---------------------------------------------------------------------

def test_int8_is_held_to_its_own_bar():
    probe = {"fp32": PathResult(1.0, 1.0), "fp32+onednn": PathResult(0.8, 1.0), "int8": PathResult(0.5, 0.998)}
    decision = decide(AVX2_ONLY, probe)
    assert decision.precision == "int8" and "2.00x" in decision.reason
    probe["int8"] = PathResult(0.5, 0.995)  # an outlier-heavy model: rounding costs it too much
    decision = decide(AVX2_ONLY, probe)
    assert decision.precision == "fp32+onednn"
    assert f"int8: canary cosine 0.995000 < {runtime.INT8_COSINE_BAR}" in decision.reason
    # bf16's bar is not int8's: the same cosine refuses bf16.
    bf16 = decide(AMD_BF16, {"fp32": PathResult(1.0, 1.0), "bf16": PathResult(0.5, 0.998)})
    assert bf16.precision == "fp32"


@pytest.mark.parametrize("kind, caps, expected", [
    ("vit", AVX2_ONLY, "int8"),
    ("rn", AVX2_ONLY, "int8+fold+channels_last"),  # the convolutions keep their fp32 rewrites
    ("vit", AMD_BF16, None),  # native bf16: int8 is not offered
])
def test_the_probe_times_int8_only_where_bf16_is_not_native(monkeypatch, kind, caps, expected):
    monkeypatch.setattr(runtime, "MIN_PROBE_WEIGHTS", 0)
    seen: list[list[str]] = []

    def fake_probe(build, names, images, tokens, repeats=3):
        seen.append(list(names))
        if expected in names:  # the int8 path builds, and computes close to fp32
            model = build(expected)
            with torch.inference_mode():
                assert float(F.cosine_similarity(model.encode_text(tokens), build("fp32").encode_text(tokens)).min()) > 0.99
        timing = {"fp32": 1.0, expected: 0.4}
        result = {n: PathResult(timing.get(n, 0.9), 1.0 if n != expected else 0.999) for n in names}
        return {"image": result, "text": dict(result)}

    monkeypatch.setattr(runtime, "probe", fake_probe)
    model = ce.build_model(tiny_reference_clip(kind).state_dict())
    decision = runtime.auto_decision(model, caps)
    if expected is None:
        assert not any(n.startswith("int8") for names in seen for n in names)
    else:
        assert expected in seen[0]
        assert decision.dtype == "int8" and decision.torch_dtype == torch.int8
        # The text tower has no convolutions: its path is plain int8.
        assert runtime.text_paths(decision.probe).get("int8") is not None


def test_the_shipped_table_never_starts_a_machine_on_int8():
    from clip_embeddings.runtime.table import table_decision

    rows = [{"isa": "avx2", "family": "vit", "torch": "2.13", "image": "int8", "text": "int8"}]  # a hand-edited table
    decision = table_decision(AVX2_ONLY, "vit-w768-l12-p32-r224-text512x12", rows, rewrites={"fp32": ("onednn",)},
                              onnx_available=False)
    assert decision.precision == "fp32+onednn"
    assert "int8 is only taken from a probe" in decision.reason
