"""Ray scale-out: two actors embed a few hundred images (some bad) into LanceDB and a Chroma server.

What it proves: every good image is stored exactly once under its content-derived id, with the
embedding a single-process ``ClipEF`` gives (max abs diff <= 1e-5); every bad one is reported
with the reason ``ClipEF`` gives; and re-running the job stores nothing new.
"""

from __future__ import annotations

import json

import io
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'clip-embeddings[ray]')")
pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'ray[data]')")
pa = pytest.importorskip("pyarrow")

from clip_embeddings.adapters.base import item_id  # noqa: E402
from clip_embeddings.apps.distributed.ray import ClipBatchEmbedder, index_with_ray, open_sink  # noqa: E402
from clip_embeddings.embedding.function import ClipEF  # noqa: E402

N_GOOD = 240


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    """A small local Ray (2 CPUs, 300 MB object store) shared by the module's tests."""
    cache = tmp_path_factory.mktemp("ray-clip-cache")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=300 * 1024**2, log_to_driver=False,
             configure_logging=False, runtime_env={"env_vars": {"CLIP_CACHE_DIR": str(cache)}})
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_model_path):
    """250+ sources: random 64x64 JPEGs, two byte-identical copies, and bad items in between."""
    folder = tmp_path_factory.mktemp("ray-images")
    rng = np.random.default_rng(0)
    sources: list[str] = []
    for i in range(N_GOOD):
        path = folder / f"img{i:03d}.jpg"
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path, quality=90)
        sources.append(str(path))
    for i in (3, 100):  # same content under another name: one item, stored once
        copy = folder / f"copy-of-{i}.jpg"
        shutil.copy(sources[i], copy)
        sources.append(str(copy))
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buf, "JPEG")
    bad = []
    for i in range(4):
        (folder / f"garbage{i}.jpg").write_bytes(b"this is not an image %d" % i)
        bad.append(str(folder / f"garbage{i}.jpg"))
    for i in range(3):
        (folder / f"truncated{i}.jpg").write_bytes(buf.getvalue()[: 200 + 50 * i])
        bad.append(str(folder / f"truncated{i}.jpg"))
    bad += [str(folder / f"missing{i}.jpg") for i in range(3)]
    for k, path in enumerate(bad):  # spread through the batches, not all at the end
        sources.insert(25 * k + 7, path)
    reference = ClipEF(tiny_model_path, device="cpu", cache=False, batch_size=32).encode_images(sources, on_error="skip")
    vectors = {item_id("image", d): v for d, v in zip(reference.digests, reference.embeddings)}
    skipped = {(s.source, s.reason) for s in reference.skipped}
    assert len(vectors) == N_GOOD and len(skipped) == len(bad)
    return sources, vectors, skipped


def check_report(report, vectors, skipped, new: int = N_GOOD) -> None:
    assert {(Path(s).name, r) for s, r in report.skipped} == {(Path(s).name, r) for s, r in skipped}
    assert N_GOOD <= report.stored <= N_GOOD + 2  # a copy in another write batch is counted as present
    assert report.new == new  # each written once; a re-run writes nothing


def test_lancedb_sink_stores_every_good_image_once_and_reruns_add_nothing(ray_local, corpus, tiny_model_path, tmp_path):
    sources, vectors, skipped = corpus
    sink = f"lancedb://{tmp_path / 'lance'}/photos"
    report = index_with_ray(sources, model=str(tiny_model_path), sink=sink, num_actors=2, batch_size=32, progress=False)
    check_report(report, vectors, skipped)

    store = open_sink(sink, ClipEF(tiny_model_path, device="cpu", cache=False))
    rows = store.table.to_arrow().select(["id", "vector", "modality", "source"])
    ids = rows.column("id").to_pylist()
    assert sorted(ids) == sorted(vectors) and store.count() == N_GOOD
    assert set(rows.column("modality").to_pylist()) == {"image"}
    stored = np.asarray(rows.column("vector").to_pylist(), np.float32)
    expected = np.stack([vectors[i] for i in ids])
    assert np.abs(stored - expected).max() <= 1e-5

    again = index_with_ray(sources, model=str(tiny_model_path), sink=sink, num_actors=2, batch_size=32, progress=False)
    check_report(again, vectors, skipped, new=0)
    assert store.count() == N_GOOD


def test_pgvector_sink_stores_every_good_image_once_and_reruns_add_nothing(ray_local, corpus, tiny_model_path,
                                                                          postgres_database):
    pytest.importorskip("psycopg")
    sources, vectors, skipped = corpus
    location = postgres_database()  # postgresql://postgres:@/tN?host=/socket/dir
    sink = "pgvector+" + location.replace("?", "/ray_photos?", 1)
    report = index_with_ray(sources, model=str(tiny_model_path), sink=sink, num_actors=2, batch_size=32, progress=False)
    check_report(report, vectors, skipped)

    import psycopg

    with psycopg.connect(location) as conn:
        rows = conn.execute("SELECT item_id, embedding::text FROM ray_photos WHERE modality = 'image'").fetchall()
    assert sorted(i for i, _ in rows) == sorted(vectors)
    stored = np.asarray([json.loads(v) for _, v in rows], np.float32)
    assert np.abs(stored - np.stack([vectors[i] for i, _ in rows])).max() <= 1e-5

    again = index_with_ray(sources, model=str(tiny_model_path), sink=sink, num_actors=2, batch_size=32, progress=False)
    check_report(again, vectors, skipped, new=0)
    assert open_sink(sink, ClipEF(tiny_model_path, device="cpu", cache=False)).count() == N_GOOD


@pytest.mark.server
def test_chroma_server_sink_stores_every_good_image_once_and_reruns_add_nothing(ray_local, corpus, tiny_model_path,
                                                                                chroma_server):
    import chromadb

    sources, vectors, skipped = corpus
    host, port = chroma_server
    sink = f"chroma+http://{host}:{port}/ray_photos"
    report = index_with_ray(sources, model=str(tiny_model_path), sink=sink, num_actors=2, batch_size=32, progress=False)
    check_report(report, vectors, skipped)

    collection = chromadb.HttpClient(host=host, port=port).get_collection("ray_photos")
    got = collection.get(include=["embeddings", "metadatas"])
    assert sorted(got["ids"]) == sorted(vectors) and collection.count() == N_GOOD
    expected = np.stack([vectors[i] for i in got["ids"]])
    assert np.abs(np.asarray(got["embeddings"], np.float32) - expected).max() <= 1e-5
    assert all(Path(m["source"]).is_absolute() for m in got["metadatas"])

    again = index_with_ray(sources, model=str(tiny_model_path), sink=sink, num_actors=2, batch_size=32, progress=False)
    check_report(again, vectors, skipped, new=0)
    assert collection.count() == N_GOOD


def test_batch_embedder_reports_bad_rows_in_place(tiny_model_path, tmp_path):
    """The actor's callable without Ray: bad rows keep their place, with a reason and no vector."""
    good = tmp_path / "good.jpg"
    Image.new("RGB", (40, 30), "blue").save(good)
    embed = ClipBatchEmbedder(str(tiny_model_path), device="cpu", batch_size=4)
    out = embed(pa.table({"source": [str(good), None, str(tmp_path / "missing.jpg")]}))
    assert out.column("error").to_pylist() == [None, "missing value", "file not found"]
    assert out.column("embedding").null_count == 2 and out.schema.field("embedding").type.list_size == embed.dim

    texts = ClipBatchEmbedder(str(tiny_model_path), modality="text", column="text", device="cpu")
    out = texts(pa.table({"text": ["a cat", "a dog"]}))
    expected = ClipEF(tiny_model_path, device="cpu", cache=False).embed_texts(["a cat", "a dog"])
    assert np.abs(np.asarray(out.column("embedding").to_pylist(), np.float32) - expected).max() <= 1e-6
    assert out.column("document").to_pylist() == ["a cat", "a dog"]


@pytest.mark.parametrize("sink", ["photos", "lancedb://photos", "chroma+http://127.0.0.1:8000/", "redis://x/y"])
def test_bad_sinks_are_refused_with_the_expected_forms(sink):
    with pytest.raises(ValueError, match="lancedb://DIR/TABLE|COLLECTION|unknown store scheme"):
        open_sink(sink, ClipEF("ViT-B/32"))  # a known name loads nothing until used


def test_module_imports_without_ray_and_says_how_to_install():
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "import clip_embeddings.apps.distributed.ray as r\n"
        "try:\n    r.embed_dataset(None, model='x')\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "pip install 'clip-embeddings[ray]'" in out.stdout, out.stderr
