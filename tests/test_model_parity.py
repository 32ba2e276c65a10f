"""Our CLIP gives openai/CLIP's values, for all nine architectures and every on-disk format."""

from __future__ import annotations

import json

import pytest
import torch

import clip_embeddings as ce
from clip_embeddings.core.checkpoint import read_checkpoint
from clip_embeddings.runtime.inference import optimize_for_inference
from clip_embeddings.core.model import cast_weights
from tests.model_factory import ARCHITECTURES, reference_clip, save_state_dict, save_torchscript, tiny_reference_clip
from tests.reference import reference_tokenize

TEXTS = ["a photo of a cat", "", "Straße café ñandú 東京 🐱 &amp; 1234 don't", "x " * 30]
FULL_SIZE = {"ViT-B/32", "RN50"}
CASES = [(name, name not in FULL_SIZE) for name in ARCHITECTURES]


def _reference_outputs(model, images, tokens):
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens), model(images, tokens)[0]


def _assert_close(ours, reference, tol=1e-5):
    for label, a, b in zip(("image", "text", "logits"), ours, reference):
        assert a.shape == b.shape, label
        diff = float((a.float() - b.float()).abs().max())
        assert diff <= tol, f"{label}: max abs difference {diff:.2e} > {tol:.0e}"


@pytest.mark.parametrize("name,scaled", CASES, ids=[f"{n}{'-scaled' if s else '-full'}" for n, s in CASES])
def test_parity_state_dict_and_torchscript(tmp_path, name, scaled):
    reference = reference_clip(name, scaled=scaled)
    resolution = ARCHITECTURES[name][1]
    torch.manual_seed(1)
    images = torch.randn(2, 3, resolution, resolution)
    tokens = reference_tokenize(TEXTS)
    expected = _reference_outputs(reference, images, tokens)

    save_state_dict(reference, tmp_path / "state_dict.pt")
    save_torchscript(reference, tmp_path / "scripted.pt", resolution)
    del reference
    for path in (tmp_path / "state_dict.pt", tmp_path / "scripted.pt"):
        model, preprocess = ce.load(path, device="cpu")
        assert model.visual.input_resolution == resolution == preprocess.resolution
        with torch.no_grad():
            ours = model.encode_image(images), model.encode_text(tokens), model(images, tokens)[0]
        _assert_close(ours, expected)
    # The inference rewrite ClipEF runs on CPU (folded batch norms, packed linears): same values.
    fast = optimize_for_inference(model)
    with torch.inference_mode():
        _assert_close((fast.encode_image(images), fast.encode_text(tokens), fast(images, tokens)[0]), expected)


def test_torchscript_is_read_without_running_its_code(tmp_path):
    reference = tiny_reference_clip()
    save_torchscript(reference, tmp_path / "scripted.pt", 32)
    checkpoint = read_checkpoint(tmp_path / "scripted.pt")
    assert checkpoint.format == "torchscript"
    expected = reference.state_dict()
    assert set(checkpoint.state_dict) == set(expected)
    for key, value in expected.items():
        assert torch.equal(checkpoint.state_dict[key], value), key


def test_jit_true_returns_the_scripted_module(tmp_path):
    reference = tiny_reference_clip()
    save_torchscript(reference, tmp_path / "scripted.pt", 32)
    scripted, preprocess = ce.load(tmp_path / "scripted.pt", jit=True)
    assert isinstance(scripted, torch.jit.ScriptModule)
    assert preprocess.resolution == 32
    tokens = reference_tokenize(["a dog"])
    with torch.no_grad():
        assert torch.allclose(scripted.encode_text(tokens), reference.encode_text(tokens), atol=1e-6)


def test_open_clip_checkpoint_with_ddp_prefix(tmp_path):
    reference = tiny_reference_clip("rn")
    wrapped = {"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}
    torch.save(wrapped, tmp_path / "epoch_3.pt")
    model, _ = ce.load(tmp_path / "epoch_3.pt")
    images, tokens = torch.randn(2, 3, 64, 64), reference_tokenize(["a red car", "two dogs"])
    with torch.no_grad():
        _assert_close((model.encode_image(images), model.encode_text(tokens), model(images, tokens)[0]),
                      _reference_outputs(reference, images, tokens))


def test_safetensors_state_dict(tmp_path):
    from safetensors.torch import save_file

    reference = tiny_reference_clip()
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(tmp_path / "m.safetensors"))
    model, _ = ce.load(tmp_path / "m.safetensors")
    tokens = reference_tokenize(["hello"])
    with torch.no_grad():
        assert float((model.encode_text(tokens) - reference.encode_text(tokens)).abs().max()) < 1e-5


@pytest.mark.parametrize("weights_name", ["model.safetensors", "pytorch_model.bin"])
def test_huggingface_folder_matches_transformers(tmp_path, weights_name):
    transformers = pytest.importorskip("transformers")
    config = transformers.CLIPConfig(
        text_config=dict(hidden_size=128, intermediate_size=512, num_attention_heads=2, num_hidden_layers=2,
                         vocab_size=49408, max_position_embeddings=77, eos_token_id=49407, bos_token_id=49406),
        vision_config=dict(hidden_size=128, intermediate_size=512, num_attention_heads=2, num_hidden_layers=2,
                           image_size=48, patch_size=16),
        projection_dim=64,
    )
    torch.manual_seed(0)
    hf = transformers.CLIPModel(config).eval()
    hf.save_pretrained(tmp_path)
    if weights_name == "pytorch_model.bin":  # the older layout; transformers 5 only writes safetensors
        (tmp_path / "model.safetensors").unlink()
        torch.save(hf.state_dict(), tmp_path / weights_name)
    assert (tmp_path / weights_name).exists()
    model, preprocess = ce.load(tmp_path)
    assert preprocess.resolution == 48
    images, tokens = torch.randn(2, 3, 48, 48), reference_tokenize(["a photo of a cat", "a dog on a red sofa"])
    with torch.no_grad():
        hf_image = hf.get_image_features(pixel_values=images)
        hf_text = hf.get_text_features(input_ids=tokens)
        hf_image = getattr(hf_image, "pooler_output", hf_image)
        hf_text = getattr(hf_text, "pooler_output", hf_text)
        assert float((model.encode_image(images) - hf_image).abs().max()) < 1e-5
        assert float((model.encode_text(tokens) - hf_text).abs().max()) < 1e-5


def _gelu_huggingface_model(folder, layers: int):
    """A small transformers CLIPModel trained-with-exact-GELU layout, saved to ``folder``."""
    transformers = pytest.importorskip("transformers")
    common = dict(hidden_size=64, intermediate_size=256, num_attention_heads=1, num_hidden_layers=layers, hidden_act="gelu")
    config = transformers.CLIPConfig(
        text_config=dict(common, vocab_size=49408, max_position_embeddings=77, eos_token_id=49407),
        vision_config=dict(common, image_size=32, patch_size=16), projection_dim=32,
    )
    torch.manual_seed(0)
    hf = transformers.CLIPModel(config).eval()
    hf.save_pretrained(folder)
    return hf


def test_huggingface_gelu_activation_is_honoured(tmp_path):
    hf = _gelu_huggingface_model(tmp_path, layers=1)
    model, _ = ce.load(tmp_path)
    tokens = reference_tokenize(["gelu, not quick gelu"])
    with torch.no_grad():
        hf_text = hf.get_text_features(input_ids=tokens)
        assert float((model.encode_text(tokens) - getattr(hf_text, "pooler_output", hf_text)).abs().max()) < 1e-5


def test_text_tower_stops_at_last_eot_without_changing_values():
    reference = reference_clip("ViT-B/32", scaled=True)
    model = ce.core.model.build_model(reference.state_dict())
    # Short captions in a batch: ours runs 6 positions instead of 77; the values must not move.
    tokens = reference_tokenize(["a cat", "a black dog", "sky"])
    assert int(tokens.argmax(-1).max()) + 1 < 8
    with torch.no_grad():
        assert float((model.encode_text(tokens) - reference.encode_text(tokens)).abs().max()) <= 1e-5


PACKED_TEXTS = ["", "a cat", "a dog", "a black dog on a beach", "sky", "a red double-decker bus in the rain"]


@pytest.mark.parametrize("rewritten", [False, True], ids=["plain", "inference-rewrites"])
def test_packed_text_groups_give_the_reference_features(rewritten):
    # Rows of 2 to 11 ids in groups of equal length (one group of three, single rows), no padding:
    # the same features as the reference's 77-position rows.
    reference = reference_clip("ViT-B/32", scaled=True)
    model = ce.core.model.build_model(reference.state_dict())
    if rewritten:
        model = optimize_for_inference(model)
    tokens = reference_tokenize(PACKED_TEXTS)
    lengths = (tokens.argmax(-1) + 1).tolist()
    order = sorted(range(len(PACKED_TEXTS)), key=lambda i: lengths[i])
    groups, rows = [], []
    for length in sorted(set(lengths)):
        members = [i for i in order if lengths[i] == length]
        groups.append(tokens[members, :length])
        rows += members
    assert len(groups) < len(PACKED_TEXTS) and max(g.shape[0] for g in groups) >= 2
    # The start token every row begins with goes through each block's projections once, on one row.
    attn, projected = model.transformer.resblocks[0].attn, []
    project = attn.project
    attn.project = lambda x: projected.append(x.shape[0]) or project(x)
    with torch.no_grad():
        expected = reference.encode_text(tokens)[rows]
        assert float((model.encode_text_packed(groups) - expected).abs().max()) <= 1e-5
    assert sorted(projected) == [1, sum(g.shape[0] * (g.shape[1] - 1) for g in groups)]
    with pytest.raises(ValueError, match="start with the same id"):
        model.encode_text_packed([groups[0], groups[1][:, 1:]])


PROMPTS = ["a photo of a dog.", "a photo of a cat.", "a photo of a hippopotamus standing in a river.",
           "a photo of a dog.", "a photo of a red double-decker bus."]


def test_prompt_template_prefix_is_computed_once_without_changing_values(monkeypatch):
    reference = reference_clip("ViT-B/32", scaled=True)
    model = ce.core.model.build_model(reference.state_dict())
    tokens = reference_tokenize(PROMPTS)  # "<start> a photo of a" in every row, then different lengths
    seen = []
    pooled = ce.core.model.Transformer.pooled
    monkeypatch.setattr(ce.core.model.Transformer, "pooled",
                        lambda self, x, positions, causal=False, shared=0: seen.append(shared) or pooled(self, x, positions, causal, shared))
    with torch.no_grad():
        expected = reference.encode_text(tokens)
        assert float((model.encode_text(tokens) - expected).abs().max()) <= 1e-5
        fast = optimize_for_inference(ce.core.model.build_model(reference.state_dict()))
        assert float((fast.encode_text(tokens) - expected).abs().max()) <= 1e-5
    assert seen == [5, 5]  # the prefix path ran: start token + "a photo of a"


def test_shared_prefix_gives_the_reference_gradients():
    # Fine-tuning runs the same code: gradients through the shared prefix and the pooled rows
    # must be the original's.
    reference = reference_clip("ViT-B/32", scaled=True)
    model = ce.core.model.build_model(reference.state_dict())
    tokens = reference_tokenize(PROMPTS)
    for m in (reference, model):
        m.encode_text(tokens).pow(2).sum().backward()
    last = len(model.transformer.resblocks) - 1
    for name in ("token_embedding.weight", "positional_embedding", "transformer.resblocks.0.attn.in_proj_weight",
                 f"transformer.resblocks.{last}.mlp.c_fc.weight", "text_projection"):
        ours, theirs = dict(model.named_parameters())[name].grad, dict(reference.named_parameters())[name].grad
        assert float((ours - theirs).abs().max()) <= 1e-5 * float(theirs.abs().max()), name


def test_shared_prefix_stops_before_any_rows_end():
    shared_prefix = ce.core.tokenizer.shared_prefix
    rows = torch.tensor([[9, 5, 7, 3, 0], [9, 5, 7, 8, 3]])
    assert shared_prefix(rows, torch.tensor([3, 4])) == 3
    same = torch.tensor([[9, 5, 3], [9, 5, 3]])
    assert shared_prefix(same, torch.tensor([2, 2])) == 2  # the end token itself is never shared
    assert shared_prefix(torch.tensor([[9, 5, 3]]), torch.tensor([2])) == 0  # one row: nothing to share
    assert shared_prefix(torch.tensor([[9, 5, 3], [1, 5, 3]]), torch.tensor([2, 2])) == 0


def test_inference_rewrite_keeps_plain_gelu_models_exact(tmp_path):
    # QuickGELU becomes one SiLU with its scales folded into the MLP; a model trained with the
    # exact GELU (some Hugging Face checkpoints) must keep it.
    _gelu_huggingface_model(tmp_path, layers=2)
    model, _ = ce.load(tmp_path)
    tokens, images = reference_tokenize(PROMPTS), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.encode_text(tokens), model.encode_image(images)
        fast = optimize_for_inference(model)
        assert any(isinstance(m, torch.nn.GELU) for m in fast.modules())
        for got, want in zip((fast.encode_text(tokens), fast.encode_image(images)), expected):
            assert float((got - want).abs().max()) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_stays_close_to_fp32(dtype):
    if dtype == torch.float16 and not torch.cuda.is_available():
        pytest.skip("fp16 matmuls are a CUDA path; CPU fp16 kernels are not what users run")
    reference = reference_clip("ViT-B/32", scaled=True)
    model = cast_weights(ce.core.model.build_model(reference.state_dict()), dtype)
    images, tokens = torch.randn(2, 3, 224, 224), reference_tokenize(TEXTS)
    with torch.no_grad():
        for ours, ref in ((model.encode_image(images), reference.encode_image(images)),
                          (model.encode_text(tokens), reference.encode_text(tokens))):
            assert ours.dtype == dtype
            assert float(torch.nn.functional.cosine_similarity(ours.float(), ref).min()) > 0.999


# --- bad input: each error names what was wrong and what is accepted ------------------------

def test_unknown_model_name_lists_the_names():
    with pytest.raises(ce.ModelLoadError) as e:
        ce.load("ViT-B32")
    assert "ViT-B/32" in str(e.value)


def test_missing_file():
    with pytest.raises(ce.ModelLoadError, match="no such file|not a known model|unknown"):
        ce.load("/nonexistent/dir/model.pt")


def test_non_clip_state_dict(tmp_path):
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "resnet.pt")
    with pytest.raises(ce.ModelLoadError, match="not a CLIP state dict.*text_projection"):
        ce.load(tmp_path / "resnet.pt")


def test_truncated_archive(tmp_path):
    save_torchscript(tiny_reference_clip(), tmp_path / "scripted.pt", 32)
    data = (tmp_path / "scripted.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ce.ModelLoadError, match="cut.pt"):
        ce.load(tmp_path / "cut.pt")


def test_empty_file(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ce.ModelLoadError, match="empty"):
        ce.load(tmp_path / "empty.pt")


class _Payload:
    """Unpickling this would create a file: proof that code from a checkpoint ran."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"text_projection": _Payload(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(ce.ModelLoadError, match="run code"):
        ce.load(tmp_path / "evil.pt")
    assert not marker.exists()


def test_huggingface_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(ce.ModelLoadError, match="model.safetensors"):
        ce.load(tmp_path)
