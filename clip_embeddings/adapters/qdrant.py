"""Qdrant: one collection, one point per item, named vectors ``image`` and ``text``.

An image and its caption share a point, so a text→image hit carries the caption and an
image→text hit carries the picture's source. Texts added on their own get points with only a
``text`` vector (Qdrant lets a point omit any named vector). The embedding-function config
(model, fingerprint, dim) lives in the collection's ``metadata`` (Qdrant ≥ 1.16 servers and
qdrant-client's local mode), so reopening with ``ef=None`` rebuilds the same function and
opening with other weights raises :class:`~clip_embeddings.ModelMismatchError`.

Payload keys: ``item_id``, ``source``, ``document``, ``digest`` (reserved) plus the user's
metadata under its own keys, so Qdrant's own filters and payload indexes work on them directly.

Example:
    >>> from qdrant_client import QdrantClient
    >>> store = QdrantStore(QdrantClient(path="qdrant-db"), "photos", ClipEF())
    >>> store.add_images(["cat.jpg"], captions=["a tabby cat"]).new
    1
    >>> store.query("a sleeping cat", k=1)[0].document
    'a tabby cat'
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np

from .registry import StoreKind

KIND = StoreKind(
    kind="qdrant", store_class="QdrantStore", extra="qdrant", client="qdrant_client", distribution="qdrant-client",
    purpose="Qdrant", servers=("http", "https"), marker="meta.json",
    locations="a folder, ':memory:', or a Qdrant server URL http(s)://HOST:6333",
)
KIND.require_client()  # before the import below: names the extra when it is missing
from qdrant_client import QdrantClient  # noqa: E402
from qdrant_client import models as qmodels  # noqa: E402

from ..embedding.function import ClipEF
from ..errors import IncompatibleCollectionError
from .base import Hit, Modality, Record, Store, scan_modalities, stored_hit, stored_record

CONFIG_KEY = "clip_embeddings"  # collection metadata key holding ClipEF.get_config()
RESERVED = ("item_id", "source", "document", "digest")
_ID_NAMESPACE = uuid.UUID("5d0f3f0e-8e3b-4a34-93a4-6a0f1f7f2b11")  # for user ids that are not UUIDs


class QdrantStore(Store):
    """A Qdrant collection behind the uniform :class:`Store` interface.

    Works with ``QdrantClient(path=...)``, ``QdrantClient(":memory:")`` and
    ``QdrantClient(url="http://host:6333")``. Creates the collection (two cosine named vectors,
    the function's config in its metadata) or opens an existing one; with ``ef=None`` the
    function is rebuilt from that config.

    ``where`` filters are a dict of exact matches, ``{"key": value}`` (a list value matches
    any of its elements), all of which must hold; a ``qdrant_client.models.Filter`` is used
    as given.

    Example:
        >>> store = QdrantStore(QdrantClient(":memory:"), "photos", ClipEF())
        >>> store.add_images(["cat.jpg", "rocket.jpg"], metadatas=[{"album": "pets"}, {"album": "space"}]).new
        2
        >>> [h.source for h in store.query("a rocket", k=1, where={"album": "space"})]
        ['.../rocket.jpg']
    """

    @classmethod
    def open_location(cls, location: str, name: str, ef: ClipEF | None) -> QdrantStore:
        """Collection ``name`` at a checked location (``open_store`` calls this; see ``KIND``)."""
        if location == ":memory:":
            client = QdrantClient(":memory:")
        elif location.startswith(("http://", "https://")):
            client = QdrantClient(url=location)
        else:
            client = QdrantClient(path=location)
        try:
            return cls(client, name, ef)
        except BaseException:
            client.close()  # a local Qdrant folder stays locked while its client is open
            raise

    def __init__(self, client: Any, name: str, ef: ClipEF | None = None):
        self.client, self.name = client, name
        if client.collection_exists(name):
            ef = self._function_for_existing(ef)
        elif ef is None:
            raise self._missing()
        else:
            params = qmodels.VectorParams(size=ef.dim, distance=qmodels.Distance.COSINE)
            client.create_collection(
                name, vectors_config={"image": params, "text": params}, metadata={CONFIG_KEY: ef.get_config()}
            )
            if self._stored_config() is None:
                # Servers before 1.16 drop collection metadata; without it nothing could check the model later.
                raise IncompatibleCollectionError(
                    f"the Qdrant server did not keep the metadata of collection {name!r} (it needs Qdrant >= 1.16); "
                    "upgrade the server, then delete and recreate the collection"
                )
        self.ef = ef
        self.check_model()

    def describe(self) -> str:
        return f"Qdrant collection {self.name!r}"

    def _stored_config(self) -> dict[str, Any] | None:
        metadata = self.client.get_collection(self.name).config.metadata or {}
        return metadata.get(CONFIG_KEY)

    def _write(self, records: list[Record]) -> None:
        # Fold an item's image and caption records into one point.
        points: dict[str, tuple[dict[str, qmodels.Vector], dict[str, Any], bool]] = {}
        for r in records:
            pid = point_id(r.id)
            vectors, payload, _ = points.setdefault(pid, ({}, {}, False))
            vectors[r.modality] = np.asarray(r.vector, dtype=np.float32).tolist()
            payload.update(_payload(r, keep_digest=r.modality == "image" or "digest" not in payload))
            if r.modality == "image":
                points[pid] = (vectors, payload, True)
        existing = {str(p.id) for p in self.client.retrieve(self.name, ids=list(points), with_payload=False)}
        new = [qmodels.PointStruct(id=pid, vector=v, payload=p) for pid, (v, p, _) in points.items() if pid not in existing]
        if new:
            self.client.upsert(self.name, new)
        # An existing point keeps the vectors and payload keys this write does not mention: adding a
        # caption later must not drop the image vector, and re-adding an image must not drop its caption.
        updates: list[Any] = []
        for pid in existing & points.keys():
            vectors, payload, has_image = points[pid]
            if not has_image:
                payload.pop("digest", None)  # the point's digest names its image, not a caption added later
            updates.append(qmodels.UpdateVectorsOperation(
                update_vectors=qmodels.UpdateVectors(points=[qmodels.PointVectors(id=pid, vector=vectors)])))
            updates.append(qmodels.SetPayloadOperation(set_payload=qmodels.SetPayload(payload=payload, points=[pid])))
        if updates:
            self.client.batch_update_points(self.name, updates)

    def _search(self, vector: np.ndarray, k: int, modality: Modality, where: Any) -> list[Hit]:
        result = self.client.query_points(
            self.name, query=np.asarray(vector, dtype=np.float32).tolist(), using=modality, limit=k,
            query_filter=to_filter(where), with_payload=True,
        )
        return [_hit(point, modality) for point in result.points]

    def _search_many(self, vectors: np.ndarray, k: int, modality: Modality, where: Any) -> list[list[Hit]]:
        condition = to_filter(where)
        requests = [qmodels.QueryRequest(query=np.asarray(v, dtype=np.float32).tolist(), using=modality, limit=k,
                                         filter=condition, with_payload=True) for v in vectors]
        results = self.client.query_batch_points(self.name, requests=requests)
        return [[_hit(point, modality) for point in result.points] for result in results]

    def _stored(self, keys: list[tuple[str, Modality]]) -> dict[tuple[str, Modality], tuple[str | None, str | None]]:
        wanted = {point_id(item): item for item, _ in keys}
        points = self.client.retrieve(self.name, ids=list(wanted), with_payload=["digest", "document"], with_vectors=True)
        found = {}
        for point in points:
            item, payload = wanted[str(point.id)], point.payload or {}
            for modality in (point.vector or {}):
                found[(item, modality)] = (payload.get("digest"), payload.get("document"))
        return found

    def _scan(self, modality: Modality | None = None, *, batch_size: int = 512,
              with_vectors: bool = True) -> Iterator[list[Record]]:
        for kind in scan_modalities(modality):
            has = qmodels.Filter(must=[qmodels.HasVectorCondition(has_vector=kind)])
            offset = None
            while True:  # Qdrant's scroll pages by the next point id, so memory stays bounded
                points, offset = self.client.scroll(self.name, scroll_filter=has, limit=batch_size, offset=offset,
                                                    with_payload=True, with_vectors=[kind] if with_vectors else False)
                if points:
                    yield [stored_record(point.payload, kind, point.vector[kind] if with_vectors else None,
                                         item=str(point.id)) for point in points]
                if offset is None:
                    break

    def _vectors(self, keys: list[tuple[str, Modality]]) -> dict[tuple[str, Modality], np.ndarray]:
        wanted = {point_id(item): item for item, _ in keys}
        found = {}
        for point in self.client.retrieve(self.name, ids=list(wanted), with_payload=False, with_vectors=True):
            for modality, vector in (point.vector or {}).items():
                found[(wanted[str(point.id)], modality)] = np.asarray(vector, np.float32)
        return {key: found[key] for key in keys if key in found}

    def _delete(self, keys: list[tuple[str, Modality]]) -> None:
        wanted: dict[str, set[str]] = {}
        for item, modality in keys:
            wanted.setdefault(point_id(item), set()).add(modality)
        points = self.client.retrieve(self.name, ids=list(wanted), with_payload=False, with_vectors=True)
        whole: list[qmodels.ExtendedPointId] = []
        partial: list[str] = []
        for point in points:
            pid = str(point.id)
            if set(point.vector or {}) <= wanted[pid]:
                whole.append(pid)  # nothing of the item stays: the point goes
            else:
                partial.append(pid)
        operations: list[Any] = []
        if whole:
            operations.append(qmodels.DeleteOperation(delete=qmodels.PointIdsList(points=whole)))
        for pid in partial:  # an image stays without its caption (or the reverse)
            names = sorted(wanted[pid])
            operations.append(qmodels.DeleteVectorsOperation(
                delete_vectors=qmodels.DeleteVectors(points=[pid], vector=names)))
            if "text" in names:
                operations.append(qmodels.DeletePayloadOperation(
                    delete_payload=qmodels.DeletePayload(keys=["document"], points=[pid])))
        if operations:
            self.client.batch_update_points(self.name, operations)

    def count(self, modality: Modality | None = None) -> int:
        if modality is None:
            return self.client.count(self.name, exact=True).count
        has = qmodels.Filter(must=[qmodels.HasVectorCondition(has_vector=modality)])
        return self.client.count(self.name, count_filter=has, exact=True).count


def point_id(item: str) -> str:
    """Qdrant ids must be UUIDs or integers: item ids already are; other user ids map to a stable UUID."""
    try:
        return str(uuid.UUID(item))
    except ValueError:
        return str(uuid.uuid5(_ID_NAMESPACE, item))


def to_filter(where: dict[str, Any] | qmodels.Filter | None) -> qmodels.Filter | None:
    """``{"album": "space", "year": [2023, 2024]}`` → a Filter whose conditions must all match exactly.

    Example:
        >>> to_filter({"album": "space"}).must[0].key
        'album'
    """
    if where is None or isinstance(where, qmodels.Filter):
        return where
    if not isinstance(where, dict):
        raise TypeError(f"where must be a dict of exact matches or a qdrant_client.models.Filter, not {type(where).__name__}")
    conditions: list[qmodels.Condition] = []
    for key, value in where.items():
        if isinstance(value, (list, tuple, set)):
            match: Any = qmodels.MatchAny(any=list(value))
        elif isinstance(value, (str, int, bool)):
            match = qmodels.MatchValue(value=value)
        else:
            raise ValueError(
                f"where[{key!r}]: Qdrant matches str, int or bool values exactly (or a list of them), "
                f"not {type(value).__name__}; pass a qdrant_client.models.Filter for ranges and more"
            )
        conditions.append(qmodels.FieldCondition(key=_key_path(key), match=match))
    return qmodels.Filter(must=conditions)


def _key_path(key: str) -> str:
    """A payload key as a Qdrant key path: quoted when it holds characters a path gives meaning to
    (a tag key ``tag:a cat``); dots stay paths into nested payloads."""
    if all(c.isalnum() or c in "_-." for c in key):
        return key
    if '"' in key:
        raise ValueError(f"where: Qdrant cannot filter on a key with a double quote in it: {key!r}")
    return f'"{key}"'


def _hit(point: Any, modality: Modality) -> Hit:
    return stored_hit(point.payload, modality, float(point.score), item=str(point.id))


def _payload(record: Record, keep_digest: bool) -> dict[str, Any]:
    clash = sorted(set(record.metadata) & set(RESERVED))
    if clash:
        raise ValueError(f"item {record.id}: metadata keys {clash} are reserved by clip-embeddings; rename them")
    payload = {k: v for k, v in record.metadata.items() if v is not None}
    payload["item_id"] = record.id
    if keep_digest:
        payload["digest"] = record.digest
    # None means "not given here": leaving the key out keeps what an existing point already has.
    if record.source:
        payload["source"] = record.source
    if record.document:
        payload["document"] = record.document
    return payload
