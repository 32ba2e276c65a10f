"""The CLI's ``--dtype`` (which numeric path a command's model runs) and ``--server`` (``index`` and
``search`` and ``classify`` embed on a running ``clip-embeddings serve`` instead of loading a model), with the same
fingerprint check against a collection as local weights."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("chromadb")

import clip_embeddings as ce  # noqa: E402
from clip_embeddings.adapters import open_store  # noqa: E402
from clip_embeddings.apps import cli  # noqa: E402
from clip_embeddings.apps.server import ServeLimits, create_app  # noqa: E402
from clip_embeddings.embedding import loaded  # noqa: E402
from tests.serving import running  # noqa: E402


@pytest.fixture(scope="module")
def server(tiny_model_path):
    """A real ``serve`` app (uvicorn on loopback) running the tiny model."""
    app = create_app(ce.ClipEF(tiny_model_path, device="cpu", dtype="fp32", cache=False), None, ServeLimits())
    with running(app) as url:
        yield url


def run_json(args, capsys) -> tuple[int, dict]:
    status = cli.main([*args, "--json"])
    out = capsys.readouterr().out
    return status, (json.loads(out) if out.strip() else {})


def test_dtype_selects_the_numeric_path_of_the_model_a_command_loads(tiny_model_path, sample_images, capsys):
    args = ["classify", str(sample_images[0]), "--labels", "cat,dog", "--model", str(tiny_model_path)]
    status, exact = run_json([*args, "--dtype", "fp32"], capsys)
    assert status == 0
    status, bf16 = run_json([*args, "--dtype", "bf16"], capsys)
    assert status == 0
    status, int8 = run_json([*args, "--dtype", "int8"], capsys)
    assert status == 0
    keys = {key[2] for key in loaded._registry if key[0] == str(tiny_model_path.resolve())}
    assert {torch.float32, torch.bfloat16, torch.int8} <= keys  # every path was loaded, as asked
    label = lambda doc: doc["results"][0]["labels"][0]["label"]  # noqa: E731
    assert label(exact) == label(bf16) == label(int8)
    assert cli.main([*args, "--dtype", "fp64"]) == 2  # not a dtype: a usage error
    assert "invalid choice: 'fp64'" in capsys.readouterr().err


def test_every_command_that_loads_a_model_takes_dtype(capsys):
    def help_of(command: str) -> str:
        try:
            cli.main([command, "--help"])
        except SystemExit:
            pass
        return capsys.readouterr().out

    for command in ("index", "search", "classify", "eval", "serve", "score", "dedup", "map", "export", "delete"):
        assert "--dtype" in help_of(command), command
    for command in ("index", "search", "classify"):
        assert "CLIP_EMBEDDINGS_SERVER" in help_of(command), command


def test_commands_embed_on_the_server_without_loading_a_model(server, tmp_path, sample_images, capsys, monkeypatch,
                                                                tiny_model_path, no_proxy):
    # No --model and no $CLIP_WEIGHTS: a local load would need ViT-B/32, which is not here (offline).
    monkeypatch.delenv("CLIP_WEIGHTS", raising=False)
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in sample_images[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    db = ["--db", "chroma", "--location", str(tmp_path / "db"), "--collection", "photos"]
    monkeypatch.setenv("CLIP_EMBEDDINGS_SERVER", server)  # the environment variable stands for --server
    before = set(loaded._registry)
    status, indexed = run_json(["index", str(folder), *db], capsys)
    assert status == 0 and indexed["collection_counts"]["images"] == 3, indexed
    status, found = run_json(["search", "a photo", *db, "-k", "2"], capsys)
    assert status == 0 and len(found["hits"]) == 2
    assert set(loaded._registry) == before  # no model was loaded in this process for the CLI's calls
    # The same search with the same weights loaded here ranks the same items, with the same scores.
    monkeypatch.delenv("CLIP_EMBEDDINGS_SERVER")
    status, here = run_json(["search", "a photo", *db, "-k", "2", "--model", str(tiny_model_path), "--dtype", "fp32"],
                            capsys)
    assert status == 0
    assert [h["id"] for h in here["hits"]] == [h["id"] for h in found["hits"]]
    assert [h["score"] for h in here["hits"]] == pytest.approx([h["score"] for h in found["hits"]], abs=1e-5)
    stored = open_store("chroma", str(tmp_path / "db"), "photos")._stored_config()
    assert stored["fingerprint"] == ce.ClipEF(tiny_model_path, device="cpu", cache=False).fingerprint


def test_a_server_with_other_weights_is_refused_as_local_weights_are(server, tmp_path, sample_images, capsys,
                                                                     other_tiny_model_path, no_proxy):
    location = str(tmp_path / "db")
    open_store("chroma", location, "other", ce.ClipEF(other_tiny_model_path, device="cpu", cache=False)).add_images(
        [str(sample_images[0])])
    db = ["--db", "chroma", "--location", location, "--collection", "other"]
    status = cli.main(["search", "a cat", *db, "--server", server])
    err = capsys.readouterr().err
    assert status == 1 and "fingerprint" in err, err
    status = cli.main(["index", str(sample_images[0].parent), *db, "--server", server])
    err = capsys.readouterr().err
    assert status == 1 and "fingerprint" in err, err


def test_classify_on_the_server_equals_classify_with_the_same_weights_here(server, sample_images, capsys, monkeypatch,
                                                                           tiny_model_path, no_proxy):
    images = [str(p) for p in sample_images[:3]]
    args = ["classify", *images, "--labels", "a cat,a dog,a red square,a beach", "-k", "4"]
    status, local = run_json([*args, "--model", str(tiny_model_path), "--dtype", "fp32"], capsys)
    assert status == 0
    # No --model and no $CLIP_WEIGHTS: a local load would need ViT-B/32, which is not here (offline),
    # and the registry of loaded models gains no entry: the server's model did the work.
    monkeypatch.delenv("CLIP_WEIGHTS", raising=False)
    before = set(loaded._registry)
    status, remote = run_json([*args, "--server", server], capsys)
    assert status == 0, remote
    assert set(loaded._registry) == before
    assert [r["image"] for r in remote["results"]] == images
    for mine, theirs in zip(local["results"], remote["results"], strict=True):
        assert [x["label"] for x in theirs["labels"]] == [x["label"] for x in mine["labels"]]
        assert [x["probability"] for x in theirs["labels"]] == pytest.approx(
            [x["probability"] for x in mine["labels"]], abs=1e-5)


def test_classify_names_the_server_it_cannot_reach(capsys, sample_images, no_proxy):
    from tests.servers import free_port

    url = f"http://127.0.0.1:{free_port()}"
    status = cli.main(["classify", str(sample_images[0]), "--labels", "cat,dog", "--server", url])
    err = capsys.readouterr().err
    assert status == 1 and url in err and "clip-embeddings serve" in err, err


def test_a_model_named_beside_the_server_must_be_the_servers(server, sample_images, capsys, tiny_model_path,
                                                             other_tiny_model_path, no_proxy):
    # --model would otherwise be ignored in silence: the server's weights do the work.
    args = ["classify", str(sample_images[0]), "--labels", "cat,dog", "--server", server]
    before = set(loaded._registry)
    status = cli.main([*args, "--model", str(other_tiny_model_path)])
    err = capsys.readouterr().err
    assert status != 0 and "--model" in err and tiny_model_path.name in err and "Drop --model" in err, err
    status, result = run_json([*args, "--model", str(tiny_model_path)], capsys)  # the server's own: accepted
    assert status == 0 and len(result["results"]) == 1
    assert set(loaded._registry) == before  # neither call loaded a model here
