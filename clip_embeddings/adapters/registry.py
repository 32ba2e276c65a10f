"""The one list of store kinds: each adapter module declares its own ``KIND = StoreKind(...)``.

Adding a database is one module, ``clip_embeddings/adapters/<kind>.py``, whose top holds its
entry, plus its extra in ``pyproject.toml``::

    KIND = StoreKind(
        kind="qdrant", store_class="QdrantStore", extra="qdrant", client="qdrant_client",
        distribution="qdrant-client", purpose="Qdrant", servers=("http", "https"),
        locations="a folder, ':memory:', or http(s)://HOST:6333", marker="meta.json",
    )

The CLI (``--db``), :func:`~clip_embeddings.adapters.open_store`, the Ray sink, the registration
with a database's own function registry and the missing-extra message all read :func:`kinds`.

The entries are read from the adapter modules' *source* (the ``KIND = StoreKind(...)`` call, whose
arguments must be literals), not by importing them: an adapter module imports its database client
at its top, and listing the kinds must stay instant and work without any client installed. A test
checks that what is read equals the module's ``KIND`` once imported.

Example:
    >>> {"chroma", "qdrant", "lancedb"} <= set(kinds())
    True
    >>> kinds()["qdrant"].extra
    'qdrant'
"""

from __future__ import annotations

import ast
import functools
import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from .._extras import require

_PACKAGE = __name__.rsplit(".", 1)[0]
_FOLDER = Path(__file__).resolve().parent


@dataclass(frozen=True)
class StoreKind:
    """What the library needs to know about one database, before importing its adapter.

    Fields:
        kind: the name users write (``--db chroma``, ``open_store("chroma", ...)``, ``chroma://``).
        store_class: the :class:`~clip_embeddings.adapters.base.Store` subclass in the adapter
            module; its ``open_location(location, name, ef)`` classmethod opens a collection.
        extra: the ``pip install 'clip-embeddings[EXTRA]'`` that installs the client.
        client: the client's top-level module (imported through ``_extras.require``).
        distribution: the client's name on PyPI, for the missing-extra message.
        purpose: the database's name in messages ("needed for Qdrant").
        servers: URL schemes a location may use for a server (``http``, ``postgresql``...).
        locations: the location forms, in words, for ``--help`` and error messages.
        local: ``"folder"`` (a directory, created if missing), ``"file"`` (one file whose name ends
            in ``suffix``) or ``None`` (servers only).
        suffix: the required ending of a local file location (Milvus Lite: ``.db``).
        memory: whether ``":memory:"`` opens a throwaway database.
        marker: a file inside a local folder that proves a database is there (checked before
            opening, which would create one); ``None``: the folder itself is enough.
        other_uris: the database takes its own URIs besides ``servers`` (LanceDB: ``s3://``...).
        registry: whether the database has its own embedding-function registry that ``ClipEF``
            joins when the database is imported (Chroma, LanceDB).
    """

    kind: str
    store_class: str
    extra: str
    client: str
    distribution: str
    purpose: str
    servers: tuple[str, ...] = ()
    locations: str = ""
    local: Literal["folder", "file"] | None = "folder"
    suffix: str = ""
    memory: bool = True
    marker: str | None = None
    other_uris: bool = False
    registry: bool = False

    @property
    def module(self) -> str:
        """The adapter module's dotted name."""
        return f"{_PACKAGE}.{self.kind}"

    def require_client(self) -> ModuleType:
        """The database's client module, or :class:`~clip_embeddings.errors.MissingExtraError`."""
        return require(self.client, self.extra, purpose=self.purpose, distribution=self.distribution)

    def store_type(self) -> Any:
        """The Store subclass (imports the adapter module, and so the client)."""
        self.require_client()
        return getattr(importlib.import_module(self.module), self.store_class)


@functools.cache
def kinds() -> dict[str, StoreKind]:
    """Every store kind, by name, read from the adapter modules' ``KIND`` without importing them.

    Example:
        >>> kinds()["chroma"].servers
        ('http', 'https')
    """
    found: dict[str, StoreKind] = {}
    for path in sorted(_FOLDER.glob("*.py")):
        entry = read_kind(path.read_text(encoding="utf-8"))
        if entry is not None:
            if entry.kind != path.stem:
                raise ValueError(f"{path.name}: KIND.kind is {entry.kind!r}; an adapter module is named after its kind")
            found[entry.kind] = entry
    return found


def kind_names() -> tuple[str, ...]:
    """The kind names in their documented order (the first is the CLI's default).

    Example:
        >>> kind_names()[:3]
        ('chroma', 'qdrant', 'lancedb')
    """
    first = ("chroma", "qdrant", "lancedb")  # the original three keep their place in --help
    names = list(kinds())
    return tuple(sorted(names, key=lambda n: (first.index(n) if n in first else len(first), n)))


def read_kind(source: str) -> StoreKind | None:
    """The ``KIND = StoreKind(...)`` of a module's source, or ``None`` if it declares none.

    Example:
        >>> read_kind('KIND = StoreKind(kind="x", store_class="XStore", extra="x", client="x", '
        ...           'distribution="x", purpose="X")').store_class
        'XStore'
    """
    for node in ast.parse(source).body:
        if (isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Call)
                and getattr(node.value.func, "id", None) == "StoreKind"):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(getattr(t, "id", None) == "KIND" for t in targets):
                return StoreKind(**{k.arg: ast.literal_eval(k.value) for k in node.value.keywords if k.arg})
    return None
