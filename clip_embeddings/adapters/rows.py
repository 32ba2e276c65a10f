"""What a store holds and returns: ``Record`` and ``Hit``, content-derived item ids, and row ids.

Shared by :mod:`.base` (ingest) and :mod:`.querying` (search); ``base`` re-exports every name,
so ``from clip_embeddings.adapters.base import Record, item_id`` keeps working.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import numpy as np

Modality = Literal["image", "text"]
_NAMESPACE = uuid.UUID("9b1f6c1e-3c1a-4f51-9a57-2f0e6c0c1ce5")  # fixed forever: ids must be stable


def item_id(modality: Modality, digest: str) -> str:
    """The content-derived id of an item: a UUID (every database accepts those), stable across runs."""
    return str(uuid.uuid5(_NAMESPACE, f"{modality}:{digest}"))


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


TEXT_ROW = ":text"  # suffix of text and caption rows; an item id may not end with it
RESERVED_METADATA = frozenset({"item_id", "modality", "digest", "source", "document"})  # written by us


def row_id(item: str, modality: Modality) -> str:
    """Row ids for databases with one vector per row: the image row keeps the item id.

    The text row is ``"<item>:text"``; an item id ending in ``":text"`` is refused, so an image
    row can never take another item's text row (rows written before stay readable: same scheme).

    Example:
        >>> row_id("cat", "image"), row_id("cat", "text")
        ('cat', 'cat:text')
    """
    check_item_id(item)
    return item if modality == "image" else f"{item}{TEXT_ROW}"


def check_item_id(item: object, where: str = "") -> None:
    """Refuse an id no store can hold safely: not a non-empty str, or ending with ``":text"``."""
    prefix = f"{where}: " if where else ""
    if not isinstance(item, str) or not item:
        raise ValueError(f"{prefix}an item id must be a non-empty str, not {item!r}")
    if item.endswith(TEXT_ROW):
        raise ValueError(f"{prefix}item id {item!r} ends with {TEXT_ROW!r}, which marks text and caption rows "
                         f"(another item's caption is stored as '<id>{TEXT_ROW}'); choose another id")


def check_metadata(metadata: Mapping[str, Any] | None, where: str = "") -> None:
    """Refuse metadata keys the library stores itself (every database alike)."""
    clash = sorted(set(metadata or {}) & RESERVED_METADATA)
    if clash:
        raise ValueError(f"{where + ': ' if where else ''}metadata key(s) {clash} are reserved by clip-embeddings "
                         f"(it stores {sorted(RESERVED_METADATA)} itself); rename them")


@dataclass
class Record:
    """One vector to store, with everything a search result should carry back."""

    id: str  # the item id
    modality: Modality
    vector: np.ndarray | None  # None only from a scan without vectors
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


def stored_record(stored: Mapping[str, Any] | None, modality: Modality, vector: Any = None, *,
                  item: str | None = None, document: str | None = None) -> Record:
    """The record a database gave back: the keys the library wrote beside the vector
    (``RESERVED_METADATA``) split from the user's own metadata. ``item`` is the id where none was
    stored; ``document`` one the database keeps apart from the metadata (Chroma's documents).

    Example:
        >>> r = stored_record({"item_id": "cat", "digest": "ab", "modality": "image", "colour": "red"}, "image")
        >>> r.id, r.digest, r.vector, r.metadata
        ('cat', 'ab', None, {'colour': 'red'})
    """
    user = dict(stored or {})
    ours: dict[str, Any] = {key: user.pop(key, None) for key in RESERVED_METADATA}
    # Every row the library writes carries its item_id; ``item`` stands in where the database keeps it apart.
    found = cast(str, ours["item_id"] if ours["item_id"] is not None else item)
    return Record(found, modality,
                  None if vector is None else np.asarray(vector, dtype=np.float32), ours["digest"],
                  source=ours["source"], document=document or ours["document"] or None, metadata=user)


def stored_hit(stored: Mapping[str, Any] | None, modality: Modality, score: float, *, item: str | None = None,
               document: str | None = None) -> Hit:
    """A search result from what a database gave back (see :func:`stored_record`)."""
    record = stored_record(stored, modality, item=item, document=document)
    return Hit(record.id, score, modality, record.source, record.document, record.metadata)
