"""The one HTTP client (clip_embeddings.core.http) as the remote client, image URLs and downloads use
it, against real HTTP servers on loopback (tests/servers.py): nothing in urllib3 is mocked.

The server counts what it sees (connections, requests, headers, times), so each test asserts what
crossed the wire: connections reused, requests retried after the Retry-After they were told, at
most as often as allowed, and a bearer token never sent to another origin.
"""

from __future__ import annotations

import http.server
import json
import threading
import time

import pytest

from clip_embeddings.core.http import HTTPClient, read_body, release
from clip_embeddings.embedding.remote import RemoteModel
from clip_embeddings.errors import ServerError
from clip_embeddings.inputs.http import read_url
from clip_embeddings.inputs.options import LoaderOptions
from tests.servers import serving

pytestmark = pytest.mark.usefixtures("no_proxy")


class _Counting(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive. ``server.script`` lists the answers to give, in order, as
    ``(status, headers)``; past its end every answer is 200 with a JSON body."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def setup(self):
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with self.server.lock:
            self.server.seen.append((self.command, self.path, self.headers.get("Authorization"), time.monotonic(), body))
            step = self.server.script.pop(0) if self.server.script else (200, {})
        status, headers = step
        if status == "hang up":  # close without an answer: the request was sent, then lost
            self.close_connection = True
            return
        payload = json.dumps({"path": self.path, "n": len(self.server.seen)}).encode()
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _answer  # noqa: N815


@pytest.fixture
def counting():
    with serving(_Counting) as server:
        server.lock, server.connections, server.seen, server.script = threading.Lock(), 0, [], []
        yield server


def test_the_remote_client_reuses_one_connection(counting):
    remote = RemoteModel(counting.url)
    answers = [remote.request("GET", f"/call/{i}") for i in range(5)]
    answers.append(remote.request("POST", "/embed", {"texts": ["a"]}))
    assert [a["path"] for a in answers] == [f"/call/{i}" for i in range(5)] + ["/embed"]
    assert len(counting.seen) == 6
    assert counting.connections == 1  # one TCP connection carried all six requests


def test_image_urls_reuse_connections_across_fetches(counting):
    options = LoaderOptions()
    bodies = [read_url(f"{counting.url}/img/{i}", f"img{i}", options) for i in range(4)]
    assert [json.loads(b)["path"] for b in bodies] == [f"/img/{i}" for i in range(4)]
    assert counting.connections == 1


def test_503_with_retry_after_is_retried_after_the_wait_then_succeeds(counting):
    counting.script = [(503, {"Retry-After": "1"}), (429, {"Retry-After": "1"})]
    answer = RemoteModel(counting.url, retries=3).request("POST", "/embed", {"texts": ["a"]})
    assert answer == {"path": "/embed", "n": 3}  # the third try got through
    times = [t for *_, t, _ in counting.seen]
    assert [b for *_, b in counting.seen] == [b'{"texts": ["a"]}'] * 3  # the same body each time
    assert times[1] - times[0] >= 0.95 and times[2] - times[1] >= 0.95  # it waited as told


def test_retries_are_bounded_and_the_last_answer_is_reported(counting):
    counting.script = [(503, {"Retry-After": "0"})] * 10
    with pytest.raises(ServerError, match="answered 503 to /embed"):
        RemoteModel(counting.url, retries=2).request("POST", "/embed", {"texts": ["a"]})
    assert len(counting.seen) == 3  # the first try and two retries, no more


def test_a_huge_retry_after_is_capped(counting):
    counting.script = [(503, {"Retry-After": "3600"})]
    done: list[dict] = []
    thread = threading.Thread(target=lambda: done.append(
        RemoteModel(counting.url, retries=1, max_wait=0.2).request("GET", "/health")), daemon=True)
    thread.start()
    thread.join(60)
    assert done == [{"path": "/health", "n": 2}]  # did not wait the hour it was told


def test_a_post_lost_after_sending_is_not_sent_twice_but_a_get_is(counting):
    counting.script = [("hang up", {})]
    with pytest.raises(ServerError, match="cannot reach"):
        RemoteModel(counting.url).request("POST", "/embed", {"texts": ["a"]})
    assert [m for m, *_ in counting.seen] == ["POST"]  # the server may have done the work: not resent
    counting.script = [("hang up", {})]
    assert RemoteModel(counting.url).request("GET", "/health")["path"] == "/health"
    assert [m for m, *_ in counting.seen] == ["POST", "GET", "GET"]  # a GET is safe to send again


def test_the_token_never_goes_to_another_origin(counting, monkeypatch):
    monkeypatch.setenv("CLIP_EMBEDDINGS_TOKEN", "t0ken")
    with serving(_Counting) as home:
        home.lock, home.connections, home.seen = threading.Lock(), 0, []
        # 307 keeps the method and body: a POST would carry the token and the payload elsewhere.
        home.script = [(307, {"Location": counting.url + "/embed"}), (308, {"Location": "/here"})]
        remote = RemoteModel(home.url)
        with pytest.raises(ServerError, match="another origin"):
            remote.request("POST", "/embed", {"texts": ["a"]})
        assert counting.seen == []  # nothing at all reached the other origin
        assert remote.request("POST", "/embed", {"texts": ["b"]})["path"] == "/here"  # same origin: followed
        assert [(m, p, token) for m, p, token, *_ in home.seen] == [
            ("POST", "/embed", "Bearer t0ken"), ("POST", "/embed", "Bearer t0ken"), ("POST", "/here", "Bearer t0ken")]
    # The same origin means scheme, host and port: another port on the same host is elsewhere.
    assert counting.url.rsplit(":", 1)[0] == home.url.rsplit(":", 1)[0]


def test_an_unread_body_closes_its_connection_instead_of_draining_it(counting):
    client = HTTPClient()
    response = client.open("GET", counting.url + "/a", timeout=10)
    release(response)  # body not read: the connection is closed, not drained into the pool
    response = client.open("GET", counting.url + "/b", timeout=10)
    assert json.loads(read_body(response))["path"] == "/b"
    release(response)
    response = client.open("GET", counting.url + "/c", timeout=10)
    assert json.loads(read_body(response))["path"] == "/c"
    release(response)
    assert counting.connections == 2  # /a's connection was dropped; /b's carried /c
