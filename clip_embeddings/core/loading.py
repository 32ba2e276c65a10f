"""``load``: a model name or a local checkpoint in, a ready model and its preprocessing out."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import ModelLoadError
from .checkpoint import ACCEPTED, is_torchscript, read_checkpoint
from .download import MODELS, model_path
from .model import CLIP, build_model, cast_weights, input_resolution
from .preprocess import Preprocess

DEFAULT_MODEL = "ViT-B/32"


def default_model() -> str:
    """The model used when none is named: ``$CLIP_WEIGHTS`` (a name or a local checkpoint), else ViT-B/32.

    ``ClipEF()``, ``ce.classify(...)``, the command line, the demo and the examples all read it, so
    one environment variable points every entry point at local weights (offline, or fine-tuned).

    Example:
        >>> import os
        >>> os.environ["CLIP_WEIGHTS"] = "/models/tuned.pt"
        >>> default_model()
        '/models/tuned.pt'
        >>> del os.environ["CLIP_WEIGHTS"]
        >>> default_model()
        'ViT-B/32'
    """
    return os.environ.get("CLIP_WEIGHTS") or DEFAULT_MODEL


def model_label(name: str) -> str:
    """What a server's responses (``/health`` too) call the model: a checkpoint path by its file name only.

    Example:
        >>> model_label("ViT-B/32"), model_label("/srv/weights/private-finetune.pt")
        ('ViT-B/32', 'private-finetune.pt')
    """
    if os.path.isabs(name) or os.path.exists(name):
        return os.path.basename(name)
    return name


def check_model_reference(name_or_path: str | os.PathLike) -> None:
    """Raise :class:`ModelLoadError` now if ``name_or_path`` cannot name any model; download nothing.

    A known name or an existing path passes (whether the file is a good checkpoint is only known
    once it is read); anything else fails with the message loading would give, listing the names
    and the nearest one.

    Example:
        >>> check_model_reference("ViT-B/32")
        >>> check_model_reference("ViT-B/23")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        clip_embeddings.errors.ModelLoadError: Unknown model 'ViT-B/23'...
    """
    if isinstance(name_or_path, str) and name_or_path in MODELS:
        return
    if Path(name_or_path).expanduser().exists():
        return
    resolve_checkpoint(name_or_path)  # neither a name nor a file: raises what load() would


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_checkpoint(name_or_path: str | os.PathLike, download_root: str | os.PathLike | None = None) -> Path:
    """The local file behind a model name (downloaded and verified if needed) or a path.

    Example:
        >>> resolve_checkpoint("ViT-B/32")  # doctest: +SKIP
        PosixPath('/home/me/.cache/clip/ViT-B-32.pt')
    """
    if isinstance(name_or_path, str) and name_or_path in MODELS:
        return model_path(name_or_path, download_root)
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    if path.suffix or path.is_absolute() or str(name_or_path).startswith((".", "~")):
        raise ModelLoadError(
            f"{path}: no such file or directory. Pass the path of a checkpoint ({ACCEPTED}) "
            f"or a model name ({', '.join(MODELS)})."
        )
    return model_path(str(name_or_path), download_root)  # raises, listing names and near misses


def default_dtype(device: str | torch.device) -> torch.dtype:
    """fp16 on CUDA, as the original; fp32 elsewhere."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def load(
    name_or_path: str | os.PathLike,
    device: str | torch.device | None = "cpu",
    jit: bool = False,
    download_root: str | os.PathLike | None = None,
    *,
    dtype: torch.dtype | None = None,
) -> tuple[CLIP, Preprocess]:
    """Load a CLIP model by name or path; returns ``(model, preprocess)`` like openai/CLIP's ``clip.load``.

    ``name_or_path`` is one of :func:`available_models` (downloaded into the cache and checked
    against its SHA-256) or a local checkpoint: an OpenAI TorchScript archive, a state-dict
    ``.pt``/``.safetensors``, an open_clip checkpoint or a Hugging Face CLIP folder. Files are read
    without running code from them; ``jit=True`` alone returns the archive's own scripted module.
    ``device`` defaults to CPU (``None`` picks CUDA when available); ``dtype`` defaults to fp16
    on CUDA, as the original, and fp32 elsewhere; bf16 is accepted.

    Example:
        >>> import clip_embeddings as ce
        >>> from PIL import Image
        >>> model, preprocess = ce.load(weights, device="cpu")  # weights: e.g. "ViT-B/32"
        >>> image = preprocess(Image.open("cat.jpg")).unsqueeze(0)
        >>> model.encode_image(image).shape
        torch.Size([1, 512])
    """
    device = torch.device(device or default_device())
    path = resolve_checkpoint(name_or_path, download_root)
    if jit:
        if not is_torchscript(path):
            raise ModelLoadError(f"{path}: jit=True needs a TorchScript archive (OpenAI's .pt files); use jit=False.")
        try:
            scripted = torch.jit.load(str(path), map_location=device).eval()
        except RuntimeError as e:  # torch's own reader: a damaged archive or code it cannot compile
            first = (str(e).strip().splitlines() or ["RuntimeError"])[0][:300]
            raise ModelLoadError(f"{path}: torch.jit.load cannot read this TorchScript archive ({first}).") from None
        return scripted, Preprocess(input_resolution(scripted.state_dict()))
    checkpoint = read_checkpoint(path)
    model = build_model(checkpoint.state_dict, quick_gelu=checkpoint.quick_gelu)
    dtype = dtype or default_dtype(device)
    if dtype != torch.float32:
        cast_weights(model, dtype)
    model = model.to(device)
    return model, Preprocess(model.visual.input_resolution)

