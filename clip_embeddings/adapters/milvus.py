"""Milvus (a server, or Milvus Lite in a local ``.db`` path) through ``pymilvus.MilvusClient``.

One collection per store, one entity per vector (rows by modality, as in the pgvector, Chroma and
LanceDB stores): ``id`` (primary key, ``row_id(item, modality)``), ``item_id``, ``modality``,
``embedding`` (``FLOAT_VECTOR``, ``COSINE`` metric, ``AUTOINDEX``: HNSW on a server, exact on
Milvus Lite), ``source``, ``document`` (nullable), ``digest`` and ``metadata`` (``JSON``: the
user's own keys). The embedding-function config (model, fingerprint, dim) is a collection
property, read on reopen: ``ef=None`` rebuilds the same function, other weights raise
:class:`~clip_embeddings.ModelMismatchError`. Collections use ``Strong`` consistency, so a count
right after a write sees it.

``where`` is a dict of exact matches (a list value matches any of its elements), all required:
metadata keys compare ``metadata["key"]``, and ``item_id``, ``source``, ``document``, ``digest``
their fields. Milvus Lite has no bound parameters in filter expressions, so every key and value
is written as a JSON string literal (quotes and backslashes escaped), a number or a boolean:
user input is always a literal, never expression syntax.

Milvus Lite lets one process at a time open a ``.db``; a second gets a clear error.

Example:
    >>> store = MilvusStore("./photos.db", "photos", ClipEF())
    >>> store.add_images(["cat.jpg"], captions=["a tabby cat"]).new
    1
    >>> store.query("a sleeping cat", k=1)[0].document
    'a tabby cat'
    >>> store.close()  # the .db is free for another process
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np

from .registry import StoreKind

KIND = StoreKind(
    kind="milvus", store_class="MilvusStore", extra="milvus", client="pymilvus", distribution="pymilvus[milvus-lite]",
    purpose="Milvus", servers=("http", "https"), local="file", suffix=".db", memory=False,
    locations="a Milvus Lite file ./NAME.db, or a Milvus server URL http(s)://HOST:19530",
)
KIND.require_client()  # before the import below: names the extra when it is missing
from pymilvus import DataType, MilvusClient  # noqa: E402

from ..embedding.function import ClipEF
from .base import Hit, Modality, Record, Store, row_id

CONFIG_KEY = "clip_embeddings"  # collection property holding ClipEF.get_config() as JSON
COLUMNS = ("item_id", "source", "document", "digest")  # where-keys that name a field, not metadata
MAX_ID, MAX_TEXT = 512, 65_535  # VARCHAR lengths (bytes): ids, and source/document


def connect(location: str) -> MilvusClient:
    """A client for a Milvus server URL or a Milvus Lite path (``*.db``), with a clear error when
    another process holds the Milvus Lite database open.

    Example:
        >>> client = connect("./photos.db")
    """
    try:
        client = MilvusClient(location)
    except Exception as e:
        if "://" in location:
            raise
        raise RuntimeError(
            f"could not open the Milvus Lite database {location}: it is open in another process (Milvus Lite "
            "allows one process at a time; close that one, or run a Milvus server and use its http:// URL) "
            f"or it is not a Milvus Lite database ({e})") from e
    if "://" not in location:
        _LITE_OPEN[os.path.abspath(location)] = _LITE_OPEN.get(os.path.abspath(location), 0) + 1
    return client


# Milvus Lite serves a .db from a thread of this process until told to stop; closing a client
# does not stop it. Stores count their opens so the last close frees the database for others.
_LITE_OPEN: dict[str, int] = {}


def _release(location: str) -> None:
    path = os.path.abspath(location)
    _LITE_OPEN[path] = _LITE_OPEN.get(path, 1) - 1
    if _LITE_OPEN[path] <= 0:
        del _LITE_OPEN[path]
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(path)


class MilvusStore(Store):
    """A Milvus collection behind the uniform :class:`Store` interface.

    ``client`` is a location (``"./photos.db"`` for Milvus Lite, ``"http://host:19530"``) or a
    ``MilvusClient``. Creates the collection (or opens it; ``ef=None`` rebuilds the function).

    Example:
        >>> store = MilvusStore("./photos.db", "photos", ClipEF())
        >>> store.index_folder("photos").new
        7
        >>> store.close()
    """

    @classmethod
    def open_location(cls, location: str, name: str, ef: ClipEF | None) -> MilvusStore:
        """Collection ``name`` at a checked location (``open_store`` calls this; see ``KIND``)."""
        return cls(location, name, ef)

    def __init__(self, client: str | MilvusClient, name: str, ef: ClipEF | None = None):
        self.client = connect(client) if isinstance(client, str) else client
        self.name, self._lite = name, client if isinstance(client, str) and "://" not in client else None
        try:
            if self.client.has_collection(name):
                ef = self._function_for_existing(ef)
            elif ef is None:
                raise self._missing()
            else:
                self._create(ef)
            self.client.load_collection(name)
            self.ef = ef
            self.check_model()
        except BaseException:
            if isinstance(client, str):
                self.close()
            raise

    def describe(self) -> str:
        return f"Milvus collection {self.name!r}"

    def close(self) -> None:
        """Close the client; a Milvus Lite database is then free for another process (once every
        store of this process on it is closed)."""
        self.client.close()
        if self._lite is not None:
            _release(self._lite)
            self._lite = None

    def _create(self, ef: ClipEF) -> None:
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=MAX_ID + 5)
        schema.add_field("item_id", DataType.VARCHAR, max_length=MAX_ID)
        schema.add_field("modality", DataType.VARCHAR, max_length=8)
        schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=ef.dim)
        schema.add_field("source", DataType.VARCHAR, max_length=MAX_TEXT, nullable=True)
        schema.add_field("document", DataType.VARCHAR, max_length=MAX_TEXT, nullable=True)
        schema.add_field("digest", DataType.VARCHAR, max_length=128)
        schema.add_field("metadata", DataType.JSON)
        index = self.client.prepare_index_params()
        index.add_index("embedding", index_type="AUTOINDEX", metric_type="COSINE")
        self.client.create_collection(self.name, schema=schema, index_params=index, consistency_level="Strong",
                                      properties={CONFIG_KEY: json.dumps(ef.get_config())})

    def _stored_config(self) -> dict[str, Any] | None:
        raw = (self.client.describe_collection(self.name).get("properties") or {}).get(CONFIG_KEY)
        return json.loads(raw) if raw else None

    def _write(self, records: list[Record]) -> None:
        rows = {row_id(r.id, r.modality): r for r in records}  # the last of one row id in a batch wins
        self._keep_existing(rows)
        self.client.upsert(self.name, [_entity(key, r) for key, r in rows.items()])

    def _keep_existing(self, rows: dict[str, Record]) -> None:
        """An upsert replaces whole entities; what this write does not say is read back and kept,
        as the other stores do: a caption survives re-adding its image, metadata keys merge."""
        old = self.client.get(self.name, ids=list(rows), output_fields=["id", "source", "document", "metadata"])
        for entity in old:
            r = rows[entity["id"]]
            rows[entity["id"]] = replace(r, source=r.source or entity.get("source"),
                                         document=r.document or entity.get("document"),
                                         metadata={**(entity.get("metadata") or {}), **r.metadata})

    def _search(self, vector: np.ndarray, k: int, modality: Modality, where: dict[str, Any] | None) -> list[Hit]:
        condition = f"modality == {_literal(modality)}" + (f" and ({to_filter(where)})" if where else "")
        result = self.client.search(
            self.name, data=[np.asarray(vector, np.float32).tolist()], anns_field="embedding", limit=k,
            filter=condition, output_fields=["item_id", "source", "document", "metadata"],
            search_params={"metric_type": "COSINE"},
        )
        return [Hit(h["entity"]["item_id"], float(h["distance"]), modality, h["entity"].get("source"),
                    h["entity"].get("document"), dict(h["entity"].get("metadata") or {})) for h in result[0]]

    def _stored(self, keys: list[tuple[str, Modality]]) -> dict[tuple[str, Modality], tuple[str | None, str | None]]:
        rows = {row_id(item, modality): (item, modality) for item, modality in keys}
        found = self.client.get(self.name, ids=list(rows), output_fields=["id", "digest", "document"])
        return {rows[e["id"]]: (e.get("digest"), e.get("document")) for e in found}

    def count(self, modality: Modality | None = None) -> int:
        if modality is not None:
            return self._count(f"modality == {_literal(modality)}")
        # One rule on every store: an item is an image entity, or a text entity with no image
        # entity beside it (a caption may be stored before or after its image, with no source).
        alone = 0
        iterator = self.client.query_iterator(self.name, batch_size=1000, output_fields=["item_id"],
                                              filter='modality == "text"')
        try:
            while batch := iterator.next():
                ids = [e["item_id"] for e in batch]
                alone += len(ids) - self._count(f'modality == "image" and id in {json.dumps(ids)}')
        finally:
            iterator.close()
        return self._count('modality == "image"') + alone

    def _count(self, condition: str) -> int:
        return int(self.client.query(self.name, filter=condition, output_fields=["count(*)"])[0]["count(*)"])

    def _scan(self, modality: Modality | None = None, *, batch_size: int = 512,
              with_vectors: bool = True) -> Iterator[list[Record]]:
        """Every stored record, ``batch_size`` at a time (Milvus's query iterator pages by primary key)."""
        fields = ["item_id", "modality", "digest", "source", "document", "metadata"] + (["embedding"] if with_vectors else [])
        iterator = self.client.query_iterator(self.name, batch_size=batch_size, output_fields=fields,
                                              filter=f"modality == {_literal(modality)}" if modality else "")
        try:
            while batch := iterator.next():
                yield [Record(e["item_id"], e["modality"],
                              np.asarray(e["embedding"], np.float32) if with_vectors else None, e["digest"],
                              e.get("source"), e.get("document"), dict(e.get("metadata") or {})) for e in batch]
        finally:
            iterator.close()

    def _delete(self, keys: list[tuple[str, Modality]]) -> None:
        """Remove the (item id, modality) records; missing ones are ignored."""
        if keys:
            self.client.delete(self.name, ids=[row_id(item, modality) for item, modality in keys])


def to_filter(where: dict[str, Any]) -> str:
    """A ``where`` dict as a Milvus filter expression; keys and values only ever as literals.

    Example:
        >>> to_filter({"album": "space", "year": [2023, 2024]})
        '(metadata["album"] == "space") and (metadata["year"] == 2023 or metadata["year"] == 2024)'
        >>> to_filter({"album": 'x" or 1 == 1'})
        '(metadata["album"] == "x\\\\" or 1 == 1")'
    """
    if not isinstance(where, dict):
        raise TypeError(f"where must be a dict of exact matches, not {type(where).__name__}")
    clauses = []
    for key, value in where.items():
        if not isinstance(key, str):
            raise TypeError(f"where keys are metadata names (str), not {type(key).__name__}")
        field = key if key in COLUMNS else f"metadata[{_literal(key)}]"
        values = list(value) if isinstance(value, (list, tuple, set)) else [value]
        clauses.append(" or ".join(f"{field} == {_literal(v, key)}" for v in values) or "false")
    return " and ".join(f"({c})" for c in clauses)


def _literal(value: Any, key: str | None = None) -> str:
    """A Milvus expression literal: a JSON string (escaped), a finite number or true/false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    raise ValueError(f"where[{key!r}]: exact matches take str, int, float or bool values (or a list of them), "
                     f"not {type(value).__name__}")


def _entity(key: str, record: Record) -> dict[str, Any]:
    if len(record.id.encode()) > MAX_ID:
        raise ValueError(f"item {record.id[:80]}...: Milvus ids are at most {MAX_ID} bytes")
    for what, text in (("source", record.source), ("document", record.document)):
        if text is not None and len(text.encode()) > MAX_TEXT:
            raise ValueError(f"item {record.id}: its {what} is over Milvus's {MAX_TEXT}-byte limit for text")
    meta = {k: v for k, v in record.metadata.items() if v is not None}
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as e:
        raise ValueError(f"item {record.id}: metadata must be JSON values (str, number, bool, list, dict): {e}") from e
    return {"id": key, "item_id": record.id, "modality": record.modality,
            "embedding": np.asarray(record.vector, np.float32).tolist(), "source": record.source,
            "document": record.document, "digest": record.digest, "metadata": meta}
