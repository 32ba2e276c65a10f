"""``index --watch``: the collection follows the folder as files come, change and go; Ctrl-C is safe.

Deadlines are generous and only bound how long a failing test waits: nothing asserts a speed.
LanceDB is the store here because a second process may read it while the watcher writes.
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
from clip_embeddings.collection.watch import FolderWatcher, watch

ROOT = Path(__file__).resolve().parent.parent
CLI = "import sys; from clip_embeddings.apps.cli import main; sys.exit(main(sys.argv[1:]))"


def picture(path: Path, seed: int) -> Path:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(path)
    return path


def eventually(check, what: str, deadline: float = 180.0):
    end = time.monotonic() + deadline
    while True:
        try:
            value = check()
            if value:
                return value
        except Exception:  # noqa: BLE001 - the table may not exist yet
            pass
        if time.monotonic() > end:
            raise AssertionError(f"not within {deadline:.0f} s: {what}")
        time.sleep(0.5)


def sources(location: Path, model: Path) -> set[str]:
    store = open_store("lancedb", str(location), "photos", ce.ClipEF(str(model), cache=False))
    return {Path(r.source).name for r in store.records("image", with_vectors=False)}


def test_index_watch_follows_the_folder_and_stops_cleanly_on_ctrl_c(tmp_path, tiny_model_path):
    folder, db = tmp_path / "photos", tmp_path / "db"
    folder.mkdir()
    picture(folder / "a.png", 1)
    picture(folder / "b.png", 2)
    log = open(tmp_path / "watch.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-c", CLI, "index", str(folder), "--db", "lancedb", "--location", str(db),
         "--collection", "photos", "--model", str(tiny_model_path), "--watch", "--json"],
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        eventually(lambda: sources(db, tiny_model_path) == {"a.png", "b.png"}, "the first sync")
        picture(folder / "c.png", 3)  # created
        picture(folder / "a.png", 4)  # modified
        (folder / "b.png").unlink()  # deleted
        eventually(lambda: sources(db, tiny_model_path) == {"a.png", "c.png"}, "the collection following the folder")
        store = open_store("lancedb", str(db), "photos", ce.ClipEF(str(tiny_model_path), cache=False))
        new_a = ce.ClipEF(str(tiny_model_path), cache=False).encode_images([folder / "a.png"]).digests[0]
        assert {r.digest for r in store.records("image") if r.source.endswith("a.png")} == {new_a}

        picture(folder / "d.png", 5)  # a change, then Ctrl-C while it may be syncing
        time.sleep(1.5)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 0
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    output = (tmp_path / "watch.log").read_text()
    reports = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert reports and all("removed" in r for r in reports), output[-2000:]  # one sync report a line
    # Consistent: every stored item is a whole file of the folder, once; one more sync finishes the job.
    store = open_store("lancedb", str(db), "photos", ce.ClipEF(str(tiny_model_path), cache=False))
    rows = list(store.records("image", with_vectors=False))
    assert len(rows) == len({r.id for r in rows}) and {Path(r.source).name for r in rows} <= {"a.png", "c.png", "d.png"}
    report = store.index_folder(folder, sync=True, progress=False)
    assert (report.removed, report.updated, report.renamed) == (0, 0, 0)
    assert sources(db, tiny_model_path) == {"a.png", "c.png", "d.png"}


@pytest.mark.parametrize("backend", ["poll", "watchdog"])
def test_a_burst_of_changes_is_one_sync(tmp_path, backend):
    pytest.importorskip("watchdog") if backend == "watchdog" else None
    (tmp_path / "x.txt").write_text("0")
    stop, runs = threading.Event(), []

    def sync():
        runs.append(time.monotonic())
        return len(runs)

    thread = threading.Thread(target=watch, args=(sync, tmp_path), daemon=True,
                              kwargs={"stop": stop.is_set, "on_report": lambda r: None, "debounce": 1.5,
                                      "poll_seconds": 0.3, "backend": backend})
    thread.start()
    eventually(lambda: len(runs) == 1, "the first sync", 30)
    for i in range(5):  # a burst, each change well inside the debounce window
        (tmp_path / f"burst-{i}.txt").write_text(str(i))
        time.sleep(0.1)
    eventually(lambda: len(runs) >= 2, "a sync after the burst", 30)
    time.sleep(4)  # room for a wrongly split burst to show up as a third sync
    stop.set()
    thread.join(timeout=60)
    assert not thread.is_alive() and len(runs) == 2  # one sync for the whole burst
    assert FolderWatcher(tmp_path, backend="poll").backend == "poll"
