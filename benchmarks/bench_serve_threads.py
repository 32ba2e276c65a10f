"""A served model's latency with and without the compute thread: two real ``clip-embeddings serve``.

One server runs as users get it (its loading and passes on one ``clip-compute`` thread,
``clip_embeddings.runtime.compute``), the other with ``CLIP_COMPUTE_THREAD=0`` (the model loaded
in the main thread and run from the batcher's: two OpenMP pools on the cores). Both start before
timing and are asked in turn, one request at a time, so both see the same machine: one caption,
eight captions, one 640x480 JPEG. The ratio is the second server's time over the first's.

Run: ``.venv/bin/python benchmarks/bench_serve_threads.py`` (``--quick``: tiny model, 10 requests).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import _common as c

SERVERS = {"compute thread (default)": "1", "CLIP_COMPUTE_THREAD=0": "0"}


def start(weights: Path, port: int, dtype: str, compute_thread: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "clip_embeddings.apps.cli", "serve", "--model", str(weights), "--port", str(port),
               "--dtype", dtype]
    env = {**os.environ, "PYTHONPATH": str(c.ROOT), "CLIP_COMPUTE_THREAD": compute_thread}
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def run(args) -> dict:
    import httpx
    from bench_serve import wait_healthy

    from tests.servers import free_port

    weights = c.weights_file(args.model, args.data_dir)
    jpeg = c.photo_jpeg(0, (640, 480))
    calls = {
        "1 caption": lambda client: client.post("/embed", json={"texts": c.captions(1)}),
        "8 captions": lambda client: client.post("/embed", json={"texts": c.captions(8)}),
        "1 image": lambda client: client.post("/embed", files={"image": ("0.jpg", jpeg, "image/jpeg")}),
    }
    processes, clients = {}, {}
    try:
        for name, flag in SERVERS.items():
            port = free_port()
            processes[name] = start(weights, port, args.dtype, flag)
            clients[name] = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120, trust_env=False)
        health = {name: wait_healthy(clients[name], processes[name]) for name in SERVERS}
        times: dict[str, dict[str, list[float]]] = {task: {name: [] for name in SERVERS} for task in calls}
        for task, call in calls.items():
            for name in SERVERS:  # warm-up
                for _ in range(3):
                    call(clients[name]).raise_for_status()
            for i in range(args.requests):
                for name in (list(SERVERS) if i % 2 == 0 else list(SERVERS)[::-1]):
                    start_time = time.perf_counter()
                    call(clients[name]).raise_for_status()
                    times[task][name].append(time.perf_counter() - start_time)
    finally:
        for name, process in processes.items():
            process.terminate()
            process.wait(30)
            if name in clients:
                clients[name].close()
    rows = {}
    for task, by_server in times.items():
        medians = {name: statistics.median(t) * 1000 for name, t in by_server.items()}
        first, second = (medians[name] for name in SERVERS)
        rows[task] = {"ms": medians, "ratio": second / first}
    precision = health[next(iter(SERVERS))]["precision"]
    return {"environment": c.environment(), "model": args.model, "precision": precision, "requests": args.requests,
            "rows": rows}


def print_results(result: dict) -> None:
    names = list(SERVERS)
    rows = [{"task": task, "a": row["ms"][names[0]], "b": row["ms"][names[1]], "ratio": row["ratio"]}
            for task, row in result["rows"].items()]
    c.print_table(f"clip-embeddings serve, {result['model']} ({result['precision']}): median ms of {result['requests']} "
                  f"sequential POST /embed per server (ratio = second / first)", rows,
                  [("request", "task", str), (names[0], "a", lambda v: f"{v:.1f}"), (names[1], "b", lambda v: f"{v:.1f}"),
                   ("ratio", "ratio", lambda v: f"{v:.2f}x")])
    env = result["environment"]
    print(f"  cpu: {env['cpu']}, {env['cores']} cores, load average at start {env['loadavg_at_start']}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="ViT-B/32", help="architecture of the random weights, or 'tiny'")
    parser.add_argument("--dtype", default="bf16", help="the servers' --dtype (default bf16: no background probe)")
    parser.add_argument("--requests", type=int, default=60, help="sequential requests per kind and server")
    parser.add_argument("--quick", action="store_true", help="tiny model, 10 requests")
    parser.add_argument("--data-dir", type=Path, default=c.DEFAULT_DATA)


def apply_quick(args) -> None:
    if args.quick:
        args.model, args.requests, args.dtype = "tiny", min(args.requests, 10), "fp32"


def main(argv=None) -> dict:
    return c.run_script(sys.modules[__name__], "serve_threads", argv)


if __name__ == "__main__":
    main()
