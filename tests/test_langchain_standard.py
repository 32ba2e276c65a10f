"""LangChain's own standard tests (``langchain-tests``) for ClipEmbeddings and ClipRetriever.

``EmbeddingsUnitTests`` and ``EmbeddingsIntegrationTests`` run on the tiny random model;
``RetrieversIntegrationTests`` (``k`` in the constructor and per call, ``invoke``/``ainvoke``
return Documents) runs over a real Chroma, Qdrant and LanceDB store filled with the sample photos.
Our own checks of what the per-call options return (the numpy-nearest items) follow the suites.
"""

from __future__ import annotations

import pytest
from langchain_tests.integration_tests import EmbeddingsIntegrationTests, RetrieversIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

import clip_embeddings as ce
from clip_embeddings.adapters import open_store
from clip_embeddings.integrations.langchain import ClipEmbeddings, ClipRetriever
from tests.test_stores_parametrised import Corpus, assert_ranking

# langchain-tests has async tests without a mark of their own (LangChain runs its suites in
# pytest-asyncio's "auto" mode); marking this module, not the whole project, keeps that choice
# local, and the sync tests here need not hear that they are not coroutines.
pytestmark = [pytest.mark.asyncio,
              pytest.mark.filterwarnings("ignore:.*marked with '@pytest.mark.asyncio' but it is not an async")]


@pytest.fixture(autouse=True)
def _tiny_weights(request, tiny_model_path):
    """The suites build their objects from properties, which cannot take fixtures: hand them the path."""
    if request.instance is not None:
        type(request.instance).weights = str(tiny_model_path)


class _TinyClipEmbeddings:
    @property
    def embeddings_class(self) -> type[ClipEmbeddings]:
        return ClipEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model": self.weights, "cache": False}


class TestClipEmbeddingsUnit(_TinyClipEmbeddings, EmbeddingsUnitTests):
    pass


class TestClipEmbeddingsIntegration(_TinyClipEmbeddings, EmbeddingsIntegrationTests):
    pass


_stores: dict[str, object] = {}


@pytest.fixture(scope="module")
def filled_stores(tiny_model_path, sample_images, tmp_path_factory):
    """One filled store per database, shared by the module (filling is the slow part)."""
    corpus = Corpus(tiny_model_path, sample_images)
    for kind in ("chroma", "qdrant", "lancedb"):
        location = ":memory:" if kind == "qdrant" else str(tmp_path_factory.mktemp(f"lc-{kind}"))
        store = open_store(kind, location, "photos", ce.ClipEF(corpus.model, cache=False))
        corpus.fill(store)
        _stores[kind] = store
    yield corpus
    _stores.clear()


class _ClipRetrieverOn:
    kind: str

    @pytest.fixture(autouse=True)
    def _filled(self, filled_stores):
        return filled_stores

    @property
    def retriever_constructor(self) -> type[ClipRetriever]:
        return ClipRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"store": _stores[self.kind], "k": 4}

    @property
    def retriever_query_example(self) -> str:
        return "a photo of a cat"


class TestClipRetrieverChroma(_ClipRetrieverOn, RetrieversIntegrationTests):
    kind = "chroma"


class TestClipRetrieverQdrant(_ClipRetrieverOn, RetrieversIntegrationTests):
    kind = "qdrant"


class TestClipRetrieverLanceDB(_ClipRetrieverOn, RetrieversIntegrationTests):
    kind = "lancedb"


# --- what the per-call options return, checked against numpy -----------------------------------

@pytest.mark.parametrize("kind", ["chroma", "qdrant", "lancedb"])
def test_per_call_k_where_and_modality_return_the_numpy_nearest(kind, filled_stores):
    corpus = filled_stores
    retriever = ClipRetriever(store=_stores[kind], k=5)

    def ranking(docs):
        return [(d.metadata["id"], d.metadata["score"]) for d in docs]

    ids, scores = corpus.expected("a rocket", "image", 1)
    assert_ranking(ranking(retriever.invoke("a rocket", k=1)), ids, scores, f"{kind} k=1")
    ids, scores = corpus.expected("a rocket", "image", 2, album="space")
    assert_ranking(ranking(retriever.invoke("a rocket", k=2, where={"album": "space"})), ids, scores, f"{kind} where")
    ids, scores = corpus.expected("a dog", "text", 3)
    docs = retriever.invoke("a dog", k=3, modality="text")
    assert_ranking(ranking(docs), ids, scores, f"{kind} modality=text")
    assert all(d.metadata["modality"] == "text" for d in docs)
    # The constructor's values are back on the next call: per-call options do not stick.
    assert len(retriever.invoke("a rocket")) == 5


@pytest.mark.parametrize("option, message", [({"k": 0}, "positive integer"), ({"k": "3"}, "positive integer"),
                                             ({"modality": "audio"}, "'image' or 'text'"),
                                             ({"top_k": 3}, "unexpected option(s) top_k")])
def test_bad_per_call_options_say_what_is_wrong(option, message, filled_stores):
    retriever = ClipRetriever(store=_stores["qdrant"])
    with pytest.raises((TypeError, ValueError)) as info:
        retriever.invoke("x", **option)
    assert message in str(info.value)
