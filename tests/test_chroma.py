"""ClipEF on a real Chroma: in-process and a ``chroma run`` server, reopened in fresh processes.

Expected neighbours come from openai/CLIP's own model code with the same weights
(``reference_embeddings``), never from ClipEF, so a wrong embedding cannot agree with itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import chromadb
import numpy as np
import pytest
from PIL import Image

import clip_embeddings as ce
from clip_embeddings.embedding import loaded as embedding
from clip_embeddings.adapters.chroma import ChromaStore, ImageLoader, upsert_uris
from tests.reference import reference_embeddings

QUERIES = ["a photo of a cat", "a rocket launch", "a cup of coffee", "an astronaut"]


@pytest.fixture
def photos(sample_images):
    captions = json.loads((sample_images[0].parent / "captions.json").read_text())
    pil = [Image.open(p).convert("RGB") for p in sample_images]
    return sample_images, pil, [captions[p.name] for p in sample_images]


def _ranking(query_vectors: np.ndarray, candidates: np.ndarray, ids: list[str], k: int) -> list[list[str]]:
    order = np.argsort(-(query_vectors @ candidates.T), axis=1)[:, :k]
    return [[ids[j] for j in row] for row in order]


def _fill(collection, paths, pil, captions):
    collection.add(ids=[f"img-{p.stem}" for p in paths], images=[np.asarray(im) for im in pil],
                   metadatas=[{"kind": "image", "file": p.name} for p in paths])
    collection.add(ids=[f"txt-{p.stem}" for p in paths], documents=captions,
                   metadatas=[{"kind": "text", "file": p.name} for p in paths])


def _check_cross_modal(collection, model_path, paths, pil, captions):
    """text→image, image→image and image→text give the reference's top-3, with cosine distances."""
    image_ids = [f"img-{p.stem}" for p in paths]
    text_ids = [f"txt-{p.stem}" for p in paths]
    ref_images, ref_texts = reference_embeddings(model_path, images=pil, texts=captions + QUERIES)
    ref_captions, ref_queries = ref_texts[: len(captions)], ref_texts[len(captions):]

    got = collection.query(query_texts=QUERIES, n_results=3, where={"kind": "image"})
    assert got["ids"] == _ranking(ref_queries, ref_images, image_ids, 3)
    expected_distance = 1 - float(ref_queries[0] @ ref_images[image_ids.index(got["ids"][0][0])])
    assert abs(got["distances"][0][0] - expected_distance) < 1e-4  # the collection's space is cosine

    got = collection.query(query_images=[np.asarray(pil[1])], n_results=3, where={"kind": "image"})
    assert got["ids"][0][0] == image_ids[1] and got["distances"][0][0] < 1e-5
    assert got["ids"] == _ranking(ref_images[1:2], ref_images, image_ids, 3)

    got = collection.query(query_images=[np.asarray(im) for im in pil[:3]], n_results=2, where={"kind": "text"})
    assert got["ids"] == _ranking(ref_images[:3], ref_captions, text_ids, 2)
    return got["ids"]


def _reopen_in_fresh_process(open_client: str, query_texts: list[str]) -> list[list[str]]:
    """Reopen the collection in a new interpreter with get_collection(name) alone and query it."""
    script = textwrap.dedent(f"""
        import json, sys
        import clip_embeddings  # registers ClipEF with Chroma when chromadb is imported
        import chromadb
        client = {open_client}
        collection = client.get_collection("photos")
        result = collection.query(query_texts={query_texts!r}, n_results=3, where={{"kind": "image"}})
        print(json.dumps(result["ids"]))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_persistent_client_cross_modal_and_reopen(tmp_path, tiny_model_path, photos):
    paths, pil, captions = photos
    client = chromadb.PersistentClient(str(tmp_path / "db"))
    collection = client.create_collection("photos", embedding_function=ce.ClipEF(str(tiny_model_path)))
    _fill(collection, paths, pil, captions)
    assert collection.count() == 2 * len(paths)
    _check_cross_modal(collection, tiny_model_path, paths, pil, captions)

    expected = collection.query(query_texts=QUERIES, n_results=3, where={"kind": "image"})["ids"]
    assert _reopen_in_fresh_process(f"chromadb.PersistentClient({str(tmp_path / 'db')!r})", QUERIES) == expected


def test_server_cross_modal_and_reopen(chroma_server, tiny_model_path, photos):
    host, port = chroma_server
    paths, pil, captions = photos
    client = chromadb.HttpClient(host=host, port=port)
    collection = client.create_collection("photos", embedding_function=ce.ClipEF(str(tiny_model_path)))
    try:
        _fill(collection, paths, pil, captions)
        _check_cross_modal(collection, tiny_model_path, paths, pil, captions)
        expected = collection.query(query_texts=QUERIES, n_results=3, where={"kind": "image"})["ids"]
        reopened = _reopen_in_fresh_process(f"chromadb.HttpClient(host={host!r}, port={port})", QUERIES)
        assert reopened == expected
    finally:
        client.delete_collection("photos")


def test_uris_with_the_data_loader_add_upsert_and_query(tmp_path, tiny_model_path, photos):
    paths, pil, _ = photos
    client = chromadb.PersistentClient(str(tmp_path / "db"))
    collection = client.create_collection("by-uri", embedding_function=ce.ClipEF(str(tiny_model_path), fast_decode=False),
                                          data_loader=ImageLoader())
    collection.add(ids=["a", "b"], uris=[str(paths[0]), str(paths[1])])
    with pytest.raises(ValueError):  # Chroma's own upsert never embeds uris ...
        collection.upsert(ids=["b", "c"], uris=[str(paths[2]), str(paths[3])])
    upsert_uris(collection, ids=["b", "c"], uris=[str(paths[2]), str(paths[3])])  # ... ours does; b is photo 2
    ref_images, _ = reference_embeddings(tiny_model_path, images=pil[:4])
    stored = collection.get(ids=["a", "b", "c"], include=["embeddings", "uris"])
    assert stored["uris"] == [str(paths[0]), str(paths[2]), str(paths[3])]
    assert np.abs(np.asarray(stored["embeddings"]) - ref_images[[0, 2, 3]]).max() < 1e-5
    got = collection.query(query_uris=[str(paths[2])], n_results=1)
    assert got["ids"] == [["b"]]


def test_model_loads_once_across_many_adds_and_queries(tmp_path, tiny_model_path, photos):
    paths, pil, captions = photos
    before = embedding.model_load_count()
    client = chromadb.PersistentClient(str(tmp_path / "db"))
    client.create_collection("photos", embedding_function=ce.ClipEF(str(tiny_model_path)))
    for i in range(10):
        # get_collection rebuilds ClipEF from the stored config each time, as Chroma does.
        collection = client.get_collection("photos")
        collection.add(ids=[f"t{i}"], documents=[captions[i % len(captions)]])
        collection.query(query_texts=["a cat"], n_results=1)
    assert collection.count() == 10
    assert embedding.model_load_count() - before <= 1


def _bad_batch(tmp_path, paths):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(paths[0].read_bytes()[:1500])
    Image.new("RGBA", (50, 40), (0, 128, 0, 90)).save(tmp_path / "rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.open(paths[1]).save(tmp_path / "rotated.jpg", exif=exif)
    return [tmp_path / "rgba.png", corrupt, tmp_path / "rotated.jpg", tmp_path / "missing.jpg"]


def test_store_skip_keeps_good_items_and_reports_bad(tmp_path, tiny_model_path, photos):
    paths, _, _ = photos
    store = ChromaStore(chromadb.PersistentClient(str(tmp_path / "db")), "photos", ce.ClipEF(str(tiny_model_path)))
    report = store.add_images(_bad_batch(tmp_path, paths), on_error="skip")
    assert report.stored == 2 and store.count() == 2
    assert [(s.index, "corrupt" in s.source) for s in report.skipped] == [(1, True), (3, False)]
    assert report.skipped[1].reason == "file not found"
    sources = {h.source.rsplit("/", 1)[-1] for h in store.query("anything", k=5)}
    assert sources == {"rgba.png", "rotated.jpg"}


def test_store_raise_stops_at_the_first_bad_item_keeping_those_before_it(tmp_path, tiny_model_path, photos):
    # A streaming ingest under "raise": everything before the bad item is stored, nothing after it.
    paths, _, _ = photos
    store = ChromaStore(chromadb.PersistentClient(str(tmp_path / "db")), "photos", ce.ClipEF(str(tiny_model_path)))
    with pytest.raises(ce.ImageLoadError) as e:
        store.add_images(_bad_batch(tmp_path, paths), on_error="raise")
    assert e.value.index == 1 and "corrupt.jpg" in str(e.value)
    assert store.count() == 1
    assert [h.source.rsplit("/", 1)[-1] for h in store.query("anything", k=5)] == ["rgba.png"]


def test_index_folder_is_idempotent_and_cached(tmp_path, tiny_model_path, sample_images):
    folder = tmp_path / "photos" / "nested"
    folder.mkdir(parents=True)
    for p in sample_images:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "notes.txt").write_text("not an image, not indexed")
    client = chromadb.PersistentClient(str(tmp_path / "db"))
    store = ChromaStore(client, "photos", ce.ClipEF(str(tiny_model_path)))
    calls = [0]
    store.ef.loaded_model().model.visual.register_forward_hook(lambda m, a, out: calls.__setitem__(0, calls[0] + len(out)))

    first = store.index_folder(tmp_path / "photos", progress=False)
    assert first.stored == len(sample_images) == store.count() == calls[0]

    again = ChromaStore(client, "photos").index_folder(tmp_path / "photos", progress=False)
    assert again.ids == first.ids and again.cache_hits == len(sample_images)
    assert calls[0] == len(sample_images), "an unchanged folder must not run the model"
    assert store.count() == len(sample_images)

    changed = folder / sample_images[0].name
    Image.open(changed).rotate(90, expand=True).save(changed)
    third = ChromaStore(client, "photos").index_folder(tmp_path / "photos", progress=False)
    assert calls[0] == len(sample_images) + 1 and third.cache_hits == len(sample_images) - 1
    assert store.count() == len(sample_images) + 1  # new content, new content-derived id


def test_store_with_another_model_is_refused_with_advice(tmp_path, tiny_model_path, other_tiny_model_path):
    client = chromadb.PersistentClient(str(tmp_path / "db"))
    ChromaStore(client, "photos", ce.ClipEF(str(tiny_model_path))).add_texts(["a cat"])
    with pytest.raises(ce.ModelMismatchError) as e:
        ChromaStore(client, "photos", ce.ClipEF(str(other_tiny_model_path)))
    assert str(tiny_model_path) in str(e.value) and "ClipEF(model=" in str(e.value)


def test_index_folder_rejects_a_missing_folder(tmp_path, tiny_model_path):
    store = ChromaStore(chromadb.PersistentClient(str(tmp_path / "db")), "photos", ce.ClipEF(str(tiny_model_path)))
    with pytest.raises(ce.ImageLoadError, match="not a folder"):
        store.index_folder(tmp_path / "nope")


def test_rows_written_by_chromas_own_api_are_found_by_the_store(tmp_path, tiny_model_path, sample_images,
                                                                  monkeypatch, capsys):
    # The README's own-API flow writes rows without a ``modality`` key: they were invisible to
    # ChromaStore (count("image") 0, search "holds no image records"). An image by what it holds
    # (no document), a text by its document; its row id is its item id, its uri its source.
    from clip_embeddings.apps import cli

    client = chromadb.PersistentClient(str(tmp_path / "db"))
    ef = ce.ClipEF(str(tiny_model_path), cache=False)
    photos = client.get_or_create_collection("photos", embedding_function=ef, data_loader=ImageLoader.for_function(ef))
    cat, rocket = (str(p) for p in sample_images if p.stem in ("cat", "rocket"))
    photos.add(ids=["cat", "rocket"], uris=[cat, rocket], metadatas=[{"kind": "image"}] * 2)
    photos.add(ids=["cat-caption"], documents=["a tabby cat"], metadatas=[{"kind": "caption"}])
    plain = client.get_or_create_collection("plain", embedding_function=ef, data_loader=ImageLoader.for_function(ef))
    plain.add(ids=["bare"], uris=[cat])  # no metadata at all

    store = ChromaStore(client, "photos")
    assert (store.count(), store.count("image"), store.count("text")) == (3, 2, 1)
    top = store.query(image=cat, k=2)
    assert top[0].id == "cat" and top[0].source == cat and top[0].metadata == {"kind": "image"}
    assert top[0].score == pytest.approx(1.0, abs=1e-4) and {h.id for h in top} == {"cat", "rocket"}
    text = store.query(image=cat, k=5, modality="text")
    assert [(h.id, h.document, h.metadata) for h in text] == [("cat-caption", "a tabby cat", {"kind": "caption"})]
    # where filters hold on both kinds of rows, and mix with rows the store writes itself
    assert [h.id for h in store.query("x", k=5, where={"kind": "caption"}, modality="text")] == ["cat-caption"]
    assert store.query("x", k=5, where={"kind": "caption"}) == []
    assert store.query("x", k=5, where={"kind": "nothing"}, modality="text") == []
    ours = store.add_images([str(p) for p in sample_images if p.stem == "galaxies"], captions=["far away"])
    assert (store.count(), store.count("image"), store.count("text")) == (4, 3, 2)
    assert {h.id for h in store.query("x", k=10)} == {"cat", "rocket", *ours.ids}
    assert [h.id for h in store.query("x", k=10, where={"kind": "image"})] != []
    assert {h.id for h in store.query("x", k=10, where={"kind": "image"})} == {"cat", "rocket"}
    assert sorted(r.id for r in store.records("image", batch_size=1)) == sorted(["cat", "rocket", *ours.ids])
    assert sorted(r.document for r in store.records("text", with_vectors=False)) == ["a tabby cat", "far away"]
    assert ChromaStore(client, "plain").count("image") == 1

    monkeypatch.setenv("CLIP_WEIGHTS", str(tiny_model_path))
    capsys.readouterr()
    args = ["search", "a cat", "--location", str(tmp_path / "db"), "--collection", "plain", "--json"]
    assert cli.main(args) == 0
    assert [h["id"] for h in json.loads(capsys.readouterr().out)["hits"]] == ["bare"]


def test_chroma_nin_matches_a_row_without_the_key(tmp_path):
    # The store finds rows Chroma's own API wrote with {"modality": {"$nin": [...]}}: this pins
    # the Chroma behaviour it relies on (a missing key satisfies $nin and $ne, never $eq).
    client = chromadb.PersistentClient(str(tmp_path / "db"))
    rows = client.create_collection("pin", embedding_function=None)
    rows.add(ids=["ours", "theirs"], embeddings=[[1.0, 0.0], [0.0, 1.0]], metadatas=[{"modality": "image"}, None])
    assert rows.get(where={"modality": {"$nin": ["image", "text"]}}, include=[])["ids"] == ["theirs"]
    assert rows.get(where={"modality": {"$ne": "text"}}, include=[])["ids"] == ["ours", "theirs"]
    assert rows.get(where={"modality": "image"}, include=[])["ids"] == ["ours"]
