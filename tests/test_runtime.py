"""What ``dtype="auto"`` decides, from which evidence, and what it caches; no timing is asserted.

The decision logic is a pure function of (capabilities, probe results), so these tests feed it
made-up reports: a CPU with or without native bf16, probes where bf16 is faster, slower, or off
the cosine bar. The probe itself runs only on the tiny model, to check its plumbing.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import clip_embeddings as ce
from clip_embeddings.runtime import auto as runtime
from clip_embeddings.runtime.inference import FoldedConv, PackedLinear, prepare_for_inference
from clip_embeddings.runtime.auto import Capabilities, PathResult, decide, first_paths, second_paths
from tests.model_factory import tiny_reference_clip
from tests.reference import reference_embeddings, reference_tokenize

AMD_BF16 = Capabilities("AMD EPYC 9R14", ("avx2", "avx512f", "avx512_bf16"), "AVX512", "2.13.0+cpu")
INTEL_AMX = Capabilities("Intel Xeon Platinum 8488C", ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"),
                         "AVX512", "2.13.0+cpu")
AVX2_ONLY = Capabilities("AMD EPYC 7R13", ("avx2",), "AVX2", "2.13.0+cpu")


def results(**paths: tuple[float, float]) -> dict[str, PathResult]:
    """Probe results from keyword pairs (seconds, cosine); ``_`` in a name stands for ``+``."""
    return {name.replace("__", "+"): PathResult(*v) for name, v in paths.items()}


# --- the pure decision ------------------------------------------------------------------------

@pytest.mark.parametrize("caps", [AMD_BF16, INTEL_AMX])
def test_native_bf16_that_is_faster_and_close_is_chosen(caps):
    probe = results(fp32=(1.0, 1.0), fp32__onednn=(0.8, 1.0), bf16__onednn=(0.45, 0.99995), bf16=(0.5, 0.99995))
    decision = decide(caps, probe)
    assert (decision.dtype, decision.rewrites, decision.precision) == ("bf16", ("onednn",), "bf16+onednn")
    assert "native bf16" in decision.reason and "2.22x" in decision.reason


def test_bf16_is_never_chosen_where_the_cpu_only_emulates_it():
    # Even a (misleading) probe that shows bf16 faster must not win on an AVX2-only CPU.
    probe = results(fp32=(1.0, 1.0), fp32__onednn=(0.8, 1.0), bf16=(0.3, 0.99999))
    decision = decide(AVX2_ONLY, probe)
    assert decision.precision == "fp32+onednn"
    assert "no native bf16" in decision.reason and "bf16: no native bf16" in decision.reason


def test_a_probe_that_finds_bf16_slower_keeps_fp32():
    probe = results(fp32=(1.0, 1.0), fp32__onednn=(0.7, 1.0), bf16__onednn=(1.4, 0.99998))
    assert decide(AMD_BF16, probe).precision == "fp32+onednn"
    # ... and with no fp32 rewrite that pays either, plain fp32.
    assert decide(AMD_BF16, results(fp32=(1.0, 1.0), bf16=(1.2, 0.99998))).precision == "fp32"


def test_a_canary_below_the_cosine_bar_keeps_fp32():
    probe = results(fp32=(1.0, 1.0), bf16=(0.4, 0.99989))
    decision = decide(INTEL_AMX, probe)
    assert decision.precision == "fp32"
    assert "cosine 0.999890 < 0.9999" in decision.reason


def test_a_rewrite_within_the_noise_margin_is_not_kept():
    # 3% faster is inside the probe's noise: the plain model stays.
    assert decide(AVX2_ONLY, results(fp32=(1.0, 1.0), fp32__onednn=(0.97, 1.0))).precision == "fp32"
    assert decide(AVX2_ONLY, results(fp32=(1.0, 1.0), fp32__onednn=(0.90, 1.0))).precision == "fp32+onednn"


def test_the_fastest_eligible_path_wins_and_keeps_only_its_rewrites():
    probe = results(fp32=(1.0, 1.0), bf16__fold__channels_last__onednn=(0.40, 0.99999),
                    bf16__fold__onednn=(0.33, 0.99999), bf16__fold__channels_last=(0.41, 0.99999),
                    bf16__onednn=(0.60, 0.99999), bf16=(0.62, 0.99999))
    decision = decide(AMD_BF16, probe)
    assert decision.dtype == "bf16" and decision.rewrites == ("fold", "onednn")  # channels_last did not pay


def test_decide_needs_the_fp32_baseline():
    with pytest.raises(ValueError, match="baseline"):
        decide(AMD_BF16, results(bf16=(0.5, 1.0)))


def test_the_probe_only_tries_bf16_where_it_is_native():
    assert first_paths(AVX2_ONLY, ("fold", "channels_last", "onednn")) == ["fp32", "fp32+fold+channels_last+onednn"]
    assert first_paths(AMD_BF16, ("onednn",)) == ["fp32", "fp32+onednn", "bf16+onednn"]
    assert first_paths(AVX2_ONLY, ()) == ["fp32"]
    second = second_paths("bf16+fold+channels_last+onednn")
    assert second[:2] == ["fp32", "bf16+fold+channels_last+onednn"]
    assert set(second[2:]) == {"bf16+onednn", "bf16+fold+onednn", "bf16+fold+channels_last", "bf16"}


def test_capabilities_come_from_cpuinfo_flags():
    text = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8488C\n"
            "flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n\n"
            "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Platinum 8488C\nflags\t\t: fpu\n")
    caps = runtime.capabilities_from(text)
    assert caps.cpu_model == "Intel(R) Xeon(R) Platinum 8488C"
    assert caps.flags == ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") and caps.native_bf16
    assert not runtime.capabilities_from("model name : AMD EPYC\nflags : fpu avx2 avx512f\n").native_bf16
    assert not runtime.capabilities_from("").native_bf16  # no cpuinfo: no bf16 claim


# --- the decision cache ---------------------------------------------------------------------

def test_the_decision_cache_is_keyed_by_cpu_model_and_torch_version(tmp_path):
    path = tmp_path / "decisions.json"
    decision = decide(AMD_BF16, results(fp32=(1.0, 1.0), bf16=(0.5, 0.99995)))
    runtime.store_decision(decision, "vit-a", path)
    hit = runtime.cached_decision(AMD_BF16, "vit-a", path)
    assert hit is not None and hit.from_cache and not decision.from_cache
    assert (hit.precision, hit.reason, hit.probe) == (decision.precision, decision.reason, decision.probe)
    other_cpu = Capabilities("AMD EPYC 7R13", AMD_BF16.flags, "AVX512", AMD_BF16.torch_version)
    other_torch = Capabilities(AMD_BF16.cpu_model, AMD_BF16.flags, "AVX512", "2.14.0+cpu")
    assert runtime.cached_decision(other_cpu, "vit-a", path) is None
    assert runtime.cached_decision(other_torch, "vit-a", path) is None
    assert runtime.cached_decision(AMD_BF16, "resnet-b", path) is None
    stored = json.loads(path.read_text())["decisions"]
    assert list(stored) == ["AMD EPYC 9R14 | torch 2.13.0+cpu"]


def test_a_damaged_decision_cache_means_probing_again(tmp_path):
    path = tmp_path / "decisions.json"
    path.write_text("{not json")
    assert runtime.cached_decision(AMD_BF16, "vit-a", path) is None
    runtime.store_decision(decide(AMD_BF16, results(fp32=(1.0, 1.0))), "vit-a", path)
    assert runtime.cached_decision(AMD_BF16, "vit-a", path).precision == "fp32"


def test_auto_probes_once_then_reuses_the_cached_decision(monkeypatch):
    monkeypatch.setattr(runtime, "MIN_PROBE_WEIGHTS", 0)  # let the tiny model be probed
    model = ce.build_model(tiny_reference_clip("vit").state_dict())
    calls = []
    real_probe = runtime.probe
    monkeypatch.setattr(runtime, "probe", lambda *a, **k: calls.append(a[1]) or real_probe(*a, **k))
    first = runtime.auto_decision(model, AMD_BF16)
    assert not first.from_cache and calls and calls[0][0] == "fp32"
    assert calls[0] == ["fp32", "fp32+onednn", "bf16+onednn"]
    assert all(r.cosine > 0.99 for r in first.probe.values())  # every path computes the same embeddings
    calls.clear()
    again = runtime.auto_decision(model, AMD_BF16)
    assert again.from_cache and not calls and again.precision == first.precision
    assert runtime.auto_decision(model, AVX2_ONLY).from_cache is False  # another CPU: its own probe
    assert any(isinstance(m, torch.nn.Linear) for m in model.modules())  # probing left it untouched


def test_each_tower_gets_its_own_path_and_the_cache_keeps_both(monkeypatch):
    # A ResNet where the convolutions want channels-last without packed linears, and the text
    # tower wants the packed linears: one path for both would slow one of them down.
    monkeypatch.setattr(runtime, "MIN_PROBE_WEIGHTS", 0)
    model = ce.build_model(tiny_reference_clip("rn").state_dict())
    image = {"fp32": (1.0, 1.0), "bf16+fold+channels_last": (0.40, 0.99999), "bf16+fold+channels_last+onednn": (0.45, 0.99999)}
    text = {"fp32": (1.0, 1.0), "bf16+fold+channels_last": (0.60, 0.99999), "bf16+fold+channels_last+onednn": (0.40, 0.99999),
            "bf16+onednn": (0.41, 0.99999)}

    def fake_probe(build, names, images, tokens, repeats=3):
        pick = lambda table: {n: PathResult(*table.get(n, (2.0, 1.0))) for n in names}  # noqa: E731
        return {"image": pick(image), "text": pick(text)}

    monkeypatch.setattr(runtime, "probe", fake_probe)
    decision = runtime.auto_decision(model, AMD_BF16)
    assert decision.precision == "bf16+fold+channels_last, text bf16+onednn"  # fold means nothing to the text tower
    assert decision.text_path == (torch.bfloat16, ("onednn",))
    assert decision.reason.startswith("images: ") and decision.text.reason.startswith("texts: ")
    again = runtime.auto_decision(model, AMD_BF16)
    assert again.from_cache and again.precision == decision.precision and again.text_path == decision.text_path
    assert runtime.Decision("fp32", (), "", AMD_BF16).text_path == (torch.float32, ())  # one path: the same for both


def test_a_text_path_of_its_own_is_what_the_text_tower_runs():
    reference = tiny_reference_clip("rn")
    model = prepare_for_inference(ce.build_model(reference.state_dict()), torch.float32, ("fold",),
                                  text=(torch.bfloat16, ("onednn",)))
    assert all(m.weight.dtype == torch.float32 for m in model.visual.modules() if isinstance(m, FoldedConv))
    assert not any(isinstance(m, PackedLinear) for m in model.visual.modules())
    assert model.text_projection.dtype == torch.bfloat16
    if packed := [m for m in model.transformer.modules() if isinstance(m, PackedLinear)]:
        assert packed[0].packed.dtype == torch.bfloat16
    images, tokens = torch.randn(2, 3, 64, 64), reference_tokenize(["a red car", "two dogs on a beach"])
    with torch.inference_mode():
        assert float((model.encode_image(images) - reference.encode_image(images)).abs().max()) < 1e-5  # fp32: exact
        text = model.encode_text(tokens)
        assert text.dtype == torch.bfloat16
        assert float(torch.nn.functional.cosine_similarity(text.float(), reference.encode_text(tokens)).min()) > 0.999


def test_small_models_skip_the_probe_and_run_exact_fp32():
    model = ce.build_model(tiny_reference_clip("vit").state_dict())
    decision = runtime.auto_decision(model, AMD_BF16)
    assert decision.dtype == "fp32" and "too small" in decision.reason and not decision.probe


# --- ClipEF: what it reports, and a cache that never mixes precision paths ---------------------

def test_runtime_info_says_what_runs_and_why(tiny_model_path):
    info = ce.ClipEF(model=str(tiny_model_path), device="cpu", cache=False).runtime_info()
    for key in ("device", "dtype", "precision", "rewrites", "cpu_flags", "from_cache", "reason"):
        assert key in info, key
    assert info["device"] == "cpu" and info["dtype"] == "fp32"
    assert info["precision"] == "+".join(["fp32", *info["rewrites"]])
    assert info["cpu_flags"] == list(runtime.detect_capabilities().flags)
    bf16 = ce.ClipEF(model=str(tiny_model_path), device="cpu", dtype="bf16", cache=False).runtime_info()
    assert bf16["dtype"] == "bf16" and bf16["precision"].startswith("bf16")


def test_an_fp32_caller_never_gets_a_bf16_vector_from_the_cache(tiny_model_path, tmp_path, sample_images):
    cache = tmp_path / "embeddings.sqlite3"
    path = str(sample_images[0])
    low = ce.ClipEF(model=str(tiny_model_path), device="cpu", dtype="bf16", cache=str(cache), fast_decode=False)
    bf16_vector = low.embed_images([path])
    assert low.encode_images([path]).cache_hits == 1  # the bf16 vector is in the cache...
    exact = ce.ClipEF(model=str(tiny_model_path), device="cpu", dtype="fp32", cache=str(cache), fast_decode=False)
    result = exact.encode_images([path])
    assert result.cache_hits == 0  # ... but an fp32 caller computes its own
    expected, _ = reference_embeddings(tiny_model_path, images=[Image.open(path).convert("RGB")])
    assert np.abs(result.embeddings - expected).max() < 1e-5
    assert np.abs(bf16_vector - expected).max() > 1e-4  # the two really differ: the test could fail
    assert exact.encode_images([path]).cache_hits == 1


def test_bf16_gets_the_resnet_folding_and_channels_last(tmp_path):
    reference = tiny_reference_clip("rn")
    model = prepare_for_inference(ce.build_model(reference.state_dict()), torch.bfloat16,
                                  ("fold", "channels_last", "onednn"))
    folded = [m for m in model.modules() if isinstance(m, FoldedConv)]
    assert folded and all(m.weight.dtype == torch.bfloat16 for m in folded)
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in folded)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    if packed := [m for m in model.modules() if isinstance(m, PackedLinear)]:
        assert packed[0].packed.dtype == torch.bfloat16
    images = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        got, want = model.encode_image(images).float(), reference.encode_image(images)
    assert float(torch.nn.functional.cosine_similarity(got, want).min()) > 0.999


def test_prepare_for_inference_refuses_unknown_rewrites():
    model = ce.build_model(tiny_reference_clip("vit").state_dict())
    with pytest.raises(ValueError, match="unknown inference rewrite.*'fuse'"):
        prepare_for_inference(model, torch.float32, ("fuse",))


def test_cuda_keeps_fp16_with_sdpa_attention(monkeypatch):
    """The CUDA default, checked on the CPU: fp16 weights, attention through SDPA, close to fp32."""
    from clip_embeddings.core import model as model_module
    from clip_embeddings.embedding.loaded import resolve_dtype
    from clip_embeddings.core.model import cast_weights

    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype(None, torch.device("cuda")) == torch.float16
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32  # the CPU decides by probe instead
    reference = tiny_reference_clip("vit")
    half = cast_weights(ce.build_model(reference.state_dict()), torch.float16)
    images = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        want = reference.encode_image(images)
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(model_module.F, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(a[0].dtype) or sdpa(*a, **k))
    with torch.inference_mode():
        got = half.encode_image(images).float()
    assert calls and set(calls) == {torch.float16}
    assert float(torch.nn.functional.cosine_similarity(got, want).min()) > 0.999


def test_models_command_shows_the_machine_and_cached_decisions(capsys):
    from clip_embeddings.apps import cli

    caps = runtime.detect_capabilities()
    runtime.store_decision(decide(caps, results(fp32=(1.0, 1.0), fp32__onednn=(0.5, 1.0))), "vit-test-arch")
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert f"flags seen: {' '.join(caps.flags) or 'none'}" in out
    assert "vit-test-arch" in out and "fp32+onednn" in out
    assert cli.main(["models", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["runtime"]["cpu_flags"] == list(caps.flags)
    assert document["runtime"]["auto_decisions"]["vit-test-arch"]["rewrites"] == ["onednn"]
