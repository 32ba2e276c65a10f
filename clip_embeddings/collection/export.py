"""Export a collection's vectors and metadata to files other tools read, streamed shard by shard.

Two formats:

- ``"npy"``: clip-retrieval's layout (``clip_retrieval/clip_inference/writer.py``), which its
  ``index`` (autofaiss) and ``back`` tools read::

      img_emb/img_emb_0.npy          float32 [n, dim], one row per image
      metadata/metadata_0.parquet    one row per image, same order: image_path, caption, then
                                     id, digest and the user's metadata keys as columns
      text_emb/text_emb_0.npy        float32 [m, dim], one row per text vector (captions and texts)
      text_metadata/text_metadata_0.parquet   one row per text vector: caption, id, image_path, ...

  clip-retrieval pairs image i with caption i; a collection also holds texts without images
  and images without captions, so text rows get their own metadata folder (our extension).
  Shard numbers are zero-padded to the number of shards' digits, as clip-retrieval pads them.
- ``"parquet"``: one file, one row per vector: ``id``, ``modality``, ``vector`` (a fixed-size
  list of float32), ``source``, ``document``, ``digest`` and the metadata columns.

Memory stays flat: records are read in batches (``Store.records``), each ``.npy`` shard is
written row batch by row batch with its header fixed up at the end, and Parquet files are
written one row group per batch (``pyarrow.parquet.ParquetWriter``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

from .._extras import require
from .protocol import RecordLike, StoreLike, require_records

Format = Literal["npy", "parquet"]
FORMATS = ("npy", "parquet")
# (embedding folder, file prefix, metadata folder, metadata prefix) per modality, clip-retrieval's names.
LAYOUT = {"image": ("img_emb", "img_emb", "metadata", "metadata"),
          "text": ("text_emb", "text_emb", "text_metadata", "text_metadata")}
_NPY_HEADER = 128  # bytes reserved for a shard's .npy header: any (rows, dim) fits, a multiple of 64


@dataclass
class ExportReport:
    """What an export wrote: vectors per modality and the files, in writing order.

    Example:
        >>> print(ExportReport(counts={"image": 3, "text": 0}, files=["out/img_emb/img_emb_0.npy"]))
        exported 3 image vectors, 0 text vectors to 1 files
    """

    counts: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "files": list(self.files)}

    def __str__(self) -> str:
        counts = ", ".join(f"{n} {m} vectors" for m, n in self.counts.items())
        return f"exported {counts} to {len(self.files)} files"


def export(store: StoreLike, path: str | os.PathLike, *, format: Format = "npy", modality: str | None = None,
           shard_size: int = 1_000_000, batch_size: int = 1024, progress: bool = False) -> ExportReport:
    """Write every stored vector (``modality=None``: images and texts) with its metadata to ``path``.

    ``format="npy"`` writes clip-retrieval's folder layout under the directory ``path``;
    ``format="parquet"`` writes one Parquet file at ``path``. ``shard_size`` caps the rows of
    one ``.npy`` shard. Raises :class:`~clip_embeddings.errors.EmptyCollectionError` if there
    is nothing to export.

    Example:
        >>> print(export(store, "out/", format="npy"))
        exported 7 image vectors, 7 text vectors to ... files
        >>> np.load("out/img_emb/img_emb_0.npy").shape
        (7, 512)
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {format!r}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, not {shard_size}")
    modalities = ("image", "text") if modality is None else (modality,)
    counts = {m: store.count(m) for m in modalities}
    require_records(store, modality, "export", sum(counts.values()))  # count(None) may list every id
    report = ExportReport(counts={m: 0 for m in modalities})
    bar = _bar(sum(counts.values()), progress, f"export {store.describe()}")
    try:
        if format == "parquet":
            _write_parquet(store, Path(path), modalities, batch_size, report, bar)
        else:
            for m in modalities:
                if counts[m]:
                    _write_npy_shards(store, Path(path), m, shard_size, counts[m], batch_size, report, bar)
    finally:
        bar.close()
    return report


def metadata_columns(store: StoreLike, modalities: Iterable[str], batch_size: int) -> dict[str, Any]:
    """The user's metadata keys across the collection and an Arrow type for each (a first pass
    without vectors: a Parquet file needs its schema before the first row group)."""
    pa = require("pyarrow", "export")
    seen: dict[str, set[type]] = {}
    for m in modalities:
        for batch in released(store._scan(m, batch_size=batch_size, with_vectors=False)):
            for r in batch:
                for key, value in r.metadata.items():
                    if value is not None:
                        seen.setdefault(key, set()).add(type(value))
    types = {}
    for key, kinds in sorted(seen.items()):
        if kinds == {bool}:
            types[key] = pa.bool_()
        elif kinds <= {int}:
            types[key] = pa.int64()
        elif kinds <= {int, float}:
            types[key] = pa.float64()
        else:
            types[key] = pa.string()  # mixed or nested values: text (JSON for anything not a str)
    return types


def _metadata_value(value: Any, arrow_type: Any) -> Any:
    if value is None:
        return None
    if str(arrow_type) == "string" and not isinstance(value, str):
        return json.dumps(value)
    return value


def _metadata_table(records: list[RecordLike], modality: str, types: dict[str, Any]) -> Any:
    """clip-retrieval's metadata columns for these rows (image_path, caption first), then ours."""
    pa = require("pyarrow", "export")
    columns: dict[str, Any] = {}
    if modality == "image":
        columns["image_path"] = pa.array([r.source for r in records], pa.string())
    columns["caption"] = pa.array([r.document for r in records], pa.string())
    columns["id"] = pa.array([r.id for r in records], pa.string())
    columns["digest"] = pa.array([r.digest for r in records], pa.string())
    if modality == "text":
        columns["image_path"] = pa.array([r.source for r in records], pa.string())
    for key, arrow_type in types.items():
        name = key if key not in columns else f"meta_{key}"  # a user key must not hide ours
        columns[name] = pa.array([_metadata_value(r.metadata.get(key), arrow_type) for r in records], arrow_type)
    return pa.table(columns)


class _NpyShard:
    """One ``.npy`` file written row batch by row batch: the header is rewritten when it closes."""

    def __init__(self, path: Path, dim: int):
        self.path, self.dim, self.rows = path, dim, 0
        self.file: BinaryIO = open(path, "wb")  # noqa: SIM115 - open across writes, closed by close()
        self.file.write(b"\0" * _NPY_HEADER)

    def write(self, vectors: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
        self.rows += len(vectors)

    def close(self) -> None:
        header = {"descr": "<f4", "fortran_order": False, "shape": (self.rows, self.dim)}
        text = repr(header).encode("latin1")
        prefix = np.lib.format.magic(1, 0) + b"\0\0"  # version 1.0: a 2-byte header length follows
        body = text + b" " * (_NPY_HEADER - len(prefix) - len(text) - 1) + b"\n"
        length = len(body).to_bytes(2, "little")
        self.file.seek(0)
        self.file.write(np.lib.format.magic(1, 0) + length + body)
        self.file.close()


def _write_npy_shards(store: StoreLike, root: Path, modality: str, shard_size: int, total: int,
                      batch_size: int, report: ExportReport, bar: Any) -> None:
    pq = require("pyarrow.parquet", "export")
    emb_dir, emb_prefix, meta_dir, meta_prefix = LAYOUT[modality]
    (root / emb_dir).mkdir(parents=True, exist_ok=True)
    (root / meta_dir).mkdir(parents=True, exist_ok=True)
    types = metadata_columns(store, [modality], batch_size)
    digits = int(math.log10(max(1, math.ceil(total / shard_size)))) + 1  # clip-retrieval's zero padding
    shard, writer, number = None, None, 0
    for batch in _split(released(store._scan(modality, batch_size=batch_size)), shard_size):
        if shard is None or writer is None or shard.rows >= shard_size:  # (the two are set together)
            if shard is not None:
                _close_shard(shard, writer, report)
            name = str(number).zfill(digits)
            shard = _NpyShard(root / emb_dir / f"{emb_prefix}_{name}.npy", len(batch[0].vector))
            table = _metadata_table(batch, modality, types)
            writer = pq.ParquetWriter(root / meta_dir / f"{meta_prefix}_{name}.parquet", table.schema)
            number += 1
        else:
            table = _metadata_table(batch, modality, types)
        shard.write(np.stack([r.vector for r in batch]))
        writer.write_table(table)
        report.counts[modality] += len(batch)
        bar.update(len(batch))
    if shard is not None:
        _close_shard(shard, writer, report)


def _close_shard(shard: _NpyShard, writer: Any, report: ExportReport) -> None:
    shard.close()
    writer.close()
    report.files += [str(shard.path), str(writer.where)]


def released(batches: Iterator[list[RecordLike]]) -> Iterator[list[RecordLike]]:
    """The batches as they come, handing the heap freed by each back to the OS before the next.

    Why: glibc keeps what a database client frees in its arenas, so a long scan's RSS grew with
    the collection though nothing was held (Chroma: about 1 KB a row, an export's peak +29 MB
    from 10k to 40k rows); ``malloc_trim`` returns it, and the peak stays flat (+19 MB at both
    sizes, measured on Chroma). Elsewhere than glibc it does nothing.

    Example:
        >>> [len(b) for b in released(iter([[1, 2], [3]]))]
        [2, 1]
    """
    trim = _malloc_trim()
    for batch in batches:
        yield batch
        if trim is not None:
            trim(0)


def _malloc_trim() -> Any:
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to trim
        return None


def _split(batches: Iterator[list[RecordLike]], shard_size: int) -> Iterator[list[RecordLike]]:
    """Batches cut so that none crosses a shard boundary."""
    written = 0
    for batch in batches:
        while batch:
            room = shard_size - written % shard_size
            yield batch[:room]
            written += len(batch[:room])
            batch = batch[room:]


def _write_parquet(store: StoreLike, path: Path, modalities: tuple[str, ...], batch_size: int,
                   report: ExportReport, bar: Any) -> None:
    pa = require("pyarrow", "export")
    pq = require("pyarrow.parquet", "export")
    path.parent.mkdir(parents=True, exist_ok=True)
    types = metadata_columns(store, modalities, batch_size)
    reserved = {"id", "modality", "vector", "source", "document", "digest"}
    writer = None
    try:
        for m in modalities:
            for batch in released(store._scan(m, batch_size=batch_size)):
                vectors = np.stack([r.vector for r in batch]).astype(np.float32, copy=False)
                columns = {
                    "id": pa.array([r.id for r in batch], pa.string()),
                    "modality": pa.array([m] * len(batch), pa.string()),
                    "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1]),
                    "source": pa.array([r.source for r in batch], pa.string()),
                    "document": pa.array([r.document for r in batch], pa.string()),
                    "digest": pa.array([r.digest for r in batch], pa.string()),
                }
                for key, arrow_type in types.items():
                    name = key if key not in reserved else f"meta_{key}"
                    columns[name] = pa.array([_metadata_value(r.metadata.get(key), arrow_type) for r in batch], arrow_type)
                table = pa.table(columns)
                if writer is None:
                    writer = pq.ParquetWriter(path, table.schema)
                writer.write_table(table)
                report.counts[m] += len(batch)
                bar.update(len(batch))
    finally:
        if writer is not None:
            writer.close()
    report.files.append(str(path))


def _bar(total: int, progress: bool, what: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not progress, desc=what, unit="vec")
