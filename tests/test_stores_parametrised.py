"""One scenario against every store kind: the same items, queries and answers everywhere.

Expected neighbours come from numpy over ``ClipEF`` outputs, never from a store. The tiny random
model makes many images near-identical, so rankings are compared exactly except inside groups of
scores closer than ``TIE`` (which any database may order either way).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import clip_embeddings as ce
from clip_embeddings.adapters import open_store
from clip_embeddings.adapters.base import Store, item_id, text_digest
from clip_embeddings.inputs.names import path_of

KINDS = ["chroma", "qdrant", "lancedb", "pgvector", "milvus"]
TEXTS = ["a dog", "a red car", "the moon"]
SPACE = {"astronaut.jpg", "galaxies.jpg", "rocket.jpg"}
TIE = 1e-4
ROOT = Path(__file__).resolve().parent.parent


class Corpus:
    """The sample photos with captions and album metadata, a few texts, and their embeddings."""

    def __init__(self, model: Path, images: list[Path]):
        self.model = str(model)
        self.images = [str(p) for p in images]
        captions = json.loads((images[0].parent / "captions.json").read_text())
        self.captions = [captions[p.name] for p in images]
        self.metadatas = [{"album": "space" if p.name in SPACE else "earth"} for p in images]
        ef = ce.ClipEF(self.model, cache=False)
        encoded = ef.encode_images(self.images)
        self.image_vectors = encoded.embeddings
        self.image_ids = [item_id("image", d) for d in encoded.digests]
        self.text_ids = [item_id("text", text_digest(t)) for t in TEXTS]
        # Every vector of modality "text": the captions (on their image items), then the texts.
        self.text_vectors = ef.embed_texts(self.captions + TEXTS)
        self.all_text_ids = self.image_ids + self.text_ids
        self.ef = ef

    def fill(self, store: Store) -> None:
        store.add_images(self.images, captions=self.captions, metadatas=self.metadatas)
        store.add_texts(TEXTS)

    def expected(self, query: str | int | np.ndarray, modality: str, k: int,
                 album: str | None = None) -> tuple[list[str], np.ndarray]:
        """Ids and scores of the ``k`` nearest items, by numpy. ``query``: a text, an image's index or a vector."""
        if isinstance(query, np.ndarray):
            q = query
        else:
            q = self.ef.embed_texts([query])[0] if isinstance(query, str) else self.image_vectors[query]
        vectors, ids = (self.image_vectors, self.image_ids) if modality == "image" else (self.text_vectors, self.all_text_ids)
        keep = np.arange(len(ids))
        if album is not None:
            keep = np.array([i for i, m in enumerate(self.metadatas) if m["album"] == album])
        scores = vectors[keep] @ q
        order = np.argsort(-scores, kind="stable")[:k]
        return [ids[keep[i]] for i in order], scores[order]


QUERIES = [  # (name, query: text or image index, modality, k, album filter)
    ("text->image", "a photo of a cat", "image", 3, None),
    ("image->image", 2, "image", 3, None),
    ("image->text", 5, "text", 4, None),
    ("text->image where", "a rocket", "image", 2, "space"),
]


def run_queries(store: Store, corpus: Corpus) -> dict[str, list[tuple[str, float]]]:
    out = {}
    for name, query, modality, k, album in QUERIES:
        where = {"album": album} if album else None
        if isinstance(query, str):
            hits = store.query(query, k=k, modality=modality, where=where)
        else:
            hits = store.query(image=corpus.images[query], k=k, modality=modality, where=where)
        out[name] = [(h.id, h.score) for h in hits]
    return out


def assert_ranking(got: list[tuple[str, float]], ids: list[str], scores: np.ndarray, what: str) -> None:
    """Same ids in the same order, except within groups of (near-)tied expected scores."""
    assert len(got) == len(ids), f"{what}: {len(got)} hits, expected {len(ids)}"
    np.testing.assert_allclose([s for _, s in got], scores, atol=1e-4, err_msg=what)
    start = 0
    for end in range(1, len(ids) + 1):
        if end == len(ids) or scores[end - 1] - scores[end] > TIE:
            assert {i for i, _ in got[start:end]} == set(ids[start:end]), f"{what}: ranks {start}..{end - 1} differ"
            start = end


def close(store: Store) -> None:
    """Release a store's files so another process can open them (Qdrant local mode locks its folder,
    Milvus Lite its file)."""
    if hasattr(store, "close"):
        store.close()
        return
    client = getattr(store, "client", None)
    if client is not None and hasattr(client, "close"):
        client.close()


@pytest.fixture(scope="module")
def corpus(tiny_model_path, sample_images) -> Corpus:
    return Corpus(tiny_model_path, sample_images)


def build(kind: str, location: str, corpus: Corpus, name: str = "photos") -> tuple[Store, str]:
    store = open_store(kind, location, name, ce.ClipEF(corpus.model, cache=False))
    corpus.fill(store)
    return store, location


@pytest.mark.parametrize("kind", KINDS)
def test_nearest_items_are_the_numpy_nearest(kind, store_location, corpus):
    store, _ = build(kind, store_location(kind), corpus)
    results = run_queries(store, corpus)
    for name, query, modality, k, album in QUERIES:
        ids, scores = corpus.expected(query, modality, k, album)
        assert_ranking(results[name], ids, scores, f"{kind} {name}")
    # image->image: the query image itself comes first, with similarity 1.
    assert results["image->image"][0] == (corpus.image_ids[2], pytest.approx(1.0, abs=1e-4))


@pytest.mark.parametrize("kind", KINDS)
def test_hits_carry_source_caption_and_metadata(kind, store_location, corpus):
    store, _ = build(kind, store_location(kind), corpus)
    hit = store.query(image=corpus.images[0], k=1)[0]
    assert (hit.source, hit.document, hit.metadata.get("album")) == (
        str(Path(corpus.images[0]).resolve()), corpus.captions[0], corpus.metadatas[0]["album"])
    texts = {h.id: h.document for h in store.query("anything", k=20, modality="text")}
    assert texts == dict(zip(corpus.all_text_ids, corpus.captions + TEXTS))


def test_top_k_ids_agree_across_databases(store_location, corpus):
    results = {}
    for kind in KINDS:
        store, _ = build(kind, store_location(kind), corpus)
        results[kind] = {name: [i for i, _ in hits] for name, hits in run_queries(store, corpus).items()}
        close(store)
    for name, query, modality, k, album in QUERIES:
        _, scores = corpus.expected(query, modality, k, album)
        if np.all(-np.diff(scores) > TIE):  # no near-ties: the orders must be identical
            assert all(results[kind][name] == results["chroma"][name] for kind in KINDS), name
        else:
            assert {frozenset(r[name]) for r in results.values()} == {frozenset(results["chroma"][name])}, name


REOPEN = textwrap.dedent("""
    import json, sys
    import clip_embeddings.adapters
    loaded = [m for m in ("chromadb", "qdrant_client", "lancedb", "psycopg", "pymilvus") if m in sys.modules]
    from clip_embeddings.adapters import open_store
    spec, text, image = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
    out = {"clients imported by the adapters package": loaded}
    for kind, location in spec.items():
        store = open_store(kind, location, "photos")  # no ef: rebuilt from what the collection stored
        out[kind] = {
            "count": store.count(),
            "model": store.ef.model_name,
            "text": [h.id for h in store.query(text, k=3)],
            "image": [h.id for h in store.query(image=image, k=3, modality="text")],
        }
    print(json.dumps(out))
""")


def test_reopen_in_fresh_process_without_ef_gives_same_ids(store_location, corpus):
    # One child process for every database: a Python start with torch costs seconds.
    expected, locations = {"clients imported by the adapters package": []}, {}
    for kind in KINDS:
        store, locations[kind] = build(kind, store_location(kind), corpus)
        expected[kind] = {
            "count": store.count(),
            "model": corpus.model,
            "text": [h.id for h in store.query("a photo of a cat", k=3)],
            "image": [h.id for h in store.query(image=corpus.images[4], k=3, modality="text")],
        }
        close(store)
    done = subprocess.run([sys.executable, "-c", REOPEN, json.dumps(locations), "a photo of a cat", corpus.images[4]],
                          capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == expected


@pytest.mark.parametrize("kind", KINDS)
def test_other_model_raises_model_mismatch(kind, store_location, corpus, other_tiny_model_path):
    store, location = build(kind, store_location(kind), corpus)
    close(store)
    with pytest.raises(ce.ModelMismatchError, match="fingerprint"):
        open_store(kind, location, "photos", ce.ClipEF(other_tiny_model_path, cache=False))


@pytest.mark.parametrize("kind", KINDS)
def test_re_adding_everything_keeps_counts(kind, store_location, corpus):
    store, _ = build(kind, store_location(kind), corpus)
    # One counting rule everywhere: an item is an image (with its caption) or a text; per
    # modality, the vectors of that kind (7 images; 7 captions + 3 texts).
    assert (store.count(), store.count("image"), store.count("text")) == (7 + 3, 7, 7 + 3)
    again = store.add_images(corpus.images, captions=corpus.captions)
    texts = store.add_texts(TEXTS)
    bare = store.add_images(corpus.images)  # and once more without captions
    assert again.ids == corpus.image_ids
    assert (again.new, again.updated, again.present) == (0, 0, 7)
    assert (texts.new, texts.present, bare.new, bare.present) == (0, 3, 0, 7)
    assert (store.count(), store.count("image"), store.count("text")) == (7 + 3, 7, 7 + 3)


@pytest.mark.parametrize("kind", KINDS)
def test_bad_images_are_skipped_and_named(kind, tmp_path, store_location, corpus):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 not really a jpeg")
    missing = tmp_path / "missing.jpg"
    batch = [corpus.images[0], str(corrupt), corpus.images[1], str(missing), corpus.images[2]]
    store = open_store(kind, store_location(kind), "photos", ce.ClipEF(corpus.model, cache=False))

    with pytest.raises(ce.ImageLoadError, match="corrupt.jpg"):
        store.add_images(batch, on_error="raise")
    assert store.count() == 1  # "raise" stops at the bad item: the one before it is stored

    report = store.add_images(batch, on_error="skip")
    assert report.ids == corpus.image_ids[:3]
    assert (report.new, report.present) == (2, 1)
    assert [(s.index, Path(s.source).name) for s in report.skipped] == [(1, "corrupt.jpg"), (3, "missing.jpg")]
    assert "missing.jpg" in str(report) and "corrupt.jpg" in str(report)
    assert store.count() == 3
    assert {h.id for h in store.query("x", k=10)} == set(corpus.image_ids[:3])


def test_open_store_rejects_unknown_kinds_and_lancedb_urls(tmp_path):
    with pytest.raises(ValueError, match="kind must be one of"):
        open_store("faiss", str(tmp_path), "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no http server"):
        open_store("lancedb", "http://localhost:1", "x")


@pytest.mark.parametrize("kind", KINDS)
def test_open_store_without_ef_needs_an_existing_collection(kind, tmp_path, store_location, corpus):
    with pytest.raises(ce.CollectionNotFoundError, match=f"no {kind} database at"):
        open_store(kind, store_location(kind, "missing", missing=True), "nothing-here")
    assert list(tmp_path.iterdir()) == []  # opening to read creates nothing
    store, location = build(kind, store_location(kind), corpus)
    close(store)
    with pytest.raises(ce.CollectionNotFoundError, match="does not exist"):
        open_store(kind, location, "nothing-here")


@pytest.mark.server
def test_open_store_reaches_a_chroma_server_by_url(chroma_server, corpus):
    host, port = chroma_server
    store = open_store("chroma", f"http://{host}:{port}", "open-store-url", ce.ClipEF(corpus.model, cache=False))
    corpus.fill(store)
    ids, scores = corpus.expected("a photo of a cat", "image", 3)
    assert_ranking([(h.id, h.score) for h in store.query("a photo of a cat", k=3)], ids, scores, "chroma server")
    reopened = open_store("chroma", f"http://{host}:{port}", "open-store-url")  # config from the server
    assert reopened.ef.expected_fingerprint == corpus.ef.fingerprint and reopened.count() == store.count()


@pytest.mark.parametrize("kind", KINDS)
def test_records_scan_every_vector_in_bounded_batches(kind, store_location, corpus):
    store, _ = build(kind, store_location(kind), corpus)
    images = list(store.records("image", batch_size=3))
    texts = list(store.records("text", batch_size=4))
    assert [len(b) for b in store._scan("image", batch_size=3)] == [3, 3, 1]
    assert sorted(r.id for r in images) == sorted(corpus.image_ids)
    assert sorted(r.id for r in texts) == sorted(corpus.all_text_ids)
    by_id = dict(zip(corpus.image_ids, range(len(corpus.image_ids))))
    for r in images:  # the stored vector, the digest, the source and the user's own metadata only
        i = by_id[r.id]
        assert r.vector.dtype == np.float32 and r.vector.shape == (corpus.ef.dim,)
        np.testing.assert_allclose(r.vector, corpus.image_vectors[i], atol=1e-6)
        assert (r.modality, r.source, r.document, r.metadata) == (
            "image", str(Path(corpus.images[i]).resolve()), corpus.captions[i], corpus.metadatas[i])
        assert r.id == item_id("image", r.digest)
    text_of = dict(zip(corpus.all_text_ids, corpus.captions + TEXTS))
    vector_of = dict(zip(corpus.all_text_ids, corpus.text_vectors))
    for r in texts:
        assert r.document == text_of[r.id]
        np.testing.assert_allclose(r.vector, vector_of[r.id], atol=1e-6)
    both = list(store.records(with_vectors=False))
    assert sorted(r.modality for r in both) == ["image"] * 7 + ["text"] * 10
    assert all(r.vector is None for r in both)
    with pytest.raises(ValueError, match="modality"):
        list(store.records("audio"))  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", KINDS)
def test_no_id_reaches_another_items_caption(kind, store_location, corpus):
    # Row ids are "<item>" and "<item>:text": an image id ending in ":text" used to overwrite
    # the caption of item <item> on Chroma and LanceDB (reported as "updated"). Refused everywhere.
    store = open_store(kind, store_location(kind), "photos", ce.ClipEF(corpus.model, cache=False))
    store.add_images(corpus.images[:1], captions=["the first caption"])
    first = corpus.image_ids[0]
    for bad in (f"{first}:text", "", "x:text"):
        with pytest.raises(ValueError, match="item 0: .*(ends with ':text'|non-empty str)"):
            store.add_images(corpus.images[1:2], ids=[bad], captions=["hijack"])
        with pytest.raises(ValueError, match="item 0: "):
            store.add_texts(["hijack"], ids=[bad])
    assert store.get_item(first, "text").document == "the first caption"
    assert (store.count(), store.count("image"), store.count("text")) == (1, 1, 1)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("key", ["item_id", "modality", "digest", "source", "document"])
def test_reserved_metadata_keys_are_refused_naming_the_key(kind, key, store_location, corpus):
    store = open_store(kind, store_location(kind), "photos", ce.ClipEF(corpus.model, cache=False))
    with pytest.raises(ValueError, match=f"item 1: metadata key\\(s\\) \\['{key}'\\] are reserved"):
        store.add_images(corpus.images[:2], metadatas=[{"album": "a"}, {key: "x"}])
    with pytest.raises(ValueError, match=f"item 0: metadata key\\(s\\) \\['{key}'\\] are reserved"):
        store.add_texts(["a dog"], metadatas=[{key: "x"}])
    assert store.count() == 0


@pytest.mark.parametrize("kind", KINDS)
def test_delete_by_id_and_where_removes_whole_items(kind, store_location, corpus):
    store, _ = build(kind, store_location(kind), corpus)
    first, text = corpus.image_ids[0], corpus.text_ids[0]
    assert store.delete([first, text, "not-stored"]) == 2
    assert (store.count(), store.count("image"), store.count("text")) == (6 + 2, 6, 6 + 2)
    assert store.get_item(first) is None and store.get_item(first, "text") is None
    assert first not in {h.id for h in store.query("anything", k=20, modality="text")}
    assert store.delete([first]) == 0  # gone already: nothing to remove, no error

    space = {item for item, meta in zip(corpus.image_ids, corpus.metadatas) if meta["album"] == "space"} - {first}
    assert store.delete(where={"album": "space"}) == len(space)
    left = {r.id for r in store.records(with_vectors=False)}
    assert left == (set(corpus.all_text_ids) - space - {first, text})
    assert {h.id for h in store.query("x", k=20)} == set(corpus.image_ids) - space - {first}
    with pytest.raises(ValueError, match="exactly one"):
        store.delete()


@pytest.mark.parametrize("kind", KINDS)
def test_deleting_a_caption_keeps_its_image(kind, store_location, corpus):
    store, _ = build(kind, store_location(kind), corpus)
    item = corpus.image_ids[1]
    store._delete([(item, "text")])
    assert store.get_item(item) is not None and store.get_item(item, "text") is None
    assert (store.count("image"), store.count("text")) == (7, 6 + 3)


@pytest.mark.parametrize("kind", KINDS)
def test_one_counting_rule_for_captions_and_texts_added_later(kind, store_location, corpus):
    # count() counts items (distinct item ids): a caption stored after its image, or an image
    # stored after a text under the same id, is still one item (LanceDB and Milvus counted 2:
    # their rule was "an image row, or a text row without a source").
    store = open_store(kind, store_location(kind), "photos", ce.ClipEF(corpus.model, cache=False))
    store.add_images(corpus.images[:2])
    first = corpus.image_ids[0]
    assert store.add_texts(["a caption added later"], ids=[first]).updated == 1
    store.add_texts(["a text stored first"], ids=["later-image"])
    store.add_images(corpus.images[2:3], ids=["later-image"])
    store.add_images(corpus.images[1:2], captions=["a caption with its image, second time"])
    assert (store.count(), store.count("image"), store.count("text")) == (3, 3, 3)
    store.add_texts(["a text on its own"])
    assert (store.count(), store.count("image"), store.count("text")) == (4, 3, 4)
    assert store.get_item(first, "text").document == "a caption added later"


@pytest.fixture
def odd_name_folder(tmp_path, corpus) -> tuple[Path, bytes]:
    """Three sample photos and a fourth under a file name that is not UTF-8 (b'\\xff\\xfe')."""
    folder = tmp_path / "odd"
    folder.mkdir()
    for image in corpus.images[:3]:
        (folder / Path(image).name).write_bytes(Path(image).read_bytes())
    odd = os.path.join(os.fsencode(folder), b"caf\xe9-\xff\xfe.jpg")  # Latin-1 bytes: no UTF-8 decoding
    with open(odd, "wb") as f:
        f.write(Path(corpus.images[3]).read_bytes())
    return folder, odd


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cache", [False, True])
def test_a_file_name_that_is_not_utf8_is_stored_losslessly_and_costs_nothing(kind, cache, store_location, corpus,
                                                                            odd_name_folder):
    # It used to cost the whole write batch on Chroma and LanceDB (0 of 4 stored) with the cache
    # off, and the file itself with the cache on. Now stored as a file:// URI of its exact bytes.
    folder, odd = odd_name_folder
    store = open_store(kind, store_location(kind), "photos", ce.ClipEF(corpus.model, cache=cache))
    report = store.index_folder(folder, progress=False)
    assert (report.new, report.skipped) == (4, [])
    assert (store.count(), store.count("image")) == (4, 4)
    sources = {r.id: r.source for r in store.records("image", with_vectors=False)}
    assert all(s.encode("utf-8") for s in sources.values())  # valid UTF-8, whatever the file names
    odd_source = sources[corpus.image_ids[3]]
    assert odd_source.startswith("file://") and os.fsencode(path_of(odd_source)) == odd
    assert store.query(image=odd_source, k=1)[0].id == corpus.image_ids[3]  # the stored source reads back
    again = store.index_folder(folder, progress=False)  # a sync of the unchanged folder: nothing to do
    assert (again.new, again.present, again.removed, again.skipped) == (0, 4, 0, [])
    listed = store.add_images([os.fsdecode(odd), *corpus.images[:2]])  # the name as Python lists it
    assert (listed.present, listed.skipped) == (3, [])


@pytest.mark.parametrize("kind", KINDS)
def test_where_on_a_metadata_key_named_like_a_column_filters_the_users_key(kind, store_location, corpus):
    # LanceDB and Milvus read where={"id": ...} as their own row-id column: the user's key never matched.
    store = open_store(kind, store_location(kind), "photos", ce.ClipEF(corpus.model, cache=False))
    metadatas = [{"id": f"photo-{i}", "vector": i, "metadata": "m", "embedding": "e"} for i in range(3)]
    store.add_images(corpus.images[:3], metadatas=metadatas)
    for key, value, index in (("id", "photo-1", 1), ("vector", 2, 2), ("metadata", "m", None), ("embedding", "e", None)):
        hits = store.query("x", k=5, where={key: value})
        assert {h.id for h in hits} == ({corpus.image_ids[index]} if index is not None else set(corpus.image_ids[:3])), key
    assert store.query("x", k=5, where={"id": corpus.image_ids[0]}) == []  # a row id is no metadata value
    assert [h.id for h in store.query("x", k=5, where={"item_id": corpus.image_ids[0]})] == corpus.image_ids[:1]
