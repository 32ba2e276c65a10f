"""The query side of a :class:`~clip_embeddings.adapters.base.Store`: text, image and compound
queries, more-like-this, ``min_score``, and reading one item back.

A mixin: it needs only the store's ``ef``, ``_search`` and ``records`` (the primitives), and
:mod:`clip_embeddings.collection.query` does the combining.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..collection import query as compound
from ..collection.query import Item
from ..collection.records import expand_tags
from ..inputs.options import ImageLike
from .rows import Hit, Modality

if TYPE_CHECKING:
    from .rows import Record


class Querying:
    """Queries over the primitives ``_search`` and ``records`` (mixed into ``Store``)."""

    ef: Any

    if TYPE_CHECKING:  # the primitives this mixin reads, defined by Store and the databases
        def _search(self, vector: np.ndarray, k: int, modality: Modality,
                    where: dict[str, Any] | None) -> list[Hit]: ...

        def records(self, modality: Modality | None = None, *, batch_size: int = 512,
                    with_vectors: bool = True) -> Iterator[Record]: ...

    def query(self, text: str | ImageLike | list | Item | None = None, *, image: ImageLike | None = None,
              k: int = 5, modality: Modality = "image", where: dict[str, Any] | None = None,
              min_score: float | None = None) -> list[Hit]:
        """Nearest stored items of ``modality`` to a text, an image, or a compound query.

        A ``str`` is always a text; pass paths and URLs as ``image=`` (a ``Path``, PIL image, array
        or bytes may also go first). text→image: ``query("a dog")``; image→image:
        ``query(image="dog.jpg")``; image→text: ``query(image="dog.jpg", modality="text")``.
        A list is a compound query (:mod:`clip_embeddings.collection.query`): weighted texts,
        images and stored :class:`Item` ids, combined as ``normalize(sum w_i e_i)``. Hits scoring
        below ``min_score`` (cosine similarity) are dropped.

        Example:
            >>> from pathlib import Path
            >>> hits = store.query(["a rocket", ("people", -1.0), Path("photos/galaxies.jpg")], k=3)
            >>> len(hits), hits[0].modality
            (3, 'image')
        """
        if (text is None) == (image is None):
            raise ValueError("query takes a text or image=..., exactly one of them")
        if compound.is_compound(text):
            vector = compound.query_vector(self, compound.as_terms(text))
        elif isinstance(text, str):
            vector = self.ef.embed_texts([text])[0]
        else:
            vector = self.ef.encode_images([image if image is not None else text], on_error="raise").embeddings[0]
        return self.search(vector, k=k, modality=modality, where=where, min_score=min_score)

    def more_like(self, items: str | Sequence[str], *, unlike: Sequence[str] = (), k: int = 5,
                  modality: Modality = "image", where: dict[str, Any] | None = None,
                  min_score: float | None = None) -> list[Hit]:
        """Items like the stored ``items`` (and unlike ``unlike``), never those items themselves.

        The query is ``normalize(sum of their vectors - sum of the unlike ones)``, as a compound
        query of :class:`Item` terms with weights +1 and -1 (Qdrant's recommend, by id).

        Example:
            >>> report = store.add_images(["cat.jpg"])
            >>> [h.source for h in store.more_like(report.ids[0], k=3)]  # not the cat itself
            ['...', '...', '...']
        """
        items = [items] if isinstance(items, str) else list(items)
        terms = [compound.Term(Item(i), 1.0, "item") for i in items]
        terms += [compound.Term(Item(i), -1.0, "item") for i in unlike]
        excluded = set(items) | set(unlike)
        hits = self.search(compound.query_vector(self, terms), k=k + len(excluded), modality=modality,
                           where=where, min_score=min_score)
        return [h for h in hits if h.id not in excluded][:k]

    def search(self, vector: np.ndarray, *, k: int = 5, modality: Modality = "image",
               where: dict[str, Any] | None = None, min_score: float | None = None) -> list[Hit]:
        """Nearest stored records of ``modality`` to a unit vector already computed (a server batches those).

        ``where={"tag": label}`` keeps items tagged ``label`` in every database; see
        :mod:`clip_embeddings.collection.records`.

        Example:
            >>> hits = store.search(store.ef.embed_texts(["a cat"])[0], k=3, min_score=0.2)
            >>> len(hits) <= 3 and all(h.score >= 0.2 for h in hits)
            True
        """
        if modality not in ("image", "text"):
            raise ValueError(f"modality must be 'image' or 'text', not {modality!r}")
        hits = self._search(np.asarray(vector, np.float32), k, modality, expand_tags(where))
        return hits if min_score is None else [h for h in hits if h.score >= min_score]

    def _vectors(self, keys: list[tuple[str, Modality]]) -> dict[tuple[str, Modality], np.ndarray]:
        """The stored vectors of these (item id, modality) records; databases override this scan."""
        wanted = set(keys)
        return {(r.id, r.modality): r.vector for r in self.records()
                if (r.id, r.modality) in wanted and r.vector is not None}  # a scan with vectors: always set

    def get_item(self, item: str, modality: Modality = "image") -> Hit | None:
        """The stored record of item id ``item`` (source, caption, metadata), or ``None``.

        Example:
            >>> report = store.add_images(["cat.jpg"])
            >>> store.get_item(report.ids[0]).source
            '.../photos/cat.jpg'
        """
        probe = np.zeros(self.ef.dim, np.float32)
        probe[0] = 1.0  # any unit vector: the filter on the id does the finding
        hits = self._search(probe, 1, modality, {"item_id": item})
        return hits[0] if hits and hits[0].id == item else None
