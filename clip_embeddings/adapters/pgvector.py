"""PostgreSQL with pgvector: one table per collection, one row per vector, an HNSW index per modality.

Table ``<collection>`` (the collection name is the table name, in the connection's schema):

====================  ================================================================
``id``                text primary key: ``row_id(item, modality)``
``item_id``           the item id (an image and its caption share it)
``modality``          ``'image'`` or ``'text'``
``embedding``         ``vector(dim)``, a unit vector
``source``            where an image came from (a caption row keeps its image's source)
``document``          the text, or an image's caption
``digest``            the content digest the id was derived from
``metadata``          ``jsonb``: the user's metadata only
====================  ================================================================

Rows by modality (rather than two vector columns) keep one code path with the other row-based
stores (Chroma, LanceDB) and let each modality have its own *partial* HNSW index
(``vector_cosine_ops``, ``m``/``ef_construction`` fixed when the table is made, ``hnsw.ef_search``
set per query), so a text→image search walks a graph of images only. A GIN index on ``metadata``
serves the ``where`` filters.

The embedding function's config (model, fingerprint, dim) and the index parameters live in the
side table ``clip_embeddings_collections`` (one row per collection), read on reopen: ``ef=None``
rebuilds the same function, other weights raise :class:`~clip_embeddings.ModelMismatchError`.

Every user value reaches PostgreSQL as a query parameter; table names go through
``psycopg.sql.Identifier``. ``where`` is a dict of exact matches (a list value matches any of
its elements): metadata keys become ``metadata @> %s`` containment tests, ``item_id``,
``source``, ``document`` and ``digest`` compare their columns.

Example:
    >>> store = PgVectorStore("postgresql://localhost/photos_db", "photos", ClipEF())  # doctest: +SKIP
    >>> store.add_images(["cat.jpg"], captions=["a tabby cat"])  # doctest: +SKIP
    >>> store.query("a sleeping cat", k=1, where={"album": "pets"})[0].document  # doctest: +SKIP
    'a tabby cat'
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np

from .._extras import require
from .registry import StoreKind

KIND = StoreKind(
    kind="pgvector", store_class="PgVectorStore", extra="pgvector", client="psycopg", distribution="psycopg[binary]",
    purpose="PostgreSQL with pgvector", servers=("postgresql", "postgres"), local=None, memory=False,
    locations="a PostgreSQL URL postgresql://USER@HOST:5432/DATABASE",
)
KIND.require_client()  # before the imports below: names the extra when it is missing
require("pgvector", extra="pgvector", purpose=KIND.purpose)
import psycopg  # noqa: E402
from pgvector.psycopg import register_vector  # noqa: E402
from psycopg import sql  # noqa: E402
from psycopg.types.json import Jsonb  # noqa: E402

from ..embedding.function import ClipEF
from ..errors import CollectionNotFoundError
from .base import Hit, Modality, Record, Store, row_id

CONFIG_TABLE = "clip_embeddings_collections"
COLUMNS = ("item_id", "source", "document", "digest")  # where-keys that name a column, not metadata
HNSW_M, HNSW_EF_CONSTRUCTION = 16, 64  # pgvector's defaults
# pgvector's default ef_search (40) gives recall@10 0.92 on 3000 random 64-d unit vectors, 100 gives
# 0.988-0.996 (the graph is built with random levels), 200 gives 1.0 (tests/test_pgvector.py)
HNSW_EF_SEARCH = 200
_MAX_IDENTIFIER = 63  # PostgreSQL truncates longer names silently; refuse them instead


def connect(location: str) -> psycopg.Connection:
    """A connection to ``postgresql://...`` in autocommit mode (writes open their own transactions).

    A database that does not exist is a :class:`~clip_embeddings.errors.CollectionNotFoundError`
    naming the location; any other failure keeps psycopg's own message.

    Example:
        >>> conn = connect("postgresql://user@localhost:5432/photos_db")  # doctest: +SKIP
    """
    try:
        return psycopg.connect(location, autocommit=True)
    except psycopg.OperationalError as e:
        if "does not exist" in str(e) and "database" in str(e):
            raise CollectionNotFoundError(f"no pgvector database at {location}: {str(e).strip()}; "
                                          "create it with CREATE DATABASE first") from e
        raise


class PgVectorStore(Store):
    """A PostgreSQL table with pgvector behind the uniform :class:`Store` interface.

    ``connection`` is a ``postgresql://`` URL or an open ``psycopg.Connection`` (put in
    autocommit mode). Creates the table, its indexes and the ``vector`` extension if needed, or
    opens an existing table; with ``ef=None`` the function is rebuilt from the stored config.
    ``m`` and ``ef_construction`` shape a new table's HNSW indexes; ``ef_search`` (raised to
    ``k`` when ``k`` is larger) trades query speed for recall. A filtered search that the index
    under-fills (HNSW filters after the walk) is run again exactly, so ``k`` hits come back
    whenever ``k`` rows match.

    Example:
        >>> store = PgVectorStore("postgresql://localhost/db", "photos", ClipEF(), ef_search=400)  # doctest: +SKIP
        >>> store.index_folder("examples/images")  # doctest: +SKIP
    """

    @classmethod
    def open_location(cls, location: str, name: str, ef: ClipEF | None) -> PgVectorStore:
        """Table ``name`` in the database at a checked URL (``open_store`` calls this; see ``KIND``)."""
        return cls(location, name, ef)

    def __init__(self, connection: str | psycopg.Connection, name: str, ef: ClipEF | None = None, *,
                 m: int = HNSW_M, ef_construction: int = HNSW_EF_CONSTRUCTION, ef_search: int = HNSW_EF_SEARCH):
        if len(name.encode()) > _MAX_IDENTIFIER or not name:
            raise ValueError(f"collection name {name!r}: a PostgreSQL table name has 1 to {_MAX_IDENTIFIER} bytes")
        self.client = connect(connection) if isinstance(connection, str) else connection
        self.client.autocommit = True
        self.name, self.table, self.ef_search = name, sql.Identifier(name), ef_search
        try:
            exists = self._stored_config() is not None
            if exists:
                ef = self._function_for_existing(ef)
            elif ef is None:
                raise self._missing()
            else:
                self._create(ef, m, ef_construction)
            register_vector(self.client)
            self.ef = ef
            self.check_model()
        except BaseException:
            if isinstance(connection, str):
                self.client.close()
            raise

    def describe(self) -> str:
        return f"pgvector table {self.name!r}"

    def close(self) -> None:
        """Close the connection this store opened (or was given)."""
        self.client.close()

    # -- creation and config --

    def _create(self, ef: ClipEF, m: int, ef_construction: int) -> None:
        """Extension, table, indexes and config row in one transaction, serialised per collection:
        several writers starting at once create the collection once and all open it."""
        with self.client.transaction():
            self.client.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"clip_embeddings:{self.name}"])
            if self._stored_config() is not None:
                return  # another writer won the race; its model is checked by the caller
            try:
                self.client.execute("CREATE EXTENSION IF NOT EXISTS vector")
            except psycopg.errors.InsufficientPrivilege as e:
                raise PermissionError("the pgvector extension is not installed in this database and this user "
                                      "may not install it: run CREATE EXTENSION vector as its owner") from e
            self.client.execute(sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (name text PRIMARY KEY, config jsonb NOT NULL, "
                "index jsonb NOT NULL, created timestamptz NOT NULL DEFAULT now())").format(sql.Identifier(CONFIG_TABLE)))
            self.client.execute(sql.SQL(
                "CREATE TABLE {t} (id text PRIMARY KEY, item_id text NOT NULL, "
                "modality text NOT NULL CHECK (modality IN ('image', 'text')), embedding vector({dim}) NOT NULL, "
                "source text, document text, digest text NOT NULL, metadata jsonb NOT NULL DEFAULT '{{}}')"
            ).format(t=self.table, dim=sql.Literal(int(ef.dim))))
            for modality in ("image", "text"):  # a partial index per modality: each graph holds one kind
                self.client.execute(sql.SQL(
                    "CREATE INDEX ON {t} USING hnsw (embedding vector_cosine_ops) "
                    "WITH (m = {m}, ef_construction = {efc}) WHERE modality = {mod}"
                ).format(t=self.table, m=sql.Literal(int(m)), efc=sql.Literal(int(ef_construction)),
                         mod=sql.Literal(modality)))
            self.client.execute(sql.SQL("CREATE INDEX ON {t} USING gin (metadata jsonb_path_ops)").format(t=self.table))
            self.client.execute(sql.SQL("CREATE INDEX ON {t} (item_id)").format(t=self.table))
            self.client.execute(
                sql.SQL("INSERT INTO {} (name, config, index) VALUES (%s, %s, %s) ON CONFLICT (name) DO UPDATE SET "
                        "config = EXCLUDED.config, index = EXCLUDED.index, created = now()").format(sql.Identifier(CONFIG_TABLE)),
                [self.name, Jsonb(ef.get_config()), Jsonb({"m": m, "ef_construction": ef_construction,
                                                           "ops": "vector_cosine_ops"})])

    def _stored_config(self) -> dict[str, Any] | None:
        row = self.client.execute(
            sql.SQL("SELECT config FROM {} WHERE name = %s AND to_regclass(%s) IS NOT NULL").format(
                sql.Identifier(CONFIG_TABLE)), [self.name, self.table.as_string(self.client)],
        ).fetchone() if self._has_config_table() else None
        return row[0] if row else None

    def _has_config_table(self) -> bool:
        return _scalar(self.client.execute("SELECT to_regclass(%s) IS NOT NULL", [CONFIG_TABLE]))

    def index_parameters(self) -> dict[str, Any]:
        """The HNSW parameters of this table (fixed at creation) and the ``ef_search`` of this store.

        Example:
            >>> store.index_parameters()  # doctest: +SKIP
            {'m': 16, 'ef_construction': 64, 'ops': 'vector_cosine_ops', 'ef_search': 200}
        """
        row = self.client.execute(sql.SQL("SELECT index FROM {} WHERE name = %s").format(sql.Identifier(CONFIG_TABLE)),
                                  [self.name]).fetchone()
        return {**(row[0] if row else {}), "ef_search": self.ef_search}

    # -- the primitives --

    def _write(self, records: list[Record]) -> None:
        # One transaction per batch (psycopg pipelines executemany): a crash leaves whole batches.
        # An existing row keeps what this write does not say, as in the other stores: re-adding an
        # image without its caption keeps the caption, and metadata keys merge.
        query = sql.SQL(
            "INSERT INTO {t} AS old (id, item_id, modality, embedding, source, document, digest, metadata) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET "
            "embedding = EXCLUDED.embedding, digest = EXCLUDED.digest, "
            "source = COALESCE(EXCLUDED.source, old.source), document = COALESCE(EXCLUDED.document, old.document), "
            "metadata = old.metadata || EXCLUDED.metadata"
        ).format(t=self.table)
        rows = [(row_id(r.id, r.modality), r.id, r.modality, np.asarray(r.vector, np.float32), r.source, r.document,
                 r.digest, Jsonb(_metadata(r))) for r in records]
        with self.client.transaction(), self.client.cursor() as cursor:
            cursor.executemany(query, rows)

    def _search(self, vector: np.ndarray, k: int, modality: Modality, where: dict[str, Any] | None) -> list[Hit]:
        condition, params = to_sql(where)
        query = sql.SQL(
            "SELECT item_id, 1 - (embedding <=> %s) AS score, source, document, metadata FROM {t} "
            # modality is one of two constants, written as a literal so the planner can match the
            # partial index of that modality (a parameter would hide it from the planner)
            "WHERE modality = {mod} AND {cond} ORDER BY embedding <=> %s LIMIT %s"
        ).format(t=self.table, mod=sql.Literal(_modality(modality)), cond=condition)
        vector = np.asarray(vector, np.float32)
        args = [vector, *params, vector, k]
        with self.client.transaction():
            self.client.execute("SELECT set_config('hnsw.ef_search', %s, true)", [str(max(self.ef_search, k))])
            rows = self.client.execute(query, args).fetchall()
            if len(rows) < k:
                # HNSW filters the rows it walked; fewer than k may survive although more match.
                # Without index scans the same query is exact (a sort over the matching rows).
                self.client.execute("SELECT set_config('enable_indexscan', 'off', true)")
                rows = self.client.execute(query, args).fetchall()
        return [Hit(item, float(score), modality, source, document, dict(meta)) for item, score, source, document, meta in rows]

    def _stored(self, keys: list[tuple[str, Modality]]) -> dict[tuple[str, Modality], tuple[str | None, str | None]]:
        rows = {row_id(item, modality): (item, modality) for item, modality in keys}
        found = self.client.execute(sql.SQL("SELECT id, digest, document FROM {t} WHERE id = ANY(%s)").format(t=self.table),
                                    [list(rows)]).fetchall()
        return {rows[i]: (digest, document) for i, digest, document in found}

    def count(self, modality: Modality | None = None) -> int:
        if modality is not None:
            query = sql.SQL("SELECT count(*) FROM {t} WHERE modality = %s").format(t=self.table)
            return _scalar(self.client.execute(query, [_modality(modality)]))
        # An item is an image row, or a text row with no image row beside it: its distinct item ids.
        return _scalar(self.client.execute(sql.SQL("SELECT count(DISTINCT item_id) FROM {t}").format(t=self.table)))

    def _scan(self, modality: Modality | None = None, *, batch_size: int = 512,
              with_vectors: bool = True) -> Iterator[list[Record]]:
        """Every stored record, ``batch_size`` at a time, in row-id order (keyset pages: memory
        stays bounded and rows written during the scan are seen at most once)."""
        columns = sql.SQL("id, item_id, modality, {v}, digest, source, document, metadata").format(
            v=sql.SQL("embedding") if with_vectors else sql.SQL("NULL"))
        only = sql.SQL("TRUE") if modality is None else sql.SQL("modality = {}").format(sql.Literal(_modality(modality)))
        query = sql.SQL("SELECT {c} FROM {t} WHERE {only} AND id > %s ORDER BY id LIMIT %s").format(
            c=columns, t=self.table, only=only)
        after = ""
        while True:
            rows = self.client.execute(query, [after, batch_size]).fetchall()
            if not rows:
                return
            yield [Record(item, mod, None if vec is None else _array(vec), digest, source, document, dict(meta))
                   for _, item, mod, vec, digest, source, document, meta in rows]
            after = rows[-1][0]

    def _delete(self, keys: list[tuple[str, Modality]]) -> None:
        """Remove the (item id, modality) records; missing ones are ignored."""
        if keys:
            with self.client.transaction():
                self.client.execute(sql.SQL("DELETE FROM {t} WHERE id = ANY(%s)").format(t=self.table),
                                    [[row_id(item, modality) for item, modality in keys]])


def to_sql(where: dict[str, Any] | None) -> tuple[sql.Composable, list[Any]]:
    """A ``where`` dict as a SQL condition with placeholders, and its parameters.

    Example:
        >>> condition, params = to_sql({"album": "space", "source": ["/a.jpg", "/b.jpg"]})
        >>> condition.as_string(None)
        '(metadata @> %s) AND ("source" = ANY(%s))'
        >>> [getattr(p, "obj", p) for p in params]
        [{'album': 'space'}, ['/a.jpg', '/b.jpg']]
    """
    if not where:
        return sql.SQL("TRUE"), []
    if not isinstance(where, dict):
        raise TypeError(f"where must be a dict of exact matches, not {type(where).__name__}")
    clauses: list[sql.Composable] = []
    params: list[Any] = []
    for key, value in where.items():
        if not isinstance(key, str):
            raise TypeError(f"where keys are metadata names (str), not {type(key).__name__}")
        many = isinstance(value, (list, tuple, set))
        values = list(value) if many else [value]
        for v in values:
            if v is None or not isinstance(v, (str, int, float, bool)):
                raise ValueError(f"where[{key!r}]: exact matches take str, int, float or bool values (or a list of "
                                 f"them), not {type(v).__name__}")
        if key in COLUMNS:
            clauses.append(sql.SQL("{} = ANY(%s)" if many else "{} = %s").format(sql.Identifier(key)))
            params.append([str(v) for v in values] if many else str(value))
        elif many:  # any of the values: one containment test each
            clauses.append(sql.SQL(" OR ").join(sql.SQL("metadata @> %s") for _ in values))
            params += [Jsonb({key: v}) for v in values]
        else:
            clauses.append(sql.SQL("metadata @> %s"))
            params.append(Jsonb({key: value}))
    return sql.SQL(" AND ").join(sql.SQL("({})").format(c) for c in clauses), params


def _array(vector: Any) -> np.ndarray:
    """A vector read back (pgvector's ``Vector`` in binary mode, an array in text mode) as float32."""
    return np.asarray(vector.to_numpy() if hasattr(vector, "to_numpy") else vector, np.float32)


def _scalar(cursor: psycopg.Cursor) -> Any:
    """The one value of a query that always returns one row (a count, a ``to_regclass`` test)."""
    row = cursor.fetchone()
    if row is None:
        raise RuntimeError("PostgreSQL returned no row for a query that always returns one")
    return row[0]


def _modality(modality: str) -> str:
    if modality not in ("image", "text"):
        raise ValueError(f"modality must be 'image' or 'text', not {modality!r}")
    return modality


def _metadata(record: Record) -> dict[str, Any]:
    meta = {k: v for k, v in record.metadata.items() if v is not None}
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as e:
        raise ValueError(f"item {record.id}: metadata must be JSON values (str, number, bool, list, dict): {e}") from e
    return meta
