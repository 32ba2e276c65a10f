"""The one ingestion and query path every database adapter shares.

read → decode → preprocess → embed happens in :mod:`clip_embeddings.embedding.pipeline`, one batch at a
time; this module turns each batch into records with content-derived ids and writes it at once,
so an interrupted ingest keeps what it wrote and a re-run writes only what is missing. A store
only translates records to its database and back: adding a database means writing ``_write``,
``_search``, ``_stored``, ``count`` and ``_stored_config``, nothing about images, batching or errors.

An *item* is one thing a user adds: an image (perhaps with a caption) or a text. Its id is derived
from its content, so adding the same folder twice stores nothing new. Databases with named vectors
(Qdrant) keep an item's image and caption in one point; the others store one row per modality,
with row id ``"<item id>"`` for the image and ``"<item id>:text"`` for the text.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..collection import sync as folder_sync
from ..collection.duplicates import DuplicateReport, find_duplicates, remove_duplicates
from ..collection.export import ExportReport
from ..collection.export import export as export_collection
from ..collection.map import MapReport, render_map
from ..collection.records import matches
from ..collection.scores import CollectionScoreReport, score_collection
from ..config import check_on_error
from ..embedding.function import ClipEF
from ..embedding.pipeline import ImageResult, OnError, SkippedItem
from ..errors import CollectionNotFoundError, ImageLoadError, IncompatibleCollectionError, ModelMismatchError
from ..inputs.captions import caption_for, folder_captions
from ..inputs.folders import IMAGE_EXTENSIONS
from ..inputs.names import path_of
from ..inputs.options import ImageLike
from ..inputs.user_files import FolderFile, Refused, walk_folder
from ..tasks.tags import Tagger, as_tagger
from .querying import Querying
from .report import IngestReport
from .rows import (  # noqa: F401 - re-exported: the adapters and users import them from base
    RESERVED_METADATA,
    TEXT_ROW,
    Hit,
    Modality,
    Record,
    check_item_id,
    check_metadata,
    item_id,
    row_id,
    stored_hit,
    stored_record,
    text_digest,
)


def _check_inputs(ids: Sequence[str] | None, metadatas: Sequence[Mapping[str, Any] | None] | None) -> None:
    for i, item in enumerate(ids or ()):
        check_item_id(item, f"item {i}")
    for i, meta in enumerate(metadatas or ()):
        check_metadata(meta, f"item {i}")


@dataclass
class _Entry:
    """One image to ingest with what the caller said about it."""

    image: ImageLike | Refused  # Refused: a folder walk's unreadable entry, reported as skipped
    id: str | None = None
    caption: str | None = None
    metadata: dict[str, Any] | None = None


class Store(Querying, ABC):
    """A collection of CLIP embeddings in some database, queried across modalities.

    Example:
        >>> from clip_embeddings import open_store
        >>> store = open_store("chroma", "db", "photos", ClipEF())
        >>> store.add_images(["cat.jpg", "rocket.jpg"], captions=["a cat", "a rocket"]).new
        2
        >>> [h.source for h in store.query("a sleeping cat", k=1)]
        ['.../....jpg']
    """

    ef: ClipEF
    write_batch: int = 256  # records per database write: an ingest writes when it has this many...
    flush_seconds: float = 2.0  # ... or when its oldest unwritten record is this old

    # -- what each database implements --

    @abstractmethod
    def _write(self, records: list[Record]) -> None:
        """Upsert records; writing a record whose id exists replaces it."""

    @abstractmethod
    def _search(self, vector: np.ndarray, k: int, modality: Modality, where: dict[str, Any] | None) -> list[Hit]:
        """The ``k`` nearest records of ``modality`` to a unit vector."""

    @abstractmethod
    def _stored(self, keys: list[tuple[str, Modality]]) -> dict[tuple[str, Modality], tuple[str | None, str | None]]:
        """For the (item id, modality) records that exist: their stored (digest, document)."""

    @abstractmethod
    def count(self, modality: Modality | None = None) -> int:
        """Stored items (an image with its caption is one), or with ``modality`` its vectors of that kind.

        The same rule in every database: two captioned images count 2, and 2 images + 2 texts
        with ``modality="image"`` and ``"text"``.
        """

    @abstractmethod
    def _stored_config(self) -> dict[str, Any] | None:
        """The embedding-function config saved with the collection, if any."""

    @abstractmethod
    def _scan(self, modality: Modality | None = None, *, batch_size: int = 512,
              with_vectors: bool = True) -> Iterator[list[Record]]:
        """Every stored record of ``modality`` (both when ``None``: images, then texts), in batches
        of at most ``batch_size``, using the database's own paging so memory stays bounded.

        ``Record.id`` is the item id, ``.vector`` the stored float32 vector (``None`` without
        ``with_vectors``), ``.metadata`` the user's own keys only (nothing clip-embeddings reserves).
        """

    @abstractmethod
    def _delete(self, keys: list[tuple[str, Modality]]) -> None:
        """Remove the (item id, modality) records; keys that are not stored are ignored."""

    def _search_many(self, vectors: np.ndarray, k: int, modality: Modality,
                     where: dict[str, Any] | None) -> list[list[Hit]]:
        """:meth:`_search` for each row of ``vectors``; databases with batched queries override it
        (one round trip, and one evaluation of the filter, for a whole batch)."""
        return [self._search(v, k, modality, where) for v in vectors]

    # -- shared behaviour --

    def check_model(self) -> None:
        """Raise :class:`ModelMismatchError` if the collection was built with other weights."""
        stored = self._stored_config()
        if not stored or stored.get("fingerprint") is None:
            return
        if (stored["fingerprint"], stored.get("dim")) != (self.ef.fingerprint, self.ef.dim):
            raise ModelMismatchError(
                f"{self.describe()} was built with model {stored.get('model')!r} (fingerprint {stored['fingerprint']}, "
                f"dim {stored.get('dim')}), but the embedding function uses {self.ef.model_name!r} (fingerprint "
                f"{self.ef.fingerprint}, dim {self.ef.dim}). Open it with ClipEF(model={stored.get('model')!r}), "
                "or re-index into a new collection."
            )

    def describe(self) -> str:
        return f"{type(self).__name__}"

    def _function_for_existing(self, ef: ClipEF | None) -> ClipEF:
        """The function for an existing collection: the one given, else rebuilt from its stored config."""
        if ef is not None:
            return ef
        stored = self._stored_config()
        if stored is None:
            raise IncompatibleCollectionError(
                f"{self.describe()} has no clip-embeddings config (was it made by clip-embeddings?); "
                "pass ef=ClipEF(...) to open it")
        return ClipEF.build_from_config(stored)

    def _missing(self) -> CollectionNotFoundError:
        return CollectionNotFoundError(f"{self.describe()} does not exist; pass ef=ClipEF(...) to create it")

    # -- ingest: every batch is written as soon as it is embedded --

    def add_images(
        self,
        images: Iterable[ImageLike],
        *,
        ids: Sequence[str] | None = None,
        captions: Sequence[str | None] | None = None,
        metadatas: Sequence[dict[str, Any] | None] | None = None,
        on_error: OnError | None = None,
        progress: bool = False,
        total: int | None = None,
        tags: Tagger | Sequence[str] | str | os.PathLike | None = None,
    ) -> IngestReport:
        """Embed and store images (and optional captions); ids default to content-derived ones.

        ``images`` may be any iterable, a generator too: each batch is written as soon as it is
        embedded, so an interrupted ingest keeps what it wrote and a re-run stores only the rest.
        With ``on_error="skip"`` bad images are listed in the report with their reasons; with
        ``"raise"`` the ingest stops at the first bad image, after storing every image before it.

        Example:
            >>> report = store.add_images(["cat.jpg", "cat.jpg", "missing.jpg"], on_error="skip")
            >>> report.present, report.duplicates, [s.reason for s in report.skipped]  # cat.jpg: in photos/ too
            (1, 1, ['file not found'])

        ``tags`` (a :class:`~clip_embeddings.tasks.tags.Tagger`, a list of labels or a vocabulary
        file) stores each image's zero-shot tags as metadata, so ``where={"tag": label}`` finds them.
        """
        return IngestReport.collect(self.stream_images(images, ids=ids, captions=captions, metadatas=metadatas,
                                                       on_error=on_error, progress=progress, total=total, tags=tags))

    def stream_images(
        self,
        images: Iterable[ImageLike],
        *,
        ids: Sequence[str] | None = None,
        captions: Sequence[str | None] | None = None,
        metadatas: Sequence[dict[str, Any] | None] | None = None,
        on_error: OnError | None = None,
        progress: bool = False,
        total: int | None = None,
        tags: Tagger | Sequence[str] | str | os.PathLike | None = None,
    ) -> Iterator[IngestReport]:
        """:meth:`add_images` one written batch at a time: yields each batch's report after its write.

        Example:
            >>> for batch in store.stream_images(["cat.jpg", "rocket.jpg"]):
            ...     print(f"{batch.new} more stored, {batch.present} already there")
            0 more stored, 2 already there
        """
        if isinstance(images, Sized):
            _check_lengths(len(images), ids=ids, captions=captions, metadatas=metadatas)
            total = len(images) if total is None else total
        _check_inputs(ids, metadatas)  # before any work: nothing is stored when one is refused
        entries = (
            _Entry(image, ids[i] if ids is not None else None, captions[i] if captions is not None else None,
                   metadatas[i] if metadatas is not None else None)
            for i, image in enumerate(images)
        )
        return self._ingest(entries, on_error or self.ef.on_error, progress, total, as_tagger(self.ef, tags))

    def _ingest(self, entries: Iterable[_Entry], on_error: OnError, progress: bool,
                total: int | None, tagger: Tagger | None = None) -> Iterator[IngestReport]:
        check_on_error(on_error)
        seen: set[str] = set()  # item ids of this ingest: the same content twice is stored once
        buffered: dict[str, list[Record]] = {}
        report, since = IngestReport(), time.monotonic()
        pipeline = self.ef.image_pipeline()
        for batch in pipeline.batches(entries, item_of=lambda e: e.image, progress=progress, total=total):
            items: list[tuple[str, ImageResult]] = []
            vectors: list[np.ndarray] = []
            failure: ImageLoadError | None = None
            for r in batch:
                if r.vector is None or r.digest is None:  # not r.ok: a vector always comes with its digest
                    if on_error == "raise":
                        failure = r.error()
                        break
                    report.skipped.append(r.skipped())
                    if isinstance(r.entry.image, Refused) and r.entry.image.folder:
                        report.unread_folders.append(r.source)
                    continue
                report.cache_hits += r.cached
                item = r.entry.id or item_id("image", r.digest)
                if item in seen:
                    report.duplicates += 1
                    continue
                seen.add(item)
                items.append((item, r))
                vectors.append(r.vector)
            captioned = [(item, r) for item, r in items if r.entry.caption]
            caption_vectors: np.ndarray | list[np.ndarray] = \
                self.ef.embed_texts([r.entry.caption for _, r in captioned]) if captioned else []
            tagged = tagger.metadata(np.stack(vectors)) if tagger and items else None
            for n, (item, r) in enumerate(items):
                buffered[item] = [_image_record(item, r, tagged[n] if tagged else None)]
            for (item, _), vector in zip(captioned, caption_vectors, strict=True):
                buffered[item].append(replace(buffered[item][0], modality="text", vector=vector))
            # Few large writes cost a database far less than many small ones (LanceDB keeps every
            # version's metadata in memory); the time bound caps what a crash can lose.
            rows = sum(len(rs) for rs in buffered.values())
            if failure is not None or rows >= self.write_batch or time.monotonic() - since >= self.flush_seconds:
                self._store(buffered, report)
                yield report
                buffered, report, since = {}, IngestReport(), time.monotonic()
            if failure is not None:
                raise failure
        if buffered or report.skipped or report.duplicates:
            self._store(buffered, report)
            yield report

    def add_texts(self, texts: Iterable[str], *, ids: Sequence[str] | None = None,
                  metadatas: Sequence[dict[str, Any] | None] | None = None) -> IngestReport:
        """Embed and store texts; ids default to content-derived ones; a repeated text is stored once.

        Example:
            >>> store.add_texts(["a cat", "a cat", "a dog"]).duplicates
            1
        """
        texts = list(texts)
        _check_lengths(len(texts), ids=ids, metadatas=metadatas)
        _check_inputs(ids, metadatas)
        report, seen = IngestReport(), set()
        for start in range(0, len(texts), self.write_batch):
            chunk = range(start, min(start + self.write_batch, len(texts)))
            records: dict[str, list[Record]] = {}
            documents: list[str] = []  # records' texts, in their order
            for i in chunk:
                if not isinstance(texts[i], str):
                    raise TypeError(f"item {i}: texts must be str, got {type(texts[i]).__name__}")
                digest = text_digest(texts[i])
                item = ids[i] if ids is not None else item_id("text", digest)
                if item in seen:
                    report.duplicates += 1
                    continue
                seen.add(item)
                meta = dict(metadatas[i] or {}) if metadatas is not None else {}
                records[item] = [Record(item, "text", np.empty(0, np.float32), digest, document=texts[i], metadata=meta)]
                documents.append(texts[i])
            vectors: np.ndarray | list[np.ndarray] = self.ef.embed_texts(documents) if records else []
            for rs, vector in zip(records.values(), vectors, strict=True):
                rs[0].vector = vector
            self._store(records, report)
        return report

    def _store(self, records: dict[str, list[Record]], report: IngestReport) -> None:
        """Write what is not stored yet (or carries metadata to merge); count items new, updated, present."""
        # Both modalities of every item: a caption added to a stored image updates that item.
        keys = [(item, modality) for item in records for modality in scan_modalities(None)]
        stored = self._stored(keys) if keys else {}
        writes: list[Record] = []
        for item, rs in records.items():
            changed = [r for r in rs if not _same(stored.get((r.id, r.modality)), r) or r.metadata]
            writes += changed
            report.ids.append(item)
            if not changed:
                report.present += 1
            elif (item, "image") in stored or (item, "text") in stored:
                report.updated += 1
            else:
                report.new += 1
        self._write_batches(writes)

    def write_records(self, records: Iterable[Record]) -> IngestReport:
        """Store ready-made records (the Ray engine's path) exactly as an ingest would.

        Records of one item (its image and caption) are grouped by id; only what is not stored
        yet is written, and the report counts items new, updated, present and duplicated.

        Example:
            >>> from clip_embeddings import open_store
            >>> records = list(store.records())  # e.g. copied from another store
            >>> copy = open_store("chroma", "copy.db", "photos", store.ef)
            >>> copy.write_records(records).new, copy.write_records(records).present
            (7, 7)
        """
        grouped: dict[str, list[Record]] = {}
        report = IngestReport()
        records = list(records)
        for record in records:
            check_item_id(record.id, f"record {record.id!r}")
            check_metadata(record.metadata, f"record {record.id!r}")
        for record in records:
            rows = grouped.setdefault(record.id, [])
            if any(r.modality == record.modality for r in rows):
                report.duplicates += 1
                continue
            rows.append(record)
        self._store(grouped, report)
        return report

    def _write_batches(self, records: list[Record]) -> None:
        for start in range(0, len(records), self.write_batch):
            self._write(records[start : start + self.write_batch])

    def index_folder(self, folder: str | os.PathLike, *, extensions: frozenset[str] = IMAGE_EXTENSIONS,
                     recursive: bool = True, on_error: OnError = "skip", progress: bool = True,
                     captions: Mapping[str, str] | bool = True, sync: bool = False,
                     dry_run: bool = False, tags: Tagger | Sequence[str] | str | os.PathLike | None = None) -> IngestReport:
        """Index every image file under ``folder``; re-running it stores only what is missing.

        The folder is walked lazily in a stable order and each batch is written as soon as it is
        embedded. Captions (``captions=True``) come from :func:`clip_embeddings.inputs.captions.folder_captions`:
        a ``captions.json`` or ``captions.csv`` at the folder's root, or a ``.txt`` file beside an
        image; pass a mapping of paths (relative to ``folder``) to captions, or ``False`` for none.

        With ``sync=True`` the collection is made to match the folder (see
        :mod:`clip_embeddings.collection.sync`): items whose file is gone are removed, edited files
        replaced, renamed ones keep their vector under the new path; records that did not come from
        this folder are never touched. ``dry_run=True`` only reports what a sync would do.

        Example:
            >>> from clip_embeddings import open_store
            >>> store = open_store("chroma", "db", "photos", ClipEF())
            >>> report = store.index_folder("photos/")
            >>> print(report)
            new 7, updated 0, already present 0, duplicates 0, skipped 0 (cache hits ...)
            >>> os.remove("photos/rocket.jpg")
            >>> print(store.index_folder("photos/", sync=True))
            added 0, updated 0, renamed 0, removed 1; unchanged 6, duplicates 0, skipped 0
        """
        if sync or dry_run:
            return self._sync_folder(Path(folder), extensions, recursive, on_error, progress, captions, dry_run,
                                     as_tagger(self.ef, tags))
        return IngestReport.collect(self.stream_folder(folder, extensions=extensions, recursive=recursive,
                                                       on_error=on_error, progress=progress, captions=captions,
                                                       tags=tags))

    def _sync_folder(self, folder: Path, extensions: frozenset[str], recursive: bool, on_error: OnError,
                     progress: bool, captions: Mapping[str, str] | bool, dry_run: bool,
                     tagger: Tagger | None = None) -> IngestReport:
        if not folder.is_dir():
            raise ImageLoadError("not a folder (index_folder takes a directory of images)", source=str(folder))
        root = os.path.abspath(folder)
        unread: list[str] = []
        files = list(folder_sync.local_files(folder, extensions=extensions, recursive=recursive, captions=captions,
                                             cache=self.ef.cache, unread=unread))
        ours, others = folder_sync.stored_items(self.records(with_vectors=False), root, extensions, recursive)
        plan = folder_sync.plan_sync(files, ours, lambda digest: item_id("image", digest), others.__contains__, unread)
        counts = plan.summary()
        report = IngestReport(new=counts["added"], updated=counts["updated"], renamed=counts["renamed"],
                              removed=counts["removed"], present=counts["unchanged"], duplicates=plan.duplicates,
                              sync=True, dry_run=dry_run)
        report.skipped = [SkippedItem(i, f.path, "cannot read the file") for i, f in enumerate(files) if f.digest is None]
        report.unread_folders = unread
        report.skipped += [SkippedItem(-1, path, "cannot list the folder: what it holds is kept as stored")
                           for path in unread]
        if dry_run:
            return report
        if plan.rename:
            self._write_batches(folder_sync.renamed_records(self.records(), plan))
        self._delete([(item, m) for item in plan.to_delete for m in ("image", "text")])
        real_root = os.path.realpath(folder)
        entries = (_Entry(FolderFile(f.path, real_root), caption=f.caption) for f in plan.to_ingest)
        ingested = IngestReport.collect(self._ingest(entries, on_error, progress, len(plan.to_ingest), tagger))
        # A file that could not be embedded now was planned as added or updated: count it as skipped.
        failed = {path_of(s.source) for s in ingested.skipped if s.source}
        report.new -= sum(f.path in failed for f in plan.add)
        report.updated -= sum(f.path in failed for _, f in plan.update + plan.recaption)
        report.skipped += ingested.skipped
        report.cache_hits = ingested.cache_hits
        report.ids = plan.unchanged + [s.id for s, _ in plan.rename] + ingested.ids
        return report

    def stream_folder(self, folder: str | os.PathLike, *, extensions: frozenset[str] = IMAGE_EXTENSIONS,
                      recursive: bool = True, on_error: OnError = "skip", progress: bool = True,
                      captions: Mapping[str, str] | bool = True,
                      tags: Tagger | Sequence[str] | str | os.PathLike | None = None) -> Iterator[IngestReport]:
        """:meth:`index_folder` one written batch at a time (the CLI reports progress from it)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ImageLoadError("not a folder (index_folder takes a directory of images)", source=str(folder))
        lookup = folder_captions(folder) if captions is True else (captions or {})
        sidecars, root = captions is not False, os.path.realpath(folder)

        def entries() -> Iterator[_Entry]:
            for found in walk_folder(folder, extensions, recursive):
                if isinstance(found, Refused):
                    yield _Entry(found)
                    continue
                try:
                    caption = caption_for(lookup, folder, found, sidecars=sidecars, root=root)
                except Refused as e:  # its caption cannot be read: the item is not stored half-done
                    yield _Entry(Refused(str(found), f"caption file {e.path}: {e.reason}"))
                    continue
                yield _Entry(FolderFile(found, root), caption=caption)

        return self._ingest(entries(), on_error, progress, None, as_tagger(self.ef, tags))

    def delete(self, ids: Iterable[str] | None = None, *, where: Mapping[str, Any] | None = None) -> int:
        """Remove items (an image and its caption go together) by id, or those matching ``where``.

        ``where`` is the portable filter of :func:`clip_embeddings.collection.records.matches`:
        exact matches on metadata keys or on ``source``, ``document``, ``item_id`` (a list value
        matches any of its elements; ``{"tag": label}`` a stored tag). Returns how many items
        were removed; ids that are not stored are ignored.

        Example:
            >>> report = store.add_images(["cat.jpg", "rocket.jpg"], metadatas=[{"album": "pets"}, {"album": "space"}])
            >>> store.delete([report.ids[0]])
            1
            >>> store.delete(where={"album": "space"})
            1
        """
        if (ids is None) == (where is None):
            raise ValueError("delete takes ids or where=..., exactly one of them")
        if ids is None:  # then where is not None (exactly one of them): `or {}` only tells the type checker
            ids = {r.id for r in self.records(with_vectors=False) if matches(r, where or {})}
        elif isinstance(ids, str):
            raise TypeError("delete takes a list of ids; wrap a single id in a list")
        keys = [(item, modality) for item in dict.fromkeys(ids) for modality in scan_modalities(None)]
        stored = self._stored(keys) if keys else {}
        if stored:
            self._delete(list(stored))
        return len({item for item, _ in stored})

    def records(self, modality: Modality | None = None, *, batch_size: int = 512,
                with_vectors: bool = True) -> Iterator[Record]:
        """Every stored record (of ``modality``), read ``batch_size`` at a time: memory stays bounded.

        Example:
            >>> sorted({Path(r.source).name for r in store.records(with_vectors=False)})
            ['astronaut.jpg', 'cameraman.jpg', 'cat.jpg', 'coffee.jpg', 'galaxies.jpg', 'retina.jpg', 'rocket.jpg']
        """
        if modality not in (None, "image", "text"):
            raise ValueError(f"modality must be 'image', 'text' or None, not {modality!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        for batch in self._scan(modality, batch_size=batch_size, with_vectors=with_vectors):
            yield from batch

    def export(self, path: str | os.PathLike, *, format: Literal["npy", "parquet"] = "npy",
               modality: Modality | None = None, shard_size: int = 1_000_000, progress: bool = False) -> ExportReport:
        """Stream every stored vector and its metadata to files: clip-retrieval's ``img_emb/*.npy`` +
        ``metadata/*.parquet`` layout (``format="npy"``) or one Parquet file; memory stays flat.

        See :mod:`clip_embeddings.collection.export` for the layout.

        Example:
            >>> store.export("exported/", format="npy").counts
            {'image': 7, 'text': 7}
        """
        return export_collection(self, path, format=format, modality=modality, shard_size=shard_size,
                                 progress=progress)

    def duplicates(self, threshold: float | None = None, *, gap: float = 1.5, k: int = 8, delete: bool = False,
                   progress: bool = False) -> DuplicateReport:
        """Groups of duplicate images (same content, or CLIP cosine ``>= threshold`` with a clear gap
        to every other neighbour), each best first with a suggested keeper.

        Nothing is deleted unless ``delete=True``, which removes every member but the keeper.
        The default threshold is the published one for the store's model; see
        :mod:`clip_embeddings.collection.duplicates` for the method and the keeper rule.

        Example:
            >>> from PIL import Image
            >>> Image.open("photos/cat.jpg").save("photos/cat.png")  # the same picture, other bytes
            >>> store.index_folder("photos").new
            1
            >>> report = store.duplicates(threshold=0.999)
            >>> report.groups[0].keeper.source
            '.../photos/cat.jpg'
        """
        report = find_duplicates(self, threshold, gap=gap, k=k, progress=progress)
        if delete:
            remove_duplicates(self, report.groups)
        return report

    def clip_scores(self, output: str | os.PathLike | None = None, *, minimum: float | None = None, w: float = 2.5,
                    progress: bool = False) -> CollectionScoreReport:
        """CLIPScore ``w * max(cos, 0)`` of every captioned item's image and caption vectors, as stored;
        with ``output`` (.csv or .jsonl) the pairs scoring at least ``minimum`` are written there.

        See :mod:`clip_embeddings.collection.scores`.

        Example:
            >>> report = store.clip_scores("kept.jsonl", minimum=0.28, w=1)  # LAION's filter
            >>> len(report.kept_ids()) == report.kept  # the ids of the pairs scoring >= 0.28
            True
        """
        return score_collection(self, output, minimum=minimum, w=w, progress=progress)

    def map(self, path: str | os.PathLike, *, projection: str = "pca", clusters: int | None = None,
            vocabulary: Sequence[str] | None = None, thumb: int = 96, html: bool = False,
            progress: bool = False) -> MapReport:
        """Draw the collection's images on a 2-D map (PCA, t-SNE or UMAP) framed by k-means cluster,
        each cluster named by its nearest words; a PNG at ``path`` (and an HTML page with ``html``).

        See :mod:`clip_embeddings.collection.map`.

        Example:
            >>> store.map("map.png", clusters=2, vocabulary=["cat", "rocket", "space"]).clusters[0]["words"]
            ['...', ...]
        """
        return render_map(self, path, projection=projection, clusters=clusters, vocabulary=vocabulary, thumb=thumb,
                          html_page=html, progress=progress)



def scan_modalities(modality: Modality | None) -> tuple[Modality, ...]:
    """The modalities a scan walks, in order: images first, then texts."""
    return ("image", "text") if modality is None else (modality,)


def _image_record(item: str, result: ImageResult, tags: dict[str, bool] | None = None) -> Record:
    if result.digest is None:  # only a result that failed has none, and a failed result is never stored
        raise ValueError(f"image {result.index} has no digest: it was not embedded ({result.reason})")
    entry = result.entry
    return Record(item, "image", result.vector, result.digest, source=result.source, document=entry.caption,
                  metadata={**(entry.metadata or {}), **(tags or {})})


def _same(stored: tuple[str | None, str | None] | None, record: Record) -> bool:
    """A stored row holds this record already: same content (and, for a text, the same words)."""
    if stored is None:
        return False
    digest, document = stored
    return digest == record.digest and (record.modality == "image" or document == record.document)


def _check_lengths(n: int, **columns: Sequence | None) -> None:
    for name, column in columns.items():
        if column is not None and len(column) != n:
            raise ValueError(f"{name} has {len(column)} entries but there are {n} items")
