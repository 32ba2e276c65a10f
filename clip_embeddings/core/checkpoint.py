"""Read CLIP weights from every published on-disk format into one OpenAI-keyed state dict.

Formats: OpenAI's TorchScript archives, plain ``torch.save`` state dicts, open_clip training
checkpoints, and Hugging Face CLIP folders (safetensors or ``pytorch_model.bin``). Nothing here
executes code from the file: pickles are read with ``weights_only=True`` and TorchScript archives
through a restricted unpickler that accepts tensors and module records and refuses everything else.
"""

from __future__ import annotations

import json
import math
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelLoadError

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
        >>> ckpt = read_checkpoint(weights)  # weights: e.g. "ViT-B-32.pt", which is TorchScript
        >>> ckpt.format, ckpt.state_dict["text_projection"].shape
        ('state_dict', torch.Size([64, 512]))
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
    if zipfile.is_zipfile(path):
        _check_zip_sizes(path)
        if is_torchscript(path):
            return Checkpoint(_read_torchscript(path), "torchscript")
    else:
        _check_pickle_start(path)
    return _from_mapping(_load_pickle(path), path, "state_dict")


def _check_zip_sizes(path: Path) -> None:
    """Refuse an archive with an entry that inflates beyond the archive itself (a zip bomb).

    ``torch.save`` stores entries uncompressed, so a real checkpoint's entries are each smaller
    than the file; a deflated entry claiming gigabytes would be allocated before anything else.
    """
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.file_size > size:
                    raise ModelLoadError(
                        f"{path}: not a CLIP checkpoint: its archive entry {info.filename!r} inflates to "
                        f"{info.file_size} bytes, more than the whole {size}-byte file (a zip bomb?).")
    except (zipfile.BadZipFile, OSError) as e:
        raise ModelLoadError(f"{path}: a damaged zip archive ({_first_line(e)}). Expected {ACCEPTED}.") from None


def _check_pickle_start(path: Path) -> None:
    """A file that is neither a zip nor a pickle is not a checkpoint: say so before unpickling it."""
    with open(path, "rb") as f:
        head = f.read(64)
    if head[:1] != b"\x80":  # every torch.save pickle starts with the PROTO opcode
        kind = "a text file" if head.isascii() and all(b >= 32 or b in b"\t\r\n" for b in head) else "binary data"
        raise ModelLoadError(
            f"{path}: not a CLIP checkpoint: it is {kind}, not a zip archive, a torch pickle or a "
            f"safetensors file (it starts with {head[:24]!r}). Expected {ACCEPTED}.")


def _load_pickle(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True``; a refused or unreadable file is a ModelLoadError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch words every failure "Weights only load failed"; its detail line tells a refused
        # callable (a global, a reduce, a build of a foreign class) from bytes that are no pickle.
        detail = next((line.strip() for line in str(e).splitlines() if "WeightsUnpickler error" in line),
                      _first_line(e))
        if not any(word in detail.lower() for word in ("global", "reduce", "build", "class")):
            raise ModelLoadError(f"{path}: not a CLIP checkpoint: not a readable torch pickle "
                                 f"({detail}). Expected {ACCEPTED}.") from None
        raise ModelLoadError(
            f"{path}: refused to unpickle it, because loading it would run code from the file ({detail}). "
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
    state_dict = _checked({k.removeprefix("module."): v for k, v in obj.items()}, path)  # DDP prefix
    if any(k.startswith(("text_model.", "vision_model.")) for k in state_dict):
        return Checkpoint(_convert_huggingface_checked(state_dict, path), "huggingface")
    return Checkpoint(state_dict, fmt)


def _checked(state_dict: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Refuse tensors that claim more elements than their storage holds, before anything copies them.

    A stride-0 view of a few bytes can claim a 4096 x 4096 shape; building a model from it (or
    cloning it) allocates the claimed size. Every tensor must fit in its own storage, and all of
    them together in the distinct storages the file holds (so keys cannot alias one buffer many
    times over).
    """
    claimed, held = 0, {}
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise ModelLoadError(f"{path}: entry {name!r} is a {type(tensor).__name__}, not a tensor. Expected {ACCEPTED}.")
        storage = tensor.untyped_storage()
        nbytes = tensor.numel() * tensor.element_size()
        if nbytes > storage.nbytes():
            raise ModelLoadError(
                f"{path}: not a CLIP checkpoint: tensor {name!r} claims shape {tuple(tensor.shape)} "
                f"({nbytes} bytes) over a storage of {storage.nbytes()} bytes (strides {tuple(tensor.stride())}).")
        claimed += nbytes
        held[storage.data_ptr()] = storage.nbytes()
    if claimed > sum(held.values()):
        raise ModelLoadError(
            f"{path}: not a CLIP checkpoint: its tensors claim {claimed} bytes but share {sum(held.values())} "
            "bytes of storage (entries are views of one another).")
    return state_dict


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
    size, stride = tuple(size), tuple(stride)
    if not (isinstance(offset, int) and len(size) == len(stride)
            and all(isinstance(n, int) and n >= 0 for n in (offset, *size, *stride))):
        raise pickle.UnpicklingError(f"malformed tensor record (offset {offset!r}, size {size!r}, stride {stride!r})")
    numel = math.prod(size)
    extent = offset + sum((n - 1) * st for n, st in zip(size, stride, strict=True)) + 1 if numel else 0
    # The clone in _collect_tensors allocates numel elements: a stride-0 view must not claim more
    # than its storage holds, and no view may reach past it.
    if numel > storage.numel() or extent > storage.numel():
        raise pickle.UnpicklingError(f"a tensor of shape {size} (strides {stride}) claims more than its "
                                     f"storage of {storage.numel()} elements holds")
    return torch.as_strided(storage, size, stride, offset)


class _TensorOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self.archive, self.prefix = archive, prefix
        self.storages: dict[str, torch.Tensor] = {}  # one copy per storage, however often it is named

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
        if key not in self.storages:
            data = bytearray(self.archive.read(f"{self.prefix}data/{key}"))
            self.storages[key] = torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype)
        return self.storages[key][:numel]


def _read_torchscript(path: Path) -> dict[str, torch.Tensor]:
    try:
        with zipfile.ZipFile(path) as z:
            prefix = next(n[: -len("data.pkl")] for n in z.namelist() if n.endswith("data.pkl") and n.count("/") == 1)
            with z.open(prefix + "data.pkl") as f:
                root = _TensorOnlyUnpickler(f, z, prefix).load()
    except (StopIteration, KeyError, zipfile.BadZipFile, EOFError, pickle.UnpicklingError, ValueError,
            TypeError, RuntimeError, IndexError, AttributeError, MemoryError) as e:
        # A crafted data.pkl can feed any opcode sequence: whatever it trips over is a bad archive.
        raise ModelLoadError(f"{path}: a damaged or unsupported TorchScript archive ({_first_line(e)}).") from None
    views: dict[str, torch.Tensor] = {}
    _collect_tensors(root, "", views, set())
    # The causal mask is stored as an attribute of each text block; it is not a parameter.
    views = _checked({k: v for k, v in views.items() if not k.endswith("attn_mask")}, path)
    return {k: v.clone() for k, v in views.items()}  # own the memory instead of views of the zip buffer


def _collect_tensors(node: Any, prefix: str, out: dict[str, torch.Tensor], seen: set[int]) -> None:
    if id(node) in seen:  # a pickle can make a record contain itself
        return
    seen.add(id(node))
    for name, value in getattr(node, "attributes", {}).items():
        if isinstance(value, torch.Tensor):
            out[prefix + str(name)] = value
        elif isinstance(value, _ScriptRecord):
            _collect_tensors(value, f"{prefix}{name}.", out, seen)


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
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, OSError) as e:
        raise ModelLoadError(f"{config_path}: not a readable Hugging Face config.json ({_first_line(e)}).") from None
    found = [config.get(tower, {}) if isinstance(config, dict) else None for tower in ("text_config", "vision_config")]
    towers = [t for t in found if isinstance(t, dict)]
    if len(towers) < len(found):
        raise ModelLoadError(f"{config_path}: not a CLIP config: expected an object with text_config and "
                             "vision_config objects.")
    acts = {str(t.get("hidden_act", "quick_gelu")) for t in towers}
    if len(acts) > 1 or not acts <= {"quick_gelu", "gelu"}:
        raise ModelLoadError(f"{folder}: unsupported activation(s) {sorted(acts)}; CLIP uses quick_gelu or gelu.")
    weights = weight_files[0]
    if weights.suffix == ".safetensors":
        hf = _read_safetensors(weights)
    else:
        # Through the same guard as .pt files: a refused pickle (a payload) is a ModelLoadError
        # that says why, not torch's raw UnpicklingError.
        hf = _load_pickle(weights)
    if not isinstance(hf, dict):
        raise ModelLoadError(f"{weights}: holds a {type(hf).__name__}, not a state dict of tensors.")
    hf = _checked({k.removeprefix("clip."): v for k, v in hf.items()}, weights)
    return Checkpoint(_convert_huggingface_checked(hf, folder), "huggingface", quick_gelu=acts == {"quick_gelu"})


def _convert_huggingface_checked(hf: dict[str, torch.Tensor], where: Path) -> dict[str, torch.Tensor]:
    try:
        return convert_huggingface(hf)
    except KeyError as e:
        raise ModelLoadError(f"{where}: not a CLIP model in the Hugging Face layout (missing {e}).") from None
    except (RuntimeError, ValueError, IndexError) as e:  # q/k/v that do not concatenate, a layer "x"...
        raise ModelLoadError(f"{where}: not a CLIP model in the Hugging Face layout ({_first_line(e)}).") from None
