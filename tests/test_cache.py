"""The embedding cache under faults (issue 15, defect 3): never an error out of an embed call.

Faults are real, not mocked: random bytes and truncated files, a folder where the file should be,
a read-only and a full file system (tmpfs mounts when the test may mount, else a chmod'ed folder
for read-only; the full-disk case is skipped without mount rights).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

import clip_embeddings as ce
from clip_embeddings.embedding import function as embedding
from clip_embeddings.embedding.cache import CacheWarning, EmbeddingCache, parse_size


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(n)]


def _embed(model, cache, images, **kw) -> tuple[ce.ImageEmbeddings, list[warnings.WarningMessage]]:
    ef = ce.ClipEF(str(model), cache=cache, batch_size=4, **kw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = ef.encode_images(images)
    return result, [w for w in caught if issubclass(w.category, CacheWarning)]


def _uncached(model, images) -> np.ndarray:
    return ce.ClipEF(str(model), cache=False).encode_images(images).embeddings


@pytest.fixture(autouse=True)
def fresh_open_caches():
    # Each test sees its own cache objects (they are shared per path within a process).
    embedding._open_caches.clear()
    yield
    for cache in embedding._open_caches.values():
        cache.close()
    embedding._open_caches.clear()


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(where)],
                          capture_output=True)
    return done.returncode == 0


@pytest.fixture
def tiny_filesystem(tmp_path):
    where = tmp_path / "tiny-fs"
    if not _mount_tmpfs(where, "256k"):
        pytest.skip("cannot mount a tmpfs here (needs root): the full-disk case needs a real full disk")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def read_only_dir(tmp_path):
    where = tmp_path / "read-only"
    where.mkdir()
    where.chmod(0o555)
    try:
        (where / "probe").touch()  # root ignores permissions: use a read-only mount instead
    except PermissionError:
        yield where
        where.chmod(0o755)
        return
    (where / "probe").unlink()
    if not _mount_tmpfs(where, "1m") or subprocess.run(["mount", "-o", "remount,ro", str(where)]).returncode:
        pytest.skip("cannot make a read-only folder here")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_random_bytes_file_is_moved_aside_and_replaced(tiny_model_path, tmp_path):
    path = tmp_path / "cache.sqlite3"
    path.write_bytes(os.urandom(8192))
    images = _images(6)
    result, caught = _embed(tiny_model_path, path, images)
    assert np.abs(result.embeddings - _uncached(tiny_model_path, images)).max() < 1e-6
    assert len(caught) == 1 and "moved it to" in str(caught[0].message)
    moved = list(tmp_path.glob("cache.sqlite3.corrupt-*"))
    assert len(moved) == 1 and len(moved[0].read_bytes()) == 8192
    again, caught = _embed(tiny_model_path, path, images)  # the new file works: every item hits
    assert again.cache_hits == 6 and caught == []


def test_truncated_database_never_raises(tiny_model_path, tmp_path):
    path = tmp_path / "cache.sqlite3"
    cache = EmbeddingCache(path)
    cache.put("fp", {f"d{i}": np.ones(512, np.float32) for i in range(2000)})
    cache.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    Path(f"{path}-wal").unlink(missing_ok=True)
    images = _images(5, seed=1)
    result, caught = _embed(tiny_model_path, path, images)
    assert len(result.indices) == 5 and len(caught) >= 1
    assert np.abs(result.embeddings - _uncached(tiny_model_path, images)).max() < 1e-6


def test_cache_path_that_is_a_directory_warns_once(tiny_model_path, tmp_path):
    path = tmp_path / "a-folder"
    path.mkdir()
    first, caught = _embed(tiny_model_path, path, _images(3))
    assert len(first.indices) == 3 and len(caught) == 1 and "turned off" in str(caught[0].message)
    second, caught = _embed(tiny_model_path, path, _images(3, seed=2))
    assert len(second.indices) == 3 and caught == []  # once per cache, not once per call


def test_read_only_home_embeds_without_cache(tiny_model_path, read_only_dir, monkeypatch):
    monkeypatch.setenv("CLIP_CACHE_DIR", str(read_only_dir / "clip"))  # cannot even be created
    images = _images(4, seed=3)
    result, caught = _embed(tiny_model_path, True, images)
    assert len(result.indices) == 4 and len(caught) == 1
    # The file exists but the folder is read-only (sqlite needs to write beside it): same.
    result, caught = _embed(tiny_model_path, read_only_dir / "cache.sqlite3", images)
    assert len(result.indices) == 4 and len(caught) == 1


def test_full_disk_keeps_what_was_computed(tiny_model_path, tiny_filesystem):
    path = tiny_filesystem / "cache.sqlite3"
    EmbeddingCache(path).close()
    with open(tiny_filesystem / "filler", "wb", buffering=0) as filler:  # take every free byte that is left
        try:
            while True:
                filler.write(bytes(4096))
                filler.flush()
        except OSError:
            pass
    images = _images(40, seed=4)
    result, caught = _embed(tiny_model_path, path, images)
    assert result.indices == list(range(40)) and len(caught) == 1
    assert "full" in str(caught[0].message)
    assert np.abs(result.embeddings - _uncached(tiny_model_path, images)).max() < 1e-6


def test_many_cache_paths_do_not_leak_file_descriptors(tiny_model_path, tmp_path):
    # Each distinct path used to keep ~8 descriptors open forever (the 109th failed at ulimit 1024).
    ef_images = _images(2, seed=5)
    _embed(tiny_model_path, tmp_path / "warm.sqlite3", ef_images)
    before = len(os.listdir("/proc/self/fd"))
    for i in range(40):
        result, _ = _embed(tiny_model_path, tmp_path / f"c{i}.sqlite3", ef_images)
        assert len(result.indices) == 2
    grown = len(os.listdir("/proc/self/fd")) - before
    assert grown <= 3 * embedding._MAX_OPEN_CACHES, f"{grown} more descriptors after 40 cache paths"


def test_size_cap_evicts_least_recently_used(tmp_path):
    cache = EmbeddingCache(tmp_path / "c.sqlite3", max_bytes=300_000)
    vector = np.ones(512, np.float32)  # 2 KB each: 400 of them are 800 KB
    for i in range(400):
        cache.put("fp", {f"v{i}": vector})
    stats = cache.stats()
    assert stats["live_bytes"] <= 300_000 * 1.05, stats
    assert 50 < stats["entries"] < 150, stats
    found = cache.get("fp", [f"v{i}" for i in range(400)])
    newest = sorted(int(d[1:]) for d in found)
    assert newest == list(range(400 - len(found), 400))  # exactly the most recent survive


def test_touch_on_hit_protects_recent_entries(tmp_path):
    # Without the test reaching in: entries written long ago and read now outlive unread ones.
    cache = EmbeddingCache(tmp_path / "c.sqlite3", max_bytes=10**9)
    vector = np.ones(512, np.float32)
    cache.put("fp", {f"a{i}": vector for i in range(50)})
    cache._guard(lambda db: db.execute("UPDATE embeddings SET used = 5"), None)  # all "long ago"
    cache.get("fp", [f"a{i}" for i in range(25)])  # half of them are used now
    assert cache.prune(max_bytes=cache.stats()["live_bytes"] // 2) > 0
    left = set(cache.get("fp", [f"a{i}" for i in range(50)]))
    assert left and left <= {f"a{i}" for i in range(25)}


def test_old_cache_files_gain_the_used_column(tmp_path):
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE embeddings (fingerprint TEXT NOT NULL, digest TEXT NOT NULL, vector BLOB NOT NULL,
            PRIMARY KEY (fingerprint, digest)) WITHOUT ROWID;
        CREATE TABLE file_digests (path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
            digest TEXT NOT NULL) WITHOUT ROWID;""")
    db.execute("INSERT INTO embeddings VALUES ('fp', 'd', ?)", (np.arange(4, dtype=np.float32).tobytes(),))
    db.commit()
    db.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache = EmbeddingCache(path)
        assert cache.get("fp", ["d"])["d"].tolist() == [0, 1, 2, 3]
        cache.put("fp", {"e": np.ones(4, np.float32)})
        assert len(cache) == 2


def test_clear_and_parse_size(tmp_path):
    cache = EmbeddingCache(tmp_path / "c.sqlite3")
    cache.put("fp", {"a": np.ones(4, np.float32), "b": np.ones(4, np.float32)})
    assert cache.clear() == 2 and len(cache) == 0
    assert parse_size("500M") == 500 * 2**20 and parse_size("1.5GiB") == 3 * 2**29 and parse_size("12") == 12
    with pytest.raises(ValueError, match="not a size"):
        parse_size("lots")


def test_cache_command_stats_prune_clear(tiny_model_path, tmp_path, capsys):
    from clip_embeddings.apps.cli import main

    path = tmp_path / "cmd.sqlite3"
    ce.ClipEF(str(tiny_model_path), cache=path).encode_images(_images(30, seed=6))
    assert main(["cache", "stats", "--path", str(path), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["entries"] == 30 and stats["models"] == 1 and stats["live_bytes"] > 0
    assert main(["cache", "prune", "--path", str(path), "--max-size", "20K", "--json"]) == 0
    pruned = json.loads(capsys.readouterr().out)
    assert pruned["removed"] > 0 and pruned["live_bytes"] <= 20 * 1024 and pruned["entries"] == 30 - pruned["removed"]
    assert main(["cache", "clear", "--path", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"removed {pruned['entries']} vector(s)" in out and "entries" in out
    assert len(EmbeddingCache(path)) == 0
    assert main(["cache", "clear", "--path", str(tmp_path / "none.sqlite3")]) == 1
    assert "no embedding cache at" in capsys.readouterr().err


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("action", ["stats", "prune", "clear"])
def test_cache_command_refuses_a_file_that_is_not_a_cache_untouched(tmp_path, action, capsys):
    # `cache stats --path FILE` used to move a plain file aside and write a database in its place,
    # and to add tables to another program's sqlite database and switch its journal mode for good.
    from clip_embeddings.apps import cli

    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "hosts").write_bytes(b"127.0.0.1 localhost\n")
    (plain / "empty").write_bytes(b"")
    other = tmp_path / "other"
    other.mkdir()
    db = sqlite3.connect(other / "app.db")
    db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    db.execute("INSERT INTO notes (text) VALUES ('keep me')")
    db.commit()
    db.close()
    before = {folder: _snapshot(folder) for folder in (plain, other)}
    for target, reason in ((plain / "hosts", "not a SQLite database"), (plain / "empty", "an empty file"),
                           (other / "app.db", "another program \\(its tables: notes\\)")):
        assert cli.main(["cache", action, "--path", str(target)]) == 1
        assert re.search(f"is not an embedding cache \\(.*{reason}.*left untouched", capsys.readouterr().err)
    assert {folder: _snapshot(folder) for folder in (plain, other)} == before  # same files, same bytes
    mode = sqlite3.connect(other / "app.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "delete"


def test_cache_on_another_programs_database_is_turned_off_without_changing_it(tmp_path):
    other = tmp_path / "app.db"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE notes (text TEXT)")
    db.commit()
    db.close()
    before = other.read_bytes()
    with pytest.warns(CacheWarning, match="another program"):
        cache = EmbeddingCache(other)
    cache.put("fp", {"d": np.ones(4, np.float32)})
    assert cache.get("fp", ["d"]) == {} and cache.disabled
    cache.close()
    assert other.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]


def test_cache_command_still_works_on_a_real_cache(tmp_path, capsys):
    from clip_embeddings.apps import cli

    path = tmp_path / "embeddings.sqlite3"
    cache = EmbeddingCache(path)
    cache.put("fp", {"a": np.ones(4, np.float32), "b": np.zeros(4, np.float32)})
    cache.close()
    assert cli.main(["cache", "stats", "--path", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["entries"] == 2
    assert cli.main(["cache", "clear", "--path", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["entries"] == 0
