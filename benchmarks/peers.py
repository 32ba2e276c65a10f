"""The other runtimes a user could pick for the same weights: Hugging Face transformers, ONNX Runtime.

* ``hf_clip``: ``transformers.CLIPModel`` built from the reference's state dict, renamed to the HF
  layout (the inverse of ``clip_embeddings.core.checkpoint.convert_huggingface``). HF has no ResNet
  vision tower, so for RN models only its text tower exists (``None`` is returned for ViT-less).
* ``onnx_encoders``: openai/CLIP's ``encode_image`` / ``encode_text`` exported to ONNX (the
  TorchScript exporter; needs the ``onnx`` package) and run by ONNX Runtime's CPU provider with
  every graph optimisation, as many intra-op threads as torch uses. Exports are cached in the
  data dir, so only the first run pays for them.

Each returns plain callables on torch tensors, so ``bench_encode`` times them like any other row.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from clip_embeddings.core.checkpoint import _HF_BLOCK, _HF_TOP


def to_huggingface(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI key names -> ``transformers`` CLIPModel key names (ViT models)."""
    out = {hf: sd[ours] for hf, ours in _HF_TOP.items() if ours in sd}
    out["text_projection.weight"] = sd["text_projection"].t().contiguous()
    out["visual_projection.weight"] = sd["visual.proj"].t().contiguous()
    for tower, source in (("text_model", "transformer"), ("vision_model", "visual.transformer")):
        blocks = {int(k.split(".")[len(source.split("."))+1]) for k in sd if k.startswith(f"{source}.resblocks.")}
        for i in sorted(blocks):
            src, dst = f"{source}.resblocks.{i}.", f"{tower}.encoder.layers.{i}."
            for kind in ("weight", "bias"):
                for p, part in zip(("q", "k", "v"), sd[f"{src}attn.in_proj_{kind}"].chunk(3)):
                    out[f"{dst}self_attn.{p}_proj.{kind}"] = part.contiguous()
                for hf_name, name in _HF_BLOCK.items():
                    out[f"{dst}{hf_name}.{kind}"] = sd[f"{src}{name}.{kind}"]
    return out


def hf_clip(reference: torch.nn.Module):
    """``transformers.CLIPModel`` with the reference's weights, or ``None`` (ResNet / not installed)."""
    try:
        import transformers
    except ImportError:
        return None
    if not hasattr(reference.visual, "proj"):
        return None
    sd = reference.state_dict()
    visual = reference.visual
    text_width, vision_width = reference.transformer.width, visual.conv1.out_channels
    config = transformers.CLIPConfig(
        text_config=dict(hidden_size=text_width, intermediate_size=4 * text_width, num_attention_heads=text_width // 64,
                         num_hidden_layers=reference.transformer.layers, vocab_size=reference.vocab_size,
                         max_position_embeddings=reference.context_length, hidden_act="quick_gelu",
                         eos_token_id=49407, bos_token_id=49406),
        vision_config=dict(hidden_size=vision_width, intermediate_size=4 * vision_width,
                           num_attention_heads=vision_width // 64, num_hidden_layers=visual.transformer.layers,
                           image_size=visual.input_resolution, patch_size=visual.conv1.kernel_size[0],
                           hidden_act="quick_gelu"),
        projection_dim=reference.text_projection.shape[1],
    )
    model = transformers.CLIPModel(config).eval()
    missing, unexpected = model.load_state_dict(to_huggingface(sd), strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise RuntimeError(f"HF layout mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")

    def features(out):
        return getattr(out, "pooler_output", out)  # transformers 5 returns an output object

    return (lambda x: features(model.get_image_features(pixel_values=x)),
            lambda tokens: features(model.get_text_features(input_ids=tokens)))


class _Tower(torch.nn.Module):
    """One encoder of a CLIP model as a module (so the exporter sees its weights as parameters)."""

    def __init__(self, model: torch.nn.Module, tower: str):
        super().__init__()
        self.model, self.tower = model, tower

    def forward(self, x):
        return getattr(self.model, f"encode_{self.tower}")(x)


def onnx_encoders(reference: torch.nn.Module, name: str, data_dir: Path):
    """(encode_image, encode_text) through ONNX Runtime, or ``None`` when it or ``onnx`` is missing."""
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxruntime as ort
    except ImportError:
        return None
    folder = Path(data_dir) / "onnx"
    folder.mkdir(parents=True, exist_ok=True)
    res = reference.visual.input_resolution
    tag = name.replace("/", "-")
    sessions = []
    for tower, example in (("image", torch.randn(2, 3, res, res)),
                           ("text", torch.randint(1, 1000, (2, reference.context_length)))):
        path = folder / f"{tag}-{tower}.onnx"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes, once per export
                torch.onnx.export(_Tower(reference, tower), (example,), str(tmp), dynamo=False, input_names=["x"],
                                  output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=17)
            tmp.replace(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sessions.append(ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]))

    def runner(session):
        return lambda x: torch.from_numpy(session.run(None, {"x": x.numpy()})[0])

    return runner(sessions[0]), runner(sessions[1])


# CLIP's preprocessing as Hugging Face's CLIPImageProcessor states it (fastembed reads this file):
# shortest side to the resolution (bicubic), centre crop, scale to [0, 1], CLIP's mean and std.
def _clip_preprocessor_config(resolution: int) -> dict:
    return {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": resolution},
            "resample": 3, "do_center_crop": True, "crop_size": {"height": resolution, "width": resolution},
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
            "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}


def fastembed_images(reference: torch.nn.Module, name: str, data_dir: Path):
    """fastembed's ``ImageEmbedding`` on ``reference``'s weights: ``(embed(paths) -> [N, D] unit rows, None)``.

    fastembed downloads its models from a hub (offline here), but loads a local model folder
    given as ``specific_model_path``: the image tower exported to ONNX beside a
    ``preprocessor_config.json`` with CLIP's preprocessing, under the name of the CLIP model it
    ships (``Qdrant/clip-ViT-B-32-vision``, whose description fastembed uses for the file name).
    Returns ``(None, reason)`` where fastembed is missing or refuses the folder.
    """
    import json

    try:
        from fastembed import ImageEmbedding
    except ImportError as e:
        return None, f"fastembed is not installed ({e}): pip install 'clip-embeddings[bench]'"
    from clip_embeddings.embedding.loaded import weights_digest

    res = reference.visual.input_resolution
    folder = Path(data_dir) / "fastembed" / f"{name.replace('/', '-')}-{weights_digest(reference.state_dict())[:12]}"
    path = folder / "model.onnx"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_Tower(reference, "image"), (torch.randn(2, 3, res, res),), str(tmp), dynamo=False,
                              input_names=["pixel_values"], output_names=["image_embeds"],
                              dynamic_axes={"pixel_values": {0: "n"}, "image_embeds": {0: "n"}}, opset_version=17)
        tmp.replace(path)
    (folder / "preprocessor_config.json").write_text(json.dumps(_clip_preprocessor_config(res)))
    try:
        model = ImageEmbedding("Qdrant/clip-ViT-B-32-vision", specific_model_path=str(folder),
                               threads=torch.get_num_threads())
    except Exception as e:  # noqa: BLE001 (reported in the table instead of the row)
        return None, f"fastembed could not load the local model: {type(e).__name__}: {e}"
    return (lambda paths, batch=16: np.stack(list(model.embed([str(p) for p in paths], batch_size=batch)))), None
