"""Tags at ingest: stored tags equal those computed here from the model's own vectors, and filter.

The expected tags are computed in this file from the embedding function's raw outputs (prompt
ensemble means, the model's logit scale, a softmax), never by the Tagger under test. The
vocabulary is built from the tiny model's own nearest labels, so every label tags something.
"""

from __future__ import annotations

import numpy as np
import pytest

import clip_embeddings as ce
from clip_embeddings.adapters import open_store
from clip_embeddings.adapters.base import item_id
from clip_embeddings.collection.records import tags_of
from clip_embeddings.tasks.tags import Tagger, read_vocabulary
from clip_embeddings.tasks.zeroshot import DEFAULT_TEMPLATES

KINDS = ["chroma", "qdrant", "lancedb"]
CANDIDATES = ["a cat", "coffee", "a rocket", "galaxies", "an astronaut", "a man", "an eye", "the sea",
              "a mountain", "a city", "a dog", "food", "snow", "a car"]
TOP_K = 3


def prototypes(ef, labels):
    texts = [t.format(label) for label in labels for t in DEFAULT_TEMPLATES]
    mean = ef.embed_texts(texts).reshape(len(labels), len(DEFAULT_TEMPLATES), -1).astype(np.float64).mean(axis=1)
    return mean / np.linalg.norm(mean, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def expected(tiny_model_path, sample_images):
    """(ef, vocabulary, threshold, {item id: expected tags}) from the model's own vectors."""
    ef = ce.ClipEF(str(tiny_model_path), cache=False)
    encoded = ef.encode_images(sample_images)
    images = encoded.embeddings.astype(np.float64)
    nearest = np.argmax(images @ prototypes(ef, CANDIDATES).T, axis=1)
    vocabulary = sorted({CANDIDATES[i] for i in nearest}) + ["snow"]  # "snow" may tag nothing
    vocabulary = list(dict.fromkeys(vocabulary))
    scale = float(ef.loaded_model().model.logit_scale.detach().exp())
    logits = scale * images @ prototypes(ef, vocabulary).T
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    threshold = float(np.sort(probs, axis=1)[:, -2].mean())  # between the typical first and second
    tags = {}
    for digest, row in zip(encoded.digests, probs):
        best = np.argsort(-row, kind="stable")[:TOP_K]
        tags[item_id("image", digest)] = sorted(vocabulary[j] for j in best if row[j] >= threshold)
    assert any(len(t) > 1 for t in tags.values()) or len({tuple(t) for t in tags.values()}) > 1
    return ef, vocabulary, threshold, tags


@pytest.mark.parametrize("kind", KINDS)
def test_stored_tags_are_the_zero_shot_labels_and_filter(kind, tmp_path, expected, sample_images):
    ef, vocabulary, threshold, tags = expected
    store = open_store(kind, str(tmp_path / kind), "photos", ef)
    store.index_folder(sample_images[0].parent, progress=False,
                       tags=Tagger(ef, vocabulary, threshold=threshold, top_k=TOP_K))
    stored = {r.id: tags_of(r.metadata) for r in store.records("image", with_vectors=False)}
    assert stored == tags
    for label in vocabulary:
        having = {item for item, t in tags.items() if label in t}
        assert {h.id for h in store.query("anything", k=20, where={"tag": label})} == having, label
        assert {h.id for h in store.query(image=sample_images[0], k=20, where={"tag": [label]})} == having, label
    both = [label for label in vocabulary if any(label in t for t in tags.values())][:2]
    assert {h.id for h in store.query("x", k=20, where={"tag": both})} == {i for i, t in tags.items() if set(both) <= set(t)}


def test_vocabulary_files_and_bad_settings(tmp_path, expected):
    ef = expected[0]
    vocabulary = tmp_path / "vocabulary.txt"
    vocabulary.write_text("# places\nbeach\n\nmountain\nbeach\n")
    assert read_vocabulary(vocabulary) == ["beach", "mountain"]
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match="no labels"):
        read_vocabulary(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match="between 0 and 1"):
        Tagger(ef, ["a"], threshold=2)
    tagger = Tagger(ef, ["a cat", "a dog"], threshold=0.0, top_k=1)
    assert [len(t) for t in tagger.tag_vectors(ef.embed_texts(["x", "y"]))] == [1, 1]
