"""LlamaIndex: CLIP as a ``MultiModalEmbedding``, indexes that never send text elsewhere, and a
retriever over any clip-embeddings store.

Needs the ``llamaindex`` extra (``llama-index-core``).

- :class:`ClipEmbedding` embeds texts, queries and images (batched, sync and async) with one
  :class:`~clip_embeddings.ClipEF`, so text and image vectors share CLIP's space.
- :func:`multimodal_index` builds a ``MultiModalVectorStoreIndex`` with that one model for *both*
  its text and image stores. LlamaIndex's own default for the text store is
  ``Settings.embed_model`` (OpenAI), which would put another provider's vectors beside CLIP's, or
  fail without an API key; here the text store is always CLIP.
- :func:`persist_index` / :func:`load_index`: the storage LlamaIndex persists plus the model's
  config and fingerprint; loading rebuilds the same model in a new process, or refuses other
  weights with :class:`~clip_embeddings.ModelMismatchError` (LlamaIndex itself keeps no trace of
  the embedding model, so a reloaded index would silently mix models).
- :class:`ClipStoreRetriever`: a LlamaIndex retriever over a Chroma, Qdrant, LanceDB, pgvector or
  Milvus store filled by clip-embeddings.

Example:
    >>> from clip_embeddings.integrations.llamaindex import (ClipEmbedding, folder_documents, load_index,
    ...                                                      multimodal_index, persist_index)
    >>> clip = ClipEmbedding(model=weights)  # weights: e.g. "ViT-B/32"
    >>> index = multimodal_index(folder_documents("photos/"), clip)
    >>> hits = index.as_retriever(image_similarity_top_k=3).text_to_image_retrieve("a rocket")
    >>> [hit.node.metadata["file_name"] for hit in hits]  # the three nearest photos
    ['...jpg', '...jpg', '...jpg']
    >>> persist_index(index, "storage")
    >>> index = load_index("storage")  # in a new process: the same model, checked
"""

from __future__ import annotations

import asyncio
import json
import os
from io import BytesIO
from pathlib import Path
from typing import Any, Literal

from .._extras import require

require("llama_index.core", extra="llamaindex")  # before the imports below: names the extra when it is missing
from llama_index.core import StorageContext, load_index_from_storage  # noqa: E402
from llama_index.core.base.base_retriever import BaseRetriever  # noqa: E402
from llama_index.core.data_structs.data_structs import MultiModelIndexDict  # noqa: E402
from llama_index.core.embeddings import MultiModalEmbedding  # noqa: E402
from llama_index.core.indices.multi_modal import MultiModalVectorStoreIndex  # noqa: E402
from llama_index.core.schema import Document, ImageDocument, ImageNode, NodeWithScore, QueryBundle  # noqa: E402
from pydantic import PrivateAttr  # noqa: E402

from ..adapters.base import Hit, Store
from ..embedding.function import ClipEF
from ..errors import ModelMismatchError
from ..inputs.captions import caption_for, folder_captions
from ..inputs.folders import iter_image_files

CONFIG_FILE = "clip_embeddings.json"  # beside LlamaIndex's own files in a persist dir


class ClipEmbedding(MultiModalEmbedding):
    """LlamaIndex embedding backed by a :class:`ClipEF`: texts, queries and images in one space.

    Pass a ``ClipEF`` or its options (``model=...``, ``device=...``). ``embed_batch_size``
    defaults to the function's batch size; image batches go through the function's parallel
    decoding and embedding cache. A bad image raises an error naming it.

    Example:
        >>> clip = ClipEmbedding(model=weights)  # weights: e.g. "ViT-B/32"
        >>> len(clip.get_text_embedding("a cat")), len(clip.get_image_embedding("cat.jpg"))
        (512, 512)
    """

    _ef: ClipEF = PrivateAttr()

    def __init__(self, ef: ClipEF | None = None, *, embed_batch_size: int | None = None, **clip_options: Any):
        if ef is not None and clip_options:
            raise ValueError("pass either ef=ClipEF(...) or ClipEF options, not both")
        ef = ef if ef is not None else ClipEF(**clip_options)
        super().__init__(model_name=str(ef.model_name), embed_batch_size=embed_batch_size or ef.batch_size)
        self._ef = ef

    @classmethod
    def class_name(cls) -> str:
        return "ClipEmbedding"

    @property
    def ef(self) -> ClipEF:
        """The :class:`ClipEF` doing the work."""
        return self._ef

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._ef.embed_texts([query])[0].tolist()

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._ef.embed_texts([text])[0].tolist()

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._ef.embed_texts(list(texts)).tolist()

    def _get_image_embedding(self, img_file_path: str | BytesIO) -> list[float]:
        return self._get_image_embeddings([img_file_path])[0]

    def _get_image_embeddings(self, img_file_paths: list[str | BytesIO]) -> list[list[float]]:
        images = [p.getvalue() if isinstance(p, BytesIO) else p for p in img_file_paths]
        return self._ef.encode_images(images, on_error="raise").embeddings.tolist()

    # The model runs on this process's threads either way; async callers get it off their loop.
    async def _aget_query_embedding(self, query: str) -> list[float]:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)

    async def _aget_image_embedding(self, img_file_path: str | BytesIO) -> list[float]:
        return await asyncio.to_thread(self._get_image_embedding, img_file_path)

    async def _aget_image_embeddings(self, img_file_paths: list[str | BytesIO]) -> list[list[float]]:
        return await asyncio.to_thread(self._get_image_embeddings, img_file_paths)


def folder_documents(folder: str | os.PathLike, *, captions: bool = True, recursive: bool = True) -> list[Any]:
    """The documents of LlamaIndex's multimodal guide for a folder: an ``ImageDocument`` per image
    and, per captioned image, a text ``Document`` holding the caption (``image_path`` in its metadata).

    Captions come from the folder as :meth:`Store.index_folder` reads them (``captions.json`` /
    ``captions.csv`` at the root, or a ``.txt`` beside an image). This needs no
    ``llama-index-readers-file``: LlamaIndex's ``SimpleDirectoryReader`` reads images only with it.

    Example:
        >>> docs = folder_documents("photos")
        >>> sorted({type(d).__name__ for d in docs})
        ['Document', 'ImageDocument']
    """
    folder = Path(folder)
    lookup = folder_captions(folder) if captions else {}
    documents: list[Any] = []
    for path in iter_image_files(folder, recursive=recursive):
        caption = caption_for(lookup, folder, path, sidecars=captions) if captions else None
        meta = {"file_path": str(Path(path).resolve()), "file_name": Path(path).name}
        documents.append(ImageDocument(image_path=meta["file_path"], metadata={**meta, "caption": caption or ""}))
        if caption:
            # LlamaIndex embeds "key: value" metadata lines with the text by default; CLIP must see
            # the caption alone (77 tokens, and the path would move every vector).
            meta = {**meta, "image_path": meta["file_path"]}
            documents.append(Document(text=caption, metadata=meta, excluded_embed_metadata_keys=list(meta)))
    return documents


def multimodal_index(documents: list[Any], embedding: ClipEmbedding, **kwargs: Any) -> MultiModalVectorStoreIndex:
    """``MultiModalVectorStoreIndex.from_documents`` with CLIP for the text *and* the image store.

    ``kwargs`` go to LlamaIndex (``storage_context=``, ``show_progress=``...); an
    ``embed_model`` or ``image_embed_model`` other than ``embedding`` is refused.

    Example:
        >>> index = multimodal_index(folder_documents("photos/"), ClipEmbedding())
    """
    _check_models(embedding, kwargs)
    return MultiModalVectorStoreIndex.from_documents(documents, embed_model=embedding, image_embed_model=embedding,
                                                     **kwargs)


def persist_index(index: Any, persist_dir: str | os.PathLike) -> None:
    """``index.storage_context.persist(persist_dir)`` plus the CLIP model's config and fingerprint.

    Example:
        >>> index = multimodal_index(folder_documents("photos/"), ClipEmbedding())
        >>> persist_index(index, "storage")
        >>> sorted(os.listdir("storage"))  # LlamaIndex's files, and the model's config beside them
        ['clip_embeddings.json', 'default__vector_store.json', 'docstore.json', 'graph_store.json',
         'image__vector_store.json', 'index_store.json']
    """
    model = getattr(index, "image_embed_model", None) or index._embed_model
    if not isinstance(model, ClipEmbedding) or not isinstance(index._embed_model, ClipEmbedding):
        raise TypeError("persist_index keeps the config of a ClipEmbedding; this index embeds with "
                        f"{type(index._embed_model).__name__}")
    index.storage_context.persist(persist_dir=os.fspath(persist_dir))
    Path(persist_dir, CONFIG_FILE).write_text(json.dumps(model.ef.get_config(), indent=2))


def load_index(persist_dir: str | os.PathLike, embedding: ClipEmbedding | None = None, **kwargs: Any) -> Any:
    """Reload an index written by :func:`persist_index`, with the model it was built with.

    Without ``embedding``, the model is rebuilt from the stored config (and its weights checked
    against the stored fingerprint); a given ``embedding`` with other weights raises
    :class:`~clip_embeddings.ModelMismatchError`. A multimodal index gets the model for both stores.

    Example:
        >>> persist_index(multimodal_index(folder_documents("photos/"), ClipEmbedding()), "storage")
        >>> index = load_index("storage")  # in a new process: rebuilds ClipEmbedding from the stored config
        >>> [n.node.image_path for n in index.as_retriever(image_similarity_top_k=1).text_to_image_retrieve("a cat")]
        ['...jpg']
    """
    path = Path(persist_dir, CONFIG_FILE)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: this folder was not written by persist_index (or the model's "
                                "config was deleted); persist the index with clip_embeddings' persist_index")
    config = json.loads(path.read_text())
    if embedding is None:
        embedding = ClipEmbedding(ClipEF.build_from_config(config))
    elif (embedding.ef.fingerprint, embedding.ef.dim) != (config.get("fingerprint"), config.get("dim")):
        raise ModelMismatchError(
            f"the index in {persist_dir} was built with model {config.get('model')!r} (fingerprint "
            f"{config.get('fingerprint')}), but the embedding uses {embedding.ef.model_name!r} (fingerprint "
            f"{embedding.ef.fingerprint}). Load it with load_index({os.fspath(persist_dir)!r}) to rebuild its own "
            "model, or re-index.")
    _check_models(embedding, kwargs)
    storage = StorageContext.from_defaults(persist_dir=os.fspath(persist_dir))
    structs = storage.index_store.index_structs()
    multimodal = bool(structs) and isinstance(structs[0], MultiModelIndexDict)
    if multimodal:
        kwargs["image_embed_model"] = embedding
    return load_index_from_storage(storage, embed_model=embedding, **kwargs)


def _check_models(embedding: ClipEmbedding, kwargs: dict[str, Any]) -> None:
    if not isinstance(embedding, ClipEmbedding):
        raise TypeError(f"embedding must be a ClipEmbedding, not {type(embedding).__name__}")
    for key in ("embed_model", "image_embed_model"):
        if key in kwargs and kwargs[key] is not embedding:
            raise ValueError(f"{key}= would embed with another model than CLIP's; leave it out")


class ClipStoreRetriever(BaseRetriever):
    """A LlamaIndex retriever over any clip-embeddings :class:`Store` (Chroma, Qdrant, LanceDB,
    pgvector, Milvus): a text query (or ``QueryBundle(image_path=...)``) in, the nearest stored
    items out as ``ImageNode``\\ s (image path = the stored source, text = caption or text).

    Example:
        >>> retriever = ClipStoreRetriever(store, k=3)  # store: e.g. open_store("pgvector", url, "photos")
        >>> [n.node.image_path for n in retriever.retrieve("a rocket")]
        ['...jpg', '...jpg', '...jpg']
    """

    def __init__(self, store: Store, *, k: int = 5, modality: Literal["image", "text"] = "image",
                 where: dict[str, Any] | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.store, self.k, self.modality, self.where = store, k, modality, where

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        if query_bundle.image_path:
            hits = self.store.query(image=query_bundle.image_path, k=self.k, modality=self.modality, where=self.where)
        else:
            hits = self.store.query(query_bundle.query_str, k=self.k, modality=self.modality, where=self.where)
        return [hit_to_node(hit) for hit in hits]


def hit_to_node(hit: Hit) -> NodeWithScore:
    """A store's :class:`Hit` as a LlamaIndex ``NodeWithScore`` holding an ``ImageNode``."""
    metadata = {**hit.metadata, "source": hit.source, "modality": hit.modality}
    node = ImageNode(id_=hit.id, text=hit.document or "", image_path=hit.source if hit.modality == "image" else None,
                     metadata=metadata)
    return NodeWithScore(node=node, score=hit.score)
