"""Chroma: ``ClipEF`` in Chroma's embedding-function registry, an image data loader, and a Store.

Importing this module registers ``ClipEF`` under its ``name()``, so a collection created with it
reopens in a new process with ``client.get_collection(name)`` alone (``import clip_embeddings``
arranges the import as soon as chromadb is imported).

Example:
    >>> import chromadb, clip_embeddings as ce
    >>> client = chromadb.PersistentClient("db")  # doctest: +SKIP
    >>> photos = client.create_collection("photos", embedding_function=ce.ClipEF(),
    ...                                   data_loader=ce.adapters.chroma.ImageLoader())  # doctest: +SKIP
    >>> photos.add(ids=["cat"], uris=["cat.jpg"])  # doctest: +SKIP
    >>> photos.query(query_texts=["a sleeping cat"], n_results=1)["ids"]  # doctest: +SKIP
    [['cat']]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .._extras import require

require("chromadb", extra="chroma")  # before the imports below: names the extra when it is missing
from chromadb.utils.embedding_functions import register_embedding_function  # noqa: E402

from ..embedding import ClipEF, _decode_pool
from ..errors import ImageLoadError
from ..images import DEFAULT_OPTIONS, LoaderOptions, load_image
from .base import Hit, Modality, Record, Store, row_id

register_embedding_function(ClipEF)


class ImageLoader:
    """Chroma data loader: turns ``uris`` (paths or http(s) URLs) into images, in parallel.

    Used by ``add(uris=...)``, ``upsert(uris=...)`` and ``query(query_uris=...)``; a bad URI
    raises an error naming its position and the reason.
    """

    def __init__(self, options: LoaderOptions = DEFAULT_OPTIONS, num_workers: int = 4):
        self.options = options
        self.num_workers = num_workers

    def __call__(self, uris: Sequence[str | None]) -> list[np.ndarray | None]:
        def load(index: int, uri: str | None) -> np.ndarray | None:
            if uri is None:
                return None
            try:
                return np.asarray(load_image(uri, self.options))
            except ImageLoadError as e:
                raise ImageLoadError(e.reason, index=index, source=e.source) from None

        pool = _decode_pool(self.num_workers)
        return [f.result() for f in [pool.submit(load, i, uri) for i, uri in enumerate(uris)]]


class ChromaStore(Store):
    """A Chroma collection behind the uniform :class:`Store` interface.

    Creates the collection (cosine space, ``ClipEF`` persisted in its configuration) or opens an
    existing one; with ``ef=None`` the function is rebuilt from what the collection stored.

    Example:
        >>> store = ChromaStore(chromadb.PersistentClient("db"), "photos", ce.ClipEF())  # doctest: +SKIP
        >>> store.index_folder("examples/images")  # doctest: +SKIP
    """

    def __init__(self, client: Any, name: str, ef: ClipEF | None = None, *, metadata: dict[str, Any] | None = None):
        self.name = name
        existing = {c if isinstance(c, str) else c.name for c in client.list_collections()}
        if name in existing:
            # Without an embedding_function argument Chroma rebuilds ClipEF from the stored config.
            given = {"embedding_function": ef} if ef is not None else {}
            self.collection = client.get_collection(name, data_loader=ImageLoader(), **given)
        elif ef is None:
            raise self._missing()
        else:
            try:
                self.collection = client.create_collection(
                    name, embedding_function=ef, data_loader=ImageLoader(), metadata=metadata,
                    configuration={"hnsw": {"space": "cosine"}},
                )
            except Exception as e:
                # Several writers starting at once (processes on one server) all see no collection,
                # and all but one lose the create race: open the winner's (its model is checked below).
                if "already exists" not in str(e).lower():
                    raise
                self.collection = client.get_collection(name, embedding_function=ef, data_loader=ImageLoader())
        # Chroma keeps a placeholder default on the collection and resolves the stored function
        # from the configuration at embedding time; take the stored one the same way.
        self.ef = ef or self.collection.configuration.get("embedding_function")
        if not isinstance(self.ef, ClipEF):
            raise ValueError(f"Chroma collection {name!r} was not made with clip-embeddings (its function: {self.ef!r})")
        self.check_model()

    @classmethod
    def from_collection(cls, collection: Any) -> ChromaStore:
        """Wrap a collection object already opened with ``ClipEF``."""
        store = cls.__new__(cls)
        store.collection, store.name = collection, collection.name
        store.ef = collection._embedding_function
        if not isinstance(store.ef, ClipEF):
            store.ef = collection.configuration.get("embedding_function")
        store.check_model()
        return store

    def describe(self) -> str:
        return f"Chroma collection {self.name!r}"

    def _stored_config(self) -> dict[str, Any] | None:
        ef_json = (self.collection.configuration_json or {}).get("embedding_function") or {}
        return ef_json.get("config") if ef_json.get("name") == ClipEF.name() else None

    def _write(self, records: list[Record]) -> None:
        # Records without a document are upserted without one, so re-adding an image without its
        # caption keeps the caption stored earlier (Chroma's upsert leaves omitted fields alone).
        for with_document in (True, False):
            group = [r for r in records if (r.document is not None) == with_document]
            if group:
                self.collection.upsert(
                    ids=[row_id(r.id, r.modality) for r in group],
                    embeddings=[r.vector for r in group],
                    metadatas=[_metadata(r) for r in group],
                    **({"documents": [r.document for r in group]} if with_document else {}),
                )

    def _search(self, vector: np.ndarray, k: int, modality: Modality, where: dict[str, Any] | None) -> list[Hit]:
        condition = {"modality": modality} if not where else {"$and": [{"modality": modality}, where]}
        result = self.collection.query(
            query_embeddings=[vector], n_results=k, where=condition, include=["metadatas", "documents", "distances"]
        )
        hits = []
        for meta, doc, distance in zip(result["metadatas"][0], result["documents"][0], result["distances"][0]):
            meta = dict(meta)
            item = meta.pop("item_id")
            for key in ("modality", "digest"):
                meta.pop(key, None)
            source = meta.pop("source", None)
            hits.append(Hit(item, 1.0 - float(distance), modality, source, doc or None, meta))
        return hits

    def count(self) -> int:
        return self.collection.count()


def _metadata(record: Record) -> dict[str, Any]:
    meta = {k: v for k, v in record.metadata.items() if v is not None}
    for key, value in meta.items():
        if not isinstance(value, (str, int, float, bool)):
            raise ValueError(f"Chroma metadata values must be str, int, float or bool; {key!r} is {type(value).__name__}")
    meta.update(item_id=record.id, modality=record.modality, digest=record.digest)
    if record.source:
        meta["source"] = record.source
    return meta


def index_folder(client: Any, name: str, folder: str, ef: ClipEF | None = None, **options: Any):
    """Index a folder of images into a Chroma collection (created if needed); idempotent.

    Example:
        >>> report = index_folder(chromadb.PersistentClient("db"), "photos", "my_photos/", ce.ClipEF())  # doctest: +SKIP
        >>> report.stored, len(report.skipped)  # doctest: +SKIP
        (1200, 2)
    """
    return ChromaStore(client, name, ef).index_folder(folder, **options)


def upsert_uris(collection: Any, ids: Sequence[str], uris: Sequence[str],
                metadatas: Sequence[dict[str, Any]] | None = None) -> None:
    """``collection.upsert`` for images given by uri, which Chroma's own upsert does not embed.

    Chroma's ``add(uris=...)`` and ``query(query_uris=...)`` go through the data loader, but its
    ``upsert`` only embeds documents and images. This embeds the uris with the collection's
    ``ClipEF`` (cache and parallel decode included) and upserts embeddings and uris together.

    Example:
        >>> upsert_uris(photos, ids=["cat"], uris=["cat_v2.jpg"])  # doctest: +SKIP
    """
    ef = collection._embedding_function
    if not isinstance(ef, ClipEF):
        ef = collection.configuration.get("embedding_function")
    if not isinstance(ef, ClipEF):
        raise ValueError(f"collection {collection.name!r} does not use ClipEF; it uses {ef!r}")
    embeddings = ef.encode_images(list(uris), on_error="raise").embeddings
    collection.upsert(ids=list(ids), embeddings=list(embeddings), uris=list(uris),
                      metadatas=list(metadatas) if metadatas is not None else None)
