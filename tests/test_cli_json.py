"""``--json``: each command prints exactly one JSON document on stdout, and it says what the tables say.

Search answers are checked against numpy over ClipEF outputs (``Corpus.expected``), not against
the store; the rest against hand-known facts (three classes: top-5 is 100%) or the files written.
One subprocess per database proves that nothing else (a native library's banner or warning) reaches
stdout in a real run of the console script.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import clip_embeddings as ce
from clip_embeddings.apps import cli
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
