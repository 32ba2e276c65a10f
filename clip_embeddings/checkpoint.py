"""Read CLIP weights from every published on-disk format into one OpenAI-keyed state dict.

Formats: OpenAI's TorchScript archives, plain ``torch.save`` state dicts, open_clip training
checkpoints, and Hugging Face CLIP folders (safetensors or ``pytorch_model.bin``). Nothing here
executes code from the file: pickles are read with ``weights_only=True`` and TorchScript archives
through a restricted unpickler that accepts tensors and module records and refuses everything else.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import ModelLoadError

ACCEPTED = (
    "an OpenAI CLIP checkpoint (.pt TorchScript archive), a state-dict .pt/.safetensors, "
    "an open_clip checkpoint, or a Hugging Face CLIP folder (config.json + model.safetensors)"
)


@dataclass
class Checkpoint:
    """An OpenAI-keyed state dict and what was learned about it while reading."""

    state_dict: dict[str, torch.Tensor]
    format: str  # "torchscript" | "state_dict" | "open_clip" | "huggingface"
    quick_gelu: bool = True  # HF configs say; the other formats are OpenAI-trained


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read weights from ``path`` without executing code, in whichever supported format it is.

    Example:
        >>> ckpt = read_checkpoint("ViT-B-32.pt")  # doctest: +SKIP
        >>> ckpt.format, ckpt.state_dict["text_projection"].shape  # doctest: +SKIP
        ('torchscript', torch.Size([512, 512]))
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file or directory. Expected {ACCEPTED}, or a model name.")
    if path.is_dir():
        return _read_huggingface(path)
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path}: the file is empty (0 bytes); was a download interrupted?")
    if path.suffix == ".safetensors":
        return _from_mapping(_read_safetensors(path), path, "state_dict")
    if zipfile.is_zipfile(path) and is_torchscript(path):
        return Checkpoint(_read_torchscript(path), "torchscript")
    return _from_mapping(_load_pickle(path), path, "state_dict")


def _load_pickle(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True``; a refused or unreadable file is a ModelLoadError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ModelLoadError(
            f"{path}: refused to unpickle it, because loading it would run code from the file ({_first_line(e)}). "
            "If you trust the file, convert it once in a trusted session: "
            "torch.save(torch.load(path, weights_only=False)['state_dict'], 'clean.pt')."
        ) from None
    except Exception as e:  # truncated zips, random bytes, ...
        raise ModelLoadError(f"{path}: not a readable checkpoint ({_first_line(e)}). Expected {ACCEPTED}.") from None


def is_torchscript(path: str | Path) -> bool:
    """True for a TorchScript archive (a zip with compiled code beside the pickled data)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.split("/", 1)[-1].startswith("code/") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def _from_mapping(obj: Any, path: Path, fmt: str) -> Checkpoint:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj, fmt = obj["state_dict"], "open_clip"  # training checkpoints wrap the weights
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors. Expected {ACCEPTED}.")
    state_dict = {k.removeprefix("module."): v for k, v in obj.items()}  # DistributedDataParallel prefix
    if any(k.startswith(("text_model.", "vision_model.")) for k in state_dict):
        return Checkpoint(convert_huggingface(state_dict), "huggingface")
    return Checkpoint(state_dict, fmt)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ModelLoadError(f"{path}: reading .safetensors needs `pip install safetensors`.") from None
    try:
        return load_file(str(path))
    except Exception as e:
        raise ModelLoadError(f"{path}: not a readable safetensors file ({_first_line(e)}).") from None


# --- TorchScript archives -------------------------------------------------------------------

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class _ScriptRecord:
    """Stands in for a scripted module: keeps its attributes, runs none of its code."""

    def __setstate__(self, state: Any) -> None:
        self.attributes = state if isinstance(state, dict) else {}


def _rebuild_tensor(storage: torch.Tensor, offset: int, size, stride, *_ignored) -> torch.Tensor:
    return torch.as_strided(storage, tuple(size), tuple(stride), offset)


class _TensorOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self.archive, self.prefix = archive, prefix

    def find_class(self, module: str, name: str):
        if module.startswith("__torch__"):
            return _ScriptRecord
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a TorchScript archive")

    def persistent_load(self, pid):
        kind, dtype, key, _location, numel = pid
        if kind != "storage" or not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError(f"unexpected record {kind!r} in a TorchScript archive")
        data = bytearray(self.archive.read(f"{self.prefix}data/{key}"))
        return torch.frombuffer(data, dtype=dtype)[:numel] if numel else torch.empty(0, dtype=dtype)


def _read_torchscript(path: Path) -> dict[str, torch.Tensor]:
    try:
        with zipfile.ZipFile(path) as z:
            prefix = next(n[: -len("data.pkl")] for n in z.namelist() if n.endswith("data.pkl") and n.count("/") == 1)
            with z.open(prefix + "data.pkl") as f:
                root = _TensorOnlyUnpickler(f, z, prefix).load()
    except (StopIteration, KeyError, zipfile.BadZipFile, EOFError, pickle.UnpicklingError, ValueError) as e:
        raise ModelLoadError(f"{path}: a damaged or unsupported TorchScript archive ({_first_line(e)}).") from None
    state_dict: dict[str, torch.Tensor] = {}
    _collect_tensors(root, "", state_dict)
    # The causal mask is stored as an attribute of each text block; it is not a parameter.
    return {k: v for k, v in state_dict.items() if not k.endswith("attn_mask")}


def _collect_tensors(node: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    for name, value in getattr(node, "attributes", {}).items():
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value.clone()  # own the memory instead of views of the zip buffer
        elif isinstance(value, _ScriptRecord):
            _collect_tensors(value, f"{prefix}{name}.", out)


# --- Hugging Face ---------------------------------------------------------------------------

_HF_BLOCK = {
    "layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}
_HF_TOP = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",  # sic: the HF name
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "logit_scale": "logit_scale",
}


def convert_huggingface(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a ``transformers`` CLIPModel state dict to OpenAI's keys.

    HF keeps separate q/k/v projections (concatenated here into ``in_proj``) and stores the two
    output projections as Linear weights (transposed here into matrices).

    Example:
        >>> sd = convert_huggingface(hf_model.state_dict())  # doctest: +SKIP
        >>> "visual.proj" in sd  # doctest: +SKIP
        True
    """
    out = {_HF_TOP[k]: v for k, v in hf.items() if k in _HF_TOP}
    out["text_projection"] = hf["text_projection.weight"].t().contiguous()
    out["visual.proj"] = hf["visual_projection.weight"].t().contiguous()
    for tower, target in (("text_model", "transformer"), ("vision_model", "visual.transformer")):
        head = f"{tower}.encoder.layers."
        for i in sorted({int(k[len(head):].split(".")[0]) for k in hf if k.startswith(head)}):
            src, dst = f"{head}{i}.", f"{target}.resblocks.{i}."
            for kind in ("weight", "bias"):
                out[dst + f"attn.in_proj_{kind}"] = torch.cat(
                    [hf[f"{src}self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")])
                for hf_name, name in _HF_BLOCK.items():
                    out[f"{dst}{name}.{kind}"] = hf[f"{src}{hf_name}.{kind}"]
    return out


def _read_huggingface(folder: Path) -> Checkpoint:
    config_path = folder / "config.json"
    weight_files = [folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).exists()]
    if not config_path.exists() or not weight_files:
        raise ModelLoadError(
            f"{folder}: a folder must be a Hugging Face CLIP model with config.json and "
            "model.safetensors (or pytorch_model.bin); sharded weights are not supported."
        )
    config = json.loads(config_path.read_text())
    acts = {config.get(tower, {}).get("hidden_act", "quick_gelu") for tower in ("text_config", "vision_config")}
    if len(acts) > 1 or not acts <= {"quick_gelu", "gelu"}:
        raise ModelLoadError(f"{folder}: unsupported activation(s) {sorted(acts)}; CLIP uses quick_gelu or gelu.")
    weights = weight_files[0]
    if weights.suffix == ".safetensors":
        hf = _read_safetensors(weights)
    else:
        # Through the same guard as .pt files: a refused pickle (a payload) is a ModelLoadError
        # that says why, not torch's raw UnpicklingError.
        hf = _load_pickle(weights)
    hf = {k.removeprefix("clip."): v for k, v in hf.items()}
    try:
        state_dict = convert_huggingface(hf)
    except KeyError as e:
        raise ModelLoadError(f"{folder}: not a CLIP model in the Hugging Face layout (missing {e}).") from None
    return Checkpoint(state_dict, "huggingface", quick_gelu=acts == {"quick_gelu"})
