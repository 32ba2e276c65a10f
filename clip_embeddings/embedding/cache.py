"""A persistent embedding cache: re-ingesting unchanged inputs never runs the model again.

Entries are keyed by (model fingerprint, content digest), so a changed file, or a different model
or preprocessing, misses. A second table remembers the digest of each local file by (path, size,
mtime), so an unchanged folder is recognised from ``stat`` alone, without reading or hashing the
files: that is what makes a re-ingest two orders of magnitude faster than the first.

It is one sqlite file in WAL mode, which lets several processes read and write it at once and
survives a process killed mid-write (sqlite's journal rolls the half-written transaction back).

The cache is an optimisation, never a reason for an embed call to fail: a file that is not a
database (or is damaged) is moved aside and a new one started; a path that cannot be opened or
written (a folder, a read-only home, a full disk) turns the cache off for this process with one
warning, and every call goes on embedding without it. Its size is capped (default 1 GiB, or
``$CLIP_CACHE_MAX_BYTES``): past the cap the least recently used vectors are evicted.
"""

from __future__ import annotations

import os
import re
import sqlite3
import stat
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..errors import CacheWarning  # re-exported: its old import path
from ..inputs.names import stored_name

__all__ = ["CacheWarning", "DEFAULT_MAX_BYTES", "EmbeddingCache", "parse_size"]

DEFAULT_MAX_BYTES = 2**30
"""The default size cap: about 220,000 vectors of 512 floats (4.8 KB each with their keys)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    fingerprint TEXT NOT NULL, digest TEXT NOT NULL, vector BLOB NOT NULL,
    PRIMARY KEY (fingerprint, digest)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS file_digests (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, digest TEXT NOT NULL) WITHOUT ROWID;
"""
# Added after the first release: files written by it gain the column (every old row counts as
# least recently used) instead of being rejected.
_USED_COLUMN = "ALTER TABLE embeddings ADD COLUMN used INTEGER NOT NULL DEFAULT 0"
_USED_INDEX = "CREATE INDEX IF NOT EXISTS embeddings_used ON embeddings(used)"
_TOUCH_EVERY_NS = 60 * 10**9  # a hit rewrites its "last used" time at most once a minute
_EVICT_TO = 0.9  # eviction frees down to 90% of the cap, so it does not run on every write
_CHECK_FRACTION = 64  # the size is checked each time 1/64 of the cap has been written

T = TypeVar("T")


def parse_size(text: str | int) -> int:
    """Bytes from ``"500M"``, ``"2G"``, ``"1.5GiB"``, ``"4096"`` (K, M, G, T are powers of 1024).

    Example:
        >>> parse_size("500M"), parse_size("2g"), parse_size(4096)
        (524288000, 2147483648, 4096)
    """
    if isinstance(text, int):
        value = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.IGNORECASE)
        if m is None:
            raise ValueError(f"not a size: {text!r} (expected e.g. 4096, 500M or 2G)")
        value = int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2).lower() or " "))
    if value < 0:
        raise ValueError(f"a size cannot be negative: {text!r}")
    return value


def _default_max_bytes() -> int:
    configured = os.environ.get("CLIP_CACHE_MAX_BYTES")
    if not configured:
        return DEFAULT_MAX_BYTES
    try:
        return parse_size(configured)
    except ValueError as e:
        warnings.warn(f"CLIP_CACHE_MAX_BYTES ignored: {e}", CacheWarning, stacklevel=3)
        return DEFAULT_MAX_BYTES


_TABLES = frozenset({"embeddings", "file_digests"})
_HEADER = b"SQLite format 3\x00"


def not_a_cache(path: str | os.PathLike) -> str | None:
    """Why the existing file at ``path`` is not an embedding cache, or ``None`` if it is one.

    Read-only (a ``mode=ro`` connection; a FIFO or device is never opened), so a command told
    ``--path`` of another program's file can refuse it without touching it.

    Example:
        >>> not_a_cache(__file__)
        'not a SQLite database'
    """
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            return "not a regular file"
        with open(path, "rb") as f:
            header = f.read(len(_HEADER))
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if header != _HEADER and not (not header and os.path.isfile(f"{path}-wal")):
        # (an open WAL database may not have written its first page to the main file yet)
        return "an empty file" if not header else "not a SQLite database"
    try:
        db = sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True)
        try:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            db.close()
    except sqlite3.Error as e:
        return f"an unreadable SQLite database ({e})"
    if tables != _TABLES:
        return f"a SQLite database of another program (its tables: {', '.join(sorted(tables)) or 'none'})"
    return None


def _is_corrupt(error: BaseException) -> bool:
    # OperationalError covers locked, read-only, full and unopenable; the other DatabaseErrors
    # (SQLITE_NOTADB "file is not a database", SQLITE_CORRUPT "malformed") mean the bytes are bad.
    return isinstance(error, sqlite3.DatabaseError) and not isinstance(error, sqlite3.OperationalError)


class EmbeddingCache:
    """Embeddings by (model fingerprint, content digest) in one sqlite file, safe across processes.

    Never raises from ``get``/``put``/``file_digest``/``record_file_digest``: a fault is reported
    once as a :class:`CacheWarning` and the call behaves as a miss (or a skipped write).
    ``max_bytes`` caps the file's live size (default ``$CLIP_CACHE_MAX_BYTES`` or 1 GiB); the
    least recently used vectors go first. One connection per cache, shared by threads under a
    lock: three file descriptors (the file, its WAL and shared-memory index) while open.

    Example:
        >>> cache = EmbeddingCache("/tmp/doc-cache.sqlite3")
        >>> cache.put("fp", {"abc": np.ones(4, np.float32)})
        >>> cache.get("fp", ["abc", "missing"])["abc"].tolist()
        [1.0, 1.0, 1.0, 1.0]
    """

    def __init__(self, path: str | os.PathLike, max_bytes: int | None = None):
        self.path = Path(path).expanduser()
        self.max_bytes = _default_max_bytes() if max_bytes is None else parse_size(max_bytes)
        self.disabled: str | None = None  # why the cache is off, once it is
        self.moved_to: Path | None = None  # where a corrupt file went
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        self._unchecked = 0  # bytes written since the size was last checked
        self._guard(lambda db: None, None)  # open now, so a fault shows on the first call

    # -- connection and faults --

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=10, check_same_thread=False, isolation_level=None)
        try:
            # Another program's database is left as it is (no journal mode, no tables added):
            # an OperationalError turns the cache off instead of moving the file aside.
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables - _TABLES:
                raise sqlite3.OperationalError(f"{self.path} is a SQLite database of another program "
                                               f"(its tables: {', '.join(sorted(tables))}), not an embedding cache")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL is durable across process crashes
            db.executescript(_SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(embeddings)")}
            if "used" not in columns:
                db.execute(_USED_COLUMN)
            db.execute(_USED_INDEX)
        except BaseException:
            db.close()
            raise
        return db

    def _guard(self, operation: Callable[[sqlite3.Connection], T], fallback: T) -> T:
        """Run ``operation`` on the connection; on a fault, warn once and return ``fallback``."""
        with self._lock:
            for attempt in (1, 2):
                if self.disabled is not None:
                    return fallback
                try:
                    if self._db is None:
                        self._db = self._open()
                    return operation(self._db)
                except (sqlite3.Error, OSError) as e:
                    self.close()
                    if _is_corrupt(e) and attempt == 1 and self._move_aside(e):
                        continue  # a new, empty file: try once more
                    self._disable(e)
            return fallback

    def _move_aside(self, error: BaseException) -> bool:
        target = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        try:
            os.replace(self.path, target)
            for suffix in ("-wal", "-shm"):  # they belong to the damaged file
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        except OSError:
            return False
        self.moved_to = target
        warnings.warn(f"the embedding cache {self.path} was unreadable ({error}); moved it to {target} "
                      "and started a new one", CacheWarning, stacklevel=4)
        return True

    def _disable(self, error: BaseException) -> None:
        self.disabled = f"{type(error).__name__}: {error}"
        warnings.warn(f"the embedding cache {self.path} is turned off for this process ({self.disabled}); "
                      "embedding goes on without it. Set CLIP_CACHE_DIR to a writable folder, or pass "
                      "cache=False.", CacheWarning, stacklevel=4)

    def close(self) -> None:
        """Close the connection (its file descriptors); the next call opens it again."""
        with self._lock:
            if self._db is not None:
                try:
                    self._db.close()
                except sqlite3.Error:
                    pass
                self._db = None

    # -- the pipeline's interface --

    def get(self, fingerprint: str, digests: list[str]) -> dict[str, np.ndarray]:
        """The cached vectors among ``digests`` (missing ones are simply absent)."""
        def read(db: sqlite3.Connection) -> dict[str, np.ndarray]:
            found: dict[str, np.ndarray] = {}
            now = time.time_ns()
            for start in range(0, len(digests), 500):  # sqlite caps the number of bound parameters
                chunk = digests[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = db.execute(
                    f"SELECT digest, vector, used FROM embeddings WHERE fingerprint = ? AND digest IN ({marks})",
                    [fingerprint, *chunk]).fetchall()
                found.update((d, np.frombuffer(v, dtype=np.float32)) for d, v, _ in rows)
                stale = [d for d, _, used in rows if used < now - _TOUCH_EVERY_NS]
                if stale:  # least-recently-used needs "used"; rewriting it on every hit would be a write per read
                    try:
                        db.execute(f"UPDATE embeddings SET used = ? WHERE fingerprint = ? AND digest IN "
                                   f"({','.join('?' * len(stale))})", [now, fingerprint, *stale])
                    except sqlite3.OperationalError:  # read-only or busy: the hits are still good
                        pass
            return found

        return self._guard(read, {})

    def put(self, fingerprint: str, vectors: dict[str, np.ndarray]) -> None:
        """Store vectors (float32) for their digests, replacing any older entry, in one transaction."""
        now = time.time_ns()
        rows = [(fingerprint, d, np.ascontiguousarray(v, dtype=np.float32).tobytes(), now) for d, v in vectors.items()]

        def write(db: sqlite3.Connection) -> None:
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.executemany("INSERT OR REPLACE INTO embeddings (fingerprint, digest, vector, used) "
                               "VALUES (?, ?, ?, ?)", rows)
            self._unchecked += sum(len(r[2]) + len(r[1]) + len(r[0]) for r in rows)
            if self._unchecked >= self.max_bytes // _CHECK_FRACTION:
                self._unchecked = 0
                self._evict(db, self.max_bytes)

        self._guard(write, None)

    def file_digest(self, path: str, stat: os.stat_result) -> str | None:
        """The digest recorded for this file if its size and mtime are unchanged since."""
        def read(db: sqlite3.Connection) -> str | None:
            row = db.execute("SELECT digest FROM file_digests WHERE path = ? AND size = ? AND mtime_ns = ?",
                             (stored_name(path), stat.st_size, stat.st_mtime_ns)).fetchone()
            return row[0] if row else None

        return self._guard(read, None)

    def record_file_digest(self, path: str, stat: os.stat_result, digest: str) -> None:
        """Remember ``digest`` for the file at ``path`` with this size and mtime."""
        def write(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO file_digests VALUES (?, ?, ?, ?)",
                       (stored_name(path), stat.st_size, stat.st_mtime_ns, digest))  # sqlite takes UTF-8 only

        self._guard(write, None)

    def __len__(self) -> int:
        return self._guard(lambda db: db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0], 0)

    # -- size and maintenance (the `clip-embeddings cache` command) --

    @staticmethod
    def _live_bytes(db: sqlite3.Connection) -> int:
        pages = db.execute("PRAGMA page_count").fetchone()[0] - db.execute("PRAGMA freelist_count").fetchone()[0]
        return pages * db.execute("PRAGMA page_size").fetchone()[0]

    def _evict(self, db: sqlite3.Connection, max_bytes: int) -> int:
        """Delete least recently used vectors until the live size is at most ~90% of ``max_bytes``."""
        removed = 0
        while (size := self._live_bytes(db)) > max_bytes:
            count = db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
            if count == 0:
                break
            per_row = max(1, size // count)
            excess = size - int(max_bytes * _EVICT_TO)
            batch = min(count, max(1, -(-excess // per_row)))
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.execute("DELETE FROM embeddings WHERE (fingerprint, digest) IN (SELECT fingerprint, digest "
                           "FROM embeddings ORDER BY used LIMIT ?)", (batch,))
                # A file whose vector is gone would only lead to a miss: drop its digest too.
                db.execute("DELETE FROM file_digests WHERE digest NOT IN (SELECT digest FROM embeddings)")
            removed += batch
        return removed

    def stats(self) -> dict[str, Any]:
        """Entries, size and state, for ``clip-embeddings cache stats``.

        Example:
            >>> EmbeddingCache("/tmp/doc-cache.sqlite3").stats()["entries"] >= 0
            True
        """
        def read(db: sqlite3.Connection) -> dict[str, Any]:
            entries, models, oldest, newest = db.execute(
                "SELECT COUNT(*), COUNT(DISTINCT fingerprint), MIN(NULLIF(used, 0)), MAX(used) FROM embeddings").fetchone()
            files = db.execute("SELECT COUNT(*) FROM file_digests").fetchone()[0]
            return {"entries": entries, "models": models, "file_digests": files, "live_bytes": self._live_bytes(db),
                    "oldest_use": oldest / 1e9 if oldest else None, "newest_use": newest / 1e9 if newest else None}

        result = {"path": str(self.path), "max_bytes": self.max_bytes, "entries": 0, "models": 0, "file_digests": 0,
                  "live_bytes": 0, "oldest_use": None, "newest_use": None}
        nothing: dict[str, Any] = {}
        result.update(self._guard(read, nothing))
        total = sum(Path(f"{self.path}{s}").stat().st_size for s in ("", "-wal") if Path(f"{self.path}{s}").is_file())
        result.update(file_bytes=total, disabled=self.disabled)
        return result

    def prune(self, max_bytes: int | None = None) -> int:
        """Evict least recently used vectors down to ``max_bytes`` (default the cap), then compact.

        Returns how many vectors were removed.

        Example:
            >>> EmbeddingCache("/tmp/doc-cache.sqlite3").prune(max_bytes=10**9)
            0
        """
        limit = self.max_bytes if max_bytes is None else parse_size(max_bytes)

        def run(db: sqlite3.Connection) -> int:
            removed = self._evict(db, limit)
            db.execute("VACUUM")  # give the freed pages back to the file system
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return removed

        return self._guard(run, 0)

    def clear(self) -> int:
        """Delete every vector and file digest; returns how many vectors there were."""
        def run(db: sqlite3.Connection) -> int:
            with db:
                db.execute("BEGIN IMMEDIATE")
                count = db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
                db.execute("DELETE FROM embeddings")
                db.execute("DELETE FROM file_digests")
            db.execute("VACUUM")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return count

        return self._guard(run, 0)

    def __repr__(self) -> str:
        return f"EmbeddingCache({str(self.path)!r})"
