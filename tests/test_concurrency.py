"""Concurrent writers and concurrent callers.

* Four processes index overlapping folders into one collection of a real ``chroma run`` server
  (started here on a free loopback port, stopped at the end), racing on creating the collection,
  on upserting the shared images and on the shared sqlite embedding cache: the collection ends
  with every distinct image exactly once.
* Eight threads share one ``ClipEF`` whose model is not loaded yet: they race on the first load
  (it must happen once) and then embed different image and text batches at the same time; every
  result equals the single-threaded one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import clip_embeddings as ce
from tests.servers import chroma_command, chroma_server_at
from clip_embeddings.embedding import loaded as embedding
from clip_embeddings.adapters.base import item_id

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parent.parent

_WORKER = r"""
import json, sys
host, port, folder, model = sys.argv[1:5]
import chromadb
import clip_embeddings as ce
from clip_embeddings.adapters.chroma import ChromaStore

client = chromadb.HttpClient(host=host, port=int(port), settings=chromadb.Settings(anonymized_telemetry=False))
store = ChromaStore(client, "shared", ce.ClipEF(model, device="cpu", batch_size=8))
store.write_batch = 7  # many small upserts, interleaved with the other writers'
report = store.index_folder(folder, progress=False)
print(json.dumps({"stored": report.stored, "skipped": len(report.skipped), "cache_hits": report.cache_hits}))
"""


@pytest.fixture
def chroma_server(tmp_path):
    """A server of this test's own: the test checks that the create race left exactly one collection."""
    if chroma_command() is None:
        pytest.skip("the `chroma` command is not installed")
    with chroma_server_at(tmp_path / "server") as address:
        yield address


def test_four_processes_index_overlapping_folders_into_one_server(tmp_path, chroma_server, tiny_model_path):
    import chromadb

    from clip_embeddings.adapters.chroma import ChromaStore

    host, port = chroma_server
    # 110 distinct pictures: folder k holds pictures 20k .. 20k+39 (each overlaps the next folder
    # by half) and 100 .. 109, which are in all four folders.
    rng = np.random.default_rng(4)
    pictures = [rng.integers(0, 256, (20, 28, 3), dtype=np.uint8) for _ in range(110)]
    expected: set[str] = set()
    folders = []
    for k in range(4):
        folder = tmp_path / f"folder{k}"
        folder.mkdir()
        for j in [*range(20 * k, 20 * k + 40), *range(100, 110)]:
            path = folder / f"p{j:03d}-{k}.png"  # names differ per folder; contents overlap
            Image.fromarray(pictures[j]).save(path)
            expected.add(item_id("image", hashlib.sha256(path.read_bytes()).hexdigest()))
        folders.append(folder)
    assert len(expected) == 110 and all(len(list(f.iterdir())) == 50 for f in folders)
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    env = dict(os.environ, CLIP_CACHE_DIR=str(tmp_path / "shared-cache"), ANONYMIZED_TELEMETRY="False",
               PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, str(script), host, str(port), str(folder), str(tiny_model_path)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for folder in folders]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, f"a writer crashed:\n{err[-3000:]}"
        results.append(json.loads(out.strip().splitlines()[-1]))
    print("\nwriters:", results)
    assert all(r["stored"] == 50 and r["skipped"] == 0 for r in results)

    client = chromadb.HttpClient(host=host, port=port, settings=chromadb.Settings(anonymized_telemetry=False))
    assert len([c for c in client.list_collections()]) == 1  # the create race made one collection
    store = ChromaStore(client, "shared")  # reopened from its stored config
    rows = store.collection.get(include=["metadatas"])
    item_ids = [m["item_id"] for m in rows["metadatas"]]
    assert len(rows["ids"]) == len(set(rows["ids"])) == len(item_ids) == len(set(item_ids))
    assert set(item_ids) == expected and store.count() == len(expected)
    # Every stored vector is the one a single process computes for that picture.
    probe = folders[3] / "p095-3.png"
    vector = store.ef.embed_images([probe])[0]
    hit = store.query(image=probe, k=1)[0]
    assert hit.id == item_id("image", hashlib.sha256(probe.read_bytes()).hexdigest()) and hit.score > 0.9999
    stored = store.collection.get(ids=[hit.id], include=["embeddings"])["embeddings"][0]
    np.testing.assert_allclose(stored, vector, atol=1e-6)


def test_eight_threads_share_one_clip_ef(tmp_path, tiny_model_path):
    # A path no other test used: the model is not in the registry yet, so the threads race to load it.
    weights = tmp_path / "fresh-weights.pt"
    shutil.copy(tiny_model_path, weights)
    ef = ce.ClipEF(weights, device="cpu", cache=False, batch_size=4)
    rng = np.random.default_rng(8)
    files = []
    for i in range(12):
        path = tmp_path / f"img{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (30 + i, 26, 3), dtype=np.uint8)).save(path)
        files.append(path)
    image_batches = [[files[(t + j) % 12] for j in range(3 + t % 4)] +
                     [rng.integers(0, 256, (17, 19 + t, 3), dtype=np.uint8)] for t in range(8)]
    text_batches = [[f"thread {t} caption {j}" * (1 + j) for j in range(2 + t % 3)] + ["", "a" * 5000]
                    for t in range(8)]

    loads_before = embedding.model_load_count()
    barrier = threading.Barrier(8)
    results: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            barrier.wait(timeout=60)
            out = []
            for _ in range(3):  # several rounds, so the threads' batches really overlap in time
                out.append((ef.embed_images(image_batches[t]), ef.embed_texts(text_batches[t])))
            for images, texts in out[1:]:  # and a thread agrees with itself
                np.testing.assert_array_equal(images, out[0][0])
                np.testing.assert_array_equal(texts, out[0][1])
            results[t] = out[0]
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    assert not errors, errors
    assert embedding.model_load_count() - loads_before == 1  # eight first uses, one load

    for t in range(8):  # single-threaded, after the fact
        np.testing.assert_allclose(results[t][0], ef.embed_images(image_batches[t]), atol=1e-6)
        np.testing.assert_allclose(results[t][1], ef.embed_texts(text_batches[t]), atol=1e-6)
        assert results[t][0].shape == (len(image_batches[t]), ef.dim)
    assert embedding.model_load_count() - loads_before == 1
