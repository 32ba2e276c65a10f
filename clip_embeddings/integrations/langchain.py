"""LangChain: CLIP as ``Embeddings``, and a retriever over any clip-embeddings store.

Needs the ``langchain`` extra (``langchain-core``). :class:`ClipRetriever` is what a
text-to-image RAG chain wants: a question in, the nearest pictures out as ``Document`` objects
whose metadata holds each image's ``source`` (path or URL) and score.

Example:
    >>> from clip_embeddings.integrations.langchain import ClipEmbeddings, ClipRetriever
    >>> retriever = ClipRetriever(store=store, k=3)
    >>> [d.metadata["source"] for d in retriever.invoke("a rocket at night")]
    ['.../photos/....jpg', '.../photos/....jpg', '.../photos/....jpg']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from .._extras import require

require("langchain_core", extra="langchain")  # before the imports below: names the extra when it is missing
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever

from ..adapters.base import Hit, Store
from ..embedding.function import ClipEF
from ..inputs.options import ImageLike


class ClipEmbeddings(Embeddings):
    """LangChain ``Embeddings`` backed by a :class:`ClipEF`: texts and images in one space.

    ``embed_image`` takes a list, as LangChain's multimodal vector stores call it
    (``embed_image(uris=[...])``); ``embed_images`` is the same under a plural name.

    Example:
        >>> emb = ClipEmbeddings(ClipEF())
        >>> len(emb.embed_query("a dog")), len(emb.embed_image(["cat.jpg"])[0])
        (512, 512)
    """

    def __init__(self, ef: ClipEF | None = None, **clip_options: Any):
        if ef is not None and clip_options:
            raise ValueError("pass either ef=ClipEF(...) or ClipEF options, not both")
        self.ef = ef if ef is not None else ClipEF(**clip_options)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.ef.embed_texts(list(texts)).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.ef.embed_texts([text])[0].tolist()

    def embed_image(self, uris: Sequence[ImageLike]) -> list[list[float]]:
        """Embed images (paths, URLs, bytes, PIL images...); a bad one raises naming its position."""
        return self.ef.encode_images(list(uris), on_error="raise").embeddings.tolist()

    def embed_images(self, images: Sequence[ImageLike]) -> list[list[float]]:
        """Same as :meth:`embed_image`."""
        return self.embed_image(images)


class ClipRetriever(BaseRetriever):
    """Retrieve the stored items nearest to a text query from any :class:`Store`.

    ``modality="image"`` (default) searches image vectors (text→image); ``"text"`` searches
    texts and captions. Each ``Document``'s ``page_content`` is the caption or text (an image's
    source when it has no caption); ``metadata`` has ``id``, ``score``, ``source``,
    ``modality`` and the item's own metadata.

    ``k``, ``where`` and ``modality`` can also be given per call, as LangChain's retrievers take
    them: ``retriever.invoke(q, k=1, where={"album": "space"})``. A per-call value replaces the
    constructor's for that call (a per-call ``where`` is not merged with the constructor's).

    Example:
        >>> _ = store.add_images(["astronaut.jpg", "rocket.jpg"], metadatas=[{"album": "space"}] * 2,
        ...                      captions=["a portrait of an astronaut in an orange spacesuit", "a rocket at night"])
        >>> retriever = ClipRetriever(store=store, k=2, where={"album": "space"})
        >>> docs = retriever.invoke("an astronaut")
        >>> sorted(d.metadata["source"].rsplit("/", 1)[-1] for d in docs)
        ['astronaut.jpg', 'rocket.jpg']
        >>> len(retriever.invoke("an astronaut", k=1))
        1
    """

    store: Any
    modality: Literal["image", "text"] = "image"
    k: int = 4
    where: Any = None

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                k: int | None = None, where: Any = None,
                                modality: Literal["image", "text"] | None = None, **kwargs: Any) -> list[Document]:
        if not isinstance(self.store, Store):
            raise TypeError(f"ClipRetriever needs a clip-embeddings Store, got {type(self.store).__name__}")
        # LangChain forwards invoke()'s keyword arguments, its own "verbose" among them; anything
        # else is a typo (n=3, top_k=3) that would otherwise be silently ignored.
        unknown = sorted(set(kwargs) - {"verbose"})
        if unknown:
            raise TypeError(f"ClipRetriever.invoke() got unexpected option(s) {', '.join(unknown)}; "
                            "it takes k, where and modality")
        k = self.k if k is None else k
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, not {k!r}")
        modality = modality or self.modality
        if modality not in ("image", "text"):
            raise ValueError(f"modality must be 'image' or 'text', not {modality!r}")
        hits = self.store.query(query, k=k, modality=modality, where=self.where if where is None else where)
        return [hit_to_document(h) for h in hits]


def hit_to_document(hit: Hit) -> Document:
    """A search hit as a LangChain ``Document`` (see :class:`ClipRetriever` for the fields)."""
    metadata = {**hit.metadata, "id": hit.id, "score": hit.score, "source": hit.source, "modality": hit.modality}
    return Document(page_content=hit.document or hit.source or "", metadata=metadata, id=hit.id)
