"""Real servers for tests, on loopback only: a threaded HTTP server and a ``chroma run`` process."""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(handler) -> Iterator[http.server.ThreadingHTTPServer]:
    """A real HTTP server on a free loopback port, in a thread; ``server.url`` is its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def chroma_command() -> str | None:
    return shutil.which("chroma", path=str(Path(sys.executable).parent)) or shutil.which("chroma")


@contextmanager
def chroma_server_at(data: Path, timeout: float = 90) -> Iterator[tuple[str, int]]:
    """``chroma run`` storing in ``data`` on a free 127.0.0.1 port; yields (host, port), then stops it."""
    port = free_port()
    data.mkdir(parents=True, exist_ok=True)
    log_path = data / "server.log"
    env = dict(os.environ, ANONYMIZED_TELEMETRY="False")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([chroma_command(), "run", "--path", str(data / "db"), "--host", "127.0.0.1",
                                 "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=2).read()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"chroma server did not start:\n{log_path.read_text()[-3000:]}")
                    time.sleep(0.25)
            yield "127.0.0.1", port
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
