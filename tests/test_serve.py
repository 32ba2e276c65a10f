"""``clip-embeddings serve``: the JSON API, dynamic batching, limits, and ``ClipEF(server=...)``.

Every test talks HTTP to a real uvicorn server on loopback, in front of a real Chroma collection
of the example photos, with the tiny random model. Expected vectors come from a local ``ClipEF``
on the same weights with the cache off, so no value is computed by the server under test.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

import clip_embeddings as ce  # noqa: E402
from clip_embeddings.adapters import open_store  # noqa: E402
from clip_embeddings.errors import ImageLoadError, ModelMismatchError  # noqa: E402
from clip_embeddings.apps.server import Batcher, QueueFull, ServeLimits, create_app  # noqa: E402
from tests.serving import running  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# Rows computed in a shared pass may differ from rows computed alone by float summation order in
# the matrix kernels (measured: up to ~1e-7); anything near 1e-5 would be a real mix-up of rows.
SHARED_PASS_ATOL = 1e-5


@pytest.fixture(scope="module")
def collection(tmp_path_factory, tiny_model_path, sample_images):
    """A Chroma collection of the example photos, reopened as the server opens it (by its config)."""
    location = tmp_path_factory.mktemp("served-db")
    open_store("chroma", str(location), "photos", ce.ClipEF(tiny_model_path, device="cpu", cache=False)).add_images(
        [str(p) for p in sample_images])
    return open_store("chroma", str(location), "photos")


@pytest.fixture(scope="module")
def local(tiny_model_path):
    return ce.ClipEF(tiny_model_path, device="cpu", cache=False)


@pytest.fixture(scope="module")
def server(collection):
    """Served with a batching window wide enough that concurrent test requests surely meet."""
    app = create_app(collection.ef, collection, ServeLimits(max_wait_ms=150, max_upload_bytes=2**20, max_items=16))
    with running(app) as url:
        yield url, app.state.service


@pytest.fixture
def client(server, no_proxy):
    with httpx.Client(base_url=server[0], timeout=60, trust_env=False) as c:
        yield c


def b64(path) -> dict:
    return {"base64": base64.b64encode(Path(path).read_bytes()).decode()}


def jpeg(seed: int, size=(48, 40)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


# --- /embed -------------------------------------------------------------------------------------

def test_embed_returns_the_local_unit_vectors(client, local, sample_images):
    texts = ["a photo of a cat", "a rocket on the launch pad"]
    answer = client.post("/embed", json={"texts": texts, "images": [b64(sample_images[0])]}).json()
    got_texts, got_image = np.asarray(answer["texts"], np.float32), np.asarray(answer["images"], np.float32)
    np.testing.assert_array_equal(got_texts, local.embed_texts(texts))
    np.testing.assert_array_equal(got_image, local.embed_images([str(sample_images[0])]))
    np.testing.assert_allclose(np.linalg.norm(got_texts, axis=1), 1, atol=1e-6)
    assert answer["fingerprint"] == local.fingerprint and answer["dim"] == local.dim

    upload = client.post("/embed", files=[("image", ("cat.jpg", sample_images[1].read_bytes()))],
                         data={"texts": "a cat"}).json()
    np.testing.assert_array_equal(np.asarray(upload["images"], np.float32), local.embed_images([str(sample_images[1])]))
    np.testing.assert_array_equal(np.asarray(upload["texts"], np.float32), local.embed_texts(["a cat"]))


def test_embed_skip_reports_bad_items_by_index(client, local):
    good = jpeg(1)
    answer = client.post("/embed", json={"images": [{"base64": base64.b64encode(b"not an image").decode()},
                                                    {"base64": base64.b64encode(good).decode()}],
                                         "on_error": "skip"}).json()
    assert answer["image_indices"] == [1]
    assert [s["index"] for s in answer["skipped"]] == [0] and "not an image" in answer["skipped"][0]["reason"]
    np.testing.assert_array_equal(np.asarray(answer["images"], np.float32), local.embed_images([good]))


def test_concurrent_requests_share_passes_and_match_alone(server, local, no_proxy):
    url, service = server
    # Single images, and texts of different lengths (so a shared pass pads them to another width).
    inputs = [("image", jpeg(seed)) for seed in range(8)] + [("text", "a cat " * n) for n in range(1, 9)]
    before = service.batcher.stats.passes, service.batcher.stats.jobs
    barrier = threading.Barrier(len(inputs))

    def one(item: tuple[str, object]) -> np.ndarray:
        kind, value = item
        with httpx.Client(base_url=url, timeout=60, trust_env=False) as c:
            barrier.wait()  # all requests leave together, inside one batching window
            if kind == "image":
                answer = c.post("/embed", files=[("image", ("x.jpg", value))]).json()["images"]
            else:
                answer = c.post("/embed", json={"texts": [value]}).json()["texts"]
            return np.asarray(answer, np.float32)[0]

    with ThreadPoolExecutor(len(inputs)) as pool:
        got = list(pool.map(one, inputs))
    passes = service.batcher.stats.passes - before[0]
    assert service.batcher.stats.jobs - before[1] == len(inputs)
    assert passes < len(inputs) and service.batcher.stats.largest > 1, f"{len(inputs)} requests took {passes} passes"
    for (kind, value), row in zip(inputs, got):
        alone = local.embed_images([value])[0] if kind == "image" else local.embed_texts([value])[0]
        np.testing.assert_allclose(row, alone, rtol=0, atol=SHARED_PASS_ATOL)


# --- /search, thumbnails, /classify --------------------------------------------------------------

def test_text_search_ranks_like_the_store(client, collection):
    hits = client.post("/search", json={"text": "a photo of a cat", "k": 4}).json()["hits"]
    expected = collection.query("a photo of a cat", k=4)
    assert [h["id"] for h in hits] == [h.id for h in expected]
    np.testing.assert_allclose([h["score"] for h in hits], [h.score for h in expected], atol=1e-6)
    assert hits[0]["name"] == os.path.basename(expected[0].source) and "/" not in hits[0]["name"]


def test_image_search_by_upload_and_by_item_finds_the_image_itself(client, sample_images):
    photo = sample_images[2]
    by_upload = client.post("/search", files={"image": (photo.name, photo.read_bytes())}, data={"k": "3"}).json()["hits"]
    assert by_upload[0]["name"] == photo.name and by_upload[0]["score"] == pytest.approx(1, abs=1e-5)
    by_item = client.post("/search", json={"item": by_upload[0]["id"], "k": 3}).json()["hits"]
    assert [h["id"] for h in by_item] == [h["id"] for h in by_upload]


def test_thumbnail_is_a_small_jpeg_of_the_item(client, sample_images):
    hit = client.post("/search", json={"text": "anything", "k": 1}).json()["hits"][0]
    response = client.get(hit["thumbnail"])
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    thumb = Image.open(io.BytesIO(response.content))
    original = Image.open(next(p for p in sample_images if p.name == hit["name"]))
    assert max(thumb.size) == 256 or thumb.size == original.size
    assert abs(thumb.width / thumb.height - original.width / original.height) < 0.02


def test_classify_matches_the_library(client, local, sample_images):
    labels = ["a cat", "a rocket", "coffee"]
    answer = client.post("/classify", json={"labels": labels, "images": [b64(p) for p in sample_images[:3]], "k": 3}).json()
    expected = ce.ZeroShotClassifier(local, labels).predict([str(p) for p in sample_images[:3]], top_k=3)
    assert [r["labels"] for r in answer["results"]] == expected.top_labels
    np.testing.assert_allclose([r["probabilities"] for r in answer["results"]], expected.top_scores, atol=1e-5)


# --- bad requests -------------------------------------------------------------------------------

BAD = [
    ("/embed", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "malformed JSON"),
    ("/embed", {"json": {"images": [{"base64": base64.b64encode(b"plain text").decode()}]}}, 422, "not an image"),
    ("/embed", {"files": [("image", ("notes.txt", b"plain text"))]}, 422, "upload notes.txt: not an image"),
    ("/embed", {"content": b"x" * (2**20 + 1), "headers": {"content-type": "application/json"}}, 413, "limit"),
    ("/embed", {"json": {"images": [{"url": "/etc/passwd"}]}}, 400, "never opens paths"),
    ("/embed", {"json": {"images": [{"url": "file:///etc/passwd"}]}}, 400, "http:// or https://"),
    ("/embed", {"json": {"texts": "one string"}}, 400, "texts must be a list"),
    ("/embed", {"json": {"texts": ["x"] * 17}}, 413, "more than the limit of 16"),
    ("/embed", {"json": {}}, 400, "nothing to embed"),
    ("/search", {"json": {"text": "a cat", "collection": "holidays"}}, 404, "unknown collection 'holidays'"),
    ("/search", {"json": {"text": "a cat", "k": 0}}, 400, "k must be an integer"),
    ("/search", {"json": {"text": "a cat", "where": "1=1; drop table"}}, 400, "where: malformed JSON"),
    ("/search", {"json": {"text": "a cat", "item": "x"}}, 400, "exactly one of"),
    ("/search", {"json": {"item": "no-such-item"}}, 404, "no image item"),
    ("/classify", {"json": {"labels": ["cat"], "images": []}}, 400, "at least two labels"),
]


@pytest.mark.parametrize("path, request_args, status, reason", BAD, ids=[b[3] for b in BAD])
def test_bad_request_gets_a_4xx_with_its_reason(client, path, request_args, status, reason):
    response = client.post(path, **request_args)
    assert response.status_code == status, response.text
    assert reason in response.json()["detail"]
    assert client.post("/embed", json={"texts": ["still serving"]}).status_code == 200


def test_thumbnail_of_an_unknown_item_is_404(client):
    assert client.get("/thumbnail/00000000-0000-0000-0000-000000000000").status_code == 404
    assert client.get("/thumbnail/..%2F..%2Fetc%2Fpasswd").status_code in (400, 404)


def test_bearer_token(collection, no_proxy):
    with running(create_app(collection.ef, collection, ServeLimits(token="s3cret"))) as url:
        with httpx.Client(base_url=url, trust_env=False) as c:
            assert c.post("/embed", json={"texts": ["a"]}).status_code == 401
            wrong = c.post("/embed", json={"texts": ["a"]}, headers={"Authorization": "Bearer guess"})
            assert wrong.status_code == 401 and "wrong bearer token" in wrong.json()["detail"]
            right = c.post("/embed", json={"texts": ["a"]}, headers={"Authorization": "Bearer s3cret"})
            assert right.status_code == 200
            assert c.get("/health").status_code == 200 and c.get("/").status_code == 200  # the page asks for it


def test_full_queue_is_429_and_timeout_is_503(collection, no_proxy):
    app = create_app(collection.ef, collection, ServeLimits(max_queue=1, request_timeout=1.0))
    service, gate = app.state.service, threading.Event()
    with running(app) as url, httpx.Client(base_url=url, timeout=30, trust_env=False) as c:
        service.batcher.submit("call", gate.wait)  # the model's thread is busy until the gate opens
        while service.batcher.depth:
            time.sleep(0.01)
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(c.post, "/embed", json={"texts": ["queued"]})
            while service.batcher.depth < 1:
                time.sleep(0.01)
            full = c.post("/embed", json={"texts": ["one too many"]})
            assert full.status_code == 429 and "busy" in full.json()["detail"]
            timed_out = waiting.result()
        assert timed_out.status_code == 503 and "timed out" in timed_out.json()["detail"]
        gate.set()
        assert c.post("/embed", json={"texts": ["after"]}).status_code == 200


def test_pixel_limit_is_422_and_a_body_that_never_arrives_is_408(collection, no_proxy):
    app = create_app(collection.ef, collection, ServeLimits(max_pixels=48 * 40 - 1, request_timeout=1.0))
    with running(app) as url, httpx.Client(base_url=url, timeout=30, trust_env=False) as c:
        too_big = c.post("/embed", files=[("image", ("big.jpg", jpeg(0, size=(48, 40))))])
        assert too_big.status_code == 422 and "max_pixels" in too_big.json()["detail"]
        assert c.post("/embed", files=[("image", ("ok.jpg", jpeg(0, size=(40, 40))))]).status_code == 200
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(b"POST /embed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 1000\r\n\r\n{\"texts\": [")  # ...and then nothing more
            answer = s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 1 s" in answer
        assert app.state.service.batcher.stats.jobs == 2  # the two uploads; the slow body queued nothing


def test_a_client_that_disconnects_mid_upload_costs_nothing(server, client):
    url, service = server
    jobs = service.batcher.stats.jobs
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(b"POST /embed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                  b"Content-Length: 500000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"image\"; "
                  b"filename=\"a.jpg\"\r\n\r\n" + jpeg(3)[:1000])
    time.sleep(0.3)
    assert client.get("/health").json()["queue_depth"] == 0
    assert service.batcher.stats.jobs == jobs
    assert client.post("/embed", json={"texts": ["still serving"]}).status_code == 200


def test_health_reports_model_fingerprint_precision_and_queue(client, local):
    health = client.get("/health").json()
    assert health["fingerprint"] == local.fingerprint and health["dim"] == local.dim
    assert health["precision"] == local.loaded_model().precision and health["precision"].startswith("fp32")
    assert health["queue_depth"] == 0
    assert health["collection"]["name"] == "photos" and health["collection"]["count"] == 7


def test_batcher_refuses_beyond_its_queue_and_splits_results(local):
    batcher, gate = Batcher(local, max_queue=1), threading.Event()
    try:
        batcher.submit("call", gate.wait)
        while batcher.depth:
            time.sleep(0.01)
        queued = batcher.submit("texts", ["a", "b"])
        with pytest.raises(QueueFull, match="limit 1"):
            batcher.submit("texts", ["c"])
        gate.set()
        np.testing.assert_array_equal(queued.result(10), local.embed_texts(["a", "b"]))
    finally:
        gate.set()
        batcher.close()


# --- ClipEF(server=...) -------------------------------------------------------------------------

def test_remote_clipef_gives_the_local_vectors_ids_and_errors(server, local, sample_images, tmp_path, no_proxy):
    remote = ce.ClipEF(server=server[0], batch_size=3)
    photo = sample_images[0]
    items = [str(photo), Image.open(photo), np.asarray(Image.open(sample_images[1])), photo.read_bytes(),
             str(tmp_path / "missing.jpg"), b"not an image"]
    want, got = local.encode_images(items, on_error="skip"), remote.encode_images(items, on_error="skip")
    assert got.indices == want.indices and got.digests == want.digests
    assert [(s.index, s.source) for s in got.skipped] == [(s.index, s.source) for s in want.skipped]
    assert [s.reason for s in got.skipped] == [s.reason for s in want.skipped]
    np.testing.assert_allclose(got.embeddings, want.embeddings, rtol=0, atol=SHARED_PASS_ATOL)
    np.testing.assert_array_equal(remote.embed_texts(["a cat", "a dog"]), local.embed_texts(["a cat", "a dog"]))
    many = [f"photo number {i}" for i in range(20)]  # more than the server's max_items=16 in one request
    np.testing.assert_allclose(ce.ClipEF(server=server[0], batch_size=64).embed_texts(many), local.embed_texts(many),
                               rtol=0, atol=SHARED_PASS_ATOL)
    with pytest.raises(ImageLoadError, match="item 4"):
        remote.encode_images(items, on_error="raise")
    assert (remote.fingerprint, remote.dim) == (local.fingerprint, local.dim)
    config = remote.get_config()
    assert config["server"] == server[0] and config["fingerprint"] == local.fingerprint
    assert ce.ClipEF.build_from_config(config).server == server[0]


def test_remote_clipef_checks_the_collection_fingerprint(server, no_proxy):
    stale = ce.ClipEF(server=server[0], expected_fingerprint="0" * 16, expected_dim=64)
    with pytest.raises(ModelMismatchError, match="fingerprint 0000000000000000"):
        stale.embed_texts(["a cat"])


def test_chroma_collection_made_through_the_server_reopens_in_a_new_process(server, tmp_path, sample_images, no_proxy):
    import chromadb

    path = str(tmp_path / "remote-db")
    photos = chromadb.PersistentClient(path).create_collection(
        "remote", embedding_function=ce.ClipEF(server=server[0]), configuration={"hnsw": {"space": "cosine"}})
    photos.add(ids=[p.stem for p in sample_images], images=[np.asarray(Image.open(p)) for p in sample_images])
    here = photos.query(query_texts=["a photo of a cat"], n_results=3)["ids"][0]
    script = (
        "import json, chromadb, clip_embeddings\n"
        "from clip_embeddings.embedding.loaded import model_load_count\n"
        f"c = chromadb.PersistentClient({path!r}).get_collection('remote')\n"
        "ids = c.query(query_texts=['a photo of a cat'], n_results=3)['ids'][0]\n"
        "print(json.dumps({'ids': ids, 'loads': model_load_count()}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    reopened = json.loads(out.stdout.strip().splitlines()[-1])
    assert reopened == {"ids": here, "loads": 0}  # same neighbours, and no model loaded in that process


# --- the command line ---------------------------------------------------------------------------

@pytest.mark.slow
def test_cli_serve_end_to_end(collection, tiny_model_path, no_proxy):
    from tests.servers import free_port

    location = collection.collection._client.get_settings().persist_directory
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "clip_embeddings.apps.cli", "serve", "--db", "chroma", "--location", location,
               "--collection", "photos", "--port", str(port), "--device", "cpu"]
    missing = subprocess.run([*command[:-6], "--collection", "nope", "--port", str(port)], capture_output=True,
                             text=True, env=env, timeout=300)
    assert missing.returncode == 1 and "no chroma collection 'nope'" in missing.stderr
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=30) as c:
            while True:
                try:
                    if c.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
                time.sleep(0.2)
            hits = c.post("/search", json={"text": "a cat", "k": 2}).json()["hits"]
            assert [h["id"] for h in hits] == [h.id for h in collection.query("a cat", k=2)]
    finally:
        process.terminate()
        process.wait(30)
