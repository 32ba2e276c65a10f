"""The worst single request: model-thread time and memory of hostile requests to ``serve``.

Each case runs in a fresh process: the app in-process (Starlette's TestClient), one warm-up
request, then the hostile one. Reported per case: the HTTP status, seconds the model thread spent
on it (the batcher's rounds, timed around ``Batcher._serve``), the request's wall time, and the
peak RSS above the warm process (``VmHWM`` reset through ``/proc/self/clear_refs``).

Run it against any checkout (it only uses ``create_app`` and ``ServeLimits``), e.g. before and
after a change: ``PYTHONPATH=/path/to/checkout python benchmarks/bench_serve_worst.py``.

    python benchmarks/bench_serve_worst.py                    # tiny model, every case
    python benchmarks/bench_serve_worst.py --model ViT-B/32   # random full-size weights
    python benchmarks/bench_serve_worst.py --cases embed_2mb_word --limit 120
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORD = "".join("abcdefghijklmnopqrstuvwxyz"[(i * 7919) % 26] for i in range(2_000_000))


def _words(n: int, length: int) -> list[str]:
    return [(f"w{i}" + WORD)[:length] for i in range(n)]


CASES = {
    # the probe: a 200-byte template that pads each label to 40 MB
    "classify_format_spec": lambda: ("/classify", {"labels": ["a", "b", "c", "d"], "templates": ["{{}}{:>40000000}"]}),
    # long single-word labels under the default templates
    "classify_long_labels": lambda: ("/classify", {"labels": _words(4, 100_000)}),
    # what the budget still allows: 64 labels x 8 templates, labels near the length limit
    "classify_full_budget": lambda: ("/classify", {"labels": _words(64, 990), "templates": [f"{i} {{}}" for i in range(8)]}),
    "embed_2mb_word": lambda: ("/embed", {"texts": [WORD]}),
    "embed_64_texts_of_490kb": lambda: ("/embed", {"texts": _words(64, 490_000)}),
    "embed_16_stalling_urls": lambda: ("/embed", {"images": "STALL", "on_error": "skip"}),
}


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


class _Stall(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        time.sleep(60)

    def log_message(self, *args):
        pass


def run_case(name: str, model: str) -> dict:
    """One case in this process: returns its status, model-thread seconds, wall seconds and peak RSS."""
    import base64

    from fastapi.testclient import TestClient

    import clip_embeddings as ce
    try:
        from clip_embeddings.apps.server import Batcher, ServeLimits, create_app
    except ImportError:  # a checkout from before the package layout
        from clip_embeddings.server import Batcher, ServeLimits, create_app

    busy = [0.0]
    real = Batcher._serve

    def timed(self, jobs):
        start = time.perf_counter()
        try:
            return real(self, jobs)
        finally:
            busy[0] += time.perf_counter() - start

    Batcher._serve = timed
    stall = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stall)
    stall.daemon_threads = True
    threading.Thread(target=stall.serve_forever, daemon=True).start()
    limits = ServeLimits(request_timeout=600, allow_private_urls=True, url_timeout=2)
    app = create_app(ce.ClipEF(model, device="cpu", cache=False), None, limits)
    image = {"base64": base64.b64encode((ROOT / "examples/images/cat.jpg").read_bytes()).decode()}
    path, body = CASES[name]()
    if body.get("images") == "STALL":
        body["images"] = [{"url": f"http://127.0.0.1:{stall.server_address[1]}/{i}.jpg"} for i in range(16)]
    elif path == "/classify":
        body["images"] = [image]
    with TestClient(app, base_url="http://127.0.0.1") as client:
        client.post("/classify", json={"labels": ["a cat", "a dog"], "images": [image]})  # warm-up
        client.post("/embed", json={"texts": ["warm"]})
        busy[0] = 0.0
        Path("/proc/self/clear_refs").write_text("5")
        base = _rss("VmRSS")
        start = time.perf_counter()
        response = client.post(path, json=body)
        wall = time.perf_counter() - start
        peak = _rss("VmHWM") - base
    return {"case": name, "status": response.status_code, "model_thread_s": round(busy[0], 3),
            "wall_s": round(wall, 3), "peak_rss_mb": round(peak / 2**20, 1),
            "detail": response.json().get("detail", "")[:120] if response.status_code >= 400 else ""}


def _weights(model: str, folder: Path) -> str:
    """A state dict of random weights in ``model``'s architecture ("tiny": the test suite's model)."""
    import torch

    sys.path.insert(0, str(ROOT))
    from tests.model_factory import reference_clip, tiny_reference_clip

    path = folder / (model.replace("/", "-") + ".pt")
    if not path.exists():
        clip = tiny_reference_clip("vit") if model == "tiny" else reference_clip(model, scaled=False)
        torch.save(clip.state_dict(), path)
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="tiny, or an architecture with random weights (ViT-B/32)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--limit", type=float, default=300, help="seconds per case before it is reported as over")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--run-case", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_case:
        print(json.dumps(run_case(args.run_case, args.weights)))
        return
    weights = _weights(args.model, Path(tempfile.gettempdir()))
    rows = []
    for name in args.cases:
        try:
            out = subprocess.run([sys.executable, __file__, "--run-case", name, "--weights", weights],
                                 capture_output=True, text=True, timeout=args.limit, env=dict(os.environ))
            row = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else \
                {"case": name, "error": out.stderr.strip().splitlines()[-1:]}
        except subprocess.TimeoutExpired:
            row = {"case": name, "status": None, "model_thread_s": f">{args.limit:g}", "wall_s": f">{args.limit:g}"}
        rows.append(row)
        print(json.dumps(row) if args.json else
              f"{name:26} {row.get('status')!s:>5} model {row.get('model_thread_s')!s:>8} s  wall "
              f"{row.get('wall_s')!s:>8} s  +{row.get('peak_rss_mb', '?')} MB  {row.get('detail', row.get('error', ''))}",
              flush=True)


if __name__ == "__main__":
    main()
