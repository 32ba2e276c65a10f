"""Fuzzing every route's JSON and multipart bodies: the server answers 4xx (never 5xx) and keeps serving.

Bodies are built by hypothesis from each route's own field names and from arbitrary JSON, raw bytes
and form parts; image values are valid images, random bytes, base64 junk and URLs that are
refused before any connection (loopback and private addresses, other schemes, paths). The app
runs in-process with the tiny model in front of a real Chroma collection; no response may name
the collection's or the photos' folder. Example counts are bounded so the file runs in about a minute.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import urllib.parse

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

import clip_embeddings as ce  # noqa: E402
from clip_embeddings.adapters import open_store  # noqa: E402
from clip_embeddings.apps.server import ServeLimits, create_app  # noqa: E402

FIELDS = {
    "/embed": ["texts", "text", "images", "image", "on_error"],
    "/search": ["text", "images", "image", "item", "k", "modality", "where", "min_score", "collection"],
    "/classify": ["labels", "templates", "images", "k", "on_error"],
    "/query": ["query", "terms", "more_like", "unlike", "images", "k", "modality", "where", "min_score", "collection"],
}
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


def _png(size: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), (size, 40, 200)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_path, sample_images):
    folder = tmp_path_factory.mktemp("fuzz-photos")
    for path in sample_images[:3]:
        shutil.copy(path, folder / path.name)
    location = tmp_path_factory.mktemp("fuzz-db")
    ef = ce.ClipEF(tiny_model_path, device="cpu", cache=False)
    store = open_store("chroma", str(location), "photos", ef)
    store.add_images(sorted(str(p) for p in folder.glob("*.jpg")), metadatas=[{"album": "x", "n": 1}] * 3)
    app = create_app(ef, store, ServeLimits(max_items=8, max_upload_bytes=256 * 1024,
                                            request_timeout=30, max_templates=4, max_prompts=16, max_urls=2))
    ids = [h.id for h in store.search(np.ones(ef.dim, np.float32), k=3)]
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
        yield client, ids, (str(folder), str(location))


# --- strategies -------------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False) \
    | st.text(max_size=30)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
urls = st.sampled_from(["http://127.0.0.1/a.jpg", "http://10.0.0.1/x.png", "https://[::1]/i", "http://169.254.169.254/",
                        "file:///etc/passwd", "/etc/passwd", "ftp://x/y", "http://", "javascript:alert(1)", ""])
image_bytes = st.sampled_from([_png(8), _png(80), b"GIF89a", b"\x89PNG\r\n\x1a\n"]) | st.binary(max_size=64)
b64 = st.builds(lambda b: base64.b64encode(b).decode(), image_bytes) | st.text(max_size=20) \
    | st.builds(lambda b: "data:image/png;base64," + base64.b64encode(b).decode(), image_bytes)
images = st.one_of(st.builds(lambda u: {"url": u}, urls), st.builds(lambda s: {"base64": s}, b64), json_values)
templates = st.text(alphabet="{}:>!r0._a x", max_size=10)
item_ids = st.sampled_from(["IDS0", "nope", "", "../etc", "a" * 300]) | st.text(max_size=12)
paths = st.sampled_from(["/etc/passwd", "./x.jpg", "~/.ssh/id_rsa", "../photos", "file:///etc/hosts", "0", "1", "99",
                         "x.png", "http://127.0.0.1/a.jpg"])
weights = st.integers(-2000, 2000) | st.floats(allow_nan=False, allow_infinity=False) | st.booleans() | st.text(max_size=3)
terms = st.one_of(
    st.fixed_dictionaries({"text": st.text(max_size=40)}, optional={"weight": weights}),
    st.fixed_dictionaries({"image": paths | st.integers(-3, 5)}, optional={"weight": weights}),
    st.fixed_dictionaries({"url": urls}, optional={"weight": weights}),
    st.fixed_dictionaries({"item": item_ids | json_values}, optional={"weight": weights}),
    json_values)
query_words = st.sampled_from(["beach", "2:beach", "-1e999:x", '"a + b"', "img:", "img:0", "id:IDS0", "id:../x", "text:",
                               "./a.jpg", "/etc/passwd", "img:http://10.0.0.1/x", "~/x", "0.5:id:nope", "''"]) \
    | st.text(max_size=15)
query_strings = st.builds(lambda first, rest: first + "".join(f" {sign} {word}" for sign, word in rest),
                          query_words, st.lists(st.tuples(st.sampled_from("+-"), query_words), max_size=20)) \
    | st.text(max_size=60)
where = st.dictionaries(st.sampled_from(["album", "n", "source", "digest", "$and", ""]) | st.text(max_size=6),
                        json_scalars, max_size=3) | st.text(max_size=20) | json_values


def field_value(name: str) -> st.SearchStrategy:
    specific = {
        "texts": st.lists(st.text(max_size=40), max_size=10), "text": st.text(max_size=40),
        "images": st.lists(images, max_size=4), "image": images, "labels": st.lists(st.text(max_size=20), max_size=10),
        "templates": st.lists(templates, max_size=6), "k": st.integers(-5, 300) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5),
        "on_error": st.sampled_from(["raise", "skip", "ignore"]), "modality": st.sampled_from(["image", "text", "both"]),
        "where": where, "item": st.text(max_size=60), "collection": st.sampled_from(["photos", "other", ""]),
        "query": query_strings, "terms": st.lists(terms, max_size=8), "more_like": item_ids | st.lists(item_ids, max_size=4),
        "unlike": st.lists(item_ids, max_size=3), "min_score": st.floats(-3, 3) | st.text(max_size=5),
    }[name]
    return specific | json_values


def json_body(path: str) -> st.SearchStrategy:
    # (IDS0 in a body becomes a real stored id in the tests that send it.)
    known = st.fixed_dictionaries({}, optional={name: field_value(name) for name in FIELDS[path]})
    return st.builds(lambda a, b: {**b, **a}, known, st.dictionaries(st.text(max_size=8), json_values, max_size=2))


raw_bodies = st.one_of(
    st.binary(max_size=200),
    st.sampled_from([b"[" * 50_000, b'{"k": Infinity}', b'{"k": NaN, "text": "a"}', b'{"text": "a", "k": 1e999}',
                     b'{"texts": ["\\ud800"]}', b"\xff\xfe{}", b"null", b"[]", b'"x"', b"{" * 3000 + b"}" * 3000]),
    st.builds(lambda d: json.dumps(d, allow_nan=True).encode(), st.dictionaries(st.text(max_size=8), st.floats(), max_size=3)),
)
form_fields = st.lists(st.tuples(st.sampled_from(["texts", "text", "labels", "templates", "k", "where", "url", "image",
                                                  "images", "modality", "item", "on_error", "query", "terms",
                                                  "more_like", "unlike", "min_score"]) | st.text(max_size=6),
                                 st.text(max_size=30)), max_size=6)
form_files = st.lists(st.tuples(st.sampled_from(["image", "images", "file", ""]), st.text(max_size=12), image_bytes),
                      max_size=3)


def check(client, response, secrets) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    for secret in secrets:
        assert secret not in response.text, f"a response names the server's folder: {response.text[:300]}"
    assert client.get("/health").status_code == 200


# --- the fuzz tests ---------------------------------------------------------------------------------

@pytest.mark.parametrize("path", list(FIELDS))
@FUZZ
@given(data=st.data())
def test_json_bodies(served, path, data):
    client, ids, secrets = served
    body = json.loads(json.dumps(data.draw(json_body(path))).replace("IDS0", ids[0]))
    check(client, client.post(path, json=body), secrets)


@pytest.mark.parametrize("path", list(FIELDS))
@settings(FUZZ, max_examples=25)
@given(raw=raw_bodies, kind=st.sampled_from(["application/json", "text/plain", "", "application/json; charset=latin-1"]))
def test_raw_bodies(served, path, raw, kind):
    client, _, secrets = served
    check(client, client.post(path, content=raw, headers={"content-type": kind} if kind else {}), secrets)


@pytest.mark.parametrize("path", list(FIELDS))
@settings(FUZZ, max_examples=25)
@given(fields=form_fields, files=form_files)
def test_multipart_bodies(served, path, fields, files):
    client, _, secrets = served
    response = client.post(path, data=dict(fields), files=[(n, (f or "x", b)) for n, f, b in files] or None)
    check(client, response, secrets)


@settings(FUZZ, max_examples=30)
@given(item=st.text(max_size=80) | st.sampled_from(["..", "%2e%2e%2fetc%2fpasswd", "a" * 300]))
def test_thumbnail_ids(served, item):
    client, ids, secrets = served
    check(client, client.get("/thumbnail/" + urllib.parse.quote(item, safe="")), secrets)


def test_the_server_still_embeds_after_the_fuzzing(served):
    client, ids, _ = served
    assert client.post("/embed", json={"texts": ["still here"]}).status_code == 200
    assert client.get(f"/thumbnail/{ids[0]}").status_code == 200
