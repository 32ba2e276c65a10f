"""Single-process ``ClipEF`` vs Ray actors: images per second on this machine.

Embeds ``--images`` JPEGs (``--size`` px, photo-like: gradients plus sensor noise) with

* ``single``: one ``ClipEF.encode_images`` call in this process (model loaded beforehand), with
  torch on 1 thread and on ``--cpus`` threads; the faster is the baseline (on a machine busy with
  other work, several OpenMP threads spin against each other and one thread can win by 5x);
* ``ray``: the same pipeline as :func:`clip_embeddings.apps.distributed.ray.embed_dataset`, with
  ``--actors`` actors on a local Ray limited to ``--cpus`` CPUs, one CPU (one torch thread) each.

For Ray it reports the end-to-end rate (actor start-up and model load included, what a short
job sees), the steady rate (from the first batch starting to the last finishing, what a long job
converges to), and each actor's own rate (its items over the time it spent embedding). The
ratio is steady Ray over single. Runs alternate (single, ray, single, ray...) so load from other
processes hits both alike. Embedding only: database writes are not timed.

Models are random weights in real shapes (``benchmarks/_common.py``): ``tiny`` (default) or an
architecture such as ``ViT-B/32`` via ``--model``.

Run: ``.venv/bin/python benchmarks/bench_ray.py [--model ViT-B/32] [--images 500] [--actors 2]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

from clip_embeddings.apps.distributed.ray import ClipBatchEmbedder, sources_dataset  # noqa: E402
from clip_embeddings.embedding.function import ClipEF  # noqa: E402


def photo_like_jpegs(n: int, size: int, data_dir: Path) -> list[str]:
    """``n`` distinct JPEGs, made once: smooth colour gradients with noise, like small photos."""
    folder = data_dir / f"ray-jpegs-{size}"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i in range(n):
        path = folder / f"{i:05d}.jpg"
        if not path.exists():
            a, b, col = rng.uniform(0, 1, 2), rng.uniform(0, 1, 2), rng.uniform(40, 215, (3,))
            base = 60 * np.sin(6 * (a[0] * xx + a[1] * yy))[..., None] + 40 * (b[0] * xx - b[1] * yy)[..., None] + col
            pixels = np.clip(base + rng.normal(0, 8, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(path, quality=90)
        paths.append(str(path))
    return paths


class TimedEmbedder(ClipBatchEmbedder):
    """The library's actor, plus when each call ran and in which process (benchmark only)."""

    def __call__(self, batch):
        import pyarrow as pa

        start = time.time()
        out = super().__call__(batch)
        end = time.time()
        n = out.num_rows
        return out.append_column("pid", pa.array([os.getpid()] * n, pa.int64())) \
                  .append_column("t0", pa.array([start] * n, pa.float64())) \
                  .append_column("t1", pa.array([end] * n, pa.float64()))


def run_single(ef: ClipEF, paths: list[str], threads: int) -> dict:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        start = time.perf_counter()
        result = ef.encode_images(paths, on_error="skip")
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(before)
    assert len(result.indices) == len(paths), result.skipped[:3]
    return {"seconds": seconds, "items_per_s": len(paths) / seconds}


def run_ray(ray, weights: Path, paths: list[str], args) -> dict:
    start = time.perf_counter()
    ds = sources_dataset(paths, rows_per_block=args.batch * 2)
    out = ds.map_batches(
        TimedEmbedder, fn_constructor_kwargs=dict(model=str(weights), device="cpu", batch_size=args.batch,
                                                  decode_threads=args.decode_threads),
        batch_size=args.batch, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=args.actors),
        num_cpus=1,
    )
    import pyarrow as pa

    columns = ["pid", "t0", "t1", "error"]
    table = pa.concat_tables([b.select(columns) for b in out.iter_batches(batch_size=None, batch_format="pyarrow")])
    seconds = time.perf_counter() - start
    assert table.num_rows == len(paths) and table.column("error").null_count == len(paths)
    rows = table.to_pydict()
    calls: dict[int, set[tuple[float, float, int]]] = {}
    for pid, t0, t1 in zip(rows["pid"], rows["t0"], rows["t1"]):
        calls.setdefault(pid, set()).add((t0, t1))
    counts = {pid: rows["pid"].count(pid) for pid in calls}
    per_actor = {pid: counts[pid] / sum(t1 - t0 for t0, t1 in spans) for pid, spans in calls.items()}
    steady = len(paths) / (max(rows["t1"]) - min(rows["t0"]))
    return {"seconds": seconds, "items_per_s": len(paths) / seconds, "steady_items_per_s": steady,
            "per_actor_items_per_s": sorted(per_actor.values()), "items_per_actor": sorted(counts.values())}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny, or an architecture such as ViT-B/32 (random weights)")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--size", type=int, default=256, help="JPEG side in pixels")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs the local Ray may use")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--decode-threads", type=int, default=2, help="per actor; single-process uses --cpus")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data-dir", type=Path, default=c.DEFAULT_DATA)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    import ray

    weights = c.weights_file(args.model, args.data_dir)
    paths = photo_like_jpegs(args.images, args.size, args.data_dir)
    ef = ClipEF(weights, device="cpu", dtype="fp32", cache=False, batch_size=args.batch, num_workers=args.cpus)
    ef.encode_images(paths[: args.batch])  # load the model and warm up: the single process is steady

    ray.init(num_cpus=args.cpus, include_dashboard=False, object_store_memory=300 * 1024**2,
             log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    runs: dict[str, list[dict]] = {"single-1": [], f"single-{args.cpus}": [], "ray": []}
    try:
        for r in range(args.repeats):
            for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
                if name == "ray":
                    runs[name].append(run_ray(ray, weights, paths, args))
                else:
                    runs[name].append(run_single(ef, paths, threads=int(name.split("-")[1])))
                print(f"  repeat {r + 1} {name}: {runs[name][-1]}", flush=True)
    finally:
        ray.shutdown()

    med = lambda key, name: statistics.median(x[key] for x in runs[name])  # noqa: E731
    by_threads = {name: med("items_per_s", name) for name in runs if name != "ray"}
    single = max(by_threads.values())
    rays = runs["ray"]
    result = {
        "model": args.model, "images": args.images, "size": args.size, "actors": args.actors, "cpus": args.cpus,
        "batch": args.batch, "load_avg_1m": os.getloadavg()[0],
        "single_items_per_s": single, "single_by_torch_threads": by_threads,
        "ray_end_to_end_items_per_s": med("items_per_s", "ray"),
        "ray_steady_items_per_s": med("steady_items_per_s", "ray"),
        "ray_per_actor_items_per_s": statistics.median(v for x in rays for v in x["per_actor_items_per_s"]),
        "ray_startup_s": med("seconds", "ray") - args.images / med("steady_items_per_s", "ray"),
    }
    result["ratio_steady"] = result["ray_steady_items_per_s"] / single
    result["ratio_end_to_end"] = result["ray_end_to_end_items_per_s"] / single
    print(f"\n{args.images} JPEGs {args.size}px, model {args.model}, {args.cpus} CPUs, batch {args.batch} "
          f"(1-min load average {result['load_avg_1m']:.1f})")
    for name, rate in by_threads.items():
        print(f"  single-process ClipEF, {name.split('-')[1]} torch thread(s) {rate:8.1f} items/s")
    print(f"  Ray, {args.actors} actors, steady     {result['ray_steady_items_per_s']:8.1f} items/s "
          f"(ratio {result['ratio_steady']:.2f})")
    print(f"  Ray, {args.actors} actors, end-to-end {result['ray_end_to_end_items_per_s']:8.1f} items/s "
          f"(ratio {result['ratio_end_to_end']:.2f}; ~{result['ray_startup_s']:.0f} s of actor start-up)")
    print(f"  per actor (its own busy time) {result['ray_per_actor_items_per_s']:8.1f} items/s")
    if args.json:
        args.json.write_text(json.dumps(result | {"runs": runs}, indent=2))
    return result


if __name__ == "__main__":
    main()
