"""pgvector specifics on a real PostgreSQL (the session's pgserver): the HNSW ranking against
numpy brute force, ``where`` values that look like SQL, records scanned and deleted, the
config side table and the HNSW parameters it keeps.

The shared behaviour (ingest, counts, cross-modal queries, reopen, model mismatch, SIGKILL) is in
the parametrised store tests; this file covers only what is PostgreSQL's own.
"""

from __future__ import annotations

import numpy as np
import pytest

import clip_embeddings as ce
from clip_embeddings.adapters import open_store
from clip_embeddings.adapters.base import Record

psycopg = pytest.importorskip("psycopg")
pytest.importorskip("pgvector")


@pytest.fixture
def ef(tiny_model_path):
    return ce.ClipEF(tiny_model_path, cache=False)


@pytest.fixture
def store(store_location, ef):
    store = open_store("pgvector", store_location("pgvector"), "photos", ef)
    yield store
    store.close()


def random_records(n: int, dim: int, seed: int, modality: str = "image") -> list[Record]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [Record(f"r{i:05d}", modality, vectors[i], f"digest{i}", source=f"/img/{i}.jpg",
                   metadata={"shard": i % 4}) for i in range(n)]


def test_hnsw_ranking_matches_numpy_brute_force(store):
    """3000 random unit vectors (64-d, the hard case for a graph index: no clusters); 50 queries.

    Index: HNSW, vector_cosine_ops, m=16, ef_construction=64, queried with hnsw.ef_search=200.
    Recall@10 must reach 0.99 and every returned score must be the true cosine similarity.
    """
    n, dim = 3000, store.ef.dim
    records = random_records(n, dim, seed=3)
    store._write_batches(records)
    plan = store.client.execute(
        "EXPLAIN SELECT id FROM photos WHERE modality = 'image' ORDER BY embedding <=> %s LIMIT 10",
        [records[0].vector]).fetchall()
    hnsw = [name for name, definition in store.client.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'photos'") if "USING hnsw" in definition]
    assert len(hnsw) == 2  # one partial index per modality
    assert any("Index Scan using" in row[0] and any(n in row[0] for n in hnsw) for row in plan), plan  # really used
    assert store.index_parameters() == {"m": 16, "ef_construction": 64, "ops": "vector_cosine_ops", "ef_search": 200}

    matrix = np.stack([r.vector for r in records])
    queries = np.random.default_rng(4).standard_normal((50, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    found = 0
    for q in queries:
        truth = np.argsort(-(matrix @ q), kind="stable")[:10]
        hits = store.search(q, k=10)
        assert len(hits) == 10
        found += len({h.id for h in hits} & {records[i].id for i in truth})
        by_id = {r.id: r.vector for r in records}
        np.testing.assert_allclose([h.score for h in hits], [float(by_id[h.id] @ q) for h in hits], atol=1e-5)
    recall = found / (10 * len(queries))
    print(f"\npgvector HNSW recall@10 = {recall:.4f} (n={n}, dim={dim}, m=16, ef_construction=64, ef_search=200)")
    assert recall >= 0.99


def test_a_filtered_search_the_index_underfills_still_returns_k(store):
    """HNSW filters after its walk: with 1 in 4 rows matching and ef_search=10, the walk alone
    leaves fewer than k; the store then answers exactly, the numpy top k of the matching rows."""
    records = random_records(800, store.ef.dim, seed=5)
    store._write_batches(records)
    store.ef_search = 10
    q = records[7].vector
    matching = [r for r in records if r.metadata["shard"] == 3]
    truth = sorted(matching, key=lambda r: -float(r.vector @ q))[:40]
    hits = store.search(q, k=40, where={"shard": 3})
    assert [h.id for h in hits] == [r.id for r in truth]


@pytest.mark.parametrize("value", [
    "it's", "x' OR '1'='1", "'; DROP TABLE photos; --", 'quote " and \\ backslash', "$1 %s {} ) AND TRUE",
])
def test_where_values_that_look_like_sql_are_data(store, sample_images, value):
    store.add_images(sample_images[:2], metadatas=[{"album": value}, {"album": "plain"}])
    store.add_texts(["a caption"], metadatas=[{"album": value}])
    hits = store.query("anything", k=5, where={"album": value})
    assert [h.metadata["album"] for h in hits] == [value]  # only the image whose album is exactly that
    assert store.query("anything", k=5, modality="text", where={"album": value})[0].document == "a caption"
    assert store.query("anything", k=5, where={value: value}) == []  # as a key: a metadata name, nothing more
    assert store.query("anything", k=5, where={"source": value}) == []
    assert store.count() == 3  # the table is still there, with every row
    assert store.client.execute("SELECT count(*) FROM photos").fetchone()[0] == 3


def test_where_types_and_lists(store, sample_images):
    store.add_images(sample_images[:4], metadatas=[{"year": 2023, "fav": True}, {"year": "2023"},
                                                   {"year": 2024, "fav": False}, {"tags": ["a", "b"]}])
    sources = {h.source.rsplit("/", 1)[-1] for h in store.query("x", k=9, where={"year": 2023})}
    assert sources == {sample_images[0].name}  # the number 2023, not the string "2023"
    assert len(store.query("x", k=9, where={"year": [2023, 2024]})) == 2
    assert len(store.query("x", k=9, where={"fav": False})) == 1
    assert len(store.query("x", k=9, where={"year": 2023, "fav": True})) == 1
    with pytest.raises(ValueError, match=r"where\['year'\]"):
        store.query("x", where={"year": None})
    with pytest.raises(TypeError, match="dict of exact matches"):
        store.query("x", where="year = 2023")  # no SQL strings: a dict only


def test_records_are_scanned_in_bounded_batches_and_deleted(store, sample_images):
    report = store.add_images(sample_images, captions=[f"caption {i}" for i in range(len(sample_images))],
                              metadatas=[{"n": i} for i in range(len(sample_images))])
    store.add_texts(["on its own"])
    batches = list(store._scan(batch_size=3))
    assert all(len(b) <= 3 for b in batches)
    records = [r for b in batches for r in b]
    assert len(records) == 2 * len(sample_images) + 1 and len({(r.id, r.modality) for r in records}) == len(records)
    image = next(r for r in records if r.id == report.ids[0] and r.modality == "image")
    expected = store.ef.encode_images([sample_images[0]]).embeddings[0]
    np.testing.assert_allclose(image.vector, expected, atol=1e-6)
    assert (image.document, image.metadata, image.source) == ("caption 0", {"n": 0}, str(sample_images[0].resolve()))
    assert all(r.vector is None for b in store._scan("text", with_vectors=False) for r in b)
    assert sum(len(b) for b in store._scan("text")) == len(sample_images) + 1

    store._delete([(report.ids[0], "image"), (report.ids[0], "text"), (report.ids[1], "text"), ("no-such", "image")])
    n = len(sample_images)  # item 0 is gone; item 1 keeps its image; the text on its own stays
    assert (store.count(), store.count("image"), store.count("text")) == (n - 1 + 1, n - 1, n + 1 - 2)
    assert store.get_item(report.ids[0]) is None and store.get_item(report.ids[1]).document == "caption 1"


def test_config_lives_in_the_side_table_and_a_dropped_table_is_gone(store, store_location, ef):
    config, index = store.client.execute(
        "SELECT config, index FROM clip_embeddings_collections WHERE name = 'photos'").fetchone()
    assert (config["fingerprint"], config["dim"]) == (ef.fingerprint, ef.dim)
    assert index == {"m": 16, "ef_construction": 64, "ops": "vector_cosine_ops"}
    store.client.execute("DROP TABLE photos")
    with pytest.raises(ce.CollectionNotFoundError, match="does not exist"):
        open_store("pgvector", store_location("pgvector"), "photos")
    again = open_store("pgvector", store_location("pgvector"), "photos", ef)  # made anew, config row replaced
    assert again.count() == 0
    again.close()


def test_locations_and_names_are_checked(store_location, ef):
    with pytest.raises(ValueError, match="PostgreSQL URL"):
        open_store("pgvector", "localhost/db", "photos", ef)
    with pytest.raises(ValueError, match="1 to 63 bytes"):
        open_store("pgvector", store_location("pgvector"), "x" * 64, ef)
    odd = open_store("pgvector", store_location("pgvector"), 'Photos "2024"; --', ef)  # any name, quoted
    assert odd.add_texts(["a"]).new == 1 and odd.count() == 1
    odd.close()
