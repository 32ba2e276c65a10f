"""The streaming image pipeline: ingests write as they go, resume, count honestly, and isolate callers.

Real databases throughout: Chroma (in-process and a ``chroma run`` server), Qdrant local and a
LanceDB directory. Kills are real SIGKILLs of a worker process, taken when the worker reports
that a share of the folder is stored.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import clip_embeddings as ce
from clip_embeddings.adapters import open_store
from clip_embeddings.embedding.pipeline import MAX_WORKERS, ImagePipeline
import http.server

from tests.servers import serving

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("chroma", "qdrant", "lancedb", "pgvector", "milvus")


def make_folder(folder: Path, n: int, copies: int = 0, seed: int = 7) -> list[Path]:
    """``n`` distinct small PNGs, then ``copies`` byte-identical copies of the first ones."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"img{i:06d}.png"
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    for j in range(copies):
        copy = folder / f"zcopy{j:03d}.png"
        copy.write_bytes(paths[j].read_bytes())
    return paths




# --- duplicates, re-runs and honest counts ------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_folder_with_duplicates_is_stored_once_and_a_rerun_reports_nothing_new(kind, tmp_path, store_location,
                                                                               tiny_model_path):
    folder = tmp_path / "photos"
    make_folder(folder, 40, copies=5)
    store = open_store(kind, store_location(kind), "photos", ce.ClipEF(tiny_model_path, batch_size=8))
    first = store.index_folder(folder, progress=False)
    assert (first.new, first.present, first.duplicates, first.skipped) == (40, 0, 5, [])
    assert store.count() == store.count("image") == 40 and store.count("text") == 0
    again = store.index_folder(folder, progress=False)
    assert (again.new, again.updated, again.present, again.duplicates) == (0, 0, 40, 5)
    assert again.ids == first.ids and store.count() == 40


def test_repeated_inputs_in_one_call_never_raise_duplicate_ids(tmp_path, tiny_model_path, sample_images):
    store = open_store("chroma", str(tmp_path / "db"), "photos", ce.ClipEF(tiny_model_path))
    images = store.add_images([sample_images[0], sample_images[0], sample_images[1]])
    texts = store.add_texts(["the same", "the same", "other"])
    assert (images.new, images.duplicates, texts.new, texts.duplicates) == (2, 1, 2, 1)
    assert (store.count("image"), store.count("text")) == (2, 2)


@pytest.mark.parametrize("kind", KINDS)
def test_two_captioned_images_count_two_items_everywhere(kind, store_location, tiny_model_path, sample_images):
    store = open_store(kind, store_location(kind), "photos", ce.ClipEF(tiny_model_path))
    store.add_images(sample_images[:2], captions=["one", "two"])
    assert (store.count(), store.count("image"), store.count("text")) == (2, 2, 2)
    store.add_texts(["a text on its own"])
    assert (store.count(), store.count("image"), store.count("text")) == (3, 2, 3)


def test_a_generator_is_ingested_batch_by_batch(tmp_path, tiny_model_path):
    """Each batch is written before the next is read: the store grows while the input is consumed."""
    paths = make_folder(tmp_path / "photos", 30)
    store = open_store("lancedb", str(tmp_path / "db"), "photos", ce.ClipEF(tiny_model_path, batch_size=5))
    store.write_batch = 5  # write every batch (an ingest writes every write_batch records or flush_seconds)
    seen_counts = []

    def images():
        for i, path in enumerate(paths):
            if i % 10 == 0:
                seen_counts.append(store.count())
            yield path

    reports = list(store.stream_images(images()))
    assert [r.new for r in reports] == [5] * 6
    # When item 20 is pulled, at least the first 10 items are already stored (the pipeline reads
    # at most two batches ahead of the model).
    assert seen_counts[0] == 0 and seen_counts[2] >= 10


def test_an_ingest_writes_every_write_batch_records_or_flush_seconds(tmp_path, tiny_model_path):
    paths = make_folder(tmp_path / "photos", 24)
    store = open_store("chroma", str(tmp_path / "db"), "photos", ce.ClipEF(tiny_model_path, batch_size=4))
    store.write_batch, store.flush_seconds = 10, 3600.0
    assert [r.new for r in store.stream_images(paths)] == [12, 12]  # 3 batches of 4 reach 10 rows, then the rest
    store.write_batch, store.flush_seconds = 10_000, 0.0  # nothing buffered for long: every batch is written
    assert [r.new + r.present for r in store.stream_images(make_folder(tmp_path / "more", 8, seed=3))] == [4, 4]


# --- a crash or an interrupt loses at most the batches in flight --------------------------------

_WORKER = r"""
import json, sys
import clip_embeddings as ce
from clip_embeddings.adapters import open_store
kind, location, name, folder, model = sys.argv[1:]
store = open_store(kind, location, name, ce.ClipEF(model, batch_size=16, cache=False))
store.write_batch = 32
done = 0
for batch in store.stream_folder(folder, progress=False):
    done += batch.new + batch.present
    print(json.dumps({"stored": done}), flush=True)
print(json.dumps({"finished": done}), flush=True)
"""


def _kill_part_way(kind: str, location: str, name: str, folder: Path, model: Path, at_least: int) -> int:
    """Ingest in a worker; SIGKILL it once it reports ``at_least`` items stored; returns its last report."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), ANONYMIZED_TELEMETRY="False")
    proc = subprocess.Popen([sys.executable, "-c", _WORKER, kind, location, name, str(folder), str(model)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    reported = 0
    try:
        for line in proc.stdout:
            reported = json.loads(line).get("stored", reported)
            if reported >= at_least:
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
    return reported


@pytest.mark.parametrize("kind", [*KINDS, "chroma-server"])
def test_sigkill_part_way_keeps_what_was_written_and_the_rerun_completes(kind, tmp_path, store_location,
                                                                         tiny_model_path, request):
    n = 400
    folder = tmp_path / "photos"
    make_folder(folder, n, copies=8)
    server = request.getfixturevalue("chroma_server") if kind == "chroma-server" else None
    db = "chroma" if server else kind
    location = f"http://{server[0]}:{server[1]}" if server else store_location(db)
    name = f"killed-{tmp_path.name}"[-60:] if server else "photos"  # one collection per run on the shared server
    reported = _kill_part_way(db, location, name, folder, tiny_model_path, at_least=n // 2)
    assert n // 2 <= reported < n  # killed part-way, with half the folder reported stored

    store = open_store(db, location, name)
    assert store.count() >= reported  # everything reported before the kill is in the database
    rerun = store.index_folder(folder, progress=False)
    assert rerun.present >= reported and rerun.new == n - rerun.present and rerun.duplicates == 8
    assert store.count() == store.count("image") == n  # every image exactly once


def test_index_on_ctrl_c_says_what_is_stored_and_a_rerun_resumes(tmp_path, tiny_model_path):
    folder = tmp_path / "photos"
    make_folder(folder, 2000)
    db = tmp_path / "db"
    args = [sys.executable, "-m", "clip_embeddings.apps.cli", "index", str(folder), "--location", str(db),
            "--collection", "photos", "--batch-size", "8"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), CLIP_WEIGHTS=str(tiny_model_path), ANONYMIZED_TELEMETRY="False")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and _chroma_rows(db / "chroma.sqlite3") == 0:  # until a write landed
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted:" in err and "run the same command again to resume" in err
    stored = int(err.split("interrupted: ")[1].split(" new item(s)")[0])
    assert 0 < stored < 2000

    rerun = subprocess.run([*args, "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    assert report["present"] >= stored and report["new"] + report["present"] == 2000
    assert report["collection_counts"] == {"items": 2000, "images": 2000, "texts": 0}


def _chroma_rows(path: Path) -> int:
    """Rows a Chroma folder's sqlite file holds so far (read-only peek; 0 while it is being created)."""
    import sqlite3

    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.1) as db:
            return db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
    except sqlite3.Error:
        return 0


# --- the CLI reads captions ---------------------------------------------------------------------

def test_index_stores_captions_and_search_finds_text_records(tmp_path, tiny_model_path, sample_images):
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in sample_images[:3]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "captions.csv").write_text(f"path,caption\n{sample_images[0].name},the first caption\n")
    (folder / sample_images[1].with_suffix(".txt").name).write_text("a sidecar caption\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), CLIP_WEIGHTS=str(tiny_model_path), ANONYMIZED_TELEMETRY="False")
    common = ["--location", str(tmp_path / "db"), "--collection", "photos"]

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "clip_embeddings.apps.cli", *args, *common, "--json"],
                              capture_output=True, text=True, env=env, timeout=300)

    index = cli("index", str(folder))
    assert index.returncode == 0, index.stderr
    assert json.loads(index.stdout)["collection_counts"] == {"items": 3, "images": 3, "texts": 2}
    search = cli("search", "the first caption", "--modality", "text", "-k", "2")
    assert search.returncode == 0, search.stderr
    hits = open_store("chroma", str(tmp_path / "db"), "photos").query("the first caption", k=5, modality="text")
    assert {h.document for h in hits} == {"the first caption", "a sidecar caption"}

    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / sample_images[0].name).write_bytes(sample_images[0].read_bytes())
    common[1] = str(tmp_path / "db2")
    assert cli("index", str(bare)).returncode == 0
    empty = cli("search", "anything", "--modality", "text")
    assert empty.returncode == 1 and "holds no text records" in empty.stderr


# --- the pipeline isolates callers and shares nothing that breaks ----------------------------------

def test_one_lazily_opened_pil_image_repeated_gives_the_same_vector(tmp_path, tiny_model_path, sample_images):
    ef = ce.ClipEF(tiny_model_path, cache=False, num_workers=8, batch_size=4)
    expected = ef.embed_images([Image.open(sample_images[0]).convert("RGB")])[0]
    for _ in range(3):
        lazy = Image.open(sample_images[0])  # not loaded yet: every worker would decode it at once
        result = ef.encode_images([lazy] * 16, on_error="skip")
        assert result.skipped == [] and len(result.indices) == 16
        np.testing.assert_allclose(result.embeddings, np.tile(expected, (16, 1)), atol=1e-6)


def test_a_slow_caller_does_not_hold_up_another(tiny_model_path, no_proxy):
    ef = ce.ClipEF(tiny_model_path, cache=False, num_workers=2,
                   loader_options=ce.inputs.LoaderOptions(url_timeout=4.0))
    ef.dim  # load the model first: the timing below is about the pipeline
    release = threading.Event()

    class Stalling(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            release.wait(3.0)  # answers nothing for 3 s
            self.send_error(404)

        def log_message(self, *args):
            pass

    with serving(Stalling) as server:
        slow = threading.Thread(target=lambda: ef.encode_images([f"{server.url}/slow{i}.jpg" for i in range(4)],
                                                                on_error="skip"))
        slow.start()
        time.sleep(0.3)  # the slow call holds its workers now
        start = time.perf_counter()
        fast = ef.embed_images([np.zeros((16, 16, 3), np.uint8)])
        elapsed = time.perf_counter() - start
        release.set()
        slow.join()
    assert fast.shape == (1, 64)
    assert elapsed < 1.5, f"an array waited {elapsed:.1f} s behind another caller's stalled URLs"


def test_worker_threads_are_bounded_per_call_and_released(tiny_model_path):
    before = threading.active_count()
    peak = [0]
    ef = ce.ClipEF(tiny_model_path, cache=False, num_workers=100, batch_size=4)
    pipeline = ef.image_pipeline()
    for _ in pipeline.batches(np.zeros((40, 8, 8, 3), np.uint8)):
        peak[0] = max(peak[0], threading.active_count())
    assert peak[0] - before <= MAX_WORKERS
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before  # nothing left running after the call


def test_pipeline_results_keep_input_order_and_reasons(tiny_model_path, tmp_path):
    good = np.zeros((8, 8, 3), np.uint8)
    items = [good, str(tmp_path / "missing.png"), good + 50, b"not an image"]
    pipeline = ImagePipeline(ce.ClipEF(tiny_model_path, cache=False).loaded_model(), batch_size=3)
    results = [r for batch in pipeline.batches(items) for r in batch]
    assert [r.index for r in results] == [0, 1, 2, 3]
    assert [r.ok for r in results] == [True, False, True, False]
    assert results[1].reason == "file not found" and "missing.png" in results[1].source
    assert results[0].digest != results[2].digest


# --- memory stays flat however large the folder --------------------------------------------------

# The ingesting process writes to a `chroma run` server: every database's own process memory grows
# with what it stores (Chroma's HNSW index, LanceDB's in-process writer, Qdrant local's points, all
# ~1.5-3 KB a row measured here), so only an out-of-process database shows what *our* side holds.
_RSS_WORKER = r"""
import json, resource, sys
from pathlib import Path
import clip_embeddings as ce
from clip_embeddings.adapters import open_store
from tests.test_streaming import make_folder
folder, location, name, model, n = sys.argv[1:]
make_folder(Path(folder), int(n))
store = open_store("chroma", location, name, ce.ClipEF(model, batch_size=64, cache=False))
report = store.index_folder(folder, progress=False)
print(json.dumps({"new": report.new, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.timeout(1800)
def test_peak_memory_of_a_100k_folder_ingest_is_within_50_mb_of_a_10k_one(tmp_path, tiny_model_path, chroma_server):
    host, port = chroma_server
    env = dict(os.environ, PYTHONPATH=str(ROOT), ANONYMIZED_TELEMETRY="False")
    peaks = {}
    for n in (10_000, 100_000):
        run = subprocess.run([sys.executable, "-c", _RSS_WORKER, str(tmp_path / f"f{n}"), f"http://{host}:{port}",
                              f"rss-{n}-{tmp_path.name}"[-60:], str(tiny_model_path), str(n)],
                             capture_output=True, text=True, env=env, timeout=1700)
        assert run.returncode == 0, run.stderr[-3000:]
        result = json.loads(run.stdout.strip().splitlines()[-1])
        assert result["new"] == n
        peaks[n] = result["rss_mb"]
    print(f"\npeak RSS: 10k images {peaks[10_000]:.0f} MB, 100k images {peaks[100_000]:.0f} MB")
    assert peaks[100_000] - peaks[10_000] < 50, peaks


def test_chroma_uris_and_paths_give_the_same_vector(tmp_path, tiny_model_path, sample_images):
    """The data loader decodes through the same pipeline (draft mode included) as a path does."""
    import chromadb
    from clip_embeddings.adapters.chroma import ChromaStore

    ef = ce.ClipEF(tiny_model_path, cache=False)
    store = ChromaStore(chromadb.PersistentClient(str(tmp_path / "db")), "photos", ef)
    store.collection.add(ids=["by-uri"], uris=[str(sample_images[0])])
    got = np.asarray(store.collection.get(ids=["by-uri"], include=["embeddings"])["embeddings"][0], np.float32)
    np.testing.assert_allclose(got, ef.embed_images([sample_images[0]])[0], atol=1e-6)
