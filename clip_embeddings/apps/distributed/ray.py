"""Embed millions of images on a Ray cluster and write them to a database server.

Three layers, each usable alone:

* :func:`embed_dataset` turns a ``ray.data.Dataset`` of image sources (or texts) into a dataset of
  embeddings. A pool of actors each holds one model, loaded once; a bad item becomes a row with an
  ``error`` instead of failing the job.
* :func:`index_with_ray` runs that pipeline and upserts the rows into a :class:`Store` (LanceDB,
  a Chroma server, a Qdrant server) as they stream out. Ids are content-derived, so re-running a
  job after a failure only rewrites what is already there.
* ``clip-embeddings index --engine ray`` (``apps/cli/index.py``) calls :func:`index_with_ray`.

Ray is imported lazily: importing this module without it works, and using it raises an
``ImportError`` that says how to install it.

Example:
    >>> import ray
    >>> from clip_embeddings.apps.distributed.ray import index_with_ray
    >>> ray.init(address="auto")  # doctest: +SKIP
    >>> report = index_with_ray(paths, model="ViT-B/32", sink="chroma+http://10.0.0.5:8000/photos",
    ...                         num_actors=8, num_gpus=1)  # doctest: +SKIP
    >>> print(report)  # doctest: +SKIP
    stored 999998 item(s), skipped 2 in 812.4 s (1231 items/s)
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..._extras import require
from ...adapters import open_store
from ...adapters.base import Modality, Record, Store, item_id, row_id, text_digest
from ...embedding.function import ClipEF
from ...embedding.pipeline import source_of
from ...errors import StoreAddressError
from ...inputs.names import stored_name
from ...inputs.options import describe

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pyarrow as pa
    import ray.data

__all__ = [
    "ClipBatchEmbedder",
    "RayIngestReport",
    "embed_dataset",
    "index_with_ray",
    "open_sink",
    "output_schema",
]

def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or a MissingExtraError that says what to install."""
    require("ray.data", extra="ray")  # Ray core alone lacks the Data library
    import ray

    return ray


# --- the embedding step: one model per actor ---------------------------------------------------

def output_schema(dim: int) -> pa.Schema:
    """The columns :func:`embed_dataset` produces, for a model with ``dim``-d embeddings.

    ``embedding`` is a fixed-size float32 list (LanceDB's vector type), null where ``error`` says
    why the item could not be embedded; ``document`` holds the text of text rows.
    """
    import pyarrow as pa

    return pa.schema([
        ("id", pa.string()),
        ("source", pa.string()),
        ("modality", pa.string()),
        ("digest", pa.string()),
        ("document", pa.string()),
        ("embedding", pa.list_(pa.float32(), dim)),
        ("error", pa.string()),
    ])


class ClipBatchEmbedder:
    """A Ray Data callable class: one ``ClipEF`` per actor, loaded once in ``__init__``.

    Takes a ``pyarrow.Table`` batch with the items in ``column`` (paths, URLs or bytes for images;
    strings for texts) and returns a table in :func:`output_schema`. Usable without Ray too.

    Example:
        >>> import pyarrow as pa
        >>> embed = ClipBatchEmbedder("ViT-B/32")  # doctest: +SKIP
        >>> embed(pa.table({"source": ["cat.jpg", "missing.jpg"]}))["error"].to_pylist()  # doctest: +SKIP
        [None, 'file not found']
    """

    def __init__(self, model: str, *, column: str = "source", modality: Modality = "image",
                 device: str | None = None, dtype: str | None = "auto", batch_size: int = 64,
                 decode_threads: int = 4, cache: bool | str = False):
        if modality not in ("image", "text"):
            raise ValueError(f"modality must be 'image' or 'text', not {modality!r}")
        self.column, self.modality = column, modality
        # on_error="skip": a bad item is one error row, never a failed task (Ray would retry it).
        self.ef = ClipEF(model, device=device, dtype=dtype, batch_size=batch_size, cache=cache,
                         on_error="skip", num_workers=decode_threads)
        self.dim = self.ef.dim  # loads the weights now, so the first batch does not pay for it

    def __call__(self, batch: pa.Table) -> pa.Table:
        items = batch.column(self.column).to_pylist()
        # read_binary_files(include_paths=True) gives bytes plus a path: report the path.
        paths = batch.column("path").to_pylist() if "path" in batch.column_names and self.column != "path" else None
        rows = self._texts(items) if self.modality == "text" else self._images(items, paths)
        return self._table(rows)

    def _images(self, items: list[Any], paths: list[str] | None) -> list[tuple]:
        rows: list[tuple] = [()] * len(items)
        wanted = [i for i, x in enumerate(items) if x is not None]
        for i, x in enumerate(items):
            if x is None:
                rows[i] = (None, paths[i] if paths else "<null>", None, None, None, "missing value")
        result = self.ef.encode_images([items[i] for i in wanted], on_error="skip")
        for row, pos in enumerate(result.indices):
            i = wanted[pos]
            digest = result.digests[row]
            rows[i] = (item_id("image", digest), self._source(items[i], paths, i), digest, None,
                       result.embeddings[row], None)
        for skip in result.skipped:
            i = wanted[skip.index]
            rows[i] = (None, self._source(items[i], paths, i), None, None, None, skip.reason)
        return rows

    def _texts(self, items: list[Any]) -> list[tuple]:
        rows: list[tuple] = [()] * len(items)
        good = [i for i, x in enumerate(items) if isinstance(x, str)]
        for i, x in enumerate(items):
            if not isinstance(x, str):
                rows[i] = (None, describe(x), None, None, None, f"not a text ({type(x).__name__})")
        vectors: np.ndarray | list[np.ndarray] = self.ef.embed_texts([items[i] for i in good]) if good else []
        for i, vector in zip(good, vectors, strict=True):
            digest = text_digest(items[i])
            rows[i] = (item_id("text", digest), None, digest, items[i], vector, None)
        return rows

    @staticmethod
    def _source(item: Any, paths: list[str] | None, i: int) -> str:
        if paths and not isinstance(item, str):
            return paths[i]
        try:
            return source_of(item)
        except Exception:  # noqa: BLE001 - the description is for humans, never a reason to fail
            return f"<{type(item).__name__}>"

    def _table(self, rows: list[tuple]) -> pa.Table:
        import pyarrow as pa

        n, dim = len(rows), self.dim
        vectors = np.zeros((n, dim), np.float32)
        missing = np.ones(n, dtype=bool)
        for i, row in enumerate(rows):
            if row[4] is not None:
                vectors[i], missing[i] = row[4], False
        values = pa.array(vectors.reshape(-1), type=pa.float32())
        try:
            embedding = pa.FixedSizeListArray.from_arrays(values, dim, mask=pa.array(missing))
        except TypeError:  # pyarrow < 15 has no mask here: build it row by row instead
            embedding = pa.array([None if m else v for v, m in zip(vectors, missing, strict=True)], pa.list_(pa.float32(), dim))
        columns = list(zip(*rows, strict=True)) if rows else [()] * 6
        schema = output_schema(dim)
        return pa.Table.from_arrays([
            pa.array(columns[0], pa.string()), pa.array(columns[1], pa.string()),
            pa.array([self.modality] * n, pa.string()), pa.array(columns[2], pa.string()),
            pa.array(columns[3], pa.string()), embedding, pa.array(columns[5], pa.string()),
        ], schema=schema)


def embed_dataset(ds: ray.data.Dataset, *, model: str, column: str = "source", modality: Modality = "image",
                  num_actors: int = 2, batch_size: int = 64, num_gpus: float = 0, num_cpus: float = 1,
                  device: str | None = None, dtype: str | None = "auto", decode_threads: int = 4,
                  cache: bool | str = False) -> ray.data.Dataset:
    """Embed the items in ``ds[column]`` with a pool of ``num_actors`` actors, one model each.

    Images may be paths (absolute, or valid on every node), URLs or bytes
    (``ray.data.read_binary_files(..., include_paths=True)`` works as is); texts are strings.
    The result has the columns of :func:`output_schema`: ``id`` (content-derived, as every store
    uses), ``source``, ``modality``, ``digest``, ``document``, ``embedding`` (fixed-size float32)
    and ``error`` (null for good rows; the reason, with a null embedding, for bad ones).

    Args:
        model: a model name or a checkpoint path that exists on every node.
        num_gpus: GPUs per actor (fractions pack several actors on one GPU); > 0 puts the model on CUDA.
        num_cpus: CPUs reserved per actor; torch uses that many threads.
        decode_threads: threads per actor that read and decode images ahead of the model.
        cache: the per-node sqlite embedding cache; off by default (actors would contend for it).

    Example:
        >>> ds = ray.data.from_items([{"source": "/data/cat.jpg"}, {"source": "/data/bad.jpg"}])  # doctest: +SKIP
        >>> out = embed_dataset(ds, model="ViT-B/32", num_actors=2)  # doctest: +SKIP
        >>> out.select_columns(["source", "error"]).take_all()  # doctest: +SKIP
        [{'source': '/data/cat.jpg', 'error': None}, {'source': '/data/bad.jpg', 'error': 'not an image (...)'}]
    """
    ray = import_ray()
    if num_actors < 1 or batch_size < 1:
        raise ValueError("num_actors and batch_size must be at least 1")
    if column not in ds.schema().names:
        raise ValueError(f"the dataset has no column {column!r} (its columns: {', '.join(ds.schema().names)})")
    _warn_if_actors_take_every_cpu(ray, ds, num_actors * num_cpus)
    return ds.map_batches(
        ClipBatchEmbedder,
        fn_constructor_kwargs=dict(
            model=_portable_model(model), column=column, modality=modality,
            device=device or ("cuda" if num_gpus else "cpu"), dtype=dtype, batch_size=batch_size,
            decode_threads=decode_threads, cache=cache,
        ),
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        num_gpus=num_gpus,
        num_cpus=num_cpus,
    )


def _warn_if_actors_take_every_cpu(ray: Any, ds: ray.data.Dataset, reserved: float) -> None:
    # Actors hold their CPUs for the whole job; a dataset that still has to be read (read_*,
    # map) then has no CPU left for its read tasks, and Ray Data waits forever.
    from ray.data.dataset import MaterializedDataset

    if isinstance(ds, MaterializedDataset) or not ray.is_initialized():
        return
    total = ray.cluster_resources().get("CPU", 0)
    if total and reserved >= total:
        warnings.warn(
            f"the actors reserve {reserved:g} of the cluster's {total:g} CPUs, leaving none to read the dataset: "
            "the job may wait forever. Use fewer actors or num_cpus < 1, or ds.materialize() first.",
            RuntimeWarning, stacklevel=3,
        )


def _portable_model(model: str | os.PathLike) -> str:
    """A checkpoint path made absolute (actors' working directory is not the driver's)."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else os.fspath(model)


# --- the writing step: records into a Store, nothing database-specific here ---------------------

def open_sink(sink: str | Store | tuple[Any, str], ef: ClipEF) -> Store:
    """The :class:`Store` that ``sink`` names; every database write goes through its ``write``.

    ``sink`` is a Store, a ``(chromadb client, collection name)`` pair, or a store address
    (:func:`clip_embeddings.adapters.parse_address`): ``lancedb:///DIR#TABLE``,
    ``chroma+http://HOST:PORT#COLLECTION``, ``qdrant+https://HOST:6333#COLLECTION``..., or the
    older ``lancedb://DIR/TABLE``, ``chroma+http://HOST:PORT/COLLECTION``, ``milvus://PATH.db/COLLECTION``
    and ``pgvector+postgresql://USER@HOST:PORT/DATABASE/TABLE``.

    Example:
        >>> store = open_sink("chroma+http://127.0.0.1:8000/photos", ClipEF())  # doctest: +SKIP
    """
    if isinstance(sink, Store):
        return sink
    if isinstance(sink, tuple) and len(sink) == 2:
        from ...adapters.chroma import ChromaStore

        return ChromaStore(sink[0], sink[1], ef)
    if not isinstance(sink, str):
        raise StoreAddressError(f"not a sink: {sink!r} (expected a Store, (client, name), or a store address "
                                "such as lancedb:///DIR#TABLE or chroma+http://HOST:PORT#NAME)")
    return open_store(sink, ef=ef)


def records_from_batch(batch: pa.Table) -> list[Record]:
    """The good rows of an :func:`embed_dataset` batch as store records, one per row id.

    A batch can hold the same content twice (a copied file); upserting one id twice in a call is
    an error in some databases, and both rows carry the same vector anyway.
    """
    import pyarrow.compute as pc

    good = batch.filter(pc.is_null(batch.column("error")))
    if good.num_rows == 0:
        return []
    embedding = good.column("embedding").combine_chunks()
    vectors = np.asarray(embedding.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(good.num_rows, -1)
    records: dict[str, Record] = {}
    for i, (id_, source, modality, digest, document) in enumerate(zip(
        *(good.column(c).to_pylist() for c in ("id", "source", "modality", "digest", "document")), strict=True
    )):
        records[row_id(id_, modality)] = Record(id_, modality, vectors[i], digest, source=source, document=document)
    return list(records.values())


# --- the whole job -----------------------------------------------------------------------------

@dataclass
class RayIngestReport:
    """What a Ray ingest wrote, what it skipped (``(source, reason)`` pairs), and how long it took.

    ``stored`` counts the items of the job now in the store, of which ``new`` were written by it and
    ``present`` were there already (a re-run, or content seen twice); each is stored once.
    """

    stored: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    elapsed: float = 0.0
    new: int = 0
    present: int = 0

    @property
    def items_per_second(self) -> float:
        return (self.stored + len(self.skipped)) / self.elapsed if self.elapsed else 0.0

    def __str__(self) -> str:
        lines = [f"stored {self.stored} item(s), skipped {len(self.skipped)} in {self.elapsed:.1f} s "
                 f"({self.items_per_second:.0f} items/s)"]
        lines += [f"  skipped {source}: {reason}" for source, reason in self.skipped]
        return "\n".join(lines)


def sources_dataset(sources: Sequence[str | os.PathLike], *, rows_per_block: int) -> ray.data.Dataset:
    """A dataset with one ``source`` column, cut into blocks so every actor gets work.

    Paths are made absolute here, on the driver, because actors resolve them elsewhere.
    """
    ray = import_ray()
    # A file name that is not UTF-8 travels as a file:// URI of its bytes: Arrow holds UTF-8 only.
    absolute = [s if "://" in s[:16] or s.startswith("data:") else stored_name(os.path.abspath(s))
                for s in (os.fspath(p) for p in sources)]
    # from_items builds the blocks here; from_arrow would start a metadata task per block, and
    # the idle workers left behind can abort noisily when Ray reclaims their CPU for the actors.
    return ray.data.from_items([{"source": s} for s in absolute],
                               override_num_blocks=max(1, math.ceil(len(absolute) / rows_per_block)))


def index_with_ray(sources: Sequence[str | os.PathLike] | ray.data.Dataset, *, model: str,
                   sink: str | Store | tuple[Any, str], num_actors: int = 2, batch_size: int = 64,
                   num_gpus: float = 0, num_cpus: float = 1, column: str = "source",
                   modality: Modality = "image", dtype: str | None = "auto", decode_threads: int = 4,
                   write_batch: int | None = None, progress: bool = True) -> RayIngestReport:
    """Embed ``sources`` on the Ray cluster and upsert them into ``sink``; bad items are reported.

    The driver streams the embedded rows out of the pipeline and writes them through the sink's
    :class:`Store` (``write_records``), so every database is written exactly as a
    single-process ``store.add_images`` would, and re-running a job stores nothing new. The
    driver loads the model once on CPU: the store records its fingerprint and refuses a
    collection built with other weights before any actor starts.

    Args:
        sources: image paths/URLs (or texts with ``modality="text"``), or a Dataset with ``column``.
        sink: see :func:`open_sink`: ``lancedb://DIR/TABLE``, ``chroma+http://HOST:PORT/NAME``,
            ``qdrant+http://HOST:PORT/NAME``, a ``(chroma client, name)`` pair or any Store.
        num_actors, batch_size, num_gpus, num_cpus, dtype, decode_threads: see :func:`embed_dataset`.
        write_batch: records per database write (default: the store's ``write_batch``).
        progress: show Ray Data's progress bars.

    Example:
        >>> ray.init(address="auto")  # doctest: +SKIP
        >>> report = index_with_ray(["/data/a.jpg", "/data/b.jpg"], model="ViT-B/32",
        ...                         sink="lancedb:///data/db/photos", num_actors=4)  # doctest: +SKIP
        >>> report.stored, report.skipped  # doctest: +SKIP
        (2, [])
    """
    ray = import_ray()
    start = time.perf_counter()
    ef = ClipEF(_portable_model(model), device="cpu", dtype=dtype, batch_size=batch_size, cache=False)
    store = open_sink(sink, ef)
    if isinstance(sources, ray.data.Dataset):
        ds = sources
    else:
        # A few blocks per actor keeps all of them busy; small blocks keep memory flat on big jobs.
        per_block = max(batch_size, min(8 * batch_size, math.ceil(len(sources) / (4 * num_actors))))
        ds, column = sources_dataset(list(sources), rows_per_block=per_block), "source"
    embedded = embed_dataset(ds, model=model, column=column, modality=modality, num_actors=num_actors,
                             batch_size=batch_size, num_gpus=num_gpus, num_cpus=num_cpus, dtype=dtype,
                             decode_threads=decode_threads)
    report = RayIngestReport()
    context = ray.data.DataContext.get_current()
    shown = context.enable_progress_bars
    context.enable_progress_bars = progress
    try:
        for batch in _batches(embedded, write_batch or store.write_batch):
            written = store.write_records(records_from_batch(batch))
            report.stored += written.stored
            report.new += written.new
            report.present += written.present
            bad = batch.filter(batch.column("error").is_valid())
            report.skipped += list(zip(bad.column("source").to_pylist(), bad.column("error").to_pylist(), strict=True))
    finally:
        context.enable_progress_bars = shown
    report.elapsed = time.perf_counter() - start
    return report


def _batches(ds: ray.data.Dataset, size: int) -> Iterator[pa.Table]:
    # Streaming: actors keep embedding while the driver writes, and nothing is held whole.
    yield from ds.iter_batches(batch_size=size, batch_format="pyarrow")
