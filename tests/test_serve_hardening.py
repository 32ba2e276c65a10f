"""The server under a hostile client: what runs on the model thread, what a response reveals, who is served.

In-process apps (httpx over ASGI, Starlette's TestClient) where the behaviour is the app's; a real
uvicorn on loopback where it depends on the socket (disconnects, ``--root-path``). The store is a
real Chroma collection of the example photos, the model the tiny random one.
"""

from __future__ import annotations

import asyncio
import base64
import http.server
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

import clip_embeddings as ce  # noqa: E402
import clip_embeddings.apps.server.service as service_module  # noqa: E402
import clip_embeddings.tasks.zeroshot as zeroshot  # noqa: E402
from clip_embeddings.adapters import open_store  # noqa: E402
from clip_embeddings.apps.server import ServeLimits, create_app  # noqa: E402
from tests.servers import serving  # noqa: E402
from tests.serving import running  # noqa: E402

LOCAL = "http://127.0.0.1"


@pytest.fixture(scope="module")
def photos(tmp_path_factory, sample_images):
    """The example photos copied into a folder of their own (so a test may delete one)."""
    folder = tmp_path_factory.mktemp("private-photos-dir")
    for path in sample_images:
        shutil.copy(path, folder / path.name)
    return sorted(folder.glob("*.jpg"))


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_model_path, photos):
    location = tmp_path_factory.mktemp("hardening-db")
    ef = ce.ClipEF(tiny_model_path, device="cpu", cache=False)
    open_store("chroma", str(location), "photos", ef).add_images([str(p) for p in photos],
                                                                 metadatas=[{"album": "examples"}] * len(photos))
    return open_store("chroma", str(location), "photos")


@pytest.fixture(scope="module")
def app(store):
    return create_app(store.ef, store, ServeLimits(request_timeout=60))


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, base_url=LOCAL) as c:
        yield c


def b64(path) -> dict:
    return {"base64": base64.b64encode(Path(path).read_bytes()).decode()}


# --- what runs on the model thread ------------------------------------------------------------------

class _Stall(http.server.BaseHTTPRequestHandler):
    release = threading.Event()

    def do_GET(self):  # noqa: N802 - http.server's name
        self.release.wait(30)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_urls_are_fetched_beside_the_model_thread_not_on_it(store, no_proxy):
    # 16 stalling URLs used to hold the model thread: every other client waited 30-40 s.
    app = create_app(store.ef, store, ServeLimits(allow_private_urls=True, url_timeout=3, request_timeout=60))
    finished: list[str] = []
    with serving(_Stall) as stall, running(app) as url, httpx.Client(base_url=url, timeout=60, trust_env=False) as c:
        def post(name, body):
            response = c.post("/embed", json=body)
            finished.append(name)
            return response

        with ThreadPoolExecutor(2) as pool:
            stalled = pool.submit(post, "url", {"images": [{"url": f"{stall.url}/{i}.jpg"} for i in range(4)]})
            time.sleep(0.3)  # let the URL request reach its fetches
            texts = pool.submit(post, "texts", {"texts": ["a cat"]})
            assert texts.result().status_code == 200
            assert stalled.result().status_code == 422
        _Stall.release.set()
    assert finished == ["texts", "url"], "the texts waited for the URL fetches: they ran on the model thread"


def test_a_job_whose_client_has_gone_is_dropped_before_it_runs(store, no_proxy, monkeypatch):
    app = create_app(store.ef, store, ServeLimits(request_timeout=60))
    service, gate = app.state.service, threading.Event()
    embedded: list[str] = []
    real = service.ef.embed_texts
    monkeypatch.setattr(service.ef, "embed_texts", lambda texts: embedded.extend(texts) or real(texts))
    with running(app) as url:
        service.batcher.submit("call", gate.wait)  # the model's thread is busy until the gate opens
        with httpx.Client(base_url=url, timeout=1.0, trust_env=False) as c:
            with pytest.raises(httpx.ReadTimeout):
                c.post("/embed", json={"texts": ["nobody waits for me"]})  # the client gives up and leaves
        deadline = time.monotonic() + 20
        while not all(job is None or job.future.cancelled() for job in list(service.batcher._queue.queue)):
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        gate.set()
        with httpx.Client(base_url=url, timeout=60, trust_env=False) as c:
            assert c.post("/embed", json={"texts": ["after"]}).status_code == 200
    assert embedded == ["after"], "the job of a client that had gone was run"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.text(min_size=1, max_size=400), min_size=2, max_size=4, unique=True), min_size=1, max_size=8))
def test_the_prototype_cache_is_bounded_in_bytes(tiny_model_path, monkeypatch, label_sets):
    monkeypatch.setattr(zeroshot, "_PROTOTYPE_CACHE_BYTES", 2_000)
    zeroshot.clear_prototype_cache()
    ef = ce.ClipEF(tiny_model_path, device="cpu", cache=False)
    for labels in label_sets:
        zeroshot.ZeroShotClassifier(ef, labels, ["{}"]).prototypes  # noqa: B018
        held = sum(v.nbytes for v in zeroshot._prototypes.values()) + sum(
            len(s.encode("utf-8", "surrogatepass")) for key in zeroshot._prototypes for s in (*key[-2], *key[-1]))
        assert held <= 2_000
    zeroshot.clear_prototype_cache()


def test_thumbnail_decodes_are_bounded_in_concurrency(app, store, monkeypatch):
    # 8 concurrent thumbnails of 36 MP PNGs once cost +1.1 GB: every one decoded at once.
    live, most = 0, 0
    lock = threading.Lock()
    real = service_module.make_thumbnail

    def slow(source, options):
        nonlocal live, most
        with lock:
            live += 1
            most = max(most, live)
        time.sleep(0.2)
        try:
            return real(source, options)
        finally:
            with lock:
                live -= 1

    monkeypatch.setattr(service_module, "make_thumbnail", slow)
    app.state.service._thumbnails.clear()
    ids = [h.id for h in store.search(np.ones(store.ef.dim, np.float32), k=8)]

    async def fetch_all():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=LOCAL) as c:
            return await asyncio.gather(*(c.get(f"/thumbnail/{i}") for i in ids))

    answers = asyncio.run(fetch_all())
    assert [a.status_code for a in answers] == [200] * len(ids) and len(ids) >= 6
    assert most <= service_module.THUMBNAIL_DECODES


def test_health_does_not_recount_the_collection_per_request(store, tiny_model_path):
    # /health counted a Chroma collection by scanning its ids, every time: a flood slowed searches 4.5-6x.
    calls = []

    class Counting:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def count(self, modality=None):
            calls.append(modality)
            return self.inner.count(modality)

    app = create_app(store.ef, Counting(store), ServeLimits())

    async def flood():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=LOCAL) as c:
            return await asyncio.gather(*(c.get("/health") for _ in range(40)))

    answers = asyncio.run(flood())
    assert {a.json()["collection"]["count"] for a in answers} == {store.count()}
    assert len(calls) == 1


# --- malformed input is a 4xx naming the field ---------------------------------------------------

MALFORMED = [
    ("/embed", b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ("/search", b'{"text": "a cat", "k": Infinity}', "Infinity"),
    ("/search", b'{"text": "a cat", "k": NaN}', "NaN"),
    ("/search", b'{"text": "a cat", "k": 1e400}', "too large"),
    ("/search", b'{"text": "a cat", "k": 1e300}', "k must be an integer"),
    ("/search", b'{"text": "a cat", "k": 100000000000000000000000000000}', "k must be an integer"),
    ("/search", b'{"text": "a cat", "where": {"album": NaN}}', "NaN"),
    ("/search", b'{"text": "a cat", "where": "{\\"album\\": NaN}"}', "where"),
    ("/search", b'{"text": "a cat", "modality": ["image"]}', "modality"),
    ("/classify", b'{"labels": ["a", "b"], "templates": ["{} {}"], "images": [{"url": "http://x/a.jpg"}]}', "templates[0]"),
    ("/classify", b'{"labels": ["a", "b"], "templates": ["{0.__class__}"], "images": [{"url": "http://x/a.jpg"}]}', "templates[0]"),
]


@pytest.mark.parametrize("path, raw, reason", MALFORMED, ids=[m[2] + "-" + m[0] for m in MALFORMED])
def test_malformed_input_is_a_4xx_naming_it(client, path, raw, reason):
    response = client.post(path, content=raw, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500, response.text
    assert reason in response.json()["detail"]
    assert client.post("/embed", json={"texts": ["still serving"]}).status_code == 200


# --- what a response reveals ----------------------------------------------------------------------

@pytest.mark.parametrize("key", ["source", "digest", "item_id", "modality", "document", "$and", "$or"])
def test_where_takes_only_the_users_own_metadata_keys(client, photos, key):
    # where={"source": path} answered whether a guessed path existed.
    response = client.post("/search", json={"text": "a cat", "where": {key: str(photos[0])}})
    assert response.status_code == 400 and key in response.json()["detail"]
    own = client.post("/search", json={"text": "a cat", "where": {"album": "examples"}})
    assert own.status_code == 200 and len(own.json()["hits"]) == len(photos)


def test_a_deleted_thumbnail_is_a_404_without_its_path(tmp_path, tiny_model_path, sample_images):
    shutil.copy(sample_images[0], tmp_path / "holiday.jpg")
    ef = ce.ClipEF(tiny_model_path, device="cpu", cache=False)
    store = open_store("chroma", str(tmp_path / "db"), "photos", ef)
    store.add_images([str(tmp_path / "holiday.jpg")])
    (tmp_path / "holiday.jpg").unlink()
    item = store.search(np.ones(ef.dim, np.float32), k=1)[0].id
    with TestClient(create_app(ef, store), base_url=LOCAL) as c:
        response = c.get(f"/thumbnail/{item}")
    assert response.status_code == 404 and "cannot be read" in response.text
    assert str(tmp_path) not in response.text and "holiday.jpg" in response.text


def test_health_shows_no_path_and_without_the_token_nothing_but_ok(store, tiny_model_path):
    app = create_app(store.ef, store, ServeLimits(token="t0ken"))
    with TestClient(app, base_url=LOCAL) as c:
        anonymous = c.get("/health")
        assert anonymous.status_code == 200 and anonymous.json() == {"status": "ok", "auth": True}
        full = c.get("/health", headers={"Authorization": "Bearer t0ken"}).json()
    assert str(tiny_model_path.parent) not in str(full) and full["model"] == tiny_model_path.name


def test_an_internal_error_does_not_leak_its_message(store, photos):
    class Broken:
        name, ef = store.name, store.ef

        def search(self, *args, **kwargs):
            raise RuntimeError(f"cannot open {photos[0].parent}/secret.sqlite3")

    with TestClient(create_app(store.ef, Broken()), base_url=LOCAL, raise_server_exceptions=False) as c:
        response = c.post("/search", json={"text": "a cat"})
    assert response.status_code == 500 and str(photos[0].parent) not in response.text


# --- who is served ----------------------------------------------------------------------------------

@pytest.mark.parametrize("host, allowed", [
    ("127.0.0.1:8765", True), ("localhost", True), ("LOCALHOST:1", True), ("[::1]:8765", True),
    ("attacker.example:8765", False), ("127.0.0.1.nip.io", False), ("", False), ("evil.com, 127.0.0.1", False),
])
def test_only_allowed_host_names_are_served(app, host, allowed):
    # DNS rebinding: a web page's name resolving to 127.0.0.1 reached a loopback server with no token.
    with TestClient(app, base_url=LOCAL) as c:
        response = c.get("/health", headers={"host": host})
        assert (response.status_code == 200) == allowed, response.text
        if not allowed:
            assert response.status_code == 400 and "--allowed-hosts" in response.json()["detail"]
            assert c.post("/embed", json={"texts": ["x"]}, headers={"host": host}).status_code == 400


def test_allowed_hosts_can_name_others_or_any(store):
    for hosts, host, ok in ((("photos.lan",), "photos.lan:80", True), (("photos.lan",), "localhost", False),
                            (("*",), "anything.example", True)):
        with TestClient(create_app(store.ef, store, ServeLimits(allowed_hosts=hosts)), base_url=LOCAL) as c:
            assert (c.get("/health", headers={"host": host}).status_code == 200) == ok


def test_serve_answers_to_the_address_it_binds():
    from clip_embeddings.apps.server.limits import default_allowed_hosts

    assert "192.168.1.20" in default_allowed_hosts("192.168.1.20")
    assert "attacker.example" not in default_allowed_hosts("127.0.0.1")


@pytest.mark.parametrize("token", ["s3cret", "pässwörd-✓-密码"])
def test_tokens_are_compared_as_utf8_bytes(store, token):
    with TestClient(create_app(store.ef, store, ServeLimits(token=token)), base_url=LOCAL) as c:
        right = c.post("/embed", json={"texts": ["a"]}, headers={"Authorization": f"Bearer {token}".encode()})
        assert right.status_code == 200, right.text
        wrong = c.post("/embed", json={"texts": ["a"]}, headers={"Authorization": b"Bearer " + token.encode()[:-1]})
        assert wrong.status_code == 401


def test_the_page_loads_behind_a_proxy_prefix_with_a_token(store, no_proxy):
    # The documented proxy set-up (--root-path /clip --token T) answered 401 for the page itself.
    # The proxy strips its prefix (proxy_pass http://127.0.0.1:8765/), so paths arrive without it.
    app = create_app(store.ef, store, ServeLimits(token="T"))
    with running(app, root_path="/clip") as url, httpx.Client(base_url=url, trust_env=False) as c:
        page = c.get("/")
        assert page.status_code == 200 and "<html" in page.text.lower()
        assert c.get("/static/app.js").status_code == 200
        assert c.get("/health").status_code == 200
        assert c.post("/embed", json={"texts": ["a"]}).status_code == 401
        found = c.post("/search", json={"text": "a"}, headers={"Authorization": "Bearer T"})
        assert found.status_code == 200 and found.json()["hits"][0]["thumbnail"].startswith("/clip/thumbnail/")


# --- the remote client ------------------------------------------------------------------------------

def test_the_remote_client_never_sends_its_token_to_another_origin(monkeypatch, no_proxy):
    from clip_embeddings.embedding.remote import RemoteModel, ServerError

    seen: list[str | None] = []

    class Elsewhere(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"fingerprint": "x", "dim": 1}')

        def log_message(self, *args):
            pass

    with serving(Elsewhere) as other:
        class Redirecting(Elsewhere):
            def do_GET(self):  # noqa: N802
                if self.path.startswith("/moved"):
                    return super().do_GET()
                same = self.path == "/health-here"
                self.send_response(302)
                self.send_header("Location", "/moved" if same else other.url + "/health")
                self.end_headers()

        monkeypatch.setenv("CLIP_EMBEDDINGS_TOKEN", "t0ken")
        with serving(Redirecting) as server:
            with pytest.raises(ServerError, match="another origin"):
                RemoteModel(server.url).health()
            assert seen == [], "the token went to the redirect's other host"
            assert RemoteModel(server.url).request("GET", "/health-here")["dim"] == 1  # same origin: followed
            assert seen == ["Bearer t0ken"]


def test_the_remote_client_says_when_a_server_wants_a_token(store, no_proxy, monkeypatch):
    from clip_embeddings.embedding.remote import RemoteModel, ServerError

    monkeypatch.delenv("CLIP_EMBEDDINGS_TOKEN", raising=False)
    with running(create_app(store.ef, store, ServeLimits(token="T"))) as url:
        with pytest.raises(ServerError, match="needs a token"):
            RemoteModel(url).health()
