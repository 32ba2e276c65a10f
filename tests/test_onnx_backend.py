"""ONNX Runtime as the image tower's backend: when the probe tries it, what it computes, what it leaves on disk.

No timing is asserted: which backend wins is the probe's business (``test_runtime`` feeds the
decision made-up timings); here the real export and session must give openai/CLIP's values.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import clip_embeddings as ce
from clip_embeddings.runtime import onnx_backend, refine, table
from clip_embeddings.runtime import auto as runtime
from clip_embeddings.core.download import cache_dir
from clip_embeddings.embedding.loaded import shared_model
from clip_embeddings.runtime.auto import PathResult, onnx_candidate, text_paths
from tests.model_factory import save_state_dict, tiny_reference_clip
from tests.reference import reference_embeddings
from tests.test_runtime import AMD_BF16, AVX2_ONLY, INTEL_AMX

pytestmark = pytest.mark.skipif(not onnx_backend.available(), reason="needs onnx and onnxruntime (the test extra)")


def test_onnx_runtime_is_a_candidate_only_where_torch_is_left_with_fp32():
    assert onnx_candidate(AVX2_ONLY, available=True)
    assert not onnx_candidate(AVX2_ONLY, available=False)
    assert not onnx_candidate(AMD_BF16, available=True) and not onnx_candidate(INTEL_AMX, available=True)


def test_the_text_tower_ignores_image_only_rewrites_and_backends():
    paths = text_paths({"fp32": PathResult(1.0, 1.0), "ort": PathResult(0.1, 1.0),
                        "fp32+fold+channels_last+onednn": PathResult(0.7, 1.0), "fp32+onednn": PathResult(0.8, 1.0)})
    assert paths == {"fp32": PathResult(1.0, 1.0), "fp32+onednn": PathResult(0.7, 1.0)}  # fastest timing of a name


@pytest.mark.parametrize("kind", ["rn", "vit"])
def test_the_exported_tower_computes_the_reference_features(tmp_path, kind):
    reference = tiny_reference_clip(kind)
    model = ce.build_model(reference.state_dict())
    path = onnx_backend.export_image_tower(model, tmp_path / "image.onnx")
    tower = onnx_backend.OnnxImageTower(path, model.visual)
    images = torch.randn(3, 3, model.visual.input_resolution, model.visual.input_resolution)
    with torch.no_grad():
        assert float((tower(images) - reference.encode_image(images)).abs().max()) < 1e-5
    assert tower(images[:1]).shape == (1, model.embed_dim)  # any batch size
    assert not list(tmp_path.glob("*.tmp"))


def test_the_real_probe_times_onnx_runtime_on_an_fp32_only_cpu(monkeypatch, tmp_path):
    monkeypatch.setattr(runtime, "MIN_PROBE_WEIGHTS", 0)
    model = ce.build_model(tiny_reference_clip("rn").state_dict())
    onnx_file = tmp_path / "image.onnx"
    decision = runtime.auto_decision(model, AVX2_ONLY, use_cache=False, onnx_file=onnx_file)
    assert "ort" in decision.probe and decision.probe["ort"].cosine > 0.99999  # same features as fp32
    assert "ort" not in (decision.text.probe if decision.text else {})
    assert onnx_file.exists() == (decision.dtype == "ort")  # a losing export is not kept
    bf16 = runtime.auto_decision(model, AMD_BF16, use_cache=False, onnx_file=onnx_file)
    assert "ort" not in bf16.probe  # native bf16: not tried


@pytest.mark.parametrize("ort_wins", [True, False])
def test_clipef_starts_from_the_table_then_runs_the_backend_the_probe_chose(monkeypatch, tmp_path, sample_images,
                                                                           ort_wins):
    # The shipped table says ONNX Runtime for a ResNet on an AVX2-only CPU: the first batch runs in
    # torch while the export is written in the background, then ONNX Runtime; the background probe
    # then keeps it or (its timings say torch is faster) switches back, and caches its choice.
    reference = tiny_reference_clip("rn")
    path = tmp_path / f"rn-{ort_wins}.pt"
    save_state_dict(reference, path)
    monkeypatch.setattr(runtime, "MIN_PROBE_WEIGHTS", 0)
    monkeypatch.setattr(runtime, "detect_capabilities", lambda: AVX2_ONLY)
    monkeypatch.setattr(refine, "PROBE_NICE", 0)  # at nice 19 a loaded test machine could starve it for minutes
    exported = []

    def fake_probe(build, names, images, tokens, repeats=3):
        assert "ort" in names
        exported.append(onnx_file.exists())  # the probe reuses the export written for the running model
        build("ort")  # the real export and session, as the real probe does
        image = {n: PathResult(0.3 if (n == "ort") == ort_wins else 0.8, 1.0) for n in names}
        return {"image": image | {"fp32": PathResult(1.0, 1.0)}, "text": {n: PathResult(1.0, 1.0) for n in names}}

    monkeypatch.setattr(runtime, "probe", fake_probe)
    lm = shared_model(str(path), "cpu", "auto")
    onnx_file = cache_dir() / "onnx" / f"{lm.fingerprint}-image.onnx"
    assert not isinstance(lm.model.visual, onnx_backend.OnnxImageTower) and not onnx_file.exists()
    assert lm.runtime["source"] == "table" and "being exported" in lm.runtime["reason"]
    ef = ce.ClipEF(model=str(path), device="cpu", cache=False, fast_decode=False)
    expected, _ = reference_embeddings(path, images=[Image.open(p).convert("RGB") for p in sample_images[:3]])
    assert float(abs(ef.embed_images(sample_images[:3]) - expected).max()) < 1e-5  # torch, before the switch
    lm.refinement.join(timeout=600)
    assert not lm.refinement.is_alive() and exported and all(exported)
    assert isinstance(lm.model.visual, onnx_backend.OnnxImageTower) == ort_wins
    assert lm.precision.startswith("ort") == ort_wins and onnx_file.exists() == ort_wins
    assert lm.runtime["source"] == "probe"
    stored = table.first_decision(ce.build_model(reference.state_dict()), AVX2_ONLY, onnx_available=True)
    assert stored.from_cache and stored.source == "probe" and stored.precision == lm.precision  # the cache has it
    assert float(abs(ef.embed_images(sample_images[:3]) - expected).max()) < 1e-5  # after the switch: same values
