"""A persistent embedding cache: re-ingesting unchanged inputs never runs the model again.

Entries are keyed by (model fingerprint, content digest), so a changed file, or a different model
or preprocessing, misses. A second table remembers the digest of each local file by (path, size,
mtime), so an unchanged folder is recognised from ``stat`` alone, without reading or hashing the
files: that is what makes a re-ingest two orders of magnitude faster than the first.

It is one sqlite file in WAL mode, which lets several processes read and write it at once and
survives a process killed mid-write (sqlite's journal rolls the half-written transaction back).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import numpy as np

_SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    fingerprint TEXT NOT NULL, digest TEXT NOT NULL, vector BLOB NOT NULL,
    PRIMARY KEY (fingerprint, digest)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS file_digests (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, digest TEXT NOT NULL) WITHOUT ROWID;
"""


class EmbeddingCache:
    """Embeddings by (model fingerprint, content digest) in one sqlite file, safe across processes.

    Example:
        >>> cache = EmbeddingCache("/tmp/doc-cache.sqlite3")
        >>> cache.put("fp", {"abc": np.ones(4, np.float32)})
        >>> cache.get("fp", ["abc", "missing"])["abc"].tolist()
        [1.0, 1.0, 1.0, 1.0]
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()  # sqlite connections must stay in the thread that made them
        with self._connection() as db:
            db.executescript(_SCHEMA)

    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=60)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL is durable across process crashes
            self._local.db = db
        return db

    def get(self, fingerprint: str, digests: list[str]) -> dict[str, np.ndarray]:
        """The cached vectors among ``digests`` (missing ones are simply absent)."""
        found: dict[str, np.ndarray] = {}
        db = self._connection()
        for start in range(0, len(digests), 500):  # sqlite caps the number of bound parameters
            chunk = digests[start : start + 500]
            rows = db.execute(
                f"SELECT digest, vector FROM embeddings WHERE fingerprint = ? AND digest IN ({','.join('?' * len(chunk))})",
                [fingerprint, *chunk],
            )
            found.update((d, np.frombuffer(v, dtype=np.float32)) for d, v in rows)
        return found

    def put(self, fingerprint: str, vectors: dict[str, np.ndarray]) -> None:
        """Store vectors (float32) for their digests, replacing any older entry, in one transaction."""
        rows = [(fingerprint, d, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for d, v in vectors.items()]
        with self._connection() as db:
            db.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?)", rows)

    def file_digest(self, path: str, stat: os.stat_result) -> str | None:
        """The digest recorded for this file if its size and mtime are unchanged since."""
        row = self._connection().execute(
            "SELECT digest FROM file_digests WHERE path = ? AND size = ? AND mtime_ns = ?",
            (path, stat.st_size, stat.st_mtime_ns),
        ).fetchone()
        return row[0] if row else None

    def record_file_digest(self, path: str, stat: os.stat_result, digest: str) -> None:
        with self._connection() as db:
            db.execute("INSERT OR REPLACE INTO file_digests VALUES (?, ?, ?, ?)",
                       (path, stat.st_size, stat.st_mtime_ns, digest))

    def __len__(self) -> int:
        return self._connection().execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]

    def __repr__(self) -> str:
        return f"EmbeddingCache({str(self.path)!r})"
