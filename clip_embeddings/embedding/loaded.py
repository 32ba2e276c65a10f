"""The process-wide registry of loaded models: one per (weights, device, dtype), shared by every
``ClipEF`` and thread, with the fingerprint that says which embedding space its vectors live in.

The image pipeline takes a :class:`LoadedModel`; ``ClipEF`` asks :func:`shared_model` for one.
Keeping both here, below the two of them, is what lets the pipeline not import ``ClipEF``.

Example:
    >>> import torch
    >>> resolve_dtype("fp32", torch.device("cpu"))
    torch.float32
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from ..core.download import cache_dir
from ..core.loading import default_device, load, resolve_checkpoint
from ..core.model import CLIP, cast_weights
from ..core.preprocess import Preprocess
from ..runtime import compute

# "int8": fp32 activations with int8 linear layers (runtime.int8), on a CPU only
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.int8}


# --- one model per process ------------------------------------------------------------------

@dataclass
class LoadedModel:
    """A model in the process-wide registry, with what identifies its embeddings."""

    model: CLIP
    preprocess: Preprocess
    device: torch.device
    dtype: torch.dtype
    fingerprint: str
    dim: int
    precision: str = "fp32"  # the numeric path the forward pass takes (dtype and rewrites)
    runtime: dict[str, Any] = field(default_factory=dict)  # what was decided and why (runtime.Decision)
    used: threading.Event = field(default_factory=threading.Event)  # set after the first forward pass
    refinement: threading.Thread | None = None  # dtype="auto"'s background export / probe (runtime.refine)

    def install(self, model: CLIP, decision: Any) -> None:
        """Switch to another inference model of the same weights (``auto``'s background work does).

        A batch in flight finishes on the model it started with; the next one runs the new model.
        """
        self.model, self.dtype, self.precision = model, decision.torch_dtype, decision.precision
        self.runtime = decision.as_dict(str(self.device))

    @property
    def cache_key(self) -> str:
        """What the embedding cache files vectors under: the weights *and* the precision path.

        The fingerprint says which space a vector lives in (a bf16 vector is comparable with an
        fp32 one); the cache must still never hand an fp32 caller a bf16 vector.
        """
        return f"{self.fingerprint}:{self.precision}"


_registry: dict[tuple, LoadedModel] = {}
_registry_lock = threading.Lock()
_load_count = 0


def model_load_count() -> int:
    """How many times this process has built a model from weights (each registry miss is one)."""
    return _load_count


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """A digest of the weights' names, shapes and a strided sample of their values.

    Independent of the file format and storage dtype (values are compared as fp32), and fast:
    a few thousand values per tensor instead of hashing hundreds of megabytes.
    """
    h = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach()
        flat = tensor.reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)].float().cpu().numpy()
        h.update(f"{name}{tuple(tensor.shape)}".encode())
        h.update(sample.tobytes())
    return h.hexdigest()


def fingerprint(state_dict: dict[str, torch.Tensor], preprocess: Preprocess) -> str:
    """What decides an embedding: the weights, the image preprocessing and the normalisation."""
    identity = {"weights": weights_digest(state_dict), "preprocess": preprocess.config(), "normalize": "l2"}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def shared_model(model: str, device: str | torch.device | None = None, dtype: str | None = None,
                 download_root: str | os.PathLike | None = None) -> LoadedModel:
    """The process-wide model for these weights, device and dtype, loaded on first use.

    ``dtype="auto"`` (or ``None``) on a CPU runs the path ``clip_embeddings.runtime.auto`` decided for
    this machine (probed once per CPU model + torch version, then cached), or until then the
    shipped table's, while the probe runs in the background (``clip_embeddings.runtime.refine``);
    an explicit dtype runs that dtype with every rewrite that applies (``"int8"``: int8 linear
    layers, CPU only; the convolutions keep their fp32 rewrites). ``LoadedModel.runtime`` says
    what was chosen.

    Example:
        >>> lm = shared_model(weights)  # weights: a model name or a checkpoint path, e.g. "ViT-B/32"
        >>> lm is shared_model(weights)
        True
    """
    global _load_count
    device = torch.device(device or default_device())
    auto = dtype in (None, "auto") and device.type == "cpu"
    torch_dtype = None if auto else resolve_dtype(dtype, device)
    if torch_dtype == torch.int8 and device.type != "cpu":
        raise ValueError(f"dtype='int8' runs on a CPU only (its int8 linears are oneDNN's); on {device.type} "
                         "use dtype='auto' or 'fp16'")
    source = model if model in _known_names() else str(Path(model).expanduser().resolve())
    key = (source, str(device), "auto" if auto else torch_dtype, str(download_root))
    with _registry_lock:
        if key not in _registry:
            # Downloaded in the caller's thread (Ctrl-C stops a download there), built on the compute
            # thread that will run it (runtime.compute: a model used from another thread runs slower).
            checkpoint = resolve_checkpoint(model, download_root)
            _registry[key] = compute.run(_build, checkpoint, str(model), device, dtype, torch_dtype, download_root)
            _load_count += 1
        return _registry[key]


def _build(checkpoint: Path, label: str, device: torch.device, dtype: str | None, torch_dtype: torch.dtype | None,
           download_root: str | os.PathLike | None) -> LoadedModel:
    """The registry's model for these settings (``torch_dtype=None``: ``auto``), with its background work started."""
    from ..runtime import auto as runtime
    from ..runtime.inference import applicable_rewrites
    from ..runtime.refine import auto_start, build_inference_model, start_refinement

    clip, preprocess = load(checkpoint, device="cpu", download_root=download_root, dtype=torch.float32)
    fp = fingerprint(clip.state_dict(), preprocess)
    caps = runtime.detect_capabilities()
    onnx_file = _onnx_file(fp, download_root)
    pending: dict[str, Any] = {}
    if torch_dtype is None:  # auto
        decision, pending = auto_start(clip, caps, onnx_file)
    elif device.type == "cpu" and torch_dtype == torch.int8:
        convolutions = tuple(r for r in applicable_rewrites(clip) if r in runtime.IMAGE_ONLY_REWRITES)
        decision = runtime.Decision("int8", convolutions, f"dtype={dtype!r} asked for: int8 linear layers",
                                    caps, source="asked")
    elif device.type == "cpu" and torch_dtype in (torch.float32, torch.bfloat16):
        name = {torch.float32: "fp32", torch.bfloat16: "bf16"}[torch_dtype]
        decision = runtime.Decision(name, applicable_rewrites(clip, torch_dtype),
                                    f"dtype={dtype!r} asked for: every rewrite that applies", caps, source="asked")
    else:  # CUDA, MPS, or fp16 on a CPU: cast only (SDPA attention is the model's own)
        name = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[torch_dtype]
        reason = "CUDA: fp16 weights with SDPA attention" if device.type == "cuda" and name == "fp16" \
            else f"dtype={dtype!r} on {device.type}: weights cast, no CPU rewrite"
        decision = runtime.Decision(name, (), reason, caps, source="asked")
    if device.type == "cpu":
        # Inference only from here on: the shared model is never trained or saved.
        clip = build_inference_model(clip, decision, onnx_file)
    else:
        if decision.torch_dtype != torch.float32:
            cast_weights(clip, decision.torch_dtype)
        clip = clip.to(device).eval()
    info = decision.as_dict(str(device))
    lm = LoadedModel(clip, preprocess, device, decision.torch_dtype, fp, clip.embed_dim, decision.precision, info)
    if pending:
        lm.refinement = start_refinement(pending["pristine"], caps, pending["target"], onnx_file=onnx_file,
                                         swap=lm.install, first_use=lm.used, export=pending["export"],
                                         probe=pending["probe"], name=label)
    return lm


def _onnx_file(fingerprint_: str, download_root: str | os.PathLike | None) -> Path | None:
    """Where this model's exported image tower lives, if ONNX Runtime wins the probe on this CPU."""
    try:
        return cache_dir(download_root) / "onnx" / f"{fingerprint_}-image.onnx"
    except OSError:  # no writable cache: ONNX Runtime is not probed
        return None


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The torch dtype for a ``dtype`` setting; ``"auto"`` here is the device's static default.

    On a CPU, ``shared_model`` resolves ``"auto"`` by probing instead (``clip_embeddings.runtime.auto``);
    this is what ``auto`` means on other devices: fp16 on CUDA, fp32 elsewhere.

    Example:
        >>> resolve_dtype("auto", torch.device("cuda"))
        torch.float16
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)} or 'auto', not {dtype!r}")
    return _DTYPES[dtype]


@lru_cache(maxsize=1)
def _known_names() -> frozenset[str]:
    from ..core.download import available_models

    return frozenset(available_models())
