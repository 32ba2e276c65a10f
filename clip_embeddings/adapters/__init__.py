"""Database adapters, and :func:`open_store` to open any of them from one location string.

Importing this package imports no database client: each adapter module imports its own when
used, so ``import clip_embeddings.adapters`` stays fast for users of a single database.
"""

from __future__ import annotations

import os
import re
import shutil
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlparse

from .._extras import require  # the one helper that names the extra to install
from ..errors import CollectionNotFoundError

if TYPE_CHECKING:
    from ..embedding.function import ClipEF
    from .base import Store

Kind = Literal["chroma", "qdrant", "lancedb"]
KINDS: tuple[str, ...] = ("chroma", "qdrant", "lancedb")


def open_store(kind: Kind, location: str | os.PathLike, name: str, ef: ClipEF | None = None, *,
               create: bool = True) -> Store:
    """Open (or create, given ``ef``) collection ``name`` of database ``kind`` at ``location``.

    ``location`` is a directory for a persistent local store, ``":memory:"`` for a throwaway one
    (all three), or an ``http(s)://`` URL of a Chroma or Qdrant server. LanceDB also takes its
    own URIs (``s3://...``, ``db://...``). With ``ef=None`` (or ``create=False``) the collection
    must exist, nothing is created on disk, and without ``ef`` its stored config rebuilds the
    embedding function; a missing one raises :class:`~clip_embeddings.errors.CollectionNotFoundError`.
    A store that cannot be created (weights that do not load, say) leaves no folder behind.

    Example:
        >>> store = open_store("qdrant", "qdrant-db", "photos", ClipEF())  # doctest: +SKIP
        >>> store = open_store("chroma", "http://localhost:8000", "photos")  # doctest: +SKIP
        >>> store.query("a cat", k=3)  # doctest: +SKIP
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    location = check_location(kind, location)
    local = location != ":memory:" and "://" not in location
    if ef is None or not create:
        if local and not _has_database(kind, location):
            raise CollectionNotFoundError(f"no {kind} database at {location}; create it by indexing into it first")
        store = _open(kind, location, name, None)
        if ef is not None:  # the caller's function, checked against the collection's weights
            store.ef = ef
            store.check_model()
        return store
    if local and not os.path.exists(location):
        ef.dim  # noqa: B018 - load the weights before anything touches the disk
        try:
            return _open(kind, location, name, ef)
        except BaseException:
            shutil.rmtree(location, ignore_errors=True)  # created by this call: no half-made database
            raise
    return _open(kind, location, name, ef)


def check_location(kind: str, location: str | os.PathLike) -> str:
    """``location`` as a string, or a ``ValueError`` that says what is wrong and how to write it.

    Example:
        >>> check_location("chroma", "localhost:8000")
        Traceback (most recent call last):
        ...
        ValueError: localhost:8000 looks like a server address without a scheme; write http://localhost:8000
    """
    location = os.fspath(location)
    if not location:
        raise ValueError("the location is empty; give a folder, ':memory:' or a server URL")
    if _HOST_PORT.match(location):
        raise ValueError(f"{location} looks like a server address without a scheme; write http://{location}")
    if "://" not in location and location != ":memory:" and os.path.isfile(location):
        raise ValueError(f"{location} is a file; the location of a {kind} database is a folder (created if "
                         "missing) or a server URL such as http://localhost:8000")
    if kind == "lancedb" and location.startswith(("http://", "https://")):
        raise ValueError(
            f"LanceDB has no http server mode to open {location!r}; use a directory, ':memory:', "
            "or a LanceDB URI such as s3://bucket/path or db://database"
        )
    if kind != "lancedb" and "://" in location and not location.startswith(("http://", "https://")):
        raise ValueError(f"{location}: a {kind} server location is an http:// or https:// URL")
    return location


def parse_sink(sink: str) -> tuple[Kind, str, str]:
    """A one-string store address as ``(kind, location, name)``, for the Ray engine and scripts.

    Forms: ``lancedb://DIR/TABLE``, ``chroma+http://HOST:PORT/COLLECTION`` and
    ``qdrant+http://HOST:PORT/COLLECTION`` (``+https`` for TLS).

    Example:
        >>> parse_sink("chroma+http://127.0.0.1:8000/photos")
        ('chroma', 'http://127.0.0.1:8000', 'photos')
        >>> parse_sink("lancedb:///data/db/photos")
        ('lancedb', '/data/db', 'photos')
    """
    if "://" not in sink:
        raise ValueError(f"not a store address: {sink!r} (expected lancedb://DIR/TABLE, "
                         "chroma+http://HOST:PORT/NAME or qdrant+http://HOST:PORT/NAME)")
    scheme, rest = sink.split("://", 1)
    if scheme == "lancedb":
        location, _, name = rest.rstrip("/").rpartition("/")
        if not location or not name:
            raise ValueError(f"{sink!r}: expected lancedb://DIR/TABLE")
        return "lancedb", location, name
    db, _, transport = scheme.partition("+")
    if db in ("chroma", "qdrant") and transport in ("http", "https"):
        url = urlparse(f"{transport}://{rest}")
        name = url.path.strip("/")
        if not url.hostname or not name or "/" in name:
            raise ValueError(f"{sink!r}: expected {db}+{transport}://HOST:PORT/COLLECTION")
        return db, f"{transport}://{url.netloc}", name  # type: ignore[return-value]
    raise ValueError(f"{sink!r}: unknown store scheme {scheme!r} (lancedb, chroma+http(s), qdrant+http(s))")


def _has_database(kind: str, location: str) -> bool:
    """Whether a local folder holds a database of this kind (checked without opening it, which
    would create one: Chroma and Qdrant write their files as soon as a client opens a folder)."""
    marker = {"chroma": "chroma.sqlite3", "qdrant": "meta.json"}.get(kind)
    return os.path.isdir(location) and (marker is None or os.path.exists(os.path.join(location, marker)))


_HOST_PORT = re.compile(r"^[A-Za-z0-9.\-]+:\d{1,5}$")


def _open(kind: str, location: str, name: str, ef: ClipEF | None) -> Store:
    is_url = location.startswith(("http://", "https://"))
    if kind == "chroma":
        from .chroma import ChromaStore

        return ChromaStore(chroma_client(location), name, ef)
    if kind == "qdrant":
        QdrantClient = require("qdrant_client", "qdrant").QdrantClient
        from .qdrant import QdrantStore

        if location == ":memory:":
            client = QdrantClient(":memory:")
        elif is_url:
            client = QdrantClient(url=location)
        else:
            client = QdrantClient(path=location)
        try:
            return QdrantStore(client, name, ef)
        except BaseException:
            client.close()  # a local Qdrant folder stays locked while its client is open
            raise
    lancedb = require("lancedb", "lancedb")
    from .lancedb import LanceDBStore

    return LanceDBStore(lancedb.connect("memory://" if location == ":memory:" else location), name, ef)


def chroma_client(location: str) -> Any:
    """The Chroma client for a location: in memory, a local folder, or an http(s) server URL.

    Example:
        >>> client = chroma_client("http://localhost:8000")  # doctest: +SKIP
    """
    chromadb = require("chromadb", "chroma")
    if location == ":memory:":
        return chromadb.EphemeralClient()
    if location.startswith(("http://", "https://")):
        url = urlparse(location)
        ssl = url.scheme == "https"
        return chromadb.HttpClient(host=url.hostname or "localhost", port=url.port or (443 if ssl else 8000), ssl=ssl)
    return chromadb.PersistentClient(path=location)
