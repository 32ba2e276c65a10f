"""Peak memory of ``ClipEF.encode_images`` streaming 1,000 vs 10,000 images: does it stay flat?

Each size runs in a fresh subprocess, so its peak RSS (``VmHWM``) is its own. The child loads
the model, warms up on a few images, records its resident memory, then streams ``N`` file paths
(a generator cycling through a pool of small generated JPEGs, so the input list itself costs
nothing) through ``encode_images`` with the cache off, and reports its peak. Memory that grows
with ``N`` would show as a ratio above 1; what must grow is only the result (``N x dim`` float32).

The default model is the tiny test architecture (32 px), so 10,000 images take seconds: the
pipeline, not the model, is under test, and a small constant base makes the ratio stricter.
``--model ViT-B/32`` measures the real size (slow on a CPU: ~10,000 forward passes).

Run: ``.venv/bin/python benchmarks/bench_memory.py --sizes 1000 10000``
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import _common as c  # noqa: I001

POOL_SIZES = [(640, 480), (480, 640), (800, 600), (1024, 768)]


def child(args) -> None:
    from clip_embeddings import ClipEF

    pool = c.folder_files(c.image_folder(args.pool, args.data_dir, POOL_SIZES, tag="small"))
    weights = c.weights_file(args.model, args.data_dir)
    ef = ClipEF(model=str(weights), device="cpu", dtype="fp32", cache=False, batch_size=args.batch)
    ef.encode_images(pool[: 2 * args.batch])  # load the model and start the decode threads
    rss_before = _current_rss_mb()
    c.reset_peak_rss()
    start = time.perf_counter()
    result = ef.encode_images(itertools.islice(itertools.cycle(pool), args.n))
    seconds = time.perf_counter() - start
    assert len(result.indices) == args.n
    print(json.dumps({"n": args.n, "seconds": seconds, "images_per_s": args.n / seconds,
                      "rss_before_mb": rss_before, "peak_rss_mb": c.peak_rss_mb(),
                      "result_mb": result.embeddings.nbytes / 2**20}))


def _current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(args) -> dict | None:
    if getattr(args, "child", False):  # one measurement, in the fresh process run() below starts
        child(args)
        return None
    c.image_folder(args.pool, args.data_dir, POOL_SIZES, tag="small")  # made once, outside the timing
    c.weights_file(args.model, args.data_dir)
    runs = []
    for n in args.sizes:
        print(f"[memory] {args.model}: streaming {n} images in a fresh process", flush=True)
        cmd = [sys.executable, __file__, "--child", "--n", str(n), "--model", args.model, "--pool", str(args.pool),
               "--batch", str(args.batch), "--data-dir", str(args.data_dir)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"child for n={n} failed:\n{done.stderr[-3000:]}")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    small, large = runs[0], runs[-1]
    return {"environment": c.environment(), "settings": vars(args).copy(), "runs": runs,
            "peak_ratio": large["peak_rss_mb"] / small["peak_rss_mb"],
            "growth_mb": large["peak_rss_mb"] - small["peak_rss_mb"]}


def print_results(result: dict) -> None:
    rows = [dict(r, model=result["settings"]["model"]) for r in result["runs"]]
    cols = [("model", "model", str), ("images", "n", str), ("images/s", "images_per_s", lambda v: f"{v:.0f}"),
            ("RSS after warm-up MB", "rss_before_mb", lambda v: f"{v:.0f}"),
            ("peak RSS MB", "peak_rss_mb", lambda v: f"{v:.0f}"), ("result MB", "result_mb", lambda v: f"{v:.1f}")]
    c.print_table("Streaming memory (each size in a fresh process)", rows, cols)
    print(f"  peak RSS {result['runs'][-1]['n']} / {result['runs'][0]['n']} images: {result['peak_ratio']:.3f}x "
          f"(+{result['growth_mb']:.0f} MB)")


def add_arguments(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    parser.add_argument(f"--{prefix}sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument(f"--{prefix}model", default="tiny", help="'tiny' (32 px test model) or an architecture")
    parser.add_argument(f"--{prefix}pool", type=int, default=64, help="distinct small JPEGs cycled through")
    parser.add_argument(f"--{prefix}batch", type=int, default=32)


def apply_quick(args) -> None:
    if getattr(args, "quick", False):
        args.sizes = [min(s, 100 * 10**i) for i, s in enumerate(args.sizes)]


def main(argv=None) -> dict | None:
    def extra_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--quick", action="store_true", help="100 vs 1,000 images")
        parser.add_argument("--data-dir", type=Path, default=c.DEFAULT_DATA)
        parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
        parser.add_argument("--n", type=int, help=argparse.SUPPRESS)

    return c.run_script(sys.modules[__name__], "memory", argv, extra_arguments)


if __name__ == "__main__":
    main()
