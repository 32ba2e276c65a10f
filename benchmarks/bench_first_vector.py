"""Time to the first vector: ``ClipEF()`` on a fresh cache dir, default ``dtype="auto"`` vs ``dtype="fp32"``.

What a user pays the first time a model meets a CPU. Each measurement is a fresh process with an
empty ``CLIP_CACHE_DIR`` (no decision cache, no ONNX export; the weights are a local file, so no
download is timed): from ``ClipEF(model=weights)`` to the first image embedding returned. The
child then waits for ``auto``'s background work (the ONNX export and the probe,
``clip_embeddings.refine``) and reports when it ended and what runs after it. Default and fp32
alternate (order flipping each repeat) so load from other processes hits both alike; ``+s`` is
the median of the per-repeat differences.

Run: ``.venv/bin/python benchmarks/bench_first_vector.py --models ViT-B/32 --repeats 3``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as c  # noqa: I001 (sets sys.path for tests.*)

DTYPES = ("auto", "fp32")


def child(args) -> None:
    """One fresh process: ClipEF() -> first vector, then the background work; prints one JSON line."""
    start = time.perf_counter()
    from clip_embeddings import ClipEF

    ef = ClipEF(model=str(args.weights), device="cpu", dtype=args.dtype, cache=False)
    ef.embed_images([c.folder_files(c.image_folder(4, args.data_dir))[0]])
    first = time.perf_counter() - start
    info = ef.runtime_info()
    lm = ef.loaded_model()
    if lm.refinement is not None:
        lm.refinement.join(args.wait)  # the probe runs at nice 19: on a busy machine it may not finish
    done = lm.refinement is None or not lm.refinement.is_alive()
    print(json.dumps({"first_vector_s": first, "precision_first": info["precision"], "source_first": info["source"],
                      "background_done_s": time.perf_counter() - start if done else None,
                      "precision_after": lm.precision, "source_after": lm.runtime.get("source")}))


def run(args) -> dict | None:
    if args.child:
        child(args)
        return None
    out = {"environment": c.environment(), "settings": {k: str(v) for k, v in vars(args).items()}, "models": {}}
    c.image_folder(4, args.data_dir)  # generated once, outside the timing
    for name in args.models:
        weights = c.weights_file(name, args.data_dir)
        runs: dict[str, list[dict]] = {d: [] for d in DTYPES}
        for r in range(args.repeats):
            for dtype in (DTYPES if r % 2 == 0 else DTYPES[::-1]):
                with tempfile.TemporaryDirectory(prefix="clip-first-vector-") as cache:
                    env = os.environ | {"CLIP_CACHE_DIR": cache, "PYTHONPATH": str(c.ROOT)}
                    done = subprocess.run([sys.executable, __file__, "--child", "--dtype", dtype, "--weights",
                                           str(weights), "--data-dir", str(args.data_dir), "--wait", str(args.wait)],
                                          env=env, check=True,
                                          capture_output=True, text=True, cwd=Path(__file__).parent)
                    runs[dtype].append(json.loads(done.stdout.strip().splitlines()[-1]) | {"load": os.getloadavg()[0]})
            print(f"[first vector] {name} repeat {r + 1}: " + ", ".join(
                f"{d} {runs[d][-1]['first_vector_s']:.1f} s" for d in DTYPES) + f" (load {os.getloadavg()[0]:.1f})",
                flush=True)
        auto, fp32 = ([x["first_vector_s"] for x in runs[d]] for d in DTYPES)
        out["models"][name] = {
            "runs": runs, "auto_median_s": statistics.median(auto), "fp32_median_s": statistics.median(fp32),
            "extra_s": statistics.median(a - f for a, f in zip(auto, fp32)),
            "background_done_s": statistics.median([x["background_done_s"] for x in runs["auto"]
                                                    if x["background_done_s"] is not None] or [float("nan")]),
        }
    return out


def print_results(result: dict) -> None:
    rows = []
    for name, m in result["models"].items():
        last = m["runs"]["auto"][-1]
        rows.append({"model": name, "auto": m["auto_median_s"], "fp32": m["fp32_median_s"], "extra": m["extra_s"],
                     "first": f"{last['precision_first']} ({last['source_first']})", "bg": m["background_done_s"],
                     "after": f"{last['precision_after']} ({last['source_after']})"})
    s = lambda v: f"{v:.1f} s"  # noqa: E731
    c.print_table("Time to the first vector, fresh cache dir (median of fresh processes)", rows, [
        ("model", "model", str), ("default (auto)", "auto", s), ("dtype=fp32", "fp32", s), ("+s", "extra", s),
        ("auto ran first", "first", str), ("background done at", "bg", s), ("auto runs after", "after", str)])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", default=["ViT-B/32"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 repeat")
    parser.add_argument("--data-dir", type=Path, default=c.DEFAULT_DATA)
    parser.add_argument("--wait", type=float, default=300, help="seconds a child waits for auto's background work")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--weights", type=Path, help=argparse.SUPPRESS)


def apply_quick(args) -> None:
    if args.quick:
        args.repeats = 1


def main(argv=None) -> dict | None:
    return c.run_script(sys.modules[__name__], "first_vector", argv)


if __name__ == "__main__":
    main()
