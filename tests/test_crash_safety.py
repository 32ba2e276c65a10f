"""SIGKILL in the middle of an ingest, then the same ingest again: nothing lost, nothing twice.

For each store (Chroma ``PersistentClient``, Qdrant local ``path=``, LanceDB directory, pgvector on
the session's PostgreSQL, Milvus Lite ``.db``) a worker
process indexes a generated folder of 150 small JPEGs (140 distinct pictures, 10 byte-identical
copies under other names) with ``write_batch=10``. It reports every database write to a progress
file (``B k`` before write ``k``, ``E k`` after it) and pauses between writes; the test sends
SIGKILL as soon as it sees write 4 begin, so the kill usually lands inside a database write, with
three batches already committed. A second worker then runs the same ``index_folder`` to completion.

The store must end with every distinct image exactly once (ids derived from content), the killed
run must have left a partial store behind (so the kill really was mid-way), the sqlite embedding
cache must pass ``PRAGMA integrity_check`` and serve the re-run (``cache_hits > 0``).

The kinds run side by side (each worker costs seconds of imports on a small machine).
A last test kills a process hammering the embedding cache itself, mid-transaction.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clip_embeddings.adapters.base import item_id

pytestmark = pytest.mark.timeout(600)  # five databases side by side, each worker importing torch

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("chroma", "qdrant", "lancedb", "pgvector", "milvus")
N_FILES, N_COPIES, WRITE_BATCH = 150, 10, 10
KILL_AT_WRITE = 4  # SIGKILL when write 4 begins: writes 1-3 (30 rows) are committed

_WORKER = r"""
import json, os, sys, time
slow, folder, model, *jobs = sys.argv[1:]
import clip_embeddings as ce
from clip_embeddings.adapters import open_store

for job in jobs:  # one ingest per job; the kill runs have one job each, the re-run all of them
    kind, location, cache, progress = job.split("|")
    store = open_store(kind, location, "photos", ce.ClipEF(model, device="cpu", batch_size=16, cache=cache))
    store.write_batch = int(os.environ["WRITE_BATCH"])
    count_before = store.count()
    log = open(progress, "a", buffering=1)
    log.write("START\n")
    write, n = store._write, [0]

    def reported_write(records, write=write, log=log, n=n):
        n[0] += 1
        log.write(f"B {n[0]}\n")
        write(records)
        log.write(f"E {n[0]} {len(records)}\n")
        if slow == "1":
            time.sleep(0.3)  # room for the test to act between writes

    store._write = reported_write
    report = store.index_folder(folder, progress=False)
    log.write("DONE\n")
    print(json.dumps({"kind": kind, "count_before": count_before, "stored": report.stored,
                      "skipped": len(report.skipped), "cache_hits": report.cache_hits,
                      "count_after": store.count(), "writes": n[0]}), flush=True)
    store.close() if hasattr(store, "close") else None
    del store
"""


def make_folder(folder: Path) -> dict[str, Path]:
    """150 small JPEGs in two subfolders, 140 distinct; returns {expected item id: one path}."""
    folder.mkdir()
    (folder / "a").mkdir()
    (folder / "b").mkdir()
    rng = np.random.default_rng(12345)
    expected: dict[str, Path] = {}
    originals = []
    for i in range(N_FILES - N_COPIES):
        pixels = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        path = folder / ("a" if i % 2 else "b") / f"img{i:03d}.jpg"
        Image.fromarray(pixels).save(path, "JPEG", quality=85)
        originals.append(path)
    for j in range(N_COPIES):  # same bytes, other names: one item each
        copy = folder / "b" / f"copy{j:02d}.jpg"
        copy.write_bytes(originals[j * 7].read_bytes())
    for path in sorted(folder.rglob("*.jpg")):
        expected.setdefault(item_id("image", hashlib.sha256(path.read_bytes()).hexdigest()), path)
    assert len(list(folder.rglob("*.jpg"))) == N_FILES and len(expected) == N_FILES - N_COPIES
    return expected


def _env(cache_dir: Path) -> dict[str, str]:
    env = dict(os.environ, CLIP_CACHE_DIR=str(cache_dir), WRITE_BATCH=str(WRITE_BATCH),
               ANONYMIZED_TELEMETRY="False", PYTHONPATH=str(ROOT))
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env.pop(name, None)
    return env


def _lines(path: Path) -> list[str]:
    return path.read_text().split("\n")[:-1] if path.exists() else []  # complete lines only


def _writes(lines: list[str]) -> list[tuple[str, int]]:
    """("B", k) / ("E", k) events of the progress file, in order."""
    return [(line[0], int(line.split()[1])) for line in lines if line[:2] in ("B ", "E ")]


def _committed(lines: list[str]) -> int:
    """Rows in the writes that finished (``E k rows`` lines)."""
    return sum(int(line.split()[2]) for line in lines if line.startswith("E "))


@pytest.fixture(scope="module")
def crash_runs(tmp_path_factory, tiny_model_path, postgres_database):
    """Kill one ingest per kind part-way, then re-run each to completion; the kinds run in parallel."""
    pytest.importorskip("chromadb")
    pytest.importorskip("qdrant_client")
    pytest.importorskip("lancedb")
    pytest.importorskip("psycopg")
    pytest.importorskip("pymilvus")
    base = tmp_path_factory.mktemp("crash")
    folder = base / "photos"
    expected = make_folder(folder)
    script = base / "worker.py"
    script.write_text(_WORKER)
    runs = {}
    for kind in KINDS:
        work = base / kind
        work.mkdir()
        location = {"pgvector": postgres_database(), "milvus": work / "milvus.db"}.get(kind, work / "db")
        runs[kind] = {"location": location, "cache": work / "cache", "progress": work / "progress.txt",
                      "log": work / "worker.log"}

    def start(kinds: tuple[str, ...], slow: bool, log: Path) -> subprocess.Popen:
        jobs = ["|".join(str(x) for x in (k, runs[k]["location"], runs[k]["cache"] / "embeddings.sqlite3",
                                         runs[k]["progress"])) for k in kinds]
        args = [sys.executable, str(script), "1" if slow else "0", str(folder), str(tiny_model_path), *jobs]
        return subprocess.Popen(args, env=_env(base / "unused-cache"), stdout=subprocess.PIPE,
                                stderr=open(log, "ab"), text=True)

    # 1. Start them all, kill each when its write KILL_AT_WRITE begins.
    procs = {kind: start((kind,), slow=True, log=runs[kind]["log"]) for kind in KINDS}
    deadline = time.monotonic() + 240
    try:
        while any("killed_after" not in runs[kind] for kind in KINDS):
            for kind, proc in procs.items():
                r = runs[kind]
                if "killed_after" in r:
                    continue
                if ("B", KILL_AT_WRITE) in _writes(_lines(r["progress"])):
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(timeout=30)
                    r["returncode"] = proc.returncode
                    r["killed_after"] = {"lines": _lines(r["progress"])}
                elif proc.poll() is not None:
                    pytest.fail(f"{kind} worker ended before it could be killed (rc {proc.returncode}):\n"
                                f"{r['log'].read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("the workers did not reach write %d in time: %s" % (
                    KILL_AT_WRITE, {k: _lines(runs[k]["progress"])[-3:] for k in KINDS}))
            time.sleep(0.005)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    # 2. Re-run the ingests to completion, one after the other in one process.
    rerun_log = base / "rerun.log"
    proc = start(KINDS, slow=False, log=rerun_log)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, f"the re-run failed:\n{rerun_log.read_text()[-3000:]}"
    for line in out.strip().splitlines():
        result = json.loads(line)
        runs[result["kind"]]["rerun"] = result
    return expected, runs


def _stored_ids(kind: str, location: Path | str) -> list[str]:
    """Every stored image row's item id, read back from the database in this process."""
    if kind == "pgvector":
        import psycopg

        with psycopg.connect(location) as conn:
            return [i for (i,) in conn.execute("SELECT item_id FROM photos WHERE modality = 'image'")]
    if kind == "milvus":
        from pymilvus import MilvusClient

        client = MilvusClient(str(location))
        try:
            client.load_collection("photos")
            rows = client.query("photos", filter='modality == "image"', output_fields=["item_id"], limit=16_384)
            return [r["item_id"] for r in rows]
        finally:
            client.close()
    if kind == "chroma":
        import chromadb

        client = chromadb.PersistentClient(str(location), settings=chromadb.Settings(anonymized_telemetry=False))
        rows = client.get_collection("photos").get(include=["metadatas"])
        return [m["item_id"] for m in rows["metadatas"]]
    if kind == "qdrant":
        from qdrant_client import QdrantClient

        client = QdrantClient(path=str(location))
        try:
            ids, offset = [], None
            while True:
                points, offset = client.scroll("photos", limit=256, offset=offset, with_payload=True)
                ids += [p.payload["item_id"] for p in points]
                if offset is None:
                    return ids
        finally:
            client.close()
    import lancedb

    table = lancedb.connect(str(location)).open_table("photos")
    return table.to_arrow().column("item_id").to_pylist()


@pytest.mark.parametrize("kind", KINDS)
def test_sigkill_mid_ingest_then_rerun_stores_everything_once(crash_runs, kind):
    expected, runs = crash_runs
    r = runs[kind]
    lines = r["killed_after"]["lines"]
    writes = _writes(lines)
    inside = writes[-1] == ("B", KILL_AT_WRITE)
    print(f"\n{kind}: killed after {lines[-3:]} ({'inside' if inside else 'after'} database write "
          f"{KILL_AT_WRITE}); re-run: {r['rerun']}")
    assert r["returncode"] == -signal.SIGKILL
    assert "DONE" not in lines and max(k for _, k in writes) == KILL_AT_WRITE  # really killed part-way

    rerun = r["rerun"]
    # The killed run left a partial store: the committed batches, perhaps the one being written.
    committed = _committed(lines)
    assert committed >= (KILL_AT_WRITE - 1) * 6  # three writes of a streamed ingest had finished
    assert committed <= rerun["count_before"] <= committed + WRITE_BATCH, rerun
    assert rerun["count_before"] < len(expected)
    # The re-run stores everything; the content-derived ids make the committed rows upserts.
    assert rerun["stored"] == len(expected) and rerun["skipped"] == 0
    assert rerun["count_after"] == len(expected)

    ids = _stored_ids(kind, r["location"])
    assert len(ids) == len(expected), f"{len(ids)} rows for {len(expected)} distinct images"
    assert len(set(ids)) == len(ids), "duplicate rows"
    assert set(ids) == set(expected), f"missing: {sorted(set(expected) - set(ids))[:5]}"

    # The embedding cache survived the kill and served the re-run.
    assert rerun["cache_hits"] > 0
    cache = r["cache"] / "embeddings.sqlite3"
    with sqlite3.connect(cache) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0] == len(expected)
        vectors = [np.frombuffer(v, np.float32) for (v,) in db.execute("SELECT vector FROM embeddings")]
    np.testing.assert_allclose([np.linalg.norm(v) for v in vectors], 1.0, atol=1e-5)


_CACHE_HAMMER = r"""
import importlib.util, sys
import numpy as np
from clip_embeddings.embedding import cache  # argv[1] names the module (it imports the package's errors)
c = cache.EmbeddingCache(sys.argv[2])
log = open(sys.argv[3], "a", buffering=1)
for batch in range(10_000):
    vectors = {f"{batch}-{i}": np.full(64, batch * 1000 + i, np.float32) for i in range(500)}
    c.put("fp", vectors)
    log.write(f"{batch}\n")
"""


def test_cache_survives_sigkill_mid_transaction(tmp_path):
    """A process killed while writing the cache leaves whole transactions only, and a usable file."""
    path, progress = tmp_path / "cache.sqlite3", tmp_path / "progress.txt"
    proc = subprocess.Popen([sys.executable, "-c", _CACHE_HAMMER, "clip_embeddings.embedding.cache",
                             str(path), str(progress)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    try:
        while len(_lines(progress)) < 5:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the cache writer made no progress"
            time.sleep(0.01)
        time.sleep(0.037)  # somewhere inside a later 500-row transaction
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = [int(x) for x in _lines(progress)]
    assert path.with_name(path.name + "-wal").exists()  # the kill left the WAL behind, uncheckpointed

    from clip_embeddings.embedding.cache import EmbeddingCache

    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = db.execute("SELECT digest, vector FROM embeddings").fetchall()
    batches = {}
    for digest, vector in rows:
        batch, i = map(int, digest.split("-"))
        batches.setdefault(batch, 0)
        batches[batch] += 1
        assert np.frombuffer(vector, np.float32).tolist() == [float(batch * 1000 + i)] * 64
    # Whole transactions only: every batch present has all its 500 rows, and none reported is lost.
    assert set(batches.values()) == {500}
    assert set(done) <= set(batches) and len(batches) <= max(done) + 2
    # The file reopens and keeps working.
    cache = EmbeddingCache(path)
    cache.put("fp", {"after": np.ones(64, np.float32)})
    assert cache.get("fp", ["after", "0-0"])["0-0"][0] == 0.0 and len(cache) == len(rows) + 1
