"""LanceDB: ``ClipEF`` in LanceDB's embedding registry, and a Store over a LanceDB table.

Importing this module registers :class:`ClipLanceEmbeddings` under ``"clip-embeddings"``
(``import clip_embeddings`` arranges that as soon as lancedb is imported), so a table whose
schema names it reopens in a new process and embeds queries with the same model.

Example:
    >>> import lancedb, clip_embeddings
    >>> from lancedb.embeddings import get_registry
    >>> from lancedb.pydantic import LanceModel, Vector
    >>> clip = get_registry().get("clip-embeddings").create(model=weights)  # weights: e.g. "ViT-B/32"
    >>> class Photo(LanceModel):
    ...     image_uri: str = clip.SourceField()
    ...     vector: Vector(clip.ndims()) = clip.VectorField()
    >>> table = lancedb.connect("lance-db").create_table("photos", schema=Photo)
    >>> table.add([{"image_uri": "cat.jpg"}, {"image_uri": "rocket.jpg"}])
    AddResult(version=2)
    >>> table.search("a sleeping cat").limit(1).to_pydantic(Photo)[0].image_uri
    '....jpg'
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import replace
from functools import cache
from typing import Any, Literal

import numpy as np

from .._extras import require
from .registry import StoreKind

KIND = StoreKind(
    kind="lancedb", store_class="LanceDBStore", extra="lancedb", client="lancedb", distribution="lancedb",
    purpose="LanceDB", other_uris=True, registry=True,
    locations="a folder, ':memory:', or a LanceDB URI (s3://BUCKET/PATH, db://DATABASE)",
)
KIND.require_client()  # before the imports below: names the extra when it is missing
require("pyarrow", extra="lancedb", purpose=KIND.purpose)
import lancedb  # noqa: E402
import pyarrow as pa  # noqa: E402
from lancedb.embeddings import EmbeddingFunction, register  # noqa: E402
from pydantic import field_validator, model_validator  # noqa: E402

from ..config import EmbeddingConfig, LongText, OnError
from ..embedding.function import ClipEF
from ..inputs.options import LoaderOptions
from .base import Hit, Modality, Record, Store, row_id, scan_modalities

CONFIG_KEY = b"clip_embeddings"  # schema metadata key holding ClipEF.get_config() for LanceDBStore tables
# where-keys that name a column, not metadata: the table's own "id" (the row id) and "modality"
# are not among them, so where={"id": ...} filters the user's own "id" key as on every store.
COLUMNS = ("item_id", "source", "document", "digest")
_DEFAULTS = EmbeddingConfig()


# --- the registry function ------------------------------------------------------------------

@cache
def _shared_ef(config: EmbeddingConfig) -> ClipEF:
    # One ClipEF per configuration per process: LanceDB re-creates the function from the schema
    # each time a table is opened, and the model behind it is loaded once anyway (shared_model).
    return ClipEF.from_config(config)


@register("clip-embeddings")
class ClipLanceEmbeddings(EmbeddingFunction):
    """CLIP for LanceDB: the source column holds images (or texts), queries are texts or images.

    Create it through the registry so LanceDB can store and rebuild it. The table's schema keeps
    the model and its fingerprint; a process that reopens the table with other weights at that
    path gets :class:`~clip_embeddings.ModelMismatchError` instead of meaningless neighbours.

    Fields: ``model`` (name or weights path), ``device`` (not stored in the schema: each process
    uses its own default), ``dtype``, ``batch_size``, ``long_text``, ``num_workers``,
    ``loader_options`` (a :class:`~clip_embeddings.inputs.options.LoaderOptions` or its ``to_config()``
    dict: the URL and size policy, kept in the schema so a reopened table honours it);
    ``source="image"`` (paths, URLs or bytes) or ``"text"``; ``on_error``:
    ``"raise"`` or ``"skip"`` (a bad image gets a null vector, which LanceDB's ``on_bad_vectors``
    then handles). ``max_retries`` defaults to 0: a corrupt image fails the same way every time,
    so LanceDB's backoff-and-retry (7 tries by default) would only delay the error.

    Example:
        >>> from lancedb.embeddings import get_registry
        >>> clip = get_registry().get("clip-embeddings").create(model=weights)  # or "/weights/ViT-B-32.pt"
        >>> clip.ndims(), clip.compute_query_embeddings("a dog")[0].shape
        (512, (512,))
    """

    # The defaults are EmbeddingConfig's (the model is named: the schema must say which one).
    model: str = "ViT-B/32"
    device: str | None = _DEFAULTS.device
    dtype: str | None = _DEFAULTS.dtype
    batch_size: int = _DEFAULTS.batch_size
    long_text: LongText = _DEFAULTS.long_text
    source: Literal["image", "text"] = "image"
    on_error: OnError = _DEFAULTS.on_error
    fingerprint: str | None = None
    dim: int | None = None
    max_retries: int = 0
    # The input policy, stored in the schema with the rest so a reopened table keeps it: a dict
    # as LoaderOptions.to_config() writes it (a LoaderOptions is accepted too).
    loader_options: dict[str, Any] | None = None
    num_workers: int = _DEFAULTS.num_workers

    @field_validator("loader_options", mode="before")
    @classmethod
    def _options_as_dict(cls, value: Any) -> dict[str, Any] | None:
        if isinstance(value, LoaderOptions):
            return value.to_config()
        return None if value is None else LoaderOptions.from_config(value).to_config()

    @model_validator(mode="after")
    def _valid(self) -> ClipLanceEmbeddings:
        self.embedding_config()  # EmbeddingConfig's checks, at create() rather than at first use
        return self

    def embedding_config(self) -> EmbeddingConfig:
        """These fields as the :class:`~clip_embeddings.config.EmbeddingConfig` of the function doing the work."""
        return EmbeddingConfig(
            model=os.fspath(self.model), device=self.device, dtype=self.dtype, batch_size=self.batch_size,
            long_text=self.long_text, on_error=self.on_error, num_workers=self.num_workers,
            loader_options=LoaderOptions.from_config(self.loader_options), fingerprint=self.fingerprint, dim=self.dim,
        )

    def clip(self) -> ClipEF:
        """The shared :class:`ClipEF` doing the work (checks ``fingerprint`` when one is set)."""
        return _shared_ef(self.embedding_config())

    def ndims(self) -> int:
        return self.clip().dim

    def safe_model_dump(self) -> dict[str, Any]:
        # What goes into the table schema: the creation arguments plus what identifies the weights,
        # so a later process can tell whether the file at ``model`` still holds the same model.
        # ``device`` stays out: it describes this machine, and a process without CUDA must still
        # be able to open a table built on a GPU box (each picks its default device).
        config = {k: v for k, v in super().safe_model_dump().items() if k != "device"}
        config.update(fingerprint=self.clip().fingerprint, dim=self.clip().dim)
        if self.loader_options is not None:  # the validated dict, not whatever create() was given
            config["loader_options"] = self.loader_options
        return config

    def compute_source_embeddings(self, inputs: Any, *args: Any, **kwargs: Any) -> list[np.ndarray | None]:
        items = self.sanitize_input(inputs)
        if isinstance(items, np.ndarray):
            items = items.tolist()
        out: list[np.ndarray | None] = [None] * len(items)
        present = [i for i, x in enumerate(items) if x is not None]
        if self.source == "text":
            for i, v in zip(present, self.clip().embed_texts([items[i] for i in present]), strict=True):
                out[i] = v
            return out
        result = self.clip().encode_images([items[i] for i in present], on_error=self.on_error)
        for row, index in enumerate(result.indices):
            out[present[index]] = result.embeddings[row]
        return out

    def compute_query_embeddings(self, query: Any, *args: Any, **kwargs: Any) -> list[np.ndarray | None]:
        """A ``str`` is a text query; a PIL image, array, bytes or ``Path`` is an image query."""
        if isinstance(query, str):
            return [self.clip().embed_texts([query])[0]]
        return [self.clip().encode_images([query], on_error="raise").embeddings[0]]

    def compute_source_embeddings_with_retry(self, *args: Any, **kwargs: Any) -> list[np.ndarray | None]:
        if self.max_retries <= 0:  # LanceDB's wrapper retries even then, once, and re-wraps the error
            return self.compute_source_embeddings(*args, **kwargs)
        return super().compute_source_embeddings_with_retry(*args, **kwargs)

    def compute_query_embeddings_with_retry(self, *args: Any, **kwargs: Any) -> list[np.ndarray | None]:
        if self.max_retries <= 0:
            return self.compute_query_embeddings(*args, **kwargs)
        return super().compute_query_embeddings_with_retry(*args, **kwargs)


# --- the Store ------------------------------------------------------------------------------

def store_schema(dim: int, config: dict[str, Any]) -> pa.Schema:
    """The columns of a :class:`LanceDBStore` table; the function's config rides in the schema metadata."""
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("item_id", pa.string()),
            pa.field("modality", pa.string()),
            pa.field("vector", pa.list_(pa.float32(), dim)),
            pa.field("source", pa.string()),
            pa.field("document", pa.string()),
            pa.field("digest", pa.string()),
            # Arrow's JSON type becomes Lance JSON: still a JSON string when read, but filterable
            # with json_get_string(metadata, 'key') and friends.
            pa.field("metadata", pa.json_(pa.utf8())),
        ],
        metadata={CONFIG_KEY: json.dumps(config).encode()},
    )


class LanceDBStore(Store):
    """A LanceDB table behind the uniform :class:`Store` interface, one row per vector.

    Rows: ``id`` (``"<item>"`` for an image, ``"<item>:text"`` for a text or caption),
    ``item_id``, ``modality``, ``vector``, ``source``, ``document``, ``digest`` and ``metadata``
    (JSON). Writes are ``merge_insert`` on ``id``, so re-adding changes nothing. With
    ``ef=None`` the function is rebuilt from the config kept in the table's schema.

    ``where`` filters: a dict of exact matches on metadata keys (or on ``source``, ``document``,
    ``digest``, ``item_id``), all of which must hold; a ``str`` is used as a LanceDB SQL filter.

    Example:
        >>> store = LanceDBStore(lancedb.connect("lance-db"), "photos", ClipEF())
        >>> store.index_folder("photos").new
        7
        >>> store.query(image="cat.jpg", k=1, modality="text")[0].document  # the nearest caption
        '...'
    """

    @classmethod
    def open_location(cls, location: str, name: str, ef: ClipEF | None) -> LanceDBStore:
        """Table ``name`` at a checked location (``open_store`` calls this; see ``KIND``)."""
        return cls(lancedb.connect("memory://" if location == ":memory:" else location), name, ef)

    def __init__(self, db: Any, name: str, ef: ClipEF | None = None):
        self.db, self.name = db, name
        try:
            self.table = db.open_table(name)
        except (ValueError, FileNotFoundError):
            self.table = None
        if self.table is not None:
            ef = self._function_for_existing(ef)
        elif ef is None:
            raise self._missing()
        else:
            self.table = db.create_table(name, schema=store_schema(ef.dim, ef.get_config()))
        self.ef = ef
        self.check_model()

    def describe(self) -> str:
        return f"LanceDB table {self.name!r}"

    def _stored_config(self) -> dict[str, Any] | None:
        raw = (self.table.schema.metadata or {}).get(CONFIG_KEY)
        return json.loads(raw) if raw else None

    def _write(self, records: list[Record]) -> None:
        # Two records with one row id in a batch would make merge_insert ambiguous: the last wins.
        rows = {row_id(r.id, r.modality): r for r in records}
        self._keep_existing(rows)
        schema = store_schema(self.ef.dim, {})
        table = pa.table(
            {
                "id": list(rows),
                "item_id": [r.id for r in rows.values()],
                "modality": [r.modality for r in rows.values()],
                "vector": pa.array([np.asarray(r.vector, np.float32) for r in rows.values()], schema.field("vector").type),
                "source": [r.source for r in rows.values()],
                "document": [r.document for r in rows.values()],
                "digest": [r.digest for r in rows.values()],
                "metadata": pa.array([json.dumps(r.metadata) for r in rows.values()], pa.json_(pa.utf8())),
            },
            schema=schema.remove_metadata(),
        )
        self.table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(table)

    def _keep_existing(self, rows: dict[str, Record]) -> None:
        """Re-adding a row must not erase what the new write does not say (as in Qdrant's payload
        merge): an image re-added without its caption keeps the caption, and metadata keys merge."""
        ids = ", ".join(_sql(i) for i in rows)
        existing = self.table.search().where(f"id IN ({ids})").select(["id", "source", "document", "metadata"])
        for old in existing.limit(len(rows)).to_list():
            r = rows[old["id"]]
            meta = {**(json.loads(old["metadata"]) if old["metadata"] else {}), **r.metadata}
            rows[old["id"]] = replace(r, source=r.source or old["source"], document=r.document or old["document"], metadata=meta)

    def _search(self, vector: np.ndarray, k: int, modality: Modality, where: dict[str, Any] | str | None) -> list[Hit]:
        return self._search_many(np.asarray(vector)[None], k, modality, where)[0]

    def _search_many(self, vectors: np.ndarray, k: int, modality: Modality,
                     where: dict[str, Any] | str | None) -> list[list[Hit]]:
        condition = f"modality = {_sql(modality)}"
        if where:
            condition += f" AND ({where if isinstance(where, str) else to_sql(where)})"
        queries = [np.asarray(v, np.float32) for v in vectors]
        rows = (
            self.table.search(queries if len(queries) > 1 else queries[0], vector_column_name="vector")
            .distance_type("cosine").where(condition, prefilter=True).limit(k)
            .select(["item_id", "source", "document", "metadata", "_distance"]).to_list()
        )
        out: list[list[Hit]] = [[] for _ in queries]
        for r in rows:  # a multi-vector query tags each row with its query's index
            out[r.get("query_index", 0)].append(
                Hit(r["item_id"], 1.0 - float(r["_distance"]), modality, r["source"], r["document"],
                    json.loads(r["metadata"]) if r["metadata"] else {}))
        for hits in out:
            hits.sort(key=lambda h: -h.score)
        return out

    def _stored(self, keys: list[tuple[str, Modality]]) -> dict[tuple[str, Modality], tuple[str | None, str | None]]:
        rows = {row_id(item, modality): (item, modality) for item, modality in keys}
        ids = ", ".join(_sql(i) for i in rows)
        found = self.table.search().where(f"id IN ({ids})").select(["id", "digest", "document"]).limit(len(rows))
        return {rows[r["id"]]: (r["digest"], r["document"]) for r in found.to_list()}

    def _scan(self, modality: Modality | None = None, *, batch_size: int = 512,
              with_vectors: bool = True) -> Iterator[list[Record]]:
        columns = ["item_id", "source", "document", "digest", "metadata"] + (["vector"] if with_vectors else [])
        for kind in scan_modalities(modality):
            query = self.table.search().where(f"modality = {_sql(kind)}").select(columns)
            # A plain scan streams Arrow batches from the table's fragments: memory bounded by batch_size.
            for batch in query.to_batches(batch_size=batch_size):
                if batch.num_rows:
                    yield _records(batch, kind, with_vectors)

    def _vectors(self, keys: list[tuple[str, Modality]]) -> dict[tuple[str, Modality], np.ndarray]:
        rows = {row_id(item, modality): (item, modality) for item, modality in keys}
        ids = ", ".join(_sql(i) for i in rows)
        found = self.table.search().where(f"id IN ({ids})").select(["id", "vector"]).limit(len(rows)).to_list()
        return {rows[r["id"]]: np.asarray(r["vector"], np.float32) for r in found}

    def _delete(self, keys: list[tuple[str, Modality]]) -> None:
        for start in range(0, len(keys), 1000):  # one SQL filter per thousand rows keeps it short
            ids = ", ".join(_sql(row_id(item, modality)) for item, modality in keys[start:start + 1000])
            self.table.delete(f"id IN ({ids})")

    def count(self, modality: Modality | None = None) -> int:
        if modality is not None:
            return self.table.count_rows(f"modality = {_sql(modality)}")
        # One rule on every store: an item is an image row, or a text row with no image row beside
        # it (a caption may be stored before or after its image, with or without a source).
        alone = 0
        texts = self.table.search().where("modality = 'text'").select(["item_id"])
        for batch in texts.to_batches(batch_size=1000):
            ids = ", ".join(_sql(i) for i in batch.column("item_id").to_pylist())
            if ids:
                alone += batch.num_rows - self.table.count_rows(f"modality = 'image' AND id IN ({ids})")
        return self.table.count_rows("modality = 'image'") + alone


def _records(batch: pa.RecordBatch, modality: Modality, with_vectors: bool) -> list[Record]:
    columns = {n: batch.column(n).to_pylist() for n in batch.schema.names if n != "vector"}
    n = batch.num_rows
    if with_vectors:
        # The fixed-size list column as one [n, dim] float32 block, without a Python float per value.
        vectors = batch.column("vector").flatten().to_numpy(zero_copy_only=False).reshape(n, -1)
    return [
        Record(columns["item_id"][i], modality, vectors[i].copy() if with_vectors else None, columns["digest"][i],
               source=columns["source"][i], document=columns["document"][i],
               metadata=json.loads(columns["metadata"][i]) if columns["metadata"][i] else {})
        for i in range(n)
    ]


def to_sql(where: dict[str, Any]) -> str:
    """``{"album": "space", "year": 2024}`` → a LanceDB SQL filter of exact matches, all required.

    Example:
        >>> to_sql({"album": "space", "source": "/p/cat.jpg"})
        "json_get_string(metadata, 'album') = 'space' AND source = '/p/cat.jpg'"
    """
    clauses = []
    for key, value in where.items():
        if key in COLUMNS:
            clauses.append(f"{key} = {_sql(value)}")
            continue
        getter = {bool: "json_get_bool", int: "json_get_int", float: "json_get_float", str: "json_get_string"}.get(type(value))
        if getter is None:
            raise ValueError(
                f"where[{key!r}]: exact matches take str, int, float or bool values, not {type(value).__name__}; "
                "pass a SQL string for anything else"
            )
        clauses.append(f"{getter}(metadata, {_sql(key)}) = {_sql(value)}")
    return " AND ".join(clauses) or "true"


def _sql(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"
