"""CLIP's image preprocessing, value for value, with PIL, numpy and torch only.

openai/CLIP prepares an image with torchvision's
``Compose([Resize(R, BICUBIC), CenterCrop(R), convert("RGB"), ToTensor(), Normalize(MEAN, STD)])``.
A model only sees what it was trained on, so :class:`Preprocess` reproduces that tensor exactly
(checked bit for bit against torchvision in ``tests/test_preprocess.py``) without importing it.

What makes "exactly" subtle:
    - resizing and cropping happen in the image's *own* mode, before the RGB conversion, and PIL
      resizes modes differently: ``P`` and ``1`` images are resized with NEAREST whatever is asked,
      ``RGBA``/``LA`` are resized premultiplied (colour under alpha 0 turns black, but survives
      when no resize is needed), and 16-bit, 32-bit and float grey are resampled at full depth,
      then *clipped* to 0..255 by the RGB conversion (floats also truncated), never rescaled:
      a typical 16-bit PNG comes out almost white, exactly as with openai/CLIP;
    - the size rule truncates (``int(R * long / short)``) and the crop offset rounds half to even
      (``round(1.5) == round(2.5) == 2``), as torchvision's code does;
    - an image the size rule leaves unchanged is not resampled at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from clip_embeddings.errors import ImageLoadError

__all__ = ["MEAN", "STD", "Preprocess", "resize_target", "center_crop"]

#: Per-channel RGB mean and standard deviation CLIP was trained with (after scaling to 0..1).
MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


def resize_target(width: int, height: int, resolution: int) -> tuple[int, int]:
    """The ``(width, height)`` torchvision's ``Resize(resolution)`` gives a ``width`` x ``height`` image.

    The shorter side becomes ``resolution`` and the longer one ``int(resolution * long / short)``
    (truncated, computed in floating point as torchvision does).

    Example:
        >>> resize_target(640, 427, 224)
        (335, 224)
        >>> resize_target(300, 300, 224)
        (224, 224)
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"an image of {width}x{height} pixels has nothing to resize")
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(resolution * long / short)
    return (resolution, new_long) if width <= height else (new_long, resolution)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """torchvision's ``CenterCrop(size)`` on a PIL image, in the image's own mode.

    A side shorter than ``size`` is first padded with zeros, in that mode's terms: palette index
    0 for ``P`` (whatever colour it holds) and no ink, i.e. white, for ``CMYK``.

    Example:
        >>> center_crop(Image.new("RGB", (35, 32)), 32).size
        (32, 32)
    """
    width, height = image.size
    if size > width or size > height:
        pad_w, pad_h = max(size - width, 0), max(size - height, 0)
        image = _pad(image, (pad_w // 2, pad_h // 2, (pad_w + 1) // 2, (pad_h + 1) // 2))
        width, height = image.size
        if (width, height) == (size, size):
            return image
    top = int(round((height - size) / 2.0))  # Python's round: half to even, as in torchvision
    left = int(round((width - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def _pad(image: Image.Image, ltrb: tuple[int, int, int, int]) -> Image.Image:
    bands = len(image.getbands())
    padded = ImageOps.expand(image, border=ltrb, fill=0 if bands == 1 else (0,) * bands)
    palette = image.getpalette() if image.mode == "P" else None
    if palette is not None:  # torchvision puts the palette back as RGB; do the same
        padded.putpalette(palette)
    return padded


def _lookup_table(mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``(v / 255 - mean) / std`` for every byte value, per channel, rounded as torchvision's
    float32 ``ToTensor`` then ``Normalize`` round it (each step is one IEEE float32 operation)."""
    levels = np.arange(256, dtype=np.float32) / np.float32(255)
    mean32 = np.asarray(mean, dtype=np.float32)[:, None]
    std32 = np.asarray(std, dtype=np.float32)[:, None]
    return (levels[None, :] - mean32) / std32


class Preprocess:
    """Turns a PIL image into the ``float32 [3, R, R]`` tensor CLIP's image encoder expects.

    Equal, value for value, to openai/CLIP's ``preprocess`` for a model of input resolution
    ``R`` on any PIL image, in any mode.

    Example:
        >>> from PIL import Image
        >>> pre = Preprocess(224)
        >>> pre(Image.new("RGB", (640, 480))).shape
        torch.Size([3, 224, 224])
        >>> pre.batch([Image.new("L", (50, 80))] * 2).shape
        torch.Size([2, 3, 224, 224])
    """

    interpolation = "bicubic"
    crop = "center"

    def __init__(self, resolution: int, *, mean: Sequence[float] = MEAN, std: Sequence[float] = STD):
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
            raise ValueError(f"resolution must be a positive int, got {resolution!r}")
        if len(mean) != 3 or len(std) != 3 or any(s == 0 for s in std):
            raise ValueError("mean and std need three values each, and std no zero")
        self.resolution = resolution
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._table = _lookup_table(self.mean, self.std)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """One image as a ``float32 [3, R, R]`` tensor. Raises ImageLoadError when PIL cannot
        resize or convert it (an empty image, a mode with no RGB conversion, a truncated file)."""
        out = torch.empty((3, self.resolution, self.resolution), dtype=torch.float32)
        self._into(image, out.numpy())
        return out

    def batch(self, images: Iterable[Image.Image]) -> torch.Tensor:
        """Several images as one ``float32 [N, 3, R, R]`` tensor, equal to stacking single calls."""
        images = list(images)
        out = torch.empty((len(images), 3, self.resolution, self.resolution), dtype=torch.float32)
        view = out.numpy()
        for i, image in enumerate(images):
            try:
                self._into(image, view[i])
            except ImageLoadError as e:
                raise ImageLoadError(e.reason, index=i, source=e.source) from e.__cause__
        return out

    def rgb(self, image: Image.Image) -> Image.Image:
        """The resized, cropped RGB image the tensor is made from (for display and debugging)."""
        if not isinstance(image, Image.Image):
            raise TypeError(f"expected a PIL image, got {type(image).__name__}")
        width, height = image.size
        if width == 0 or height == 0:
            raise ImageLoadError(f"the image is empty ({width}x{height} pixels)")
        mode = image.mode
        try:
            size = resize_target(width, height, self.resolution)
            if size != image.size:  # torchvision skips the resize then, and PIL would only copy
                image = image.resize(size, Image.Resampling.BICUBIC)
            image = center_crop(image, self.resolution)
            return image if image.mode == "RGB" else image.convert("RGB")
        except (ValueError, OSError) as e:
            raise ImageLoadError(f"cannot preprocess this {mode} image: {e}") from e

    def _into(self, image: Image.Image, out: np.ndarray) -> None:
        pixels = np.asarray(self.rgb(image))
        for c in range(3):
            np.take(self._table[c], pixels[:, :, c], out=out[c])

    def config(self) -> dict[str, Any]:
        """Everything that decides the output, JSON-ready: two equal configs give equal tensors.

        Example:
            >>> Preprocess(224).config()["crop"]
            'center'
            >>> Preprocess.from_config(Preprocess(336).config()) == Preprocess(336)
            True
        """
        return {"resolution": self.resolution, "interpolation": self.interpolation, "crop": self.crop,
                "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Preprocess:
        """The inverse of :meth:`config`; refuses settings this module does not implement."""
        for key, value in (("interpolation", cls.interpolation), ("crop", cls.crop)):
            if config.get(key, value) != value:
                raise ValueError(f"only {key}={value!r} is supported, got {config[key]!r}")
        return cls(int(config["resolution"]), mean=config.get("mean", MEAN), std=config.get("std", STD))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Preprocess) and self.config() == other.config()

    def __hash__(self) -> int:
        return hash((self.resolution, self.mean, self.std))

    def __repr__(self) -> str:
        extra = "" if (self.mean, self.std) == (MEAN, STD) else f", mean={self.mean}, std={self.std}"
        return (f"Preprocess(resolution={self.resolution}, resize='shorter side, {self.interpolation}', "
                f"crop='{self.crop}'{extra})")
