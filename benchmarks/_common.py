"""What every benchmark shares: models with the same random weights, timing, memory, data.

* Models: openai/CLIP's ``model.py`` (the reference, imported by ``tests/reference.py``) with random
  weights in the real shapes (``tests/model_factory.py``), and ours loaded from the *same* state
  dict, saved once under the data dir so ``ClipEF(model=path)`` can load it too.
* Timing: a warm-up call, then ``repeats`` timed calls. Candidates are timed *interleaved*
  (reference, ours, reference, ours...) so that load from other processes hits both alike; the
  ratio reported is the median of the per-repeat ratios.
* Memory: peak RSS (``VmHWM``) per measurement, reset between measurements through
  ``/proc/self/clear_refs`` (Linux); elsewhere the process-wide ``ru_maxrss``.
* Data: captions built from templates (10-20 CLIP tokens) and photo-like JPEGs of 1-12 MP
  (``examples/images`` upscaled, with sensor-like noise), generated once into ``--data-dir``
  (default ``/tmp/clip-embeddings-bench``; ``benchmarks/.data`` is git-ignored too).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the reference lives in tests/, which is not installed
    sys.path.insert(0, str(ROOT))

DEFAULT_DATA = Path(os.environ.get("CLIP_BENCH_DATA", "/tmp/clip-embeddings-bench"))
RESULTS = ROOT / "benchmarks" / "results"
SIZES = [(1224, 816), (2048, 1536), (3000, 2000), (4032, 3024)]  # 1, 3, 6, 12 MP


# --- models ---------------------------------------------------------------------------------

def reference_model(name: str, seed: int = 0) -> torch.nn.Module:
    """openai/CLIP's ``CLIP`` in the real ``name`` architecture, random weights, fp32, eval."""
    if name == "tiny":
        from tests.model_factory import tiny_reference_clip

        return tiny_reference_clip("vit", seed=seed)
    from tests.model_factory import reference_clip

    return reference_clip(name, scaled=False, seed=seed)


def weights_file(name: str, data_dir: Path = DEFAULT_DATA, seed: int = 0, model: torch.nn.Module | None = None) -> Path:
    """The reference's state dict saved once, for ``ce.load`` / ``ClipEF(model=path)``.

    The file name carries a digest of the weights: the data dir outlives checkouts (and is shared
    by everyone on a machine), and a file written by another version of ``tests/model_factory.py``
    would silently pair the reference with other weights.
    """
    from clip_embeddings.embedding.loaded import weights_digest

    state_dict = (model if model is not None else reference_model(name, seed)).state_dict()
    path = Path(data_dir) / "weights" / f"{name.replace('/', '-')}-seed{seed}-{weights_digest(state_dict)[:12]}.pt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        torch.save(state_dict, tmp)
        tmp.replace(path)
    return path


def model_pair(name: str, data_dir: Path = DEFAULT_DATA):
    """(reference, ours, weights path): the same random weights in both implementations."""
    import clip_embeddings as ce

    reference = reference_model(name)
    path = weights_file(name, data_dir, model=reference)
    ours, _ = ce.load(path, device="cpu", dtype=torch.float32)
    return reference, ours.eval(), path


def steady_state(lm, prefix: str) -> None:
    """Wait for ``dtype="auto"``'s background work (ONNX export, probe) so timings see what then runs."""
    if lm.refinement is not None:
        print(f"{prefix} waiting for auto's background work (export, probe) to finish", flush=True)
        lm.used.set()  # it starts after the first forward pass: none is needed to time what follows
        lm.refinement.join()


# --- timing ---------------------------------------------------------------------------------

def summarize(seconds: Sequence[float], items: int) -> dict:
    """Throughput statistics over repeats: median, IQR and min/max of items per second."""
    rates = sorted(items / s for s in seconds)
    q = statistics.quantiles(rates, n=4, method="inclusive") if len(rates) > 1 else [rates[0]] * 3
    return {"items": items, "repeats": len(rates), "seconds": list(seconds),
            "items_per_s": statistics.median(rates), "iqr": [q[0], q[2]], "min": rates[0], "max": rates[-1]}


def time_interleaved(candidates: dict[str, Callable[[], object]], items: int, repeats: int,
                     warmup: int = 1) -> dict[str, dict]:
    """Time each candidate ``repeats`` times, round-robin (order alternating), after warm-ups.

    Returns per candidate ``summarize(...)`` plus ``peak_rss_mb`` over its own calls.
    """
    names = list(candidates)
    times: dict[str, list[float]] = {n: [] for n in names}
    peaks: dict[str, float] = {n: 0.0 for n in names}
    for name in names:
        for _ in range(warmup):
            candidates[name]()
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            reset_peak_rss()
            start = time.perf_counter()
            candidates[name]()
            times[name].append(time.perf_counter() - start)
            peaks[name] = max(peaks[name], peak_rss_mb())
    out = {}
    for name in names:
        out[name] = summarize(times[name], items) | {"peak_rss_mb": peaks[name]}
    return out


def ratio_to(results: dict[str, dict], base: str) -> None:
    """Add ``ratio`` (median over repeats of base time / candidate time) to every entry."""
    for entry in results.values():
        pairs = zip(results[base]["seconds"], entry["seconds"])
        entry["ratio"] = statistics.median(b / c for b, c in pairs)


# --- memory ---------------------------------------------------------------------------------

_CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark for this process (Linux); False where unsupported."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def current_rss_mb() -> float:
    """Resident memory now (Linux ``VmRSS``), in MiB; NaN where unknown."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def peak_rss_mb() -> float:
    """Peak resident memory since the last reset (or since the start), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


# --- agreement ------------------------------------------------------------------------------

def agreement(ours: torch.Tensor, reference: torch.Tensor) -> dict:
    """Min cosine similarity per row and max abs difference of the raw features."""
    a, b = ours.float(), reference.float()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    return {"cosine_min": float(cos.min()), "max_abs_diff": float((a - b).abs().max())}


# --- data -----------------------------------------------------------------------------------

_SUBJECTS = ["a golden retriever", "two children", "an old man", "a red bicycle", "a tabby cat",
             "a young woman", "a fishing boat", "a group of hikers", "a vintage car", "a brown horse",
             "a street musician", "a plate of pasta", "a small bird", "a city bus", "three surfers"]
_ACTIONS = ["sitting on", "running across", "parked next to", "standing in front of", "lying on",
            "walking along", "waiting near", "resting beside", "playing in", "crossing"]
_PLACES = ["a wooden bench in the park", "the beach at sunset", "a busy city street", "a snowy mountain trail",
           "a kitchen table", "the old stone bridge", "a green field with flowers", "a crowded market",
           "the edge of a quiet lake", "a brick wall covered in graffiti"]
_EXTRAS = ["", "", " on a rainy day", " in the early morning light", ", seen from above", " at night"]


def captions(n: int, seed: int = 0) -> list[str]:
    """``n`` caption-like texts, COCO style: 10-20 CLIP tokens each (with start/end tokens)."""
    rng = np.random.default_rng(seed)
    pick = lambda xs: xs[int(rng.integers(len(xs)))]  # noqa: E731
    return [f"{pick(_SUBJECTS)} {pick(_ACTIONS)} {pick(_PLACES)}{pick(_EXTRAS)}" for _ in range(n)]


def _base_photos() -> list:
    from PIL import Image

    photos = [Image.open(p).convert("RGB") for p in sorted((ROOT / "examples" / "images").glob("*.jpg"))]
    if photos:
        return photos
    y, x = np.mgrid[0:512, 0:512].astype(np.float32) / 512
    smooth = np.stack([128 + 100 * np.sin(6 * x + 2 * y), 128 + 90 * np.cos(5 * y),
                       128 + 80 * np.sin(4 * (x + y))], axis=2)
    return [Image.fromarray(smooth.astype(np.uint8))]


def photo_jpeg(index: int, size: tuple[int, int], quality: int = 90) -> bytes:
    """A photo-like JPEG: a sample photo upscaled to ``size`` plus per-pixel noise (unique per index)."""
    from PIL import Image

    photos = _base_photos()
    big = photos[index % len(photos)].resize(size, Image.Resampling.BICUBIC)
    rng = np.random.default_rng(index)
    arr = np.asarray(big, np.int16) + rng.integers(-6, 7, (size[1], size[0], 3), dtype=np.int16)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def image_folder(n: int, data_dir: Path = DEFAULT_DATA, sizes: Sequence[tuple[int, int]] = SIZES,
                 tag: str = "photos") -> Path:
    """A folder of ``n`` distinct photo-like JPEGs cycling through ``sizes``; made once, reused."""
    folder = Path(data_dir) / (f"{tag}-{n}-" + "_".join(f"{w}x{h}" for w, h in sizes))
    done = folder / ".complete"
    if not done.exists():
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            path = folder / f"img_{i:05d}.jpg"
            if not path.exists():
                path.write_bytes(photo_jpeg(i, sizes[i % len(sizes)]))
        done.write_text("ok")
    return folder


def folder_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.jpg"))


# --- output ---------------------------------------------------------------------------------

def environment() -> dict:
    import PIL

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"python": sys.version.split()[0], "torch": torch.__version__, "pillow": PIL.__version__,
            "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "loadavg_at_start": load,
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def fmt_rate(entry: dict) -> str:
    return f"{entry['items_per_s']:8.2f} [{entry['iqr'][0]:.2f}-{entry['iqr'][1]:.2f}]"


def print_table(title: str, rows: list[dict], columns: list[tuple[str, str, Callable]]) -> None:
    """Print rows as a fixed-width table; ``columns`` = (header, key, formatter)."""
    cells = [[fmt(row.get(key)) if row.get(key) is not None else "-" for _, key, fmt in columns] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (h, _, _) in enumerate(columns)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for (h, _, _), w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths)))


def _jsonable(value):
    return float(value) if isinstance(value, (np.floating, np.integer)) else str(value)


def write_json(path: str | os.PathLike | None, payload: dict, default_name: str) -> Path:
    target = Path(path) if path else RESULTS / f"{default_name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(payload, indent=2, default=_jsonable))
    return target


def run_script(module, name: str, argv=None, extra_arguments=None) -> dict | None:
    """The ``main`` every benchmark script shares: parse, apply ``--quick``, run, print, write JSON.

    ``module`` provides ``__doc__``, ``add_arguments``, ``apply_quick``, ``run`` and
    ``print_results``; ``extra_arguments(parser)`` adds script-only flags, and a script may
    return ``None`` from ``run`` (a child process) to skip printing and writing.
    """
    parser = argparse.ArgumentParser(description=module.__doc__.splitlines()[0])
    module.add_arguments(parser)
    parser.add_argument("--json", help=f"result file (default benchmarks/results/{name}.json)")
    if extra_arguments is not None:
        extra_arguments(parser)
    args = parser.parse_args(argv)
    module.apply_quick(args)
    result = module.run(args)
    if result is None:
        return None
    module.print_results(result)
    print(f"\nwrote {write_json(args.json, result, name)}")
    return result
