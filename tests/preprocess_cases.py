"""Deterministic images for preprocessing parity, built alike by the golden maker and the tests.

``tests/fixtures/make_preprocess_golden.py`` runs openai/CLIP's real torchvision pipeline on these
images, and ``tests/test_preprocess.py`` rebuilds them here and runs ours. Nothing is stored but the
outputs: each image's :func:`digest` goes into the golden file too, so a change in this builder shows
up as "the input changed", not as a preprocessing bug.

Cases:
    - ``pipeline`` cases go through the whole Resize/CenterCrop/RGB/ToTensor/Normalize pipeline;
    - ``crop`` cases skip Resize: after a shorter-side resize nothing is ever smaller than the crop,
      so CenterCrop's zero padding is only reachable this way;
    - ``error`` cases are ones torchvision itself fails on (the golden records its exception).
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PHOTO_DIR = REPO / "examples" / "images"
# Real JPEGs from examples/images, with the resolution each is checked at.
PHOTOS: dict[str, int] = {"cat.jpg": 224, "cameraman.jpg": 224, "coffee.jpg": 64, "astronaut.jpg": 64,
                          "rocket.jpg": 64, "galaxies.jpg": 64, "retina.jpg": 64}


@dataclass(frozen=True)
class Case:
    name: str
    resolution: int
    kind: str  # "pipeline", "crop" or "error"
    image: Image.Image


def digest(image: Image.Image) -> str:
    """A hash of everything about an image that the pipeline can see."""
    h = hashlib.sha256(f"{image.mode}|{image.size}|{image.info.get('transparency')!r}".encode())
    h.update(image.tobytes())
    if image.palette is not None:
        h.update(bytes(image.getpalette() or []))
    return h.hexdigest()


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(name.encode()))


def _planes(rng: np.random.Generator, w: int, h: int, channels: int) -> np.ndarray:
    """uint8 HxWxC: gradients and waves (what resampling smooths), noise and flat 0/255 blocks
    (what makes bicubic overshoot and clip)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.empty((h, w, channels))
    for c in range(channels):
        fx, fy = rng.uniform(0.05, 0.6, 2)
        out[..., c] = (255 * x / max(w - 1, 1) * (c % 2) + 255 * y / max(h - 1, 1) * (1 - c % 2)) * 0.5
        out[..., c] += 60 * np.sin(fx * x + fy * y + c) + rng.normal(0, 25, (h, w))
    if w >= 8 and h >= 8:
        bw, bh = max(w // 5, 1), max(h // 5, 1)
        out[bh:2 * bh, bw:2 * bw] = 0
        out[3 * bh:4 * bh, 3 * bw:4 * bw] = 255
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _image(name: str, mode: str, w: int, h: int) -> Image.Image:
    rng = _rng(name)
    if mode == "RGB":
        return Image.fromarray(_planes(rng, w, h, 3))
    if mode == "L":
        return Image.fromarray(_planes(rng, w, h, 1)[..., 0])
    if mode in ("RGBA", "LA", "RGBa", "La"):
        colour = _planes(rng, w, h, len(mode) - 1)
        # alpha sweeps 0..255 with some fully transparent and fully opaque bands: the colour stored
        # under alpha 0 is random, which premultiplied resizing must throw away
        alpha = np.clip(np.linspace(-64, 320, w)[None, :] + rng.normal(0, 20, (h, w)), 0, 255)
        data = np.dstack([colour, alpha.astype(np.uint8)])
        return Image.frombytes(mode, (w, h), data.tobytes())
    if mode in ("P", "PA"):
        index = rng.integers(0, 24, (h, w), dtype=np.uint8)
        index[: h // 3] = (np.arange(w) * 24 // max(w, 1)).astype(np.uint8)  # runs of equal pixels
        data = index if mode == "P" else np.dstack([index, rng.integers(0, 256, (h, w), dtype=np.uint8)])
        im = Image.frombytes(mode, (w, h), data.tobytes())
        palette = rng.integers(0, 256, 256 * 3, dtype=np.uint8)
        palette[:3] = (200, 30, 90)  # index 0 is what zero padding means for P: make it not black
        im.putpalette(palette.tobytes())
        return im
    if mode in ("I;16", "I;16B", "I;16L"):
        top = 400 if name.endswith("low") else 65535  # low: mostly 0..255, where RGB does not clip
        values = rng.integers(0, top + 1, (h, w)).astype(np.uint16)
        return Image.frombytes(mode, (w, h), values.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
    if mode == "I":
        return Image.fromarray(rng.integers(-300, 600, (h, w)).astype(np.int32))
    if mode == "F":
        return Image.fromarray(rng.normal(128, 120, (h, w)).astype(np.float32))
    if mode == "1":
        bits = rng.random((h, w)) < np.linspace(0.1, 0.9, w)[None, :]
        return Image.fromarray(bits)
    # CMYK, YCbCr, HSV, LAB, RGBX: any bytes are valid pixels
    return Image.frombytes(mode, (w, h), _planes(rng, w, h, len(Image.new(mode, (1, 1)).getbands())).tobytes())


def build_cases() -> list[Case]:
    """All synthetic cases, freshly built (deterministic: seeded by case name)."""
    spec = [
        # (name, mode, width, height, resolution, kind)
        ("rgb_1x1", "RGB", 1, 1, 32, "pipeline"),
        ("rgb_2x3", "RGB", 2, 3, 32, "pipeline"),
        ("rgb_wide_1000x3", "RGB", 1000, 3, 32, "pipeline"),
        ("rgb_tall_3x700", "RGB", 3, 700, 32, "pipeline"),
        ("rgb_exact_32", "RGB", 32, 32, 32, "pipeline"),
        ("rgb_exact_224", "RGB", 224, 224, 224, "pipeline"),
        ("rgb_square_33", "RGB", 33, 33, 32, "pipeline"),
        # no resize (shorter side already R), so these isolate the crop offset's round-half-even
        ("rgb_33x32", "RGB", 33, 32, 32, "pipeline"),
        ("rgb_35x32", "RGB", 35, 32, 32, "pipeline"),
        ("rgb_37x32", "RGB", 37, 32, 32, "pipeline"),
        ("rgb_32x39", "RGB", 32, 39, 32, "pipeline"),
        ("rgb_odd_37x53", "RGB", 37, 53, 32, "pipeline"),
        ("rgb_odd_101x67", "RGB", 101, 67, 64, "pipeline"),
        ("rgb_up_17x23", "RGB", 17, 23, 64, "pipeline"),
        ("rgb_odd_251x250", "RGB", 251, 250, 224, "pipeline"),
        ("rgb_odd_333x229", "RGB", 333, 229, 224, "pipeline"),
        ("L_45x61", "L", 45, 61, 32, "pipeline"),
        ("L_exact_32", "L", 32, 32, 32, "pipeline"),
        ("RGBA_50x40", "RGBA", 50, 40, 32, "pipeline"),
        ("RGBA_exact_32", "RGBA", 32, 32, 32, "pipeline"),  # no resize: colour under alpha 0 survives
        ("RGBa_50x40", "RGBa", 50, 40, 32, "pipeline"),
        ("LA_40x47", "LA", 40, 47, 32, "pipeline"),
        ("P_47x39", "P", 47, 39, 32, "pipeline"),
        ("P_trns_index_47x39", "P", 47, 39, 32, "pipeline"),
        ("P_trns_bytes_47x39", "P", 47, 39, 32, "pipeline"),
        ("P_up_9x7", "P", 9, 7, 32, "pipeline"),
        ("PA_41x37", "PA", 41, 37, 32, "pipeline"),
        ("I16_45x38", "I;16", 45, 38, 32, "pipeline"),
        ("I16_45x38_low", "I;16", 45, 38, 32, "pipeline"),
        ("I16B_45x38_low", "I;16B", 45, 38, 32, "pipeline"),
        ("I16L_45x38_low", "I;16L", 45, 38, 32, "pipeline"),
        ("I_43x50", "I", 43, 50, 32, "pipeline"),
        ("F_43x50", "F", 43, 50, 32, "pipeline"),
        ("CMYK_52x44", "CMYK", 52, 44, 32, "pipeline"),
        ("YCbCr_52x44", "YCbCr", 52, 44, 32, "pipeline"),
        ("HSV_52x44", "HSV", 52, 44, 32, "pipeline"),
        ("LAB_52x44", "LAB", 52, 44, 32, "pipeline"),
        ("RGBX_52x44", "RGBX", 52, 44, 32, "pipeline"),
        ("1bit_60x45", "1", 60, 45, 32, "pipeline"),
        ("1bit_up_7x5", "1", 7, 5, 32, "pipeline"),
        # CenterCrop alone on images smaller than the crop: zero padding, per mode
        ("crop_rgb_20x10", "RGB", 20, 10, 32, "crop"),
        ("crop_rgb_41x9", "RGB", 41, 9, 32, "crop"),
        ("crop_L_31x30", "L", 31, 30, 32, "crop"),
        ("crop_RGBA_10x12", "RGBA", 10, 12, 32, "crop"),
        ("crop_P_20x25", "P", 20, 25, 32, "crop"),
        ("crop_CMYK_10x10", "CMYK", 10, 10, 32, "crop"),  # CMYK zero is white, not black
        ("crop_I16_15x40", "I;16", 15, 40, 32, "crop"),
        ("crop_F_15x13", "F", 15, 13, 32, "crop"),
        # torchvision fails on these
        ("err_La_40x30", "La", 40, 30, 32, "error"),  # PIL cannot convert La to RGB
        ("err_zero_width", "RGB", 0, 5, 32, "error"),  # shorter side 0: division by zero
    ]
    cases = []
    for name, mode, w, h, res, kind in spec:
        image = Image.new(mode, (w, h)) if 0 in (w, h) else _image(name, mode, w, h)
        if name.startswith("P_trns_index"):
            image.info["transparency"] = 3
        elif name.startswith("P_trns_bytes"):
            image.info["transparency"] = bytes(_rng(name + "/trns").integers(0, 256, 24, dtype=np.uint8))
        cases.append(Case(name, res, kind, image))
    return cases


def load_photo(name: str) -> Image.Image:
    image = Image.open(PHOTO_DIR / name)
    image.load()  # also closes the file: single-frame images release it once decoded
    return image
