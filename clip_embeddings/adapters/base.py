"""The one ingestion and query path every database adapter shares.

load → batch → encode → normalise happens in :class:`~clip_embeddings.ClipEF`; this module turns
its output into records with content-derived ids and hands them to a store, which only translates
records to its database and back. Adding a database means writing ``_write``, ``_search``,
``count`` and ``_stored_config``: nothing about images, batching or errors.

An *item* is one thing a user adds: an image (perhaps with a caption) or a text. Its id is derived
from its content, so adding the same folder twice stores nothing new. Databases with named vectors
(Qdrant) keep an item's image and caption in one point; the others store one row per modality,
with row id ``"<item id>"`` for the image and ``"<item id>:text"`` for the text.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..embedding import ClipEF, OnError, SkippedItem
from ..errors import ImageLoadError, ModelMismatchError
from ..images import IMAGE_EXTENSIONS, ImageLike, describe, iter_image_files

Modality = Literal["image", "text"]
_NAMESPACE = uuid.UUID("9b1f6c1e-3c1a-4f51-9a57-2f0e6c0c1ce5")  # fixed forever: ids must be stable


def item_id(modality: Modality, digest: str) -> str:
    """The content-derived id of an item: a UUID (every database accepts those), stable across runs."""
    return str(uuid.uuid5(_NAMESPACE, f"{modality}:{digest}"))


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def row_id(item: str, modality: Modality) -> str:
    """Row ids for databases with one vector per row: the image row keeps the item id."""
    return item if modality == "image" else f"{item}:text"


@dataclass
class Record:
    """One vector to store, with everything a search result should carry back."""

    id: str  # the item id
    modality: Modality
    vector: np.ndarray
    digest: str
    source: str | None = None  # where an image came from: path, URL, or a description
    document: str | None = None  # the text, or an image's caption
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Hit:
    """A search result: higher ``score`` is closer (cosine similarity)."""

    id: str
    score: float
    modality: Modality
    source: str | None
    document: str | None
    metadata: dict[str, Any]


@dataclass
class IngestReport:
    """What an ingest stored and what it could not, item by item."""

    ids: list[str] = field(default_factory=list)
    skipped: list[SkippedItem] = field(default_factory=list)
    cache_hits: int = 0

    @property
    def stored(self) -> int:
        return len(self.ids)

    def __str__(self) -> str:
        lines = [f"stored {self.stored} item(s), skipped {len(self.skipped)}, cache hits {self.cache_hits}"]
        lines += [f"  skipped {s}" for s in self.skipped]
        return "\n".join(lines)


class Store(ABC):
    """A collection of CLIP embeddings in some database, queried across modalities.

    Example:
        >>> store = ChromaStore(client, "photos", ClipEF())  # doctest: +SKIP
        >>> store.add_images(["cat.jpg", "dog.jpg"], captions=["a cat", "a dog"])  # doctest: +SKIP
        >>> [h.source for h in store.query("a sleeping cat", k=1)]  # doctest: +SKIP
        ['cat.jpg']
    """

    ef: ClipEF
    write_batch: int = 256  # records per database write

    # -- what each database implements --

    @abstractmethod
    def _write(self, records: list[Record]) -> None:
        """Upsert records; writing a record whose id exists replaces it."""

    @abstractmethod
    def _search(self, vector: np.ndarray, k: int, modality: Modality, where: dict[str, Any] | None) -> list[Hit]:
        """The ``k`` nearest records of ``modality`` to a unit vector."""

    @abstractmethod
    def count(self) -> int:
        """Number of stored items (Qdrant points) or rows (one per modality elsewhere)."""

    @abstractmethod
    def _stored_config(self) -> dict[str, Any] | None:
        """The embedding-function config saved with the collection, if any."""

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
            raise ValueError(f"{self.describe()} has no clip-embeddings config (was it made by clip-embeddings?); "
                             "pass ef=ClipEF(...) to open it")
        return ClipEF.build_from_config(stored)

    def _missing(self) -> ValueError:
        return ValueError(f"{self.describe()} does not exist; pass ef=ClipEF(...) to create it")

    def add_images(
        self,
        images: Sequence[ImageLike],
        *,
        ids: Sequence[str] | None = None,
        captions: Sequence[str | None] | None = None,
        metadatas: Sequence[dict[str, Any] | None] | None = None,
        on_error: OnError | None = None,
        progress: bool = False,
    ) -> IngestReport:
        """Embed and store images (and optional captions); ids default to content-derived ones.

        With ``on_error="raise"`` nothing is written unless every image embeds; with ``"skip"``
        the good ones are written and the report lists the rest with reasons.
        """
        on_error = on_error or self.ef.on_error
        _check_lengths(len(images), ids=ids, captions=captions, metadatas=metadatas)
        result = self.ef.encode_images(images, on_error=on_error, progress=progress, total=len(images))
        caption_vectors = {}
        if captions is not None:
            with_caption = [i for i in result.indices if captions[i]]
            caption_vectors = dict(zip(with_caption, self.ef.embed_texts([captions[i] for i in with_caption])))
        records = []
        for row, index in enumerate(result.indices):
            item = ids[index] if ids is not None else item_id("image", result.digests[row])
            common = dict(
                digest=result.digests[row],
                source=_source_text(images[index]),
                document=captions[index] if captions is not None else None,
                metadata=dict(metadatas[index] or {}) if metadatas is not None else {},
            )
            records.append(Record(item, "image", result.embeddings[row], **common))
            if index in caption_vectors:
                records.append(Record(item, "text", caption_vectors[index], **common))
        self._write_all(records)
        return IngestReport(_unique([r.id for r in records]), result.skipped, result.cache_hits)

    def add_texts(self, texts: Sequence[str], *, ids: Sequence[str] | None = None,
                  metadatas: Sequence[dict[str, Any] | None] | None = None) -> IngestReport:
        """Embed and store texts; ids default to content-derived ones."""
        _check_lengths(len(texts), ids=ids, metadatas=metadatas)
        vectors = self.ef.embed_texts(list(texts))
        records = [
            Record(
                ids[i] if ids is not None else item_id("text", text_digest(t)), "text", vectors[i], text_digest(t),
                document=t, metadata=dict(metadatas[i] or {}) if metadatas is not None else {},
            )
            for i, t in enumerate(texts)
        ]
        self._write_all(records)
        return IngestReport([r.id for r in records])

    def index_folder(self, folder: str | os.PathLike, *, extensions: frozenset[str] = IMAGE_EXTENSIONS,
                     recursive: bool = True, on_error: OnError = "skip", progress: bool = True) -> IngestReport:
        """Index every image file under ``folder``; re-running it stores nothing new.

        Example:
            >>> report = store.index_folder("photos/")  # doctest: +SKIP
            >>> print(report)  # doctest: +SKIP
            stored 1200 item(s), skipped 2, cache hits 0
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise ImageLoadError("not a folder (index_folder takes a directory of images)", source=str(folder))
        files = list(iter_image_files(folder, extensions=extensions, recursive=recursive))
        return self.add_images(files, on_error=on_error, progress=progress)

    def query(self, text: str | ImageLike | None = None, *, image: ImageLike | None = None, k: int = 5,
              modality: Modality = "image", where: dict[str, Any] | None = None) -> list[Hit]:
        """Nearest stored items of ``modality`` to a text or an image query.

        A ``str`` is always a text; pass paths and URLs as ``image=`` (a ``Path``, PIL image, array
        or bytes may also go first). text→image: ``query("a dog")``; image→image:
        ``query(image="dog.jpg")``; image→text: ``query(image="dog.jpg", modality="text")``.
        """
        if (text is None) == (image is None):
            raise ValueError("query takes a text or image=..., exactly one of them")
        if isinstance(text, str):
            vector = self.ef.embed_texts([text])[0]
        else:
            vector = self.ef.encode_images([image if image is not None else text], on_error="raise").embeddings[0]
        return self._search(vector, k, modality, where)

    def _write_all(self, records: list[Record]) -> None:
        for start in range(0, len(records), self.write_batch):
            self._write(records[start : start + self.write_batch])


def _check_lengths(n: int, **columns: Sequence | None) -> None:
    for name, column in columns.items():
        if column is not None and len(column) != n:
            raise ValueError(f"{name} has {len(column)} entries but there are {n} items")


def _source_text(item: ImageLike) -> str:
    """What a search result shows as an image's origin: an absolute path, a URL, or a description."""
    if not isinstance(item, (str, os.PathLike)) or str(item).startswith("data:"):
        return describe(item)
    text = os.fspath(item)
    return text if "://" in text[:16] else os.path.abspath(text)


def _unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))
