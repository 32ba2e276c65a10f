"""QdrantStore specifics: one point per item, named vectors, config in collection metadata, filters."""

from __future__ import annotations

import numpy as np
import pytest
from qdrant_client import QdrantClient
from qdrant_client import models as qmodels

import clip_embeddings as ce
from clip_embeddings.adapters.base import item_id, text_digest
from clip_embeddings.adapters.qdrant import CONFIG_KEY, QdrantStore, point_id, to_filter
from tests.test_stores_parametrised import TEXTS, Corpus, assert_ranking


@pytest.fixture(scope="module")
def corpus(tiny_model_path, sample_images) -> Corpus:
    return Corpus(tiny_model_path, sample_images)


@pytest.fixture
def memory_store(corpus) -> QdrantStore:
    store = QdrantStore(QdrantClient(":memory:"), "photos", ce.ClipEF(corpus.model, cache=False))
    corpus.fill(store)
    return store


def vectors_of(store: QdrantStore, item: str) -> dict[str, list[float]]:
    (point,) = store.client.retrieve(store.name, [point_id(item)], with_vectors=True)
    return point.vector


def test_memory_client_queries_each_named_vector(memory_store, corpus):
    assert memory_store.count() == len(corpus.images) + len(TEXTS)  # an image and its caption share a point
    hits = memory_store.query("a cup of coffee", k=3)
    ids, scores = corpus.expected("a cup of coffee", "image", 3)
    assert_ranking([(h.id, h.score) for h in hits], ids, scores, "text->image")
    hits = memory_store.query(image=corpus.images[6], k=4, modality="text")
    ids, scores = corpus.expected(6, "text", 4)
    assert_ranking([(h.id, h.score) for h in hits], ids, scores, "image->text")


def test_points_hold_image_and_caption_vectors_and_texts_only_a_text_vector(memory_store, corpus):
    image_point = vectors_of(memory_store, corpus.image_ids[0])
    assert set(image_point) == {"image", "text"}
    np.testing.assert_allclose(image_point["image"], corpus.image_vectors[0], atol=1e-6)
    np.testing.assert_allclose(image_point["text"], corpus.text_vectors[0], atol=1e-6)
    assert set(vectors_of(memory_store, corpus.text_ids[0])) == {"text"}
    # Text-only points never show up in image searches.
    assert not {h.id for h in memory_store.query("a dog", k=50)} & set(corpus.text_ids)


def test_caption_added_later_keeps_the_image_vector(corpus):
    store = QdrantStore(QdrantClient(":memory:"), "photos", ce.ClipEF(corpus.model, cache=False))
    report = store.add_images(corpus.images[:2])
    assert set(vectors_of(store, report.ids[0])) == {"image"}
    store.add_texts(["a tabby cat, captioned later"], ids=[report.ids[0]])
    point = vectors_of(store, report.ids[0])
    assert set(point) == {"image", "text"}
    np.testing.assert_allclose(point["image"], corpus.image_vectors[0], atol=1e-6)
    hit = store.query(image=corpus.images[0], k=1)[0]
    assert (hit.id, hit.document) == (report.ids[0], "a tabby cat, captioned later")
    assert store.count() == 2


def test_re_adding_an_image_without_caption_keeps_caption_and_metadata(memory_store, corpus):
    memory_store.add_images(corpus.images[:1])
    hit = memory_store.query(image=corpus.images[0], k=1)[0]
    assert (hit.document, hit.metadata) == (corpus.captions[0], corpus.metadatas[0])
    assert set(vectors_of(memory_store, corpus.image_ids[0])) == {"image", "text"}


def test_collection_metadata_holds_the_config_and_rebuilds_the_function(memory_store, corpus):
    stored = memory_store.client.get_collection("photos").config.metadata[CONFIG_KEY]
    assert (stored["model"], stored["fingerprint"], stored["dim"]) == (corpus.model, corpus.ef.fingerprint, 64)
    reopened = QdrantStore(memory_store.client, "photos")  # ef=None
    assert reopened.ef.expected_fingerprint == corpus.ef.fingerprint
    assert [h.id for h in reopened.query("a rocket", k=3)] == [h.id for h in memory_store.query("a rocket", k=3)]


def test_path_client_persists_and_checks_the_model(tmp_path, corpus, other_tiny_model_path):
    client = QdrantClient(path=str(tmp_path / "q"))
    QdrantStore(client, "photos", ce.ClipEF(corpus.model, cache=False)).add_images(corpus.images[:3])
    client.close()
    client = QdrantClient(path=str(tmp_path / "q"))
    assert QdrantStore(client, "photos").count() == 3
    with pytest.raises(ce.ModelMismatchError, match="Qdrant collection 'photos'"):
        QdrantStore(client, "photos", ce.ClipEF(other_tiny_model_path, cache=False))
    client.close()


def test_where_dicts_and_native_filters(memory_store, corpus):
    space = {h.id for h in memory_store.query("x", k=10, where={"album": "space"})}
    assert space == {i for i, m in zip(corpus.image_ids, corpus.metadatas) if m["album"] == "space"}
    native = qmodels.Filter(must_not=[qmodels.FieldCondition(key="album", match=qmodels.MatchValue(value="space"))])
    assert {h.id for h in memory_store.query("x", k=10, where=native)} == set(corpus.image_ids) - space
    assert len(memory_store.query("x", k=10, where={"album": ["space", "earth"]})) == len(corpus.images)
    with pytest.raises(ValueError, match="where\\['year'\\]"):
        to_filter({"year": 2.5})


def test_user_ids_that_are_not_uuids_round_trip(memory_store):
    memory_store.add_texts(["a note about cats"], ids=["note-1"], metadatas=[{"kind": "note"}])
    hit = memory_store.query("a note about cats", k=1, modality="text", where={"kind": "note"})[0]
    assert (hit.id, hit.document, hit.metadata) == ("note-1", "a note about cats", {"kind": "note"})


def test_reserved_metadata_keys_are_refused(memory_store):
    with pytest.raises(ValueError, match=r"\['source'\] are reserved"):
        memory_store.add_texts(["x"], metadatas=[{"source": "mine"}])


def test_idempotent_text_ids(memory_store):
    before = memory_store.count()
    report = memory_store.add_texts(TEXTS)
    assert report.ids == [item_id("text", text_digest(t)) for t in TEXTS]
    assert memory_store.count() == before


def test_clip_vectors_with_qdrant_clients_own_current_api(corpus):
    """ClipEF as users of qdrant-client write it: create_collection, upsert, query_points, query_batch_points."""
    client = QdrantClient(":memory:")
    client.create_collection("own", vectors_config={
        "image": qmodels.VectorParams(size=64, distance=qmodels.Distance.COSINE)})
    client.upsert("own", points=[
        qmodels.PointStruct(id=i, vector={"image": v.tolist()}, payload={"path": p, **m})
        for i, (v, p, m) in enumerate(zip(corpus.image_vectors, corpus.images, corpus.metadatas))])
    query = corpus.ef.embed_texts(["a photo of a cat"])[0]
    ids, scores = corpus.expected("a photo of a cat", "image", 3)
    got = client.query_points("own", query=query.tolist(), using="image", limit=3).points
    assert_ranking([(corpus.image_ids[p.id], p.score) for p in got], ids, scores, "query_points")

    space = qmodels.Filter(must=[qmodels.FieldCondition(key="album", match=qmodels.MatchValue(value="space"))])
    requests = [qmodels.QueryRequest(query=query.tolist(), using="image", limit=2, filter=space, with_payload=True),
                qmodels.QueryRequest(query=corpus.image_vectors[2].tolist(), using="image", limit=3)]
    by_filter, by_image = client.query_batch_points("own", requests=requests)
    ids, scores = corpus.expected("a photo of a cat", "image", 2, album="space")
    assert_ranking([(corpus.image_ids[p.id], p.score) for p in by_filter.points], ids, scores, "filtered")
    assert all(p.payload["album"] == "space" for p in by_filter.points)
    ids, scores = corpus.expected(2, "image", 3)
    assert_ranking([(corpus.image_ids[p.id], p.score) for p in by_image.points], ids, scores, "image query")
