"""LlamaIndex: the multimodal guide's flow with the tiny model, text that never reaches another
provider, persistence across processes with the model checked, and a retriever over our stores.

Expected neighbours come from numpy over ``ClipEF`` outputs. LlamaIndex publishes no standard
test suite for embedding integrations (unlike ``langchain-tests``); its integration template
checks that the class derives from ``BaseEmbedding``, which is kept here beside what the base
class promises (batches of ``embed_batch_size``, async variants equal to the sync ones).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import textwrap
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest

import clip_embeddings as ce

pytest.importorskip("llama_index.core")
from llama_index.core import Document, Settings, VectorStoreIndex  # noqa: E402
from llama_index.core.embeddings import BaseEmbedding, MultiModalEmbedding  # noqa: E402
from llama_index.core.indices.multi_modal import MultiModalVectorStoreIndex  # noqa: E402
from llama_index.core.schema import QueryBundle  # noqa: E402

from clip_embeddings.integrations.llamaindex import (  # noqa: E402
    ClipEmbedding,
    ClipStoreRetriever,
    folder_documents,
    load_index,
    multimodal_index,
    persist_index,
)

ROOT = Path(__file__).resolve().parent.parent


class NeverCalled(BaseEmbedding):
    """Stands in for LlamaIndex's default provider: any call fails the test."""

    def _get_query_embedding(self, query):
        raise AssertionError(f"text went to Settings.embed_model: {query!r}")

    _get_text_embedding = _aget_query_embedding = _aget_text_embedding = _get_query_embedding


@pytest.fixture
def default_provider_trap(monkeypatch):
    """No OpenAI key, and Settings.embed_model (LlamaIndex's fallback) raises if anything uses it."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setattr(Settings, "_embed_model", NeverCalled(model_name="never"))


@pytest.fixture
def clip(tiny_model_path):
    return ClipEmbedding(ce.ClipEF(tiny_model_path, cache=False))


@pytest.fixture
def photo_folder(tmp_path, sample_images):
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in sample_images:
        shutil.copy(path, folder)
    shutil.copy(sample_images[0].parent / "captions.json", folder)
    return folder


def top(vectors: np.ndarray, names: list[str], query: np.ndarray, k: int) -> dict[str, float]:
    scores = vectors @ query
    return {names[i]: float(scores[i]) for i in np.argsort(-scores)[:k]}


def assert_same_hits(got: dict[str, float], expected: dict[str, float]) -> None:
    """Same scores as numpy; names may differ only inside ties of the tiny random model."""
    np.testing.assert_allclose(sorted(got.values()), sorted(expected.values()), atol=1e-4)
    assert len(set(got) ^ set(expected)) <= 2 * sum(
        1 for a in expected.values() for b in expected.values() if a < b and b - a < 1e-4)


def named(nodes) -> dict[str, float]:
    return {Path(n.node.metadata["file_path"]).name: float(n.score) for n in nodes}


def test_the_multimodal_guide_flow_with_persist_and_reload_in_a_new_process(
        clip, photo_folder, tmp_path, default_provider_trap):
    documents = folder_documents(photo_folder)
    index = multimodal_index(documents, clip)
    retriever = index.as_retriever(similarity_top_k=3, image_similarity_top_k=3)

    ef = clip.ef
    images = sorted(photo_folder.glob("*.jpg"))
    names = [p.name for p in images]
    image_vectors = ef.embed_images(images)
    captions = json.loads((photo_folder / "captions.json").read_text())
    caption_vectors = ef.embed_texts([captions[n] for n in names])

    query = ef.embed_texts(["a photo of a cat"])[0]
    assert_same_hits(named(retriever.text_to_image_retrieve("a photo of a cat")), top(image_vectors, names, query, 3))
    by_image = named(retriever.image_to_image_retrieve(str(images[2])))
    assert by_image[names[2]] == pytest.approx(1.0, abs=1e-4)
    assert_same_hits(by_image, top(image_vectors, names, image_vectors[2], 3))
    # The text store holds CLIP's caption vectors: text->text scores are CLIP similarities.
    assert_same_hits(named(retriever.text_retrieve("a photo of a cat")), top(caption_vectors, names, query, 3))

    persist_index(index, tmp_path / "storage")
    script = textwrap.dedent("""
        import json, sys
        from clip_embeddings.integrations.llamaindex import load_index
        index = load_index(sys.argv[1])  # no model given: rebuilt from the stored config
        r = index.as_retriever(similarity_top_k=3, image_similarity_top_k=3)
        named = lambda nodes: sorted((n.node.metadata["file_path"], round(float(n.score), 4)) for n in nodes)
        print(json.dumps({"model": str(index.image_embed_model.ef.model_name),
                          "text->image": named(r.text_to_image_retrieve("a photo of a cat")),
                          "image->image": named(r.image_to_image_retrieve(sys.argv[2])),
                          "text": named(r.text_retrieve("a photo of a cat"))}))
    """)
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "storage"), str(images[2])],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])

    def here(nodes):
        return [list(x) for x in sorted((n.node.metadata["file_path"], round(float(n.score), 4)) for n in nodes)]

    assert got == {"model": str(ef.model_name),
                   "text->image": here(retriever.text_to_image_retrieve("a photo of a cat")),
                   "image->image": here(retriever.image_to_image_retrieve(str(images[2]))),
                   "text": here(retriever.text_retrieve("a photo of a cat"))}


def test_a_reload_with_other_weights_is_refused_with_the_fix(clip, photo_folder, tmp_path, other_tiny_model_path,
                                                             default_provider_trap):
    persist_index(multimodal_index(folder_documents(photo_folder), clip), tmp_path / "storage")
    other = ClipEmbedding(ce.ClipEF(other_tiny_model_path, cache=False))
    with pytest.raises(ce.ModelMismatchError, match=r"fingerprint.*load_index\("):
        load_index(tmp_path / "storage", other)
    (tmp_path / "storage" / "clip_embeddings.json").unlink()
    with pytest.raises(FileNotFoundError, match="persist_index"):
        load_index(tmp_path / "storage")


def test_other_text_models_are_refused(clip, photo_folder, default_provider_trap):
    with pytest.raises(ValueError, match="embed_model= would embed with another model"):
        multimodal_index(folder_documents(photo_folder), clip, embed_model=NeverCalled(model_name="x"))
    # LlamaIndex's own constructor, without our helper, falls back to Settings.embed_model for text:
    # the trap this integration exists to avoid.
    with pytest.raises(AssertionError, match="text went to Settings.embed_model"):
        MultiModalVectorStoreIndex.from_documents(folder_documents(photo_folder), image_embed_model=clip)


def test_plain_vector_store_index_ranks_texts_like_numpy_and_reloads(clip, tmp_path, default_provider_trap):
    texts = ["a red car", "a dog in the park", "the moon at night", "a bowl of soup", "an old map"]
    index = VectorStoreIndex.from_documents([Document(text=t, id_=f"t{i}") for i, t in enumerate(texts)],
                                            embed_model=clip)
    vectors = clip.ef.embed_texts(texts)
    query = clip.ef.embed_texts(["a car"])[0]
    got = {n.node.text: n.score for n in index.as_retriever(similarity_top_k=3).retrieve("a car")}
    assert_same_hits(got, top(vectors, texts, query, 3))
    persist_index(index, tmp_path / "plain")
    again = load_index(tmp_path / "plain", clip)
    assert {n.node.text: round(n.score, 5) for n in again.as_retriever(similarity_top_k=3).retrieve("a car")} == \
        {k: round(v, 5) for k, v in got.items()}


def test_the_embedding_class_keeps_llamaindex_promises(clip, sample_images, monkeypatch):
    # LlamaIndex's integration template test: the class is a BaseEmbedding (and multimodal).
    assert BaseEmbedding.__name__ in [b.__name__ for b in ClipEmbedding.__mro__]
    assert isinstance(clip, MultiModalEmbedding) and clip.class_name() == "ClipEmbedding"
    texts = [f"text number {i}" for i in range(5)]
    expected = clip.ef.embed_texts(texts)
    calls = []
    embed_texts = clip.ef.embed_texts
    monkeypatch.setattr(clip.ef, "embed_texts", lambda batch: calls.append(len(batch)) or embed_texts(batch))
    clip.embed_batch_size = 2
    np.testing.assert_allclose(clip.get_text_embedding_batch(texts), expected, atol=1e-6)
    assert calls == [2, 2, 1]  # batches of embed_batch_size, one model call each
    np.testing.assert_allclose(asyncio.run(clip.aget_text_embedding_batch(texts)), expected, atol=1e-6)
    np.testing.assert_allclose(clip.get_query_embedding(texts[0]), expected[0], atol=1e-6)
    np.testing.assert_allclose(asyncio.run(clip.aget_query_embedding(texts[0])), expected[0], atol=1e-6)
    paths = [str(p) for p in sample_images[:3]]
    images = clip.ef.embed_images(paths)
    np.testing.assert_allclose(clip.get_image_embedding_batch(paths), images, atol=1e-6)
    np.testing.assert_allclose(asyncio.run(clip.aget_image_embedding_batch(paths)), images, atol=1e-6)
    np.testing.assert_allclose(clip.get_image_embedding(BytesIO(sample_images[1].read_bytes())), images[1], atol=1e-5)
    with pytest.raises(ce.ImageLoadError, match="missing.jpg"):
        clip.get_image_embedding("missing.jpg")


def test_store_retriever_reads_a_pgvector_store(clip, store_location, sample_images):
    from clip_embeddings.adapters import open_store

    store = open_store("pgvector", store_location("pgvector"), "photos", clip.ef)
    store.add_images(sample_images, captions=[f"caption {p.stem}" for p in sample_images])
    retriever = ClipStoreRetriever(store, k=3)
    nodes = retriever.retrieve("a photo of a cat")
    assert [(n.node.node_id, n.score) for n in nodes] == [(h.id, h.score) for h in store.query("a photo of a cat", k=3)]
    assert nodes[0].node.image_path == store.get_item(nodes[0].node.node_id).source
    by_image = ClipStoreRetriever(store, k=2, modality="text").retrieve(QueryBundle("", image_path=str(sample_images[0])))
    expected = store.query(image=sample_images[0], k=2, modality="text")
    assert [(n.node.text, n.score) for n in by_image] == [(h.document, h.score) for h in expected]
    assert by_image[0].node.text.startswith("caption ")
    store.close()
