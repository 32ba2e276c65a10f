"""``POST /query`` on a real ``clip-embeddings serve`` (uvicorn on loopback, a real Chroma collection).

The collection's vectors are built by hand and written straight through ``_write``; the expected
rankings are numpy over those vectors, with text and image vectors from a local ``ClipEF`` on the
same weights and the formula written out again here: q = normalize(sum w_i e_i). Nothing expected
is computed by the server under test.
"""

from __future__ import annotations

import base64
import uuid

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

import clip_embeddings as ce  # noqa: E402
from clip_embeddings.adapters import open_store  # noqa: E402
from clip_embeddings.adapters.base import Record  # noqa: E402
from clip_embeddings.apps.server import ServeLimits, create_app  # noqa: E402
from tests.serving import running  # noqa: E402

N = 12
IDS = [str(uuid.UUID(int=i + 1)) for i in range(N)]
LIMITS = ServeLimits(max_terms=6, max_query_chars=300, max_prompt_chars=100, max_urls=2, max_items=8)


def unit(v) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return (v / np.linalg.norm(v)).astype(np.float32)


@pytest.fixture(scope="module")
def local(tiny_model_path):
    return ce.ClipEF(tiny_model_path, device="cpu", dtype="fp32", cache=False)


@pytest.fixture(scope="module")
def space(local):
    """The stored vectors: random ones, two close to "a beach" and two close to "a beach" + "people"."""
    rng = np.random.default_rng(11)
    beach, people = local.embed_texts(["a beach", "people"])
    rows = [unit(rng.normal(size=local.dim)) for _ in range(N - 4)]
    rows += [unit(beach + 0.2 * rows[0]), unit(beach + 0.3 * rows[1])]  # beaches
    rows += [unit(0.6 * beach + people), unit(0.7 * beach + people)]  # beaches with people
    return np.stack(rows)


@pytest.fixture(scope="module")
def served(tmp_path_factory, local, space):
    store = open_store("chroma", str(tmp_path_factory.mktemp("query-db")), "hand", local)
    store._write([Record(i, "image", v, f"digest-{n}") for n, (i, v) in enumerate(zip(IDS, space, strict=True))])
    app = create_app(local, store, LIMITS)
    with running(app) as url:
        yield url, app.state.service


@pytest.fixture
def client(served, no_proxy):
    with httpx.Client(base_url=served[0], timeout=60, trust_env=False) as c:
        yield c


def ranked(q, vectors, ids=IDS, exclude=()) -> list[tuple[str, float]]:
    scores = vectors @ q
    return [(ids[i], float(scores[i])) for i in np.argsort(-scores, kind="stable") if ids[i] not in exclude]


def assert_hits(response, expected, what=""):
    assert response.status_code == 200, response.text
    hits = response.json()["hits"]
    assert [h["id"] for h in hits] == [i for i, _ in expected], what
    np.testing.assert_allclose([h["score"] for h in hits], [s for _, s in expected], atol=1e-4, err_msg=what)


def photo(sample_images) -> bytes:
    return sample_images[0].read_bytes()


def test_a_compound_query_is_the_normalised_weighted_sum(client, local, space, sample_images):
    data = photo(sample_images)
    rocket, people = local.embed_texts(["a rocket", "people"])
    image = local.embed_images([data])[0]
    q = unit(2.0 * rocket + image + space[3] - 0.5 * space[5] - people)
    expected = ranked(q, space)
    terms = [{"text": "a rocket", "weight": 2}, {"image": 0}, {"item": IDS[3]}, {"item": IDS[5], "weight": -0.5},
             {"text": "people", "weight": -1}]
    images = [{"base64": base64.b64encode(data).decode()}]
    answer = client.post("/query", json={"terms": terms, "images": images, "k": N})
    assert_hits(answer, expected, "terms")
    assert [(t["kind"], t["weight"]) for t in answer.json()["terms"]] == [
        ("text", 2.0), ("image", 1.0), ("item", 1.0), ("item", -0.5), ("text", -1.0)]
    # The string syntax, with the upload named by its file name, in a multipart form.
    query = f'2:a rocket + img:beach.jpg + id:{IDS[3]} - 0.5:id:{IDS[5]} - "people"'
    assert_hits(client.post("/query", data={"query": query, "k": str(N)}, files=[("image", ("beach.jpg", data))]),
                expected, "query string")


def test_a_negative_term_pushes_its_neighbours_down(client, local, space):
    plain = client.post("/query", json={"query": "a beach", "k": N}).json()["hits"]
    crowded = {IDS[N - 2], IDS[N - 1]}
    assert crowded <= {h["id"] for h in plain[:4]}  # beaches with people rank near the top...
    answer = client.post("/query", json={"query": "a beach - people", "k": N})
    beach, people = local.embed_texts(["a beach", "people"])
    assert_hits(answer, ranked(unit(beach - people), space))
    pushed = answer.json()["hits"]
    assert {h["id"] for h in pushed[-2:]} == crowded  # ...and last once people are subtracted
    assert all(h["score"] < 0 for h in pushed if h["id"] in crowded)


def test_more_like_never_returns_the_items_and_min_score_cuts(client, space):
    for n in (0, 5, 11):
        expected = ranked(space[n], space, exclude={IDS[n]})
        assert_hits(client.post("/query", json={"more_like": IDS[n], "k": N}), expected, f"more_like {n}")
    expected = ranked(unit(space[0] - space[1]), space, exclude=set(IDS[:2]))
    assert_hits(client.post("/query", data={"more_like": IDS[0], "unlike": IDS[1], "k": str(N)}), expected, "unlike")
    full = ranked(space[2], space, exclude={IDS[2]})
    cut = full[3][1] - 1e-5
    assert_hits(client.post("/query", json={"more_like": [IDS[2]], "k": N, "min_score": cut}), full[:4], "min_score")
    text = client.post("/search", json={"text": "a beach", "k": N}).json()["hits"]
    floor = text[len(text) // 2]["score"]
    cut_text = client.post("/search", json={"text": "a beach", "k": N, "min_score": floor}).json()["hits"]
    assert [h["id"] for h in cut_text] == [h["id"] for h in text if h["score"] >= floor]


@pytest.mark.parametrize("body", [
    {"query": "img:/etc/passwd"}, {"query": "a cat + /etc/hostname"}, {"query": "./photo.jpg"},
    {"query": "~/.ssh/id_rsa"}, {"query": "img:file:///etc/passwd"}, {"terms": [{"image": "/etc/passwd"}]},
    {"terms": [{"url": "/etc/passwd"}]}, {"terms": [{"url": "file:///etc/passwd"}]}, {"terms": [{"image": 0}]},
])
def test_a_path_term_is_refused_before_anything_is_read(client, served, body, sample_images):
    batcher = served[1].batcher
    before = (batcher.stats.jobs, batcher.stats.items)
    answer = client.post("/query", json=body)
    assert answer.status_code == 400, answer.text
    assert "never opens paths" in answer.json()["detail"] or "no uploaded image" in answer.json()["detail"]
    assert (batcher.stats.jobs, batcher.stats.items) == before  # nothing was queued for the model


def test_a_path_on_the_servers_disk_is_refused_even_when_it_exists(client, sample_images):
    path = str(sample_images[0].resolve())
    for body in ({"query": f"img:{path}"}, {"terms": [{"image": path}]}):
        answer = client.post("/query", json=body)
        assert answer.status_code == 400, answer.text
        assert str(sample_images[0].parent) not in answer.text  # the server's folder is not shown either


@pytest.mark.parametrize("body, status, field", [
    ({"terms": [{"text": f"t{i}"} for i in range(7)]}, 413, "terms"),
    ({"query": " + ".join(f"t{i}" for i in range(7))}, 413, "query"),
    ({"query": "x" * 301}, 413, "query"),
    ({"terms": [{"text": "x" * 101}]}, 413, "terms[0]"),
    ({"query": "a + " + "y" * 101}, 413, "query term 2"),
    ({"terms": [{"text": "a", "weight": 1e9}]}, 400, "terms[0].weight"),
    ({"terms": [{"text": "a", "weight": True}]}, 400, "terms[0].weight"),
    ({"query": "1e999:a"}, 400, "query term 1"),
    ({"terms": [{"url": f"https://example.com/{i}.jpg"} for i in range(3)]}, 413, "images"),
    ({"more_like": [IDS[0]] * 7}, 413, "more_like"),
    ({"more_like": "../../etc"}, 400, "more_like[0]"),
    ({"terms": [{"text": "a", "item": IDS[0]}]}, 400, "terms[0]"),
    ({"query": "a", "more_like": IDS[0]}, 400, "exactly one of"),
    ({"query": "a", "unlike": [IDS[0]]}, 400, "unlike"),
    ({"query": "a", "min_score": 2}, 400, "min_score"),
    ({"query": "a", "min_score": "high"}, 400, "min_score"),
])
def test_the_budget_is_checked_before_anything_is_queued(client, served, body, status, field):
    batcher = served[1].batcher
    before = (batcher.stats.jobs, batcher.stats.items)
    answer = client.post("/query", json=body)
    assert answer.status_code == status, answer.text
    assert answer.json()["detail"].startswith(field) or field in answer.json()["detail"], answer.text
    assert (batcher.stats.jobs, batcher.stats.items) == before


def test_missing_items_and_terms_that_cancel_are_4xx(client):
    answer = client.post("/query", json={"terms": [{"text": "a"}, {"item": "f" * 32}]})
    assert answer.status_code == 404 and answer.json()["detail"].startswith("terms[1]"), answer.text
    answer = client.post("/query", json={"terms": [{"item": IDS[0]}, {"item": IDS[0], "weight": -1}]})
    assert answer.status_code == 400 and "cancel out" in answer.text, answer.text
