"""``--json``: each command prints exactly one JSON document on stdout, and it says what the tables say.

Search answers are checked against numpy over ClipEF outputs (``Corpus.expected``), not against
the store; the rest against hand-known facts (three classes: top-5 is 100%) or the files written.
One subprocess per database proves that nothing else (a native library's banner or warning) reaches
stdout in a real run of the console script.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import clip_embeddings as ce
from clip_embeddings.apps import cli
from clip_embeddings.apps.console import to_json
from clip_embeddings.adapters import open_store
from clip_embeddings.core.download import MODELS
from tests.test_cli import _image_folder, run_cli, tiny_env  # noqa: F401  (a fixture)
from tests.test_stores_parametrised import Corpus, assert_ranking, close

KINDS = ["chroma", "qdrant", "lancedb"]


def one_document(out: str) -> dict:
    """stdout holds one JSON object on one line, and nothing else."""
    assert out.endswith("\n") and out.count("\n") == 1, f"expected one line of JSON, got: {out!r}"
    document = json.loads(out)
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def corpus(tiny_model_path, sample_images) -> Corpus:
    return Corpus(tiny_model_path, sample_images)


@pytest.fixture
def filled(request, corpus, tmp_path):
    """A database folder holding the corpus, written through the Python API and closed again."""
    kind = request.param
    location = tmp_path / kind
    store = open_store(kind, str(location), "photos", ce.ClipEF(corpus.model, cache=False))
    corpus.fill(store)
    close(store)
    return kind, location


@pytest.mark.parametrize("filled", KINDS, indirect=True)
def test_search_json_holds_the_numpy_nearest_hits(filled, corpus, tiny_env, capsys):
    kind, location = filled
    common = ["--db", kind, "--location", str(location), "--collection", "photos", "--json"]
    assert cli.main(["search", "a photo of a cat", "-k", "3", *common]) == 0
    document = one_document(capsys.readouterr().out)
    ids, scores = corpus.expected("a photo of a cat", "image", 3)
    assert_ranking([(h["id"], h["score"]) for h in document["hits"]], ids, scores, kind)
    assert [h["rank"] for h in document["hits"]] == [1, 2, 3]
    source_of = dict(zip(corpus.image_ids, corpus.images))
    caption_of = dict(zip(corpus.image_ids, corpus.captions))
    for hit in document["hits"]:
        assert (hit["source"], hit["document"], hit["modality"]) == (source_of[hit["id"]], caption_of[hit["id"]], "image")
        assert hit["metadata"]["album"] in ("space", "earth")
    assert (document["query"], document["db"], document["collection"]) == ({"text": "a photo of a cat"}, kind, "photos")

    assert cli.main(["search", "--image", corpus.images[2], "--modality", "text", "-k", "2", *common]) == 0
    document = one_document(capsys.readouterr().out)
    ids, scores = corpus.expected(2, "text", 2)
    assert_ranking([(h["id"], h["score"]) for h in document["hits"]], ids, scores, f"{kind} image->text")
    assert document["query"] == {"image": corpus.images[2]}


@pytest.mark.parametrize("filled", KINDS, indirect=True)
def test_console_script_json_stdout_is_only_the_document(filled, corpus, tiny_model_path):
    kind, location = filled
    result = run_cli("search", "a rocket", "-k", "2", "--db", kind, "--location", str(location),
                     "--collection", "photos", "--json", model=tiny_model_path)
    assert result.returncode == 0, result.stderr
    document = one_document(result.stdout)
    ids, scores = corpus.expected("a rocket", "image", 2)
    assert_ranking([(h["id"], h["score"]) for h in document["hits"]], ids, scores, kind)


def test_classify_json(tiny_env, sample_images, capsys):
    labels = ["cat", "rocket", "cup of coffee"]
    images = [str(p) for p in sample_images[:2]]
    assert cli.main(["classify", *images, str(Path(images[0]).with_name("missing.jpg")),
                     "--labels", ",".join(labels), "-k", "2", "--json"]) == 0
    document = one_document(capsys.readouterr().out)
    assert document["labels"] == labels and [r["image"] for r in document["results"]] == images
    expected = ce.classify(images, labels, ef=ce.ClipEF(str(tiny_env)), top_k=2)
    for row, top_labels, top_scores in zip(document["results"], expected.top_labels, expected.top_scores):
        assert [x["label"] for x in row["labels"]] == list(top_labels)
        assert [x["probability"] for x in row["labels"]] == pytest.approx([float(s) for s in top_scores], abs=1e-6)
    (skipped,) = document["skipped"]
    assert skipped["index"] == 2 and skipped["source"].endswith("missing.jpg") and "not found" in skipped["reason"]


def test_eval_json(tmp_path, tiny_env, capsys):
    dataset = _image_folder(tmp_path / "ds")
    assert cli.main(["eval", "--dataset", str(dataset), "--json"]) == 0
    document = one_document(capsys.readouterr().out)
    assert document["n"] == 6 and document["top5"] == 1.0  # three classes: every label is in the top 5
    assert {c["class"] for c in document["per_class"]} == {"red", "blue", "green_leaf"}
    assert all(c["n"] == 2 and c["top5"] == 1.0 for c in document["per_class"])
    assert document["top1"] == pytest.approx(sum(c["top1"] for c in document["per_class"]) / 3)


def test_finetune_json(tmp_path, tiny_env, sample_images, capsys):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("image,caption\n" + "".join(f"{p},photo {i}\n" for i, p in enumerate(sample_images[:3])))
    output = tmp_path / "tuned.pt"
    assert cli.main(["finetune", "--pairs", str(pairs), "--epochs", "2", "--batch-size", "3", "--output",
                     str(output), "--device", "cpu", "--json"]) == 0
    document = one_document(capsys.readouterr().out)
    assert (document["pairs"], document["epochs"], document["output"]) == (3, 2, str(output))
    assert len(document["epoch_losses"]) == 2 and all(v > 0 for v in document["epoch_losses"])
    assert output.is_file() and ce.load(output)[0].embed_dim == 64


def test_models_json(isolated_cache, capsys):
    (isolated_cache / "RN50.pt").write_bytes(b"x" * 2048)
    assert cli.main(["models", "--json"]) == 0
    document = one_document(capsys.readouterr().out)
    assert [m["name"] for m in document["models"]] == list(MODELS)
    by_name = {m["name"]: m for m in document["models"]}
    assert by_name["RN50"]["cached"] is True and by_name["RN50"]["bytes"] == 2048
    assert by_name["ViT-B/32"] == {"name": "ViT-B/32", "cached": False, "bytes": None,
                                   "path": str(isolated_cache / "ViT-B-32.pt")}
    assert document["cache"] == str(isolated_cache)


def test_errors_stay_on_stderr_with_json(tmp_path, capsys):
    assert cli.main(["search", "x", "--location", str(tmp_path / "nope"), "--collection", "c", "--json"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: ")


# --- the one --json writer (console.to_json): valid UTF-8, strict JSON, whatever a value holds ---

def _strict(text: str):
    def refuse(constant: str):
        raise AssertionError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def _unescape(text: str) -> bytes:
    return re.sub(rb"\\x([0-9a-f]{2})", lambda m: bytes([int(m[1], 16)]), text.encode("utf-8"))


_ESCAPED = st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF, exclude_categories=())  # PEP 383 bytes
_PLAIN = st.characters(exclude_categories=("Cs",), exclude_characters="\\")
_HOSTILE_TEXT = st.text(st.one_of(_PLAIN, _ESCAPED, st.characters(exclude_categories=())), max_size=12)
_LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), _HOSTILE_TEXT,
    st.binary(max_size=8), st.builds(np.float32, st.floats(width=32, allow_nan=True, allow_infinity=True)),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=3).map(np.array),
)
_VALUES = st.recursive(_LEAVES, lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
                       | st.dictionaries(_HOSTILE_TEXT | st.integers(), inner, max_size=4), max_leaves=25)


@settings(max_examples=300, deadline=None)
@given(_VALUES)
def test_to_json_is_strict_utf8_json_for_any_value(value):
    out = to_json({"value": value})
    assert "\n" not in out
    assert out.encode("utf-8").decode("utf-8") == out  # encodes strictly: no lone surrogate left
    _strict(out)


@settings(max_examples=200, deadline=None)
@given(st.text(st.one_of(_PLAIN, _ESCAPED), max_size=20), st.binary(max_size=20).map(lambda b: b.replace(b"\\", b"")),
       st.floats(allow_nan=True, allow_infinity=True))
def test_to_json_keeps_every_byte_and_nulls_what_json_cannot_hold(name, raw, number):
    got = _strict(to_json({"name": name, "raw": raw, "number": number}))
    assert _unescape(got["name"]) == name.encode("utf-8", "surrogateescape")  # the file name's own bytes
    assert _unescape(got["raw"]) == raw
    assert got["number"] == (number if math.isfinite(number) else None)


def test_index_json_is_valid_utf8_with_a_file_name_that_is_not(tmp_path, tiny_env, sample_images):
    # A skipped file whose name is not UTF-8 and a stored one: stdout used to carry raw bytes.
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(sample_images[0].read_bytes())
    with open(os.path.join(os.fsencode(folder), b"bad-\xff.jpg"), "wb") as f:
        f.write(b"\xff\xd8 not a jpeg")
    with open(os.path.join(os.fsencode(folder), b"good-\xfe.jpg"), "wb") as f:
        f.write(sample_images[1].read_bytes())
    done = run_cli("index", str(folder), "--location", str(tmp_path / "db"), "--collection", "photos", "--json",
                   model=tiny_env)
    document = _strict(done.stdout)  # run_cli decodes stdout as UTF-8 (strict): raw bytes would fail here
    assert (document["new"], len(document["skipped"])) == (2, 1)
    assert _unescape(document["skipped"][0]["source"]).endswith(b"bad-\xff.jpg")
