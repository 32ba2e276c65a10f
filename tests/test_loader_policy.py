"""The input policy survives a reopen, and refused addresses are never connected (issue 15, defect 1)."""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import sys
import textwrap

import chromadb
import lancedb
import numpy as np
import pytest
from lancedb.embeddings import get_registry
from lancedb.pydantic import LanceModel, Vector

import clip_embeddings as ce
from clip_embeddings.errors import ImageLoadError
from clip_embeddings.inputs.options import LoaderOptions
from clip_embeddings.inputs.sources import load_image
from tests.servers import free_port, serving

STRICT = LoaderOptions(allow_urls=True, allow_private_addresses=False, max_pixels=1_000_000, url_timeout=2.0)


class _CountingHandler(http.server.BaseHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):  # noqa: N802
        type(self).requests.append(self.path)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def internal_server(no_proxy):
    _CountingHandler.requests = []
    with serving(_CountingHandler) as server:
        yield server.url


# --- the config carries the policy ------------------------------------------------------------

def test_config_round_trip_keeps_loader_options_on_error_and_workers(tiny_model_path):
    ef = ce.ClipEF(str(tiny_model_path), loader_options=STRICT, on_error="skip", num_workers=2)
    config = json.loads(json.dumps(ef.get_config()))  # as a database stores it
    rebuilt = ce.ClipEF.build_from_config(config)
    assert rebuilt.loader_options == STRICT
    assert (rebuilt.on_error, rebuilt.num_workers) == ("skip", 2)
    assert LoaderOptions.from_config(STRICT.to_config()) == STRICT


def test_old_configs_without_the_keys_still_load(tiny_model_path):
    config = ce.ClipEF(str(tiny_model_path)).get_config()
    for key in ("loader_options", "on_error", "num_workers"):
        del config[key]
    rebuilt = ce.ClipEF.build_from_config(config)
    assert rebuilt.loader_options == LoaderOptions() and rebuilt.on_error == "raise" and rebuilt.num_workers == 4


@pytest.mark.parametrize("bad, message", [
    ({"loader_options": {"allow_url": False}}, "unknown loader_options"),
    ({"loader_options": {"allow_urls": "no"}}, "must be bool"),
    ({"loader_options": {"max_pixels": 0}}, "max_pixels must be >= 1"),
    ({"loader_options": [1]}, "must be a dict"),
    ({"on_error": "ignore"}, "on_error"),
    ({"num_workers": 0}, "num_workers"),
])
def test_bad_policy_in_a_config_is_refused_by_name(tiny_model_path, bad, message):
    config = {**ce.ClipEF(str(tiny_model_path)).get_config(), **bad}
    with pytest.raises(ValueError, match=message):
        ce.ClipEF.build_from_config(config)


def test_chroma_reopen_in_a_new_process_keeps_the_url_policy(tmp_path, tiny_model_path, internal_server):
    client = chromadb.PersistentClient(str(tmp_path / "db"))
    client.create_collection("photos", embedding_function=ce.ClipEF(
        str(tiny_model_path), loader_options=LoaderOptions(allow_private_addresses=False)))
    script = textwrap.dedent(f"""
        import json, sys
        import clip_embeddings, chromadb
        collection = chromadb.PersistentClient({str(tmp_path / "db")!r}).get_collection("photos")
        ef = collection.configuration["embedding_function"]  # rebuilt from the stored config
        assert type(ef).__name__ == "ClipEF", type(ef)
        result = ef.encode_images([{internal_server + "/secret.png"!r}], on_error="skip")
        print(json.dumps([s.reason for s in result.skipped]))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    (reason,) = json.loads(out.stdout.strip().splitlines()[-1])
    assert "allow_private_addresses" in reason
    assert _CountingHandler.requests == []  # the internal server never saw a request


def test_lancedb_function_keeps_loader_options_in_the_schema(tmp_path, tiny_model_path, internal_server):
    clip = get_registry().get("clip-embeddings").create(
        model=str(tiny_model_path), on_error="skip", loader_options=LoaderOptions(allow_private_addresses=False))

    class Photo(LanceModel):
        image_uri: str = clip.SourceField()
        vector: Vector(clip.ndims()) = clip.VectorField()

    lancedb.connect(tmp_path).create_table("photos", schema=Photo)
    (config,) = json.loads(lancedb.connect(tmp_path).open_table("photos").schema.metadata[b"embedding_functions"])
    assert config["model"]["loader_options"]["allow_private_addresses"] is False
    reopened = get_registry().get("clip-embeddings").create(**config["model"])
    assert reopened.clip().loader_options.allow_private_addresses is False
    assert reopened.compute_source_embeddings([internal_server + "/secret.png"]) == [None]
    assert _CountingHandler.requests == []
    table = lancedb.connect(tmp_path).open_table("photos")
    table.add([{"image_uri": internal_server + "/x.png"}], on_bad_vectors="drop")
    assert table.count_rows() == 0 and _CountingHandler.requests == []


# --- resolve, check, connect --------------------------------------------------------------------

def test_refused_address_gets_no_connection_and_one_message(no_proxy):
    # A listener that never accepts: a connection attempt would sit in its backlog.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    open_port, closed_port = listener.getsockname()[1], free_port()
    try:
        reasons = []
        for port in (open_port, closed_port):
            with pytest.raises(ImageLoadError) as info:
                load_image(f"http://127.0.0.1:{port}/a.png", STRICT)
            reasons.append(info.value.reason)
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing ever connected
    finally:
        listener.close()
    assert reasons[0] == reasons[1], reasons  # an open and a closed port look the same
    assert "127.0.0.1" in reasons[0] and "allow_private_addresses" in reasons[0]


def test_every_address_of_a_name_is_checked(no_proxy):
    # "localhost" resolves to 127.0.0.1 (and ::1 where configured): all refused, by name.
    with pytest.raises(ImageLoadError, match=r"refused to connect to localhost: it resolves to .*127\.0\.0\.1"):
        load_image("http://localhost:9/x.png", STRICT)


def test_private_addresses_still_work_by_default(internal_server):
    with pytest.raises(ImageLoadError, match="HTTP 404"):
        load_image(internal_server + "/x.png")
    assert _CountingHandler.requests == ["/x.png"]


def test_strict_fetch_through_clip_ef_is_skipped_not_fetched(tiny_model_path, internal_server):
    ef = ce.ClipEF(str(tiny_model_path), loader_options=STRICT, cache=False)
    result = ef.encode_images([internal_server + "/a.png", np.zeros((8, 8, 3), np.uint8)], on_error="skip")
    assert result.indices == [1] and "allow_private_addresses" in result.skipped[0].reason
    assert _CountingHandler.requests == []
