"""Peak memory of ``Store.export`` for 10,000 vs 100,000 vectors: does it stay flat?

Each size runs in a fresh subprocess: it fills a store with synthetic 512-d vectors written
straight through ``Store._write`` (no model run), resets the peak-RSS mark, exports (npy shards
+ Parquet metadata, and one Parquet file), and reports the export's own peak. Holding the
collection would cost 200 MB at 100k x 512 float32; streaming should cost nothing that grows.

Run: ``.venv/bin/python benchmarks/bench_export.py --sizes 10000 100000 --kinds lancedb chroma``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import _collection as cc
import _common as c  # noqa: I001


def child(args) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-export-", ignore_cleanup_errors=True) as scratch:
        work = Path(scratch)
        store = cc.filled_store(args.kind, work / "db", args.n, args.data_dir, clusters=100)
        out = {"kind": args.kind, "n": args.n, "stored": store.count("image")}
        for fmt in ("npy", "parquet"):
            before = c.current_rss_mb()
            c.reset_peak_rss()
            start = time.perf_counter()
            store.export(work / f"out-{fmt}" / ("all.parquet" if fmt == "parquet" else ""), format=fmt,
                         shard_size=args.shard)
            peak = c.peak_rss_mb()
            out[fmt] = {"seconds": time.perf_counter() - start, "rss_before_mb": before, "peak_rss_mb": peak,
                        "export_mb": peak - before}
        print(json.dumps(out))


def run(args) -> dict | None:
    runs = cc.run_children(__file__, child, "export", args, "--shard", str(args.shard))
    if runs is None:  # a child: it printed its result
        return None
    growth = {}
    for kind in args.kinds:
        small, large = cc.smallest_and_largest(runs, kind)
        growth[kind] = {fmt: {"peak_mb": large[fmt]["peak_rss_mb"] - small[fmt]["peak_rss_mb"],
                              "export_mb": large[fmt]["export_mb"] - small[fmt]["export_mb"]} for fmt in ("npy", "parquet")}
    return {"environment": c.environment(), "settings": {k: str(v) for k, v in vars(args).items()}, "runs": runs,
            "growth_mb": growth}


def print_results(result: dict) -> None:
    rows = [{"kind": r["kind"], "n": r["n"], "format": fmt, **r[fmt]} for r in result["runs"] for fmt in ("npy", "parquet")]
    cols = [("database", "kind", str), ("vectors", "n", str), ("format", "format", str),
            ("seconds", "seconds", lambda v: f"{v:.1f}"), ("RSS before MB", "rss_before_mb", lambda v: f"{v:.0f}"),
            ("peak RSS MB", "peak_rss_mb", lambda v: f"{v:.0f}"), ("export's own MB", "export_mb", lambda v: f"{v:.0f}")]
    c.print_table("Export memory (each size in a fresh process)", rows, cols)
    for kind, growth in result["growth_mb"].items():
        print(f"  {kind}, largest vs smallest size: " + "; ".join(
            f"{fmt} peak RSS {g['peak_mb']:+.0f} MB, export's own {g['export_mb']:+.0f} MB" for fmt, g in growth.items()))


def add_arguments(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    parser.add_argument(f"--{prefix}sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument(f"--{prefix}kinds", nargs="+", default=["lancedb", "chroma"],
                        help="databases (Qdrant's local mode writes ~100 points/s here: slow for 100k)")
    parser.add_argument(f"--{prefix}shard", type=int, default=1_000_000, help="rows per .npy shard")


def apply_quick(args) -> None:
    if getattr(args, "quick", False):
        args.sizes, args.kinds = [1000, 10_000], ["lancedb"]


def main(argv=None) -> dict | None:
    return c.run_script(sys.modules[__name__], "export", argv, cc.child_arguments('1,000 vs 10,000 vectors, LanceDB only'))


if __name__ == "__main__":
    main()
