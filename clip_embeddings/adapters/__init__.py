"""Database adapters, :func:`open_store` to open any of them, and the one store address form.

The kinds of store are listed once, by the adapter modules themselves (``KIND`` in each, read by
:mod:`.registry` without importing them). Importing this package imports no database client:
each adapter module imports its own when used, so ``import clip_embeddings.adapters`` stays fast.

A store address names a database kind, where it is, and a collection, in one string::

    KIND://PATH#NAME                 a local database: chroma:///data/db#photos, lancedb://rel/db#photos,
                                     milvus:///data/photos.db#photos, chroma://:memory:#photos
    KIND+SCHEME://HOST[:PORT][/PATH]#NAME
                                     a server: qdrant+http://localhost:6333#photos,
                                     pgvector+postgresql://me@host:5432/media#photos
    KIND+SCHEME://HOST[:PORT]/NAME   the same, older form (a server whose URL has no path)
    KIND://PATH/NAME                 the same, older form (lancedb:///data/db/photos)

``NAME`` is percent-encoded where it holds ``#``, ``/`` or ``%``; the rest is taken verbatim
(a query string stays with the server URL). :func:`parse_address` reads it,
:func:`format_address` writes it (``parse_address(format_address(k, l, n)) == (k, l, n)``), and
``open_store(address)``, the CLI's ``--store``, the Ray sink and ``serve --store`` take it.
"""

from __future__ import annotations

import os
import re
import shutil
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from ..errors import CollectionNotFoundError, StoreAddressError
from .registry import StoreKind, kind_names, kinds

if TYPE_CHECKING:
    from ..embedding.function import ClipEF
    from .base import Store

Kind = str
"""A store kind's name: one of :func:`~clip_embeddings.adapters.registry.kind_names`."""


def __getattr__(name: str) -> Any:
    # KINDS is computed from the adapter modules on first use (module-level __getattr__, PEP 562).
    if name == "KINDS":
        return kind_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_store(kind: Kind, location: str | os.PathLike | None = None, name: str | None = None,
               ef: ClipEF | None = None, *, create: bool = True) -> Store:
    """Open (or create, given ``ef``) a collection, named by an address or by kind, location, name.

    ``open_store(address, ef)`` takes one store address (the forms are in this module's
    docstring, e.g. ``"qdrant:///data/db#photos"``); ``open_store(kind, location, name, ef)`` the
    three parts. ``location`` is a directory for a persistent local store, ``":memory:"`` for a
    throwaway one, or a server URL; each kind's forms are its ``KIND.locations``
    (``clip-embeddings --help``). With ``ef=None`` (or ``create=False``) the collection must
    exist, nothing is created on disk, and without ``ef`` its stored config rebuilds the
    embedding function; a missing one raises :class:`~clip_embeddings.errors.CollectionNotFoundError`.
    A store that cannot be created (weights that do not load, say) leaves no folder behind.

    Example:
        >>> from clip_embeddings import ClipEF
        >>> store = open_store("qdrant", "qdrant-db", "photos", ClipEF())  # "qdrant:///abs/path/qdrant-db#photos"
        >>> store.index_folder("photos").new
        7
        >>> len(store.query("a cat", k=3))
        3
        >>> store = open_store("chroma", "http://localhost:8000", "photos")  # a server's  # doctest: +SKIP
    """
    if name is None and (location is None or not isinstance(location, (str, os.PathLike))):
        ef = location if ef is None else ef  # open_store(address, ef)
        kind, location, name = parse_address(kind)
    elif location is None or name is None:
        raise StoreAddressError("give a store address, or a kind, a location and a collection name")
    entry = _entry(kind)
    location = check_location(kind, location)
    local = location != ":memory:" and "://" not in location
    if ef is None or not create:
        if local and not _has_database(entry, location):
            raise CollectionNotFoundError(f"no {kind} database at {location}; create it by indexing into it first")
        store = entry.store_type().open_location(location, name, None)
        if ef is not None:  # the caller's function, checked against the collection's weights
            store.ef = ef
            store.check_model()
        return store
    store_type = entry.store_type()  # a missing client is said before anything touches the disk
    if local and not os.path.exists(location):
        ef.dim  # noqa: B018 - load the weights before anything touches the disk
        try:
            return store_type.open_location(location, name, ef)
        except BaseException:
            _remove(location)  # created by this call: no half-made database
            raise
    return store_type.open_location(location, name, ef)


def _entry(kind: str) -> StoreKind:
    entry = kinds().get(kind)
    if entry is None:
        raise StoreAddressError(f"kind must be one of {', '.join(kind_names())}, not {kind!r}")
    return entry


def check_location(kind: str, location: str | os.PathLike) -> str:
    """``location`` as a string, or a :class:`StoreAddressError` (a ``ValueError``) that says what is
    wrong and how to write it.

    Example:
        >>> check_location("chroma", "localhost:8000")
        Traceback (most recent call last):
        ...
        clip_embeddings.errors.StoreAddressError: localhost:8000 looks like a server address without a scheme; write http://localhost:8000
    """
    entry = _entry(kind)
    location = os.fspath(location)
    if not location:
        raise StoreAddressError(f"the location is empty; a {kind} location is {entry.locations}")
    if _HOST_PORT.match(location):
        raise StoreAddressError(f"{location} looks like a server address without a scheme; write http://{location}")
    scheme = location.split("://", 1)[0] if "://" in location else None
    if location == ":memory:":
        if not entry.memory:
            raise StoreAddressError(f"{kind} has no in-memory mode; a {kind} location is {entry.locations}")
    elif scheme is None:
        if entry.local is None:
            raise StoreAddressError(f"{location!r}: a {kind} location is {entry.locations}")
        if entry.local == "folder" and os.path.isfile(location):
            raise StoreAddressError(f"{location} is a file; the location of a {kind} database is a folder "
                                    f"(created if missing) or a server URL ({entry.locations})")
        if entry.local == "file" and not location.endswith(entry.suffix):
            raise StoreAddressError(f"{location!r}: a {kind} database file's name ends in {entry.suffix}; "
                                    f"a {kind} location is {entry.locations}")
    elif scheme not in entry.servers and not (entry.other_uris and scheme not in ("http", "https")):
        if entry.other_uris:
            raise StoreAddressError(f"{kind} has no http server mode to open {location!r}; a {kind} location "
                                    f"is {entry.locations}")
        raise StoreAddressError(f"{location}: a {kind} location is {entry.locations}")
    return location


def parse_address(address: str) -> tuple[Kind, str, str]:
    """A store address as ``(kind, location, name)``; the forms are in this module's docstring.

    Example:
        >>> parse_address("chroma+http://127.0.0.1:8000/photos")
        ('chroma', 'http://127.0.0.1:8000', 'photos')
        >>> parse_address("qdrant:///data/db#photos")
        ('qdrant', '/data/db', 'photos')
        >>> parse_address("lancedb:///data/db/photos")
        ('lancedb', '/data/db', 'photos')
        >>> parse_address("pgvector+postgresql://me@db.local:5432/media?sslmode=require#photos")
        ('pgvector', 'postgresql://me@db.local:5432/media?sslmode=require', 'photos')
    """
    if not isinstance(address, str) or "://" not in address:
        raise StoreAddressError(f"not a store address: {address!r} (expected KIND://PATH#COLLECTION or "
                                "KIND+SCHEME://HOST:PORT#COLLECTION, e.g. chroma:///data/db#photos, qdrant+http://host:6333#photos)")
    scheme, rest = address.split("://", 1)
    kind, plus, transport = scheme.partition("+")
    if kind not in kinds():
        raise StoreAddressError(f"{address!r}: unknown store scheme {kind!r} (the kinds: {', '.join(kind_names())})")
    body, hash_, fragment = rest.rpartition("#") if "#" in rest else (rest, "", "")
    if plus:
        location, name = _server_parts(address, kind, transport, body, fragment if hash_ else None)
    else:
        location, name = (body, fragment) if hash_ else _split_last(address, body)
    name = unquote(name)
    if not name:
        raise StoreAddressError(f"{address!r}: no collection name (end the address with #COLLECTION)")
    check_location(kind, location)
    return kind, location, name


def _server_parts(address: str, kind: str, transport: str, body: str, fragment: str | None) -> tuple[str, str]:
    if not transport or not body or body.startswith("/"):
        raise StoreAddressError(f"{address!r}: expected {kind}+SCHEME://HOST[:PORT]#COLLECTION")
    if fragment is not None:
        return f"{transport}://{body}", fragment
    # The older form: the name is the URL's last path segment (a query string stays with the URL).
    path, question, query = body.partition("?")
    if "/" not in path:
        raise StoreAddressError(f"{address!r}: no collection name (end the address with #COLLECTION)")
    location, _, name = path.rstrip("/").rpartition("/")
    if not location:
        raise StoreAddressError(f"{address!r}: no collection name (end the address with #COLLECTION)")
    return f"{transport}://{location}" + (f"?{query}" if question else ""), name


def _split_last(address: str, body: str) -> tuple[str, str]:
    location, _, name = body.rstrip("/").rpartition("/")
    if not location:
        raise StoreAddressError(f"{address!r}: no collection name (end the address with #COLLECTION)")
    return location, name


def format_address(kind: Kind, location: str | os.PathLike, name: str) -> str:
    """The store address of collection ``name`` of database ``kind`` at ``location``.

    Example:
        >>> format_address("chroma", "http://127.0.0.1:8000", "photos")
        'chroma+http://127.0.0.1:8000#photos'
        >>> format_address("lancedb", "/data/db", "photos")
        'lancedb:///data/db#photos'
    """
    location = check_location(kind, location)
    if not name:
        raise StoreAddressError("the collection name is empty")
    fragment = quote(name, safe="")
    return f"{kind}+{location}#{fragment}" if "://" in location else f"{kind}://{location}#{fragment}"


def parse_sink(sink: str) -> tuple[Kind, str, str]:
    """A store address as ``(kind, location, name)``: :func:`parse_address`, under its older name.

    Example:
        >>> parse_sink("chroma+http://127.0.0.1:8000/photos")
        ('chroma', 'http://127.0.0.1:8000', 'photos')
    """
    return parse_address(sink)


def _remove(location: str) -> None:
    if os.path.isdir(location):
        shutil.rmtree(location, ignore_errors=True)
    elif os.path.isfile(location):
        os.remove(location)


def _has_database(entry: StoreKind, location: str) -> bool:
    """Whether a local location holds a database of this kind (checked without opening it, which
    would create one: Chroma and Qdrant write their files as soon as a client opens a folder)."""
    if entry.local == "file":
        return os.path.exists(location)
    return os.path.isdir(location) and (entry.marker is None or os.path.exists(os.path.join(location, entry.marker)))


_HOST_PORT = re.compile(r"^[A-Za-z0-9.\-]+:\d{1,5}$")


def chroma_client(location: str) -> Any:
    """The Chroma client for a location (kept here for older imports; it lives in :mod:`.chroma`).

    Example:
        >>> client = chroma_client("http://localhost:8000")  # doctest: +SKIP
    """
    from .chroma import chroma_client as client

    return client(location)
