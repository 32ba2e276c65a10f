"""Export: clip-retrieval's npy + Parquet layout and the one-file Parquet form, on every database.

Expected values come from ``Store.records`` (the stored vectors, tested against numpy in
test_stores_parametrised.py), compared bit for bit with what numpy and pyarrow read back.
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

import clip_embeddings as ce
from clip_embeddings.errors import EmptyCollectionError

KINDS = ["chroma", "qdrant", "lancedb"]


def stored(store, modality):
    return {r.id: r for r in store.records(modality)}


def bits(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


@pytest.mark.parametrize("kind", KINDS)
def test_npy_layout_rows_match_metadata_and_stored_vectors_bit_for_bit(kind, tmp_path, open_synthetic):
    store = open_synthetic(kind, 100)
    store.add_texts(["a dog", "the moon"])
    report = store.export(tmp_path / "out", format="npy", shard_size=40)
    out = tmp_path / "out"
    # 100 images in shards of 40: three shards, named as clip-retrieval names them.
    assert sorted(p.name for p in (out / "img_emb").iterdir()) == ["img_emb_0.npy", "img_emb_1.npy", "img_emb_2.npy"]
    assert sorted(p.name for p in (out / "metadata").iterdir()) == [f"metadata_{i}.parquet" for i in range(3)]
    assert report.counts == {"image": 100, "text": 2}
    vectors = np.concatenate([np.load(out / "img_emb" / f"img_emb_{i}.npy") for i in range(3)])
    meta = pq.read_table(out / "metadata").to_pylist()  # the folder as one dataset, shards in order
    assert vectors.dtype == np.float32 and vectors.shape == (100, store.ef.dim) and len(meta) == 100
    expected = stored(store, "image")
    assert sorted(row["id"] for row in meta) == sorted(expected)
    for row, vector in zip(meta, vectors):
        r = expected[row["id"]]
        assert np.array_equal(bits(vector), bits(r.vector)), row["id"]
        assert (row["image_path"], row["caption"], row["digest"]) == (r.source, r.document, r.digest)
        assert {k: row[k] for k in r.metadata} == r.metadata  # the user's keys are columns
        assert all(row[k] is None for k in ("album", "n", "score") if k not in r.metadata)
    texts = np.load(out / "text_emb" / "text_emb_0.npy")
    text_meta = pq.read_table(out / "text_metadata").to_pylist()
    expected_texts = stored(store, "text")
    assert sorted(row["caption"] for row in text_meta) == ["a dog", "the moon"]
    for row, vector in zip(text_meta, texts):
        assert np.array_equal(bits(vector), bits(expected_texts[row["id"]].vector))


@pytest.mark.parametrize("kind", KINDS)
def test_one_parquet_file_with_a_vector_column(kind, tmp_path, open_synthetic):
    store = open_synthetic(kind, 30)
    store.add_texts(["a red car"])
    report = store.export(tmp_path / "all.parquet", format="parquet")
    assert report.files == [str(tmp_path / "all.parquet")]
    table = pq.read_table(tmp_path / "all.parquet")
    assert table.num_rows == 31 and table.schema.field("vector").type.list_size == store.ef.dim
    expected = {**{(i, "image"): r for i, r in stored(store, "image").items()},
                **{(i, "text"): r for i, r in stored(store, "text").items()}}
    rows = table.to_pylist()
    assert [row["modality"] for row in rows] == ["image"] * 30 + ["text"]
    for row in rows:
        r = expected[(row["id"], row["modality"])]
        assert np.array_equal(bits(row["vector"]), bits(r.vector))
        assert (row["source"], row["document"], row["digest"]) == (r.source, r.document, r.digest)


def test_an_empty_collection_is_a_clear_error(tmp_path, tiny_model_path):
    from clip_embeddings.adapters import open_store

    store = open_store("lancedb", str(tmp_path / "db"), "empty", ce.ClipEF(str(tiny_model_path), cache=False))
    with pytest.raises(EmptyCollectionError, match="LanceDB table 'empty' holds nothing: nothing to export"):
        store.export(tmp_path / "out")
    with pytest.raises(ValueError, match="format must be one of npy, parquet"):
        store.export(tmp_path / "out", format="csv")
