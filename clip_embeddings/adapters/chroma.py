"""Chroma: ``ClipEF`` in Chroma's embedding-function registry, an image data loader, and a Store.

Importing this module registers ``ClipEF`` under its ``name()``, so a collection created with it
reopens in a new process with ``client.get_collection(name)`` alone (``import clip_embeddings``
arranges the import as soon as chromadb is imported).

Example:
    >>> import chromadb, clip_embeddings as ce
    >>> client = chromadb.PersistentClient("db")
    >>> photos = client.create_collection("photos", embedding_function=ce.ClipEF(),
    ...                                   data_loader=ce.adapters.chroma.ImageLoader())
    >>> photos.add(ids=["cat"], uris=["cat.jpg"])
    >>> photos.query(query_texts=["a sleeping cat"], n_results=1)["ids"]
    [['cat']]
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlparse

import numpy as np

from .registry import StoreKind

KIND = StoreKind(
    kind="chroma", store_class="ChromaStore", extra="chroma", client="chromadb", distribution="chromadb",
    purpose="Chroma", servers=("http", "https"), marker="chroma.sqlite3", registry=True,
    locations="a folder, ':memory:', or a Chroma server URL http(s)://HOST:8000",
)
KIND.require_client()  # before the imports below: names the extra when it is missing
import chromadb  # noqa: E402
from chromadb.utils.embedding_functions import register_embedding_function  # noqa: E402

from ..config import EmbeddingConfig
from ..embedding.function import ClipEF
from ..embedding.pipeline import decode_many
from ..errors import ImageLoadError, IncompatibleCollectionError
from ..inputs.options import DEFAULT_OPTIONS, LoaderOptions
from .base import Hit, Modality, Record, Store, row_id, scan_modalities, stored_record

register_embedding_function(ClipEF)


class ImageLoader:
    """Chroma data loader: turns ``uris`` (paths or http(s) URLs) into images, in parallel.

    Used by ``add(uris=...)``, ``upsert(uris=...)`` and ``query(query_uris=...)``; a bad URI
    raises an error naming its position and the reason. It decodes through the same pipeline and
    limits as ``ClipEF``: build it with :meth:`for_function` so the URL policy a collection was
    made with is the one its uris are fetched under.

    Example:
        >>> import chromadb, clip_embeddings as ce
        >>> ef = ce.ClipEF(loader_options=LoaderOptions(allow_urls=False))
        >>> photos = chromadb.PersistentClient("db").create_collection(
        ...     "photos", embedding_function=ef, data_loader=ImageLoader.for_function(ef))
        >>> photos.add(ids=["remote"], uris=["https://example.com/cat.jpg"])
        Traceback (most recent call last):
        ...
        clip_embeddings.errors.ImageLoadError: ...
    """

    def __init__(self, options: LoaderOptions = DEFAULT_OPTIONS, num_workers: int = EmbeddingConfig.num_workers,
                 ef: ClipEF | None = None):
        self.options = options
        self.num_workers = num_workers
        self.ef = ef

    @classmethod
    def for_function(cls, ef: ClipEF) -> ImageLoader:
        """A loader with ``ef``'s loader options, worker count and JPEG draft decoding.

        A file added by uri then gives the very vector that ``ef.embed_images([path])`` gives.
        """
        return cls(ef.loader_options, ef.num_workers, ef)

    def __call__(self, uris: Sequence[str | None]) -> list[np.ndarray | None]:
        wanted = [i for i, uri in enumerate(uris) if uri is not None]
        out: list[np.ndarray | None] = [None] * len(uris)
        local = self.ef is not None and self.ef.fast_decode and not self.ef.server  # a server decodes its own
        draft = self.ef.loaded_model().preprocess.resolution if local and self.ef is not None else None
        images = decode_many([uris[i] for i in wanted], self.options, workers=self.num_workers, draft_resolution=draft)
        for i, image in zip(wanted, images, strict=True):
            if isinstance(image, ImageLoadError):
                raise ImageLoadError(image.reason, index=i, source=image.source)
            out[i] = np.asarray(image)
        return out


class ChromaStore(Store):
    """A Chroma collection behind the uniform :class:`Store` interface.

    Creates the collection (cosine space, ``ClipEF`` persisted in its configuration) or opens an
    existing one; with ``ef=None`` the function is rebuilt from what the collection stored.

    Example:
        >>> import chromadb, clip_embeddings as ce
        >>> store = ChromaStore(chromadb.PersistentClient("db"), "photos", ce.ClipEF())
        >>> store.index_folder("photos").new
        7
    """

    @classmethod
    def open_location(cls, location: str, name: str, ef: ClipEF | None) -> ChromaStore:
        """Collection ``name`` at a checked location (``open_store`` calls this; see ``KIND``)."""
        return cls(chroma_client(location), name, ef)

    def __init__(self, client: Any, name: str, ef: ClipEF | None = None, *, metadata: dict[str, Any] | None = None):
        self.name = name
        existing = {c if isinstance(c, str) else c.name for c in client.list_collections()}
        if name in existing:
            if ef is None:
                # Chroma rebuilds ClipEF from the stored config; the loader must follow its policy.
                ef = client.get_collection(name).configuration.get("embedding_function")
                if not isinstance(ef, ClipEF):
                    raise IncompatibleCollectionError(
                        f"Chroma collection {name!r} was not made with clip-embeddings (its function: {ef!r})")
            self.collection = client.get_collection(name, embedding_function=ef, data_loader=ImageLoader.for_function(ef))
        elif ef is None:
            raise self._missing()
        else:
            try:
                self.collection = client.create_collection(
                    name, embedding_function=ef, data_loader=ImageLoader.for_function(ef), metadata=metadata,
                    configuration={"hnsw": {"space": "cosine"}},
                )
            except Exception as e:
                # Several writers starting at once (processes on one server) all see no collection,
                # and all but one lose the create race: open the winner's (its model is checked below).
                if "already exists" not in str(e).lower():
                    raise
                self.collection = client.get_collection(name, embedding_function=ef,
                                                        data_loader=ImageLoader.for_function(ef))
        self.ef = ef
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
        return self._search_many(np.asarray(vector)[None], k, modality, where)[0]

    def _search_many(self, vectors: np.ndarray, k: int, modality: Modality,
                     where: dict[str, Any] | None) -> list[list[Hit]]:
        if where:
            return self._both(vectors, k, modality, to_where(where))
        # Why not filter on the modality: Chroma evaluates a metadata filter for every query of a
        # batch over the whole collection, so a filtered query costs more the larger the collection
        # (8 ms a query at 10k rows here, 1.5 ms unfiltered through HNSW): de-duplicating grew with
        # the square of the size. Ask unfiltered for a few more than k and keep this modality's
        # rows (those Chroma's own API wrote included, by what they hold); only the queries left
        # short (a text query among captions, for images) go again with the filter.
        total = self.collection.count()
        if total == 0:
            return [[] for _ in vectors]
        fetch = min(total, k + 8)
        out = [[hit for hit in hits if hit.modality == modality][:k]
               for hits in self._query(vectors, fetch, None, None)]
        short = [i for i, hits in enumerate(out) if len(hits) < k and fetch < total]
        if short:
            again = self._both(np.asarray(vectors)[short], k, modality, [])
            for i, hits in zip(short, again, strict=True):
                out[i] = hits
        return out

    def _both(self, vectors: np.ndarray, k: int, modality: Modality, clauses: list[dict[str, Any]]) -> list[list[Hit]]:
        """The best ``k`` of our rows of ``modality`` and of the rows Chroma's own API wrote (_foreign)."""
        out: list[list[Hit]] = [[] for _ in vectors]
        for condition, document in (({"modality": modality}, None), _foreign(modality)):
            for hits, more in zip(out, self._query(vectors, k, modality, _all(condition, *clauses), document), strict=True):
                hits += more
        return [sorted(hits, key=lambda h: -h.score)[:k] for hits in out]

    def _query(self, vectors: np.ndarray, k: int, modality: Modality | None, condition: dict[str, Any] | None,
               document: dict[str, Any] | None = None) -> list[list[Hit]]:
        """One batched Chroma query; ``modality=None`` labels each hit with its row's own modality."""
        result = self.collection.query(query_embeddings=list(vectors), n_results=k, where=condition,
                                       where_document=document, include=["metadatas", "documents", "distances", "uris"])
        columns = (result["ids"], result["metadatas"], result["documents"], result["distances"], result["uris"])
        return [[_hit(*row, modality) for row in zip(*rows, strict=True)] for rows in zip(*columns, strict=True)]


    def _stored(self, keys: list[tuple[str, Modality]]) -> dict[tuple[str, Modality], tuple[str | None, str | None]]:
        rows = {row_id(item, modality): (item, modality) for item, modality in keys}
        got = self.collection.get(ids=list(rows), include=["metadatas", "documents"])
        triples = zip(got["ids"], got["metadatas"], got["documents"], strict=True)
        return {rows[i]: ((meta or {}).get("digest"), doc) for i, meta, doc in triples}

    def _scan(self, modality: Modality | None = None, *, batch_size: int = 512,
              with_vectors: bool = True) -> Iterator[list[Record]]:
        include = ["metadatas", "documents", "uris"] + (["embeddings"] if with_vectors else [])
        for kind in scan_modalities(modality):
            for where, document in (({"modality": kind}, None), _foreign(kind)):
                offset = 0
                while True:  # Chroma pages a get with limit/offset (in insertion order)
                    got = self.collection.get(where=where, where_document=document, limit=batch_size,
                                              offset=offset, include=include)
                    if not got["ids"]:
                        break
                    vectors = got["embeddings"] if with_vectors else [None] * len(got["ids"])
                    rows = zip(got["ids"], got["metadatas"], got["documents"], got["uris"], vectors, strict=True)
                    yield [_record(kind, *row) for row in rows]
                    offset += len(got["ids"])
                    if len(got["ids"]) < batch_size:
                        break

    def _vectors(self, keys: list[tuple[str, Modality]]) -> dict[tuple[str, Modality], np.ndarray]:
        rows = {row_id(item, modality): (item, modality) for item, modality in keys}
        got = self.collection.get(ids=list(rows), include=["embeddings"])
        return {rows[i]: np.asarray(v, np.float32) for i, v in zip(got["ids"], got["embeddings"], strict=True)}

    def _delete(self, keys: list[tuple[str, Modality]]) -> None:
        if keys:
            self.collection.delete(ids=[row_id(item, modality) for item, modality in keys])

    def count(self, modality: Modality | None = None) -> int:
        if modality is not None:
            where, document = _foreign(modality)
            foreign = self.collection.get(where=where, where_document=document, include=[])["ids"]
            return self._count_where({"modality": modality}) + len(foreign)
        # One row per modality: an item is an image row, or a text row with no image row beside it.
        ids = self.collection.get(include=[])["ids"]
        return len({i.removesuffix(":text") for i in ids})

    def _count_where(self, where: dict[str, Any], page: int = 5000) -> int:
        """Rows matching ``where``, counted page by page: one get of every id held them all at once
        in Chroma and here (0.65 KB a row, 65 MB at 100k, which an export's peak memory grew by)."""
        total = 0
        while True:
            got = self.collection.get(where=where, limit=page, offset=total, include=[])["ids"]
            total += len(got)
            if len(got) < page:
                return total


def to_where(where: dict[str, Any]) -> list[dict[str, Any]]:
    """The portable dict of exact matches as Chroma clauses (one key each; a list value is ``$in``).

    A dict that already uses Chroma's operators (a key starting with ``$``) is passed as it is.

    Example:
        >>> to_where({"album": "space", "tag:sea": True, "year": [2023, 2024]})
        [{'album': 'space'}, {'tag:sea': True}, {'year': {'$in': [2023, 2024]}}]
    """
    if any(key.startswith("$") for key in where) or any(isinstance(v, dict) for v in where.values()):
        return [where]
    return [{key: {"$in": list(value)} if isinstance(value, (list, tuple, set)) else value} for key, value in where.items()]


# Rows written with Chroma's own API (``collection.add(ids, uris=...)`` or ``documents=...``, as
# the README shows) carry no ``modality`` key. Such a row is a text if it holds a document and an
# image otherwise (its uri, if any, is its source); its item id is its row id. Every row we write
# has ``modality`` "image" or "text", and Chroma's ``$nin`` matches a row without the key, so
# ``_FOREIGN`` finds exactly theirs (tests/test_chroma.py pins that Chroma behaviour).
_FOREIGN: dict[str, Any] = {"modality": {"$nin": ["image", "text"]}}
_ANY_TEXT = "[\\s\\S]"  # matches a document of at least one character


def _foreign(modality: Modality) -> tuple[dict[str, Any], dict[str, Any]]:
    """``where`` and ``where_document`` for the rows of ``modality`` that Chroma's own API wrote."""
    return _FOREIGN, {"$regex" if modality == "text" else "$not_regex": _ANY_TEXT}


def _all(*clauses: dict[str, Any]) -> dict[str, Any]:
    return clauses[0] if len(clauses) == 1 else {"$and": list(clauses)}


def _hit(row: str, meta: dict[str, Any] | None, document: str | None, distance: float, uri: str | None,
         modality: Modality | None) -> Hit:
    if modality is None:  # an unfiltered query: the row's own, or by what it holds (see _foreign)
        own = (meta or {}).get("modality")
        modality = own if own in ("image", "text") else "text" if document else "image"
    record = _record(modality, row, meta, document, uri, None)
    return Hit(record.id, 1.0 - float(distance), modality, record.source, record.document, record.metadata)


def _record(modality: Modality, row: str, meta: dict[str, Any] | None, document: str | None, uri: str | None,
            vector: Any) -> Record:
    meta = dict(meta or {})
    if "item_id" not in meta:  # a row Chroma's own API wrote: its id is the item, its uri the source
        meta.setdefault("source", uri)
    return stored_record(meta, modality, vector, item=row, document=document)


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
        >>> import chromadb, clip_embeddings as ce
        >>> report = index_folder(chromadb.PersistentClient("db"), "photos", "photos/", ce.ClipEF())
        >>> report.new, len(report.skipped)
        (7, 0)
    """
    return ChromaStore(client, name, ef).index_folder(folder, **options)


def upsert_uris(collection: Any, ids: Sequence[str], uris: Sequence[str],
                metadatas: Sequence[dict[str, Any]] | None = None) -> None:
    """``collection.upsert`` for images given by uri, which Chroma's own upsert does not embed.

    Chroma's ``add(uris=...)`` and ``query(query_uris=...)`` go through the data loader, but its
    ``upsert`` only embeds documents and images. This embeds the uris with the collection's
    ``ClipEF`` (cache and parallel decode included) and upserts embeddings and uris together.

    Example:
        >>> import chromadb, clip_embeddings as ce
        >>> photos = chromadb.PersistentClient("db").create_collection("photos", embedding_function=ce.ClipEF())
        >>> upsert_uris(photos, ids=["cat"], uris=["cat.jpg"])
        >>> photos.get(ids=["cat"], include=["uris"])["uris"]
        ['cat.jpg']
    """
    ef = collection._embedding_function
    if not isinstance(ef, ClipEF):
        ef = collection.configuration.get("embedding_function")
    if not isinstance(ef, ClipEF):
        raise IncompatibleCollectionError(f"collection {collection.name!r} does not use ClipEF; it uses {ef!r}")
    embeddings = ef.encode_images(list(uris), on_error="raise").embeddings
    collection.upsert(ids=list(ids), embeddings=list(embeddings), uris=list(uris),
                      metadatas=list(metadatas) if metadatas is not None else None)


def chroma_client(location: str) -> Any:
    """The Chroma client for a location: in memory, a local folder, or an http(s) server URL.

    Example:
        >>> client = chroma_client("db")  # or ":memory:", or a server: "http://localhost:8000"
        >>> client.heartbeat() > 0
        True
    """
    if location == ":memory:":
        return chromadb.EphemeralClient()
    if location.startswith(("http://", "https://")):
        url = urlparse(location)
        ssl = url.scheme == "https"
        return chromadb.HttpClient(host=url.hostname or "localhost", port=url.port or (443 if ssl else 8000), ssl=ssl)
    return chromadb.PersistentClient(path=location)
