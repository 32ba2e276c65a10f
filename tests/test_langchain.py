"""LangChain: ClipEmbeddings matches ClipEF, ClipRetriever returns the numpy-nearest items as Documents."""

from __future__ import annotations

import lancedb
import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from qdrant_client import QdrantClient

import clip_embeddings as ce
from clip_embeddings.adapters.lancedb import LanceDBStore
from clip_embeddings.adapters.qdrant import QdrantStore
from clip_embeddings.integrations.langchain import ClipEmbeddings, ClipRetriever
from tests.test_stores_parametrised import TEXTS, Corpus, assert_ranking


@pytest.fixture(scope="module")
def corpus(tiny_model_path, sample_images) -> Corpus:
    return Corpus(tiny_model_path, sample_images)


@pytest.fixture(params=["qdrant", "lancedb"])
def store(request, corpus, tmp_path):
    ef = ce.ClipEF(corpus.model, cache=False)
    if request.param == "qdrant":
        s = QdrantStore(QdrantClient(":memory:"), "photos", ef)
    else:
        s = LanceDBStore(lancedb.connect(tmp_path), "photos", ef)
    corpus.fill(s)
    return s


def test_embeddings_match_clip_ef(corpus):
    emb = ClipEmbeddings(ce.ClipEF(corpus.model, cache=False))
    assert isinstance(emb, Embeddings)
    np.testing.assert_allclose(emb.embed_documents(corpus.captions), corpus.text_vectors[:7], atol=1e-6)
    np.testing.assert_allclose(emb.embed_query(TEXTS[0]), corpus.text_vectors[7], atol=1e-6)
    np.testing.assert_allclose(emb.embed_image(corpus.images[:2]), corpus.image_vectors[:2], atol=1e-6)
    assert emb.embed_images(corpus.images[:1]) == emb.embed_image(corpus.images[:1])
    assert isinstance(emb.embed_query("x")[0], float)


def test_embeddings_take_clip_options_or_an_ef(corpus):
    assert ClipEmbeddings(model=corpus.model, batch_size=4).ef.batch_size == 4
    with pytest.raises(ValueError, match="not both"):
        ClipEmbeddings(ce.ClipEF(corpus.model), model=corpus.model)
    with pytest.raises(ce.ImageLoadError, match="item 1"):
        ClipEmbeddings(model=corpus.model).embed_image([corpus.images[0], "/no/such/file.jpg"])


def test_retriever_returns_nearest_images_as_documents(store, corpus):
    docs = ClipRetriever(store=store, k=3).invoke("a photo of a cat")
    ids, scores = corpus.expected("a photo of a cat", "image", 3)
    assert all(isinstance(d, Document) for d in docs)
    assert_ranking([(d.metadata["id"], d.metadata["score"]) for d in docs], ids, scores, "retriever")
    by_id = {i: (str(p), c) for i, p, c in zip(corpus.image_ids, corpus.images, corpus.captions)}
    for d in docs:
        assert (d.metadata["source"], d.page_content) == by_id[d.metadata["id"]]
        assert d.metadata["modality"] == "image" and d.metadata["album"] in ("space", "earth")


def test_retriever_text_modality_and_where(store, corpus):
    docs = ClipRetriever(store=store, modality="text", k=10).invoke("a dog")
    assert {d.page_content for d in docs} == set(corpus.captions + TEXTS)
    space = ClipRetriever(store=store, k=10, where={"album": "space"}).invoke("anything")
    assert sorted(d.metadata["source"] for d in space) == sorted(
        str(p) for p, m in zip(corpus.images, corpus.metadatas) if m["album"] == "space")


def test_uncaptioned_image_document_shows_its_source(corpus):
    store = QdrantStore(QdrantClient(":memory:"), "bare", ce.ClipEF(corpus.model, cache=False))
    store.add_images(corpus.images[:1])
    (doc,) = ClipRetriever(store=store, k=1).invoke("x")
    assert doc.page_content == doc.metadata["source"] == str(corpus.images[0])


def test_retriever_refuses_something_that_is_not_a_store():
    with pytest.raises(TypeError, match="needs a clip-embeddings Store"):
        ClipRetriever(store=object()).invoke("x")
