"""The compute thread (runtime/compute.py): one thread runs a server's torch work, whoever asks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from clip_embeddings import ClipEF
from clip_embeddings.runtime import compute

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def one_thread(monkeypatch):
    monkeypatch.setattr(compute, "_enabled", True)


def test_without_use_one_thread_work_runs_in_the_callers_thread():
    assert compute.run(lambda: threading.current_thread()) is threading.current_thread()


def test_jobs_from_any_thread_run_on_one_thread_and_return_or_raise_there(one_thread):
    names = []
    workers = [threading.Thread(target=lambda: names.append(compute.run(lambda: threading.current_thread().name)))
               for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert names == [compute.THREAD_NAME] * 3
    assert compute.run(lambda: threading.current_thread().name) == compute.THREAD_NAME  # from the main thread too
    with pytest.raises(KeyError, match="missing"):
        compute.run({}.__getitem__, "missing")


def test_a_job_may_use_run_itself_without_waiting_for_itself(one_thread):
    assert compute.run(lambda: compute.run(lambda: compute.on_compute_thread())) is True


def test_the_callers_thread_count_is_the_jobs(one_thread):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert compute.run(torch.get_num_threads) == 1
        torch.set_num_threads(before)
        assert compute.run(torch.get_num_threads) == before
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")
def test_a_forked_child_starts_a_compute_thread_of_its_own(one_thread):
    compute.run(int)  # the parent's thread exists before the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the parent's compute thread did not come along
        try:
            os.write(write, compute.run(lambda: threading.current_thread().name).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        assert pipe.read() == compute.THREAD_NAME
    assert os.waitpid(pid, 0)[1] == 0


CHILD = """
import json, sys, threading
import numpy as np
import clip_embeddings.embedding.loaded as loaded
from clip_embeddings import ClipEF
from clip_embeddings.runtime.compute import use_one_thread

use_one_thread()
threads = set()
real_load = loaded.load
def load(*args, **kwargs):
    threads.add(("load", threading.current_thread().name))
    return real_load(*args, **kwargs)
loaded.load = load
ef = ClipEF(model=sys.argv[1], dtype="fp32", cache=False)
model = ef.loaded_model().model
# Both text paths (packed and padded) start at the token embedding; every image pass is the visual tower's.
model.token_embedding.register_forward_pre_hook(lambda *_: threads.add(("text", threading.current_thread().name)))
model.visual.register_forward_pre_hook(lambda *_: threads.add(("image", threading.current_thread().name)))
texts, images = ["a red square", "a blue circle"], [np.full((40, 30, 3), 200, np.uint8)]
out = {}
def embed(tag):
    out[tag] = [ef.embed_texts(texts).tolist(), ef.embed_images(images).tolist()]
embed("main")
worker = threading.Thread(target=embed, args=("worker",), name="a-request-thread")
worker.start()
worker.join()
print(json.dumps({"threads": sorted(threads), **out}))
"""


def test_after_use_one_thread_loading_and_every_pass_run_on_the_compute_thread(tiny_model_path):
    done = subprocess.run([sys.executable, "-c", CHILD, str(tiny_model_path)], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["threads"] == [["image", "clip-compute"], ["load", "clip-compute"], ["text", "clip-compute"]]
    # The same vectors as this process computes in its own thread (compute thread off here).
    ef = ClipEF(model=str(tiny_model_path), dtype="fp32", cache=False)
    texts = ef.embed_texts(["a red square", "a blue circle"])
    images = ef.embed_images([np.full((40, 30, 3), 200, np.uint8)])
    for tag in ("main", "worker"):
        np.testing.assert_allclose(report[tag][0], texts, atol=1e-6)
        np.testing.assert_allclose(report[tag][1], images, atol=1e-6)


def test_clip_compute_thread_0_keeps_use_one_thread_off(monkeypatch):
    monkeypatch.setattr(compute, "_enabled", False)
    monkeypatch.setenv("CLIP_COMPUTE_THREAD", "0")
    compute.use_one_thread()
    assert compute.run(lambda: threading.current_thread()) is threading.current_thread()
    monkeypatch.setenv("CLIP_COMPUTE_THREAD", "1")
    compute.use_one_thread()
    assert compute.run(lambda: threading.current_thread().name) == compute.THREAD_NAME
