"""Run time of ``Store.duplicates`` on 10,000 vs 100,000 vectors: does it grow about linearly?

Each size runs in a fresh subprocess: a store is filled with synthetic 512-d vectors (around
``clusters`` centres, with a near copy after every tenth; written straight through
``Store._write``, no model run), then ``duplicates`` runs once and is timed. The job makes one
nearest-neighbour query per image, so its cost is linear in the collection times the database's
query cost: Chroma's HNSW keeps that near-constant; local Qdrant and an unindexed LanceDB table
search by brute force, so there it grows with the collection (pass ``--kinds`` to see it).

Run: ``.venv/bin/python benchmarks/bench_duplicates.py --sizes 10000 100000``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import _collection as cc
import _common as c  # noqa: I001

COPY_EVERY = 10


def child(args) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-dups-", ignore_cleanup_errors=True) as scratch:
        work = Path(scratch)
        start = time.perf_counter()
        store = cc.filled_store(args.kind, work / "db", args.n, args.data_dir, clusters=args.clusters,
                                copy_every=COPY_EVERY)
        filled = time.perf_counter() - start
        c.reset_peak_rss()
        start, cpu = time.perf_counter(), time.process_time()
        report = store.duplicates(threshold=0.99)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        found = sum(len(g.members) - 1 for g in report.groups)
        # CPU seconds beside wall seconds: on a shared, loaded machine the wall time mostly measures the others.
        print(json.dumps({"kind": args.kind, "n": args.n, "fill_seconds": filled, "seconds": seconds,
                          "cpu_seconds": cpu, "load": os.getloadavg()[0], "pairs_found": found,
                          "us_per_image": 1e6 * seconds / args.n, "groups": len(report.groups),
                          "planted_pairs": cc.planted_pairs(args.n, COPY_EVERY), "peak_rss_mb": c.peak_rss_mb()}))


def run(args) -> dict | None:
    runs = cc.run_children(__file__, child, "duplicates", args, "--clusters", str(args.clusters))
    if runs is None:  # a child: it printed its result
        return None
    growth = {}
    for kind in args.kinds:
        small, large = cc.smallest_and_largest(runs, kind)
        growth[kind] = {"size_ratio": large["n"] / small["n"], "time_ratio": large["seconds"] / small["seconds"],
                        "cpu_ratio": large["cpu_seconds"] / small["cpu_seconds"]}
    return {"environment": c.environment(), "settings": {k: str(v) for k, v in vars(args).items()}, "runs": runs,
            "growth": growth}


def print_results(result: dict) -> None:
    cols = [("database", "kind", str), ("vectors", "n", str), ("seconds", "seconds", lambda v: f"{v:.1f}"),
            ("CPU seconds", "cpu_seconds", lambda v: f"{v:.1f}"), ("load", "load", lambda v: f"{v:.1f}"),
            ("us/image", "us_per_image", lambda v: f"{v:.0f}"), ("groups", "groups", str), ("pairs found", "pairs_found", str),
            ("planted pairs", "planted_pairs", str), ("peak RSS MB", "peak_rss_mb", lambda v: f"{v:.0f}")]
    c.print_table("Duplicates run time (each size in a fresh process)", result["runs"], cols)
    for kind, g in result["growth"].items():
        print(f"  {kind}: {g['size_ratio']:.0f}x the vectors took {g['time_ratio']:.1f}x the time "
              f"({g['cpu_ratio']:.1f}x the CPU time)")


def add_arguments(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    parser.add_argument(f"--{prefix}sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument(f"--{prefix}kinds", nargs="+", default=["chroma"])
    parser.add_argument(f"--{prefix}clusters", type=int, default=200)


def apply_quick(args) -> None:
    if getattr(args, "quick", False):
        args.sizes = [1000, 10_000]


def main(argv=None) -> dict | None:
    return c.run_script(sys.modules[__name__], "duplicates", argv, cc.child_arguments('1,000 vs 10,000 vectors'))


if __name__ == "__main__":
    main()
