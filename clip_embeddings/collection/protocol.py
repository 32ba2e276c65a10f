"""What a collection job needs from a store: the Store primitives, by duck typing.

This layer sits below the adapters and must not import them; a ``Store`` satisfies this
protocol, and so does anything else that offers the same few methods.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from ..errors import EmptyCollectionError


class RecordLike(Protocol):
    """One stored vector with what was stored beside it (``adapters.base.Record``)."""

    id: str
    modality: str
    vector: Any
    digest: str | None
    source: str | None
    document: str | None
    metadata: dict[str, Any]


class StoreLike(Protocol):
    """The Store primitives a collection job reads through (``_scan`` pages the records in batches)."""

    ef: Any

    def _scan(self, modality: Any = None, *, batch_size: int = 512,
              with_vectors: bool = True) -> Iterator[list[Any]]: ...

    def count(self, modality: Any = None) -> int: ...

    def _search_many(self, vectors: Any, k: int, modality: Any, where: Any) -> list[list[Any]]: ...

    def _vectors(self, keys: list[tuple[str, Any]]) -> dict[tuple[str, Any], Any]: ...

    def describe(self) -> str: ...


def require_records(store: StoreLike, modality: str | None, job: str, n: int | None = None) -> int:
    """The number of ``modality`` records (``n`` when already counted), or :class:`EmptyCollectionError`
    naming the job and the store."""
    n = store.count(modality) if n is None else n
    if n == 0:
        what = f"no {modality} vectors" if modality else "nothing"
        raise EmptyCollectionError(f"{store.describe()} holds {what}: nothing to {job}; index some items first")
    return n
