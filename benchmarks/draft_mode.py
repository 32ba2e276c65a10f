"""How much JPEG draft mode saves, and what it costs in CLIP's input tensor.

``decode_image(raw, draft_resolution=R)`` lets libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale
(DCT scaling) as long as the shorter side stays ``>= DRAFT_MARGIN * R``. This script measures,
for JPEG photos of 1 to 12 megapixels and R = 224:

* the decode time, full vs draft (median of several runs, one thread);
* the difference between ``Preprocess(224)`` of the draft decode and of the full decode: max and
  mean absolute difference in normalised units (one 8-bit level is about 0.015 of them).

The photos are the repository's samples (``examples/images``) upscaled to camera sizes. Upscaled
512-pixel photos are smoother than real camera output, so each is also measured with fine
texture added (per-pixel noise and a 2-3 pixel grating), a harsher case than most real photos.
Without samples, a synthetic smooth image is used instead.

Run: ``.venv/bin/python benchmarks/draft_mode.py [--margins 1 2 4] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

import clip_embeddings.inputs as images

ROOT = Path(__file__).resolve().parents[1]
SIZES = [(1224, 816), (2048, 1536), (3000, 2000), (4032, 3024)]  # 1, 3, 6, 12 MP
RESOLUTION = 224
MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def preprocessor(resolution: int):
    """``clip_embeddings.core.preprocess.Preprocess`` if present, else bicubic resize + crop + normalise."""
    try:
        from clip_embeddings.core.preprocess import Preprocess

        pre = Preprocess(resolution)
        return "clip_embeddings.core.preprocess.Preprocess", lambda im: pre(im).numpy()
    except ImportError:
        pass

    def local(im: Image.Image) -> np.ndarray:
        w, h = im.size
        scale = resolution / min(w, h)
        size = (max(resolution, int(w * scale)), max(resolution, int(h * scale)))
        im = im.resize(size, Image.Resampling.BICUBIC)
        left, top = round((size[0] - resolution) / 2), round((size[1] - resolution) / 2)
        arr = np.asarray(im.crop((left, top, left + resolution, top + resolution)), np.float32)
        return ((arr / 255.0 - MEAN) / STD).transpose(2, 0, 1)

    return "local bicubic resize + center crop + normalise", local


def base_photos() -> list[tuple[str, Image.Image]]:
    folder = ROOT / "examples" / "images"
    photos = [(p.stem, Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.jpg"))]
    photos = [(name, im) for name, im in photos if im.mode == "RGB"]
    if photos:
        return photos[:3]
    y, x = np.mgrid[0:512, 0:512].astype(np.float32) / 512
    smooth = np.stack([128 + 100 * np.sin(6 * x + 2 * y), 128 + 90 * np.cos(5 * y),
                       128 + 80 * np.sin(4 * (x + y))], axis=2)
    return [("synthetic", Image.fromarray(smooth.astype(np.uint8)))]


def camera_pixels(photo: Image.Image, size: tuple[int, int], textured: bool,
                  seed: int) -> Image.Image:
    """``photo`` upscaled to a camera size, optionally with fine texture (noise + grating)."""
    big = photo.resize(size, Image.Resampling.LANCZOS)
    if textured:
        arr = np.asarray(big, np.float32)
        rng = np.random.default_rng(seed)
        h, w = arr.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w]
        grating = 12 * np.sin(2 * np.pi * xx / 2.7) * np.sin(2 * np.pi * yy / 3.3)
        arr = arr + rng.normal(0, 8, arr.shape) + grating[:, :, None]
        big = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return big


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def best_time(raw, repeats: int, draft: int | None) -> float:
    """Fastest of ``repeats`` decodes: the least disturbed by whatever else the machine does."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        images.decode_image(raw, draft_resolution=draft)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--margins", type=float, nargs="+", default=[1.0, images.DRAFT_MARGIN, 4.0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)

    name, preprocess = preprocessor(RESOLUTION)
    photos = base_photos()
    print(f"Preprocessing: {name}, R = {RESOLUTION}; DRAFT_MARGIN in the library = "
          f"{images.DRAFT_MARGIN:g}. Pillow {Image.__version__}, Python {sys.version.split()[0]}.")
    print(f"Photos: {', '.join(n for n, _ in photos)}, upscaled, JPEG quality 90. Per row: time "
          "ratio = mean over photos of full/draft decode time (best of "
          f"{args.repeats}); max abs = worst over photos; mean abs = average over photos.")
    print("Tensor differences are in normalised units (one 8-bit level is ~0.015). For scale, the "
          "'q90' columns compare the tensor of the original pixels with the full "
          "decode.\n")
    header = (f"{'content':<14} {'size':>10} {'MP':>5} {'q90 max':>7} {'q90 mean':>8} | {'margin':>6} "
              f"{'draft size':>10} {'full ms':>8} {'draft ms':>8} {'ratio':>6} {'max abs':>8} "
              f"{'mean abs':>9}")
    print(header)
    print("-" * len(header))
    original = images.DRAFT_MARGIN
    overall: dict[float, list[tuple[float, float, float]]] = {m: [] for m in args.margins}
    try:
        for textured in (False, True):
            for size in SIZES:
                rows: dict[float, list] = {m: [] for m in args.margins}
                jpeg_err = []
                for seed, (_, photo) in enumerate(photos):
                    pixels = camera_pixels(photo, size, textured, seed)
                    raw = images.read_image_source(jpeg(pixels))
                    reference = preprocess(images.decode_image(raw))
                    jpeg_err.append(np.abs(preprocess(pixels) - reference))
                    full_s = best_time(raw, args.repeats, None)
                    for margin in args.margins:
                        images.DRAFT_MARGIN = margin
                        draft = images.decode_image(raw, draft_resolution=RESOLUTION)
                        diff = np.abs(preprocess(draft) - reference)
                        draft_s = best_time(raw, args.repeats, RESOLUTION)
                        rows[margin].append((draft.size, full_s, draft_s, diff.max(), diff.mean()))
                    images.DRAFT_MARGIN = original
                label = "photo+texture" if textured else "photo"
                jmax = max(float(e.max()) for e in jpeg_err)
                jmean = float(np.mean([e.mean() for e in jpeg_err]))
                for i, (margin, found) in enumerate(rows.items()):
                    dsize = found[0][0]
                    full_ms = np.mean([f[1] for f in found]) * 1e3
                    draft_ms = np.mean([f[2] for f in found]) * 1e3
                    ratio = float(np.mean([f[1] / f[2] for f in found]))
                    dmax = max(float(f[3]) for f in found)
                    dmean = float(np.mean([f[4] for f in found]))
                    overall[margin].append((ratio, dmax, dmean))
                    first = (f"{label:<14} {size[0]:>5}x{size[1]:<4} {size[0] * size[1] / 1e6:>5.1f} "
                             f"{jmax:>7.3f} {jmean:>8.5f}") if i == 0 else ""
                    print(f"{first:<48} | {margin:>6g} {dsize[0]:>4}x{dsize[1]:<5} {full_ms:>8.1f} "
                          f"{draft_ms:>8.1f} {ratio:>5.1f}x {dmax:>8.4f} {dmean:>9.5f}")
    finally:
        images.DRAFT_MARGIN = original
    print("\nPer margin, over all rows: median time ratio; worst max abs; worst mean abs")
    for margin, found in overall.items():
        ratios, maxes, means = zip(*found)
        print(f"  margin {margin:g}: {statistics.median(ratios):.1f}x  {max(maxes):.4f}  "
              f"{max(means):.5f}")


if __name__ == "__main__":
    main()
