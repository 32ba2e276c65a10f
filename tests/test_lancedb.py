"""LanceDB: the registry function with LanceModel schemas, its retry behaviour, and LanceDBStore."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import lancedb
import numpy as np
import pytest
from lancedb.embeddings import get_registry
from lancedb.pydantic import LanceModel, Vector
from PIL import Image

import clip_embeddings as ce
from clip_embeddings.adapters.lancedb import CONFIG_KEY, ClipLanceEmbeddings, LanceDBStore, to_sql
from clip_embeddings.embedding.function import ClipEF
from tests.test_stores_parametrised import Corpus, assert_ranking
from tests.servers import serving

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def corpus(tiny_model_path, sample_images) -> Corpus:
    return Corpus(tiny_model_path, sample_images)


def photo_table(db, name: str, model: str, **options):
    clip = get_registry().get("clip-embeddings").create(model=model, **options)

    class Photo(LanceModel):
        image_uri: str = clip.SourceField()
        vector: Vector(clip.ndims()) = clip.VectorField()

    return db.create_table(name, schema=Photo), clip


def uris(rows) -> list[str]:
    return [r["image_uri"] for r in rows]


def test_registry_function_with_lancemodel_schema(tmp_path, corpus):
    table, clip = photo_table(lancedb.connect(tmp_path), "photos", corpus.model)
    assert isinstance(clip, ClipLanceEmbeddings) and clip.ndims() == 64
    table.add([{"image_uri": p} for p in corpus.images])
    stored = np.stack(table.to_pandas().sort_values("image_uri")["vector"].to_list())
    np.testing.assert_allclose(stored, corpus.image_vectors, atol=1e-5)

    rows = table.search("a photo of a cat").distance_type("cosine").limit(3).to_list()
    ids, scores = corpus.expected("a photo of a cat", "image", 3)
    by_id = dict(zip(corpus.image_ids, corpus.images))
    # Cosine distance: 1 - similarity.
    assert_ranking([(r["image_uri"], 1 - r["_distance"]) for r in rows], [by_id[i] for i in ids], scores, "text")
    # LanceDB's default metric is (squared) L2; on unit vectors it ranks the same, at 2 - 2 cos.
    rows = table.search("a photo of a cat").limit(3).to_list()
    assert_ranking([(r["image_uri"], 1 - r["_distance"] / 2) for r in rows], [by_id[i] for i in ids], scores, "l2")

    # A PIL image is decoded in full, a path may be decoded at reduced scale: embed the same object.
    image = Image.open(corpus.images[3])
    rows = table.search(image).distance_type("cosine").limit(3).to_list()
    ids, scores = corpus.expected(corpus.ef.encode_images([image]).embeddings[0], "image", 3)
    assert_ranking([(r["image_uri"], 1 - r["_distance"]) for r in rows], [by_id[i] for i in ids], scores, "PIL")
    assert rows[0]["image_uri"] == corpus.images[3]


def test_schema_keeps_model_and_fingerprint_but_not_device(tmp_path, corpus):
    table, _ = photo_table(lancedb.connect(tmp_path), "photos", corpus.model, device="cpu", batch_size=8)
    (config,) = json.loads(table.schema.metadata[b"embedding_functions"])
    assert config["name"] == "clip-embeddings"
    assert config["model"] == {"model": corpus.model, "batch_size": 8, "fingerprint": corpus.ef.fingerprint, "dim": 64}


def test_bytes_and_url_sources(tmp_path, corpus):
    clip = get_registry().get("clip-embeddings").create(model=corpus.model)

    class Blob(LanceModel):
        image: bytes = clip.SourceField()
        vector: Vector(clip.ndims()) = clip.VectorField()

    table = lancedb.connect(tmp_path).create_table("blobs", schema=Blob)
    table.add([{"image": Path(corpus.images[1]).read_bytes()}])
    np.testing.assert_allclose(table.to_arrow()["vector"][0].as_py(), corpus.image_vectors[1], atol=1e-5)

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(Path(corpus.images[0]).parent))
    with serving(handler) as server:
        vector = clip.compute_source_embeddings([f"{server.url}/{Path(corpus.images[2]).name}"])[0]
    np.testing.assert_allclose(vector, corpus.image_vectors[2], atol=1e-5)


def test_corrupt_image_is_not_retried(tmp_path, corpus, monkeypatch):
    calls = []
    original = ClipEF.encode_images

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ClipEF, "encode_images", counting)
    table, clip = photo_table(lancedb.connect(tmp_path), "photos", corpus.model)
    assert clip.max_retries == 0
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"not an image")
    with pytest.raises(Exception, match="corrupt.jpg: not an image"):
        table.add([{"image_uri": corpus.images[0]}, {"image_uri": str(corrupt)}])
    assert len(calls) == 1  # LanceDB's default would have made 8 attempts, sleeping between them
    assert table.count_rows() == 0


def test_skip_gives_null_vectors_that_lancedb_can_drop(tmp_path, corpus):
    table, _ = photo_table(lancedb.connect(tmp_path), "photos", corpus.model, on_error="skip")
    table.add([{"image_uri": corpus.images[0]}, {"image_uri": str(tmp_path / "missing.jpg")}], on_bad_vectors="drop")
    assert uris(table.search().limit(10).to_list()) == [corpus.images[0]]


REOPEN = textwrap.dedent("""
    import json, sys
    import clip_embeddings, lancedb
    db = lancedb.connect(sys.argv[1])
    for name in ("kept", "swapped"):
        try:
            print(json.dumps([r["image_uri"] for r in db.open_table(name).search(sys.argv[2]).limit(3).to_list()]))
        except clip_embeddings.ModelMismatchError as e:
            print("ModelMismatchError:", e)
""")


def test_reopened_in_fresh_process_rebuilds_the_function_and_checks_weights(tmp_path, corpus, other_tiny_model_path):
    db = lancedb.connect(tmp_path / "db")
    expected = {}
    for name in ("kept", "swapped"):
        weights = tmp_path / f"{name}.pt"
        shutil.copy(corpus.model, weights)
        table, _ = photo_table(db, name, str(weights))
        table.add([{"image_uri": p} for p in corpus.images])
        expected[name] = uris(table.search("a rocket at night").limit(3).to_list())
    # The file behind "swapped" now holds other weights: the fingerprint in its schema catches it.
    shutil.copy(other_tiny_model_path, tmp_path / "swapped.pt")
    done = subprocess.run([sys.executable, "-c", REOPEN, str(tmp_path / "db"), "a rocket at night"],
                          capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    kept, swapped = done.stdout.strip().splitlines()[-2:]
    assert json.loads(kept) == expected["kept"]
    assert swapped.startswith("ModelMismatchError:") and corpus.ef.fingerprint in swapped


def test_store_rebuilds_function_from_schema_and_checks_model(tmp_path, corpus, other_tiny_model_path):
    db = lancedb.connect(tmp_path)
    store = LanceDBStore(db, "photos", ce.ClipEF(corpus.model, cache=False))
    corpus.fill(store)
    config = json.loads(db.open_table("photos").schema.metadata[CONFIG_KEY])
    assert (config["fingerprint"], config["dim"]) == (corpus.ef.fingerprint, 64)
    assert {f.name for f in store.table.schema} == {
        "id", "item_id", "modality", "vector", "source", "document", "digest", "metadata"}
    reopened = LanceDBStore(lancedb.connect(tmp_path), "photos")
    assert reopened.ef.expected_fingerprint == corpus.ef.fingerprint
    assert [h.id for h in reopened.query("a rocket", k=3)] == [h.id for h in store.query("a rocket", k=3)]
    with pytest.raises(ce.ModelMismatchError, match="LanceDB table 'photos'"):
        LanceDBStore(db, "photos", ce.ClipEF(other_tiny_model_path, cache=False))


def test_store_rows_ids_and_metadata_merge(tmp_path, corpus):
    store = LanceDBStore(lancedb.connect(tmp_path), "photos", ce.ClipEF(corpus.model, cache=False))
    corpus.fill(store)
    ids = set(store.table.to_arrow()["id"].to_pylist())
    assert ids == set(corpus.image_ids) | {f"{i}:text" for i in corpus.image_ids} | {f"{i}:text" for i in corpus.text_ids}
    store.add_images(corpus.images[:1], metadatas=[{"year": 2024}])  # no caption, one more key
    hit = store.query(image=corpus.images[0], k=1)[0]
    assert (hit.document, hit.metadata) == (corpus.captions[0], {**corpus.metadatas[0], "year": 2024})
    assert [h.id for h in store.query("x", k=5, where={"year": 2024})] == [corpus.image_ids[0]]
    assert [h.id for h in store.query("x", k=5, where="json_get_int(metadata, 'year') > 2000")] == [corpus.image_ids[0]]


def test_where_to_sql_quotes_values():
    assert to_sql({"album": "it's", "n": 3, "ok": True, "source": "/a.jpg"}) == (
        "json_get_string(metadata, 'album') = 'it''s' AND json_get_int(metadata, 'n') = 3 AND "
        "json_get_bool(metadata, 'ok') = true AND source = '/a.jpg'"
    )
    with pytest.raises(ValueError, match="where\\['tags'\\]"):
        to_sql({"tags": ["a"]})


def test_lancedb_open_clip_scenario_with_uri_and_bytes_columns(tmp_path, corpus):
    """LanceDB's own open-clip test (two vector columns, from a URI and from bytes), on our function.

    As in LanceDB's test_embeddings: a DataFrame with labels, image URIs and image bytes; a text
    search and a PIL-image search on each vector column, read back with ``to_pydantic``; both
    columns must hold the same vectors. Answers come from numpy over ClipEF, not from LanceDB.
    """
    import pandas as pd

    func = get_registry().get("clip-embeddings").create(model=corpus.model)

    class Images(LanceModel):
        label: str
        image_uri: str = func.SourceField()
        image_bytes: bytes = func.SourceField()
        vector: Vector(func.ndims()) = func.VectorField()
        vec_from_bytes: Vector(func.ndims()) = func.VectorField()

    table = lancedb.connect(tmp_path).create_table("images", schema=Images)
    labels = [Path(p).stem for p in corpus.images]
    table.add(pd.DataFrame({"label": labels, "image_uri": corpus.images,
                            "image_bytes": [Path(p).read_bytes() for p in corpus.images]}))
    label_of = dict(zip(corpus.image_ids, labels))

    ids, _ = corpus.expected("man's best friend", "image", 1)
    # LanceDB now asks for the column name when a schema has two vector columns.
    actual = table.search("man's best friend", vector_column_name="vector").limit(1).to_pydantic(Images)[0]
    from_bytes = table.search("man's best friend", vector_column_name="vec_from_bytes").limit(1).to_pydantic(Images)[0]
    assert actual.label == from_bytes.label == label_of[ids[0]]
    np.testing.assert_allclose(actual.vector, from_bytes.vector, atol=1e-6)

    query_image = Image.open(corpus.images[4])
    ids, _ = corpus.expected(corpus.ef.encode_images([query_image]).embeddings[0], "image", 1)
    actual = table.search(query_image, vector_column_name="vector").limit(1).to_pydantic(Images)[0]
    other = table.search(query_image, vector_column_name="vec_from_bytes").limit(1).to_pydantic(Images)[0]
    assert actual.label == other.label == label_of[ids[0]] == labels[4]

    arrow = table.search().select(["vector", "vec_from_bytes"]).to_arrow()
    np.testing.assert_allclose(arrow["vector"].combine_chunks().values.to_numpy(),
                               arrow["vec_from_bytes"].combine_chunks().values.to_numpy(), atol=1e-6)
