"""Compound queries, more_like and min_score on hand-built vectors, in Chroma, Qdrant and LanceDB.

The stored vectors are chosen by the test and written straight through ``_write``; expected
rankings are numpy over those vectors with the formula of ``collection/query.py`` written out
again here: q = normalize(sum w_i e_i).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

import clip_embeddings as ce
from clip_embeddings.adapters import open_store
from clip_embeddings.adapters.base import Record
from clip_embeddings.collection.query import Item, Term, parse_query

KINDS = ["chroma", "qdrant", "lancedb"]
N = 12


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


@pytest.fixture(scope="module")
def ef(tiny_model_path):
    return ce.ClipEF(str(tiny_model_path), cache=False)


@pytest.fixture(scope="module")
def vectors(ef):
    rng = np.random.default_rng(7)
    return np.stack([unit(rng.normal(size=ef.dim)) for _ in range(N)])


IDS = [str(uuid.UUID(int=i + 1)) for i in range(N)]


def hand_built(kind, tmp_path, ef, vectors):
    store = open_store(kind, str(tmp_path / kind), "hand", ef)
    store._write([Record(i, "image", v, f"digest-{n}", source=f"/hand/{n}.png") for n, (i, v) in enumerate(zip(IDS, vectors))])
    return store


def ranked(q: np.ndarray, vectors: np.ndarray, ids=IDS) -> list[tuple[str, float]]:
    scores = vectors @ q
    return [(ids[i], float(scores[i])) for i in np.argsort(-scores, kind="stable")]


def assert_same_ranking(got, expected, what=""):
    assert [h.id for h in got] == [i for i, _ in expected], what
    np.testing.assert_allclose([h.score for h in got], [s for _, s in expected], atol=1e-4, err_msg=what)


@pytest.mark.parametrize("kind", KINDS)
def test_compound_query_is_the_normalised_weighted_sum(kind, tmp_path, ef, vectors, sample_images):
    store = hand_built(kind, tmp_path, ef, vectors)
    terms = [("a rocket", 2.0), Path(sample_images[0]), Item(IDS[3]), (Item(IDS[5]), -0.5), ("people", -1.0)]
    text_rocket, text_people = ef.embed_texts(["a rocket", "people"])
    image = ef.embed_images([sample_images[0]])[0]
    q = unit(2.0 * text_rocket + image + vectors[3] - 0.5 * vectors[5] - text_people)
    assert_same_ranking(store.query(terms, k=N), ranked(q, vectors), kind)
    # The string syntax names the same terms.
    parsed = parse_query(f'2:a rocket + img:{sample_images[0]} + id:{IDS[3]} - 0.5:id:{IDS[5]} - "people"')
    assert_same_ranking(store.query(parsed, k=N), ranked(q, vectors), kind + " parsed")


@pytest.mark.parametrize("kind", KINDS)
def test_a_negative_term_pushes_its_neighbours_down(kind, tmp_path, ef):
    e = np.eye(ef.dim, dtype=np.float32)
    # a is the query's own item; b sits close to a, c a little further, d elsewhere.
    space = np.stack([e[0], unit(e[0] + 0.5 * e[1]), unit(e[0] + 0.7 * e[2]), e[3]])
    store = hand_built(kind, tmp_path, ef, space)
    a, b, c, _ = IDS[:4]
    plain = [h.id for h in store.query([Item(a)], k=4)]
    assert plain[:3] == [a, b, c]
    pushed = store.query([Item(a), (Item(b), -1.0)], k=4)
    assert [h.id for h in pushed][-1] == b  # b was second; its own negative term sends it last
    assert {h.id: h.score for h in pushed}[b] < 0 < {h.id: h.score for h in pushed}[c]


@pytest.mark.parametrize("kind", KINDS)
def test_more_like_never_returns_the_item_itself(kind, tmp_path, ef, vectors):
    store = hand_built(kind, tmp_path, ef, vectors)
    for n in (0, 4, 11):
        expected = [(i, s) for i, s in ranked(vectors[n], vectors) if i != IDS[n]]
        assert_same_ranking(store.more_like(IDS[n], k=N), expected, f"{kind} more_like {n}")
        assert len(store.more_like(IDS[n], k=3)) == 3
    unlike = store.more_like([IDS[0]], unlike=[IDS[1]], k=N)
    expected = [(i, s) for i, s in ranked(unit(vectors[0] - vectors[1]), vectors) if i not in IDS[:2]]
    assert_same_ranking(unlike, expected, f"{kind} more_like unlike")


@pytest.mark.parametrize("kind", KINDS)
def test_min_score_cuts_every_query(kind, tmp_path, ef, vectors):
    store = hand_built(kind, tmp_path, ef, vectors)
    full = ranked(vectors[2], vectors)
    cut = full[3][1]  # keep the query item and the next three
    assert_same_ranking(store.query([Item(IDS[2])], k=N, min_score=cut - 1e-5), full[:4])
    assert_same_ranking(store.more_like(IDS[2], k=N, min_score=cut - 1e-5), full[1:4])
    assert_same_ranking(store.search(vectors[2], k=N, min_score=cut - 1e-5), full[:4])
    text_hits = store.query("a rocket", k=N)
    floor = text_hits[len(text_hits) // 2].score
    assert [h.id for h in store.query("a rocket", k=N, min_score=floor)] == [h.id for h in text_hits if h.score >= floor]


@pytest.mark.parametrize("kind", ["lancedb"])
def test_bad_compound_queries_say_what_is_wrong(kind, tmp_path, ef, vectors):
    store = hand_built(kind, tmp_path, ef, vectors)
    with pytest.raises(ValueError, match="'nope' is not stored"):
        store.query([Item("nope")])
    with pytest.raises(ValueError, match="cancel out"):
        store.query([Item(IDS[0]), (Item(IDS[0]), -1.0)])
    with pytest.raises(ValueError, match="term 1: expected a text"):
        store.query(["a", 3])
    with pytest.raises(ValueError, match="at least one term"):
        store.query([])


def test_the_string_syntax():
    def show(text):
        return [(t.kind, t.value.id if isinstance(t.value, Item) else t.value, t.weight) for t in parse_query(text)]

    assert show('"2:dog" + ./img.jpg - fruit') == [("text", "dog", 2.0), ("image", "./img.jpg", 1.0), ("text", "fruit", -1.0)]
    assert show("a red-haired man - 0.5:a hat") == [("text", "a red-haired man", 1.0), ("text", "a hat", -0.5)]
    assert show("- id:42 + image:https://x.org/a.jpg") == [("item", "42", -1.0), ("image", "https://x.org/a.jpg", 1.0)]
    assert show("'sun + sea' - text:/not/a/path") == [("text", "sun + sea", 1.0), ("text", "/not/a/path", -1.0)]
    assert show("1e-1:the dog's toy + x") == [("text", "the dog's toy", 0.1), ("text", "x", 1.0)]
    assert str(Term("beach", 2.0)) == "2:text:beach"
    with pytest.raises(ValueError, match="term 2 is empty"):
        parse_query("beach + img:")
