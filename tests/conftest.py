"""Fixtures shared by the suite: small random CLIP checkpoints on disk and an isolated cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.model_factory import tiny_reference_clip

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "images"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch) -> Path:
    """Every test gets its own model/embedding cache dir, so no test sees another's cache."""
    path = tmp_path_factory.mktemp("clip-cache")
    monkeypatch.setenv("CLIP_CACHE_DIR", str(path))
    return path


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    """A tiny random ViT CLIP (32 px, 64-d embeddings) saved as a plain state dict."""
    path = tmp_path_factory.mktemp("weights") / "tiny-vit.pt"
    torch.save(tiny_reference_clip("vit", seed=0).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def other_tiny_model_path(tmp_path_factory) -> Path:
    """Same architecture as ``tiny_model_path``, other random weights: for mismatch tests."""
    path = tmp_path_factory.mktemp("weights-other") / "tiny-vit-other.pt"
    torch.save(tiny_reference_clip("vit", seed=1).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def sample_images() -> list[Path]:
    """The real photos shipped in examples/images (see SOURCES.md there)."""
    return sorted(EXAMPLES.glob("*.jpg"))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory):
    """A real ``chroma run`` server on a free loopback port; yields (host, port), stops it after."""
    import shutil
    import subprocess
    import sys
    import time
    import urllib.request

    chroma = shutil.which("chroma", path=str(Path(sys.executable).parent)) or shutil.which("chroma")
    if chroma is None:
        pytest.skip("the `chroma` command (from chromadb) is not installed")
    port = free_port()
    data = tmp_path_factory.mktemp("chroma-server")
    log = open(data / "server.log", "wb")
    proc = subprocess.Popen([chroma, "run", "--path", str(data / "db"), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1).read()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError(f"chroma server did not start: {(data / 'server.log').read_text()[-2000:]}")
            time.sleep(0.25)
    try:
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
