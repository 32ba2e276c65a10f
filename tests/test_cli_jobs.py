"""The collection-job commands (dedup, export, map, score) in process: the same results as the
API, --json documents, and clear errors on a missing or empty collection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import clip_embeddings as ce
from clip_embeddings.adapters import open_store
from clip_embeddings.apps import cli


def common(tmp_path: Path, name: str = "planted") -> list[str]:
    return ["--db", "lancedb", "--location", str(tmp_path / "db"), "--collection", name]


def run_json(capsys, *argv: str) -> dict:
    capsys.readouterr()
    assert cli.main([*argv, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_dedup_gives_the_api_groups(tmp_path, tiny_planted, capsys):
    store = tiny_planted.store("lancedb", tmp_path / "db")
    api = {frozenset(m.id for m in g.members) for g in store.duplicates(threshold=0.99).groups}
    document = run_json(capsys, "dedup", "--threshold", "0.99", *common(tmp_path))
    assert {frozenset(m["id"] for m in g["members"]) for g in document["groups"]} == api == tiny_planted.groups
    assert document["deleted"] == 0 and store.count("image") == len(tiny_planted.paths)  # nothing removed
    assert all(g["keeper"] == g["members"][0]["id"] for g in document["groups"])


def test_dedup_sheets_and_a_missing_threshold(tmp_path, tiny_model_path, sample_images, capsys):
    store = open_store("lancedb", str(tmp_path / "db"), "photos", ce.ClipEF(str(tiny_model_path), cache=False))
    store.add_images([str(p) for p in sample_images])
    store.add_images([str(sample_images[0])], ids=["again"])  # the same file under a second id
    document = run_json(capsys, "dedup", "--threshold", "0.9999", "--sheets", str(tmp_path / "sheets"),
                        *common(tmp_path, "photos"))
    assert [g["kind"] for g in document["groups"]] == ["exact"]
    assert len(document["sheets"]) == 1 and Path(document["sheets"][0]).is_file()
    assert cli.main(["dedup", *common(tmp_path, "photos")]) == 1  # a random model has no published threshold
    assert "--threshold" in capsys.readouterr().err


def test_export_writes_what_the_api_writes(tmp_path, open_synthetic, capsys):
    store = open_synthetic("lancedb", 50)
    location = ["--db", "lancedb", "--location", str(tmp_path / "lancedb"), "--collection", "synthetic"]
    document = run_json(capsys, "export", str(tmp_path / "out"), *location)
    assert document["counts"] == {"image": 50, "text": 0}
    exported = np.load(tmp_path / "out" / "img_emb" / "img_emb_0.npy")
    stored = {r.id: r.vector for r in store.records("image")}
    import pyarrow.parquet as pq

    ids = pq.read_table(tmp_path / "out" / "metadata").column("id").to_pylist()
    assert all(np.array_equal(exported[i], stored[item]) for i, item in enumerate(ids))
    document = run_json(capsys, "export", str(tmp_path / "all.parquet"), "--format", "parquet", *location)
    assert document["files"] == [str(tmp_path / "all.parquet")]


def test_map_writes_the_png(tmp_path, tiny_model_path, sample_images, capsys):
    store = open_store("lancedb", str(tmp_path / "db"), "photos", ce.ClipEF(str(tiny_model_path), cache=False))
    store.add_images([str(p) for p in sample_images])
    words = tmp_path / "words.txt"
    words.write_text("cat\ndog\nrocket\n")
    document = run_json(capsys, "map", str(tmp_path / "map.png"), "--clusters", "2", "--vocabulary", str(words),
                        *common(tmp_path, "photos"))
    assert Path(document["path"]).is_file() and len(document["placements"]) == len(sample_images)
    assert all(set(c["words"]) <= {"cat", "dog", "rocket"} for c in document["clusters"])


def test_score_filters_a_pair_file(tmp_path, tiny_model_path, sample_images, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"image": str(p), "caption": c}) + "\n"
                             for p, c in zip(sample_images, ["a photo", "a rocket", "a cat"])))
    model = ["--model", str(tiny_model_path)]
    everything = run_json(capsys, "score", str(pairs), "--w", "100", *model)
    assert everything["scored"] == 3
    api = ce.clip_score([str(p) for p in sample_images[:3]], ["a photo", "a rocket", "a cat"], w=100,
                        ef=ce.ClipEF(str(tiny_model_path), cache=False))
    bar = sorted(api.scores)[1]
    document = run_json(capsys, "score", str(pairs), "--w", "100", "--min", str(bar), "-o", str(tmp_path / "kept.jsonl"),
                        *model)
    kept = [json.loads(line) for line in (tmp_path / "kept.jsonl").read_text().splitlines()]
    assert document["kept"] == len(kept) == sum(s >= bar for s in api.scores)


@pytest.mark.parametrize("command", [["dedup", "--threshold", "0.9"], ["export", "out"], ["map", "m.png"], ["score"]])
def test_missing_and_empty_collections_are_clear_errors(command, tmp_path, tiny_model_path, capsys):
    assert cli.main([*command, *common(tmp_path, "nothing")]) == 1
    assert "no lancedb collection 'nothing'" in capsys.readouterr().err
    open_store("lancedb", str(tmp_path / "db"), "empty", ce.ClipEF(str(tiny_model_path), cache=False))
    capsys.readouterr()
    assert cli.main([*command, *common(tmp_path, "empty")]) == 1
    assert "holds no" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["chroma", "qdrant", "lancedb"])
def test_dedup_delete_keeps_each_keeper_and_removes_the_extras(kind, tmp_path, tiny_planted, capsys):
    from tests.test_stores_parametrised import close

    close(tiny_planted.store(kind, tmp_path / "db"))  # a local Qdrant folder takes one client at a time
    location = ["--db", kind, "--location", str(tmp_path / "db"), "--collection", "planted"]
    document = run_json(capsys, "dedup", "--threshold", "0.99", "--delete", *location)
    groups = {frozenset(m["id"] for m in g["members"]) for g in document["groups"]}
    assert groups == tiny_planted.groups
    extras = {m["id"] for g in document["groups"] for m in g["members"][1:]}
    keepers = {g["keeper"] for g in document["groups"]}
    assert document["deleted"] == len(extras) > 0 and keepers <= tiny_planted.originals
    store = open_store(kind, str(tmp_path / "db"), "planted", None)
    survivors = {r.id for r in store.records("image", with_vectors=False)}
    close(store)
    # The planted set's originals are exactly what is left: every keeper kept, every extra gone.
    assert survivors == set(tiny_planted.ids) - extras == tiny_planted.originals


def test_score_a_collections_captioned_items(tmp_path, tiny_model_path, sample_images, capsys):
    from PIL import Image

    from tests.reference import reference_embeddings

    captions = ["a photo of a cat", "a rocket on a launch pad", "a bowl of soup"][:len(sample_images)]
    images = [str(p) for p in sample_images[:len(captions)]]
    store = open_store("lancedb", str(tmp_path / "db"), "photos", ce.ClipEF(str(tiny_model_path), cache=False,
                                                                          fast_decode=False))
    store.add_images(images, captions=captions)
    store.add_images([str(sample_images[-1])], ids=["no-caption"])  # an image alone is no pair
    ims, txs = reference_embeddings(tiny_model_path, [Image.open(p).convert("RGB") for p in images], captions)
    expected = 100 * np.maximum(np.einsum("ij,ij->i", ims.astype(np.float64), txs.astype(np.float64)), 0)
    bar = float(np.sort(expected)[0] + np.sort(expected)[1]) / 2  # between the two lowest: all but one kept
    out = tmp_path / "kept.csv"
    document = run_json(capsys, "score", "--w", "100", "--min", str(bar), "-o", str(out), *common(tmp_path, "photos"))
    assert (document["read"], document["scored"], document["uncaptioned"]) == (len(images), len(images), 1)
    import csv

    with open(out, newline="") as f:
        kept = list(csv.DictReader(f))
    want = {Path(p).resolve().as_posix(): s for p, s in zip(images, expected, strict=True) if s >= bar}
    assert {r["image"]: float(r["clip_score"]) for r in kept} == pytest.approx(want, abs=1e-3)
    assert document["kept"] == len(kept) == len(images) - 1
    assert cli.main(["score", str(out), *common(tmp_path, "photos")]) == 1  # a file or a collection, not both
    assert "not both" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["dedup", "export", "map", "score"])
def test_every_job_command_has_help_with_json(command, capsys):
    assert cli.main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:") and f" {command} [-h] [--json]" in out and "--json" in out
    assert "--collection" in out and "--store" in out
