"""Database adapters, and :func:`open_store` to open any of them from one location string.

Importing this package imports no database client: each adapter module imports its own when
used, so ``import clip_embeddings.adapters`` stays fast for users of a single database.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from ..embedding import ClipEF
    from .base import Store

Kind = Literal["chroma", "qdrant", "lancedb"]
KINDS: tuple[str, ...] = ("chroma", "qdrant", "lancedb")


def open_store(kind: Kind, location: str, name: str, ef: ClipEF | None = None) -> Store:
    """Open (or create, given ``ef``) collection ``name`` of database ``kind`` at ``location``.

    ``location`` is a directory for a persistent local store, ``":memory:"`` for a throwaway one
    (all three), or an ``http(s)://`` URL of a Chroma or Qdrant server. LanceDB also takes its
    own URIs (``s3://...``, ``db://...``). With ``ef=None`` the collection must exist and its
    stored config rebuilds the embedding function.

    Example:
        >>> store = open_store("qdrant", "qdrant-db", "photos", ClipEF())  # doctest: +SKIP
        >>> store = open_store("chroma", "http://localhost:8000", "photos")  # doctest: +SKIP
        >>> store.query("a cat", k=3)  # doctest: +SKIP
    """
    location = str(location)
    is_url = location.startswith(("http://", "https://"))
    if kind == "chroma":
        from .chroma import ChromaStore

        return ChromaStore(_chroma_client(location, is_url), name, ef)
    if kind == "qdrant":
        from qdrant_client import QdrantClient

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
    if kind == "lancedb":
        if is_url:
            raise ValueError(
                f"LanceDB has no http server mode to open {location!r}; use a directory, ':memory:', "
                "or a LanceDB URI such as s3://bucket/path or db://database"
            )
        import lancedb

        from .lancedb import LanceDBStore

        return LanceDBStore(lancedb.connect("memory://" if location == ":memory:" else location), name, ef)
    raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")


def _chroma_client(location: str, is_url: bool) -> Any:
    import chromadb

    if location == ":memory:":
        return chromadb.EphemeralClient()
    if is_url:
        from urllib.parse import urlparse

        url = urlparse(location)
        ssl = url.scheme == "https"
        return chromadb.HttpClient(host=url.hostname or "localhost", port=url.port or (443 if ssl else 8000), ssl=ssl)
    return chromadb.PersistentClient(path=location)
