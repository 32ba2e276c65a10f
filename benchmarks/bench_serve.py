"""The server under load: 32 concurrent clients sending single images vs the same requests one by one.

A real ``clip-embeddings serve`` (a subprocess, as users run it, no collection) with random weights
in the real ``--model`` architecture. The same ``--requests`` single-image ``POST /embed`` requests
(photo-like JPEGs, one image each, all distinct) are sent:

* ``one at a time``: one client, each request after the previous answer;
* ``32 clients``: ``--clients`` threads, each sending its share one after another, all at once.

Reported per mode: requests/s (median over ``--repeats``, interleaved), p50/p99 latency over all
requests of all repeats, and the server's mean batch size (from ``/health``); the ratio is the
concurrent throughput over the sequential one. ``max abs`` compares every vector with the one a
local ``ClipEF`` on the same weights computes for that image alone (sequential requests run alone
on the server, so theirs must be 0; concurrent ones share passes, bounded by float summation order).

A second table times the same images through ``ClipEF.embed_images`` in this process, one at a
time and in one batch: the most any batching can gain on this hardware, HTTP aside.

Run: ``.venv/bin/python benchmarks/bench_serve.py`` (``--quick``: tiny model, 32 requests, 1 repeat).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import _common as c  # noqa: I001 (sets sys.path for tests.*)

MODES = ("one at a time", "32 clients")


def start_server(weights: Path, port: int, args) -> subprocess.Popen:
    command = [sys.executable, "-m", "clip_embeddings.apps.cli", "serve", "--model", str(weights), "--device", args.device,
               "--port", str(port), "--max-batch", str(args.clients), "--max-wait-ms", str(args.max_wait_ms),
               "--max-queue", str(4 * args.clients)] + (["--threads", str(args.threads)] if args.threads else [])
    env = {**os.environ, "PYTHONPATH": str(c.ROOT)}
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_healthy(client, process: subprocess.Popen, timeout: float = 300) -> dict:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited: {process.stderr.read()[-3000:]}")
        try:
            return client.get("/health").json()
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError("the server did not answer /health in time")


def _request(port: int, index: int, image: bytes) -> bytes:
    """One keep-alive ``POST /embed`` with a multipart upload, as raw bytes (built before timing)."""
    boundary = b"clip-bench-boundary"
    body = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="image"; filename="%d.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n" % index + image + b"\r\n--" + boundary + b"--\r\n")
    head = (f"POST /embed HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {len(body)}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary.decode()}\r\n\r\n").encode()
    return head + body


async def _answer(reader) -> dict:
    status = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    body = await reader.readexactly(length)
    if b" 200 " not in status:
        raise RuntimeError(f"{status.decode().strip()}: {body[:300]!r}")
    return json.loads(body)


def send_all(port: int, requests: list[bytes], clients: int) -> tuple[float, list[float], list[np.ndarray]]:
    """Send every request over ``clients`` keep-alive connections, each request after its client's
    previous answer; (seconds, latencies, vectors). One asyncio thread drives all clients, so the
    load generator costs the 2-core machine little next to the server it measures."""

    async def main() -> tuple[float, list[float], list[np.ndarray]]:
        latencies: list[float] = [0.0] * len(requests)
        vectors: list[np.ndarray | None] = [None] * len(requests)
        connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(clients)]

        async def client(k: int) -> None:
            reader, writer = connections[k]
            for i in range(k, len(requests), clients):
                t = time.perf_counter()
                writer.write(requests[i])
                answer = await _answer(reader)
                latencies[i] = time.perf_counter() - t
                vectors[i] = np.asarray(answer["images"][0], np.float32)

        start = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(clients)))
        took = time.perf_counter() - start
        for _, writer in connections:
            writer.close()
        return took, latencies, vectors  # type: ignore[return-value]

    return asyncio.run(main())


def run(args) -> dict:
    import httpx

    import clip_embeddings as ce
    from tests.servers import free_port

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # the in-process ceiling runs like the server
    weights = c.weights_file(args.model, args.data_dir)
    images = [c.photo_jpeg(i, (640, 480)) for i in range(args.requests)]
    port = free_port()
    requests = [_request(port, i, image) for i, image in enumerate(images)]
    local = ce.ClipEF(weights, device=args.device, cache=False, batch_size=args.clients)
    expected = np.concatenate([local.embed_images([image]) for image in images])  # each one alone
    # The ceiling for any server-side batching: the library itself, batch of 1 vs batch of --clients.
    model_only = c.time_interleaved({
        "batch 1": lambda: [local.embed_images([image]) for image in images],
        f"batch {args.clients}": lambda: local.embed_images(images),
    }, args.requests, args.repeats)
    c.ratio_to(model_only, "batch 1")
    process = start_server(weights, port, args)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=60, trust_env=False) as client:
            health = wait_healthy(client, process)
            send_all(port, requests[: args.clients], args.clients)  # warm-up: threads, allocator, kernels
            seconds = {mode: [] for mode in MODES}
            latencies = {mode: [] for mode in MODES}
            passes = {mode: [] for mode in MODES}
            worst = {mode: 0.0 for mode in MODES}
            for repeat in range(args.repeats):
                for mode in (MODES if repeat % 2 == 0 else MODES[::-1]):
                    before = client.get("/health").json()["batching"]
                    took, lat, vectors = send_all(port, requests, 1 if mode == MODES[0] else args.clients)
                    after = client.get("/health").json()["batching"]
                    seconds[mode].append(took)
                    latencies[mode] += lat
                    passes[mode].append(after["passes"] - before["passes"])
                    worst[mode] = max(worst[mode], float(np.abs(np.stack(vectors) - expected).max()))
    finally:
        process.terminate()
        process.wait(30)
    result = {"environment": c.environment(), "model": args.model, "device": args.device,
              "precision": health["precision"], "requests": args.requests, "clients": args.clients,
              "max_wait_ms": args.max_wait_ms, "repeats": args.repeats, "modes": {}, "model_only": model_only}
    for mode in MODES:
        result["modes"][mode] = c.summarize(seconds[mode], args.requests) | {
            "p50_ms": 1000 * statistics.median(latencies[mode]),
            "p99_ms": 1000 * float(np.percentile(latencies[mode], 99)),
            "mean_batch": args.requests / statistics.mean(passes[mode]),
            "max_abs_diff": worst[mode],
        }
    c.ratio_to(result["modes"], MODES[0])
    return result


def print_results(result: dict) -> None:
    rows = [{"mode": mode, "rate": c.fmt_rate(e), **e} for mode, e in result["modes"].items()]
    cols = [("mode", "mode", str), ("requests/s median [IQR]", "rate", str), ("ratio", "ratio", lambda v: f"{v:.2f}x"),
            ("p50 ms", "p50_ms", lambda v: f"{v:.1f}"), ("p99 ms", "p99_ms", lambda v: f"{v:.1f}"),
            ("mean batch", "mean_batch", lambda v: f"{v:.1f}"), ("max abs vs alone", "max_abs_diff", lambda v: f"{v:.1e}")]
    c.print_table(f"clip-embeddings serve, {result['model']} on {result['device']} ({result['precision']}): "
                  f"{result['requests']} single-image POST /embed per mode, max_wait {result['max_wait_ms']} ms", rows, cols)
    ceiling = result["model_only"]
    rows = [{"mode": f"ClipEF in process, {name}", "rate": c.fmt_rate(e), **e} for name, e in ceiling.items()]
    c.print_table("the ceiling: the same images through ClipEF.embed_images, no HTTP (ratio = batched / batch 1)",
                  rows, cols[:3])
    env = result["environment"]
    print(f"  cpu: {env['cpu']}, {env['cores']} cores, torch threads {env['torch_threads']}, "
          f"load average at start {env['loadavg_at_start']}")
    speedup = result["modes"][MODES[1]]["ratio"]
    print(f"  {MODES[1]} vs {MODES[0]}: {speedup:.2f}x (target >= 3x: {'met' if speedup >= 3 else 'NOT met'})")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="ViT-B/32", help="architecture of the random weights, or 'tiny'")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--requests", type=int, default=128, help="single-image requests per mode and repeat")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads, in the server and the in-process ceiling (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="tiny model, 32 requests, 1 repeat")
    parser.add_argument("--data-dir", type=Path, default=c.DEFAULT_DATA)


def apply_quick(args) -> None:
    if args.quick:
        args.model, args.requests, args.repeats = "tiny", min(args.requests, 32), 1


def main(argv=None) -> dict:
    return c.run_script(sys.modules[__name__], "serve", argv)


if __name__ == "__main__":
    main()
