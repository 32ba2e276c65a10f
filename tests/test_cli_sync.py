"""The command line over sync, compound search, more-like, min-score, tags and delete.

Expected values come from the Python API on the same collection (itself tested against numpy
and fresh indexes in test_sync.py, test_compound_query.py and test_tags.py), or from the folder.
"""

from __future__ import annotations

import json
import shutil

import pytest

import clip_embeddings as ce
from clip_embeddings.adapters import open_store
from clip_embeddings.apps import cli
from clip_embeddings.collection.query import parse_query
from clip_embeddings.collection.records import tags_of


def run_json(capsys, *argv: str) -> dict:
    assert cli.main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture
def setup(tmp_path, tiny_model_path, sample_images, monkeypatch):
    monkeypatch.setenv("CLIP_WEIGHTS", str(tiny_model_path))
    folder = tmp_path / "photos"
    shutil.copytree(sample_images[0].parent, folder)
    common = ["--db", "lancedb", "--location", str(tmp_path / "db"), "--collection", "photos"]
    return folder, common, tmp_path


def test_index_sync_and_dry_run(setup, capsys, tiny_model_path):
    folder, common, _ = setup
    assert run_json(capsys, "index", str(folder), *common)["new"] == 7
    (folder / "cat.jpg").unlink()
    (folder / "rocket.jpg").rename(folder / "rocket-renamed.jpg")
    dry = run_json(capsys, "index", str(folder), *common, "--dry-run")
    assert (dry["new"], dry["updated"], dry["renamed"], dry["removed"], dry["dry_run"]) == (0, 0, 1, 1, True)
    assert dry["collection_counts"]["items"] == 7  # nothing changed
    done = run_json(capsys, "index", str(folder), *common, "--sync")
    assert (done["renamed"], done["removed"], done["collection_counts"]["items"]) == (1, 1, 6)
    store = open_store("lancedb", common[3], "photos", ce.ClipEF(str(tiny_model_path), cache=False))
    assert {r.source for r in store.records("image", with_vectors=False)} == {str(p) for p in folder.glob("*.jpg")}
    assert cli.main(["index", str(folder), *common, "--watch", "--dry-run"]) == 1
    assert "use one of them" in capsys.readouterr().err


def test_search_compound_like_min_score_tags_and_delete(setup, capsys, tiny_model_path):
    folder, common, tmp_path = setup
    vocabulary = tmp_path / "vocabulary.txt"
    vocabulary.write_text("a rocket\na cat\ncoffee\n")
    run_json(capsys, "index", str(folder), *common, "--tags", str(vocabulary), "--tag-threshold", "0.34")
    store = open_store("lancedb", common[3], "photos", ce.ClipEF(str(tiny_model_path), cache=False))
    tagged = {r.id: tags_of(r.metadata) for r in store.records("image", with_vectors=False)}
    some = next(label for label in ("a rocket", "a cat", "coffee") if any(label in t for t in tagged.values()))

    ids = [h.id for h in store.query("x", k=7)]
    query = f"2:a rocket at night + img:{folder / 'cat.jpg'} - id:{ids[0]}"
    out = run_json(capsys, "search", query, *common, "-k", "7")
    expected = store.query(parse_query(query), k=7)
    assert [h["id"] for h in out["hits"]] == [h.id for h in expected]
    assert out["query"]["terms"] == ["2:text:a rocket at night", f"1:image:{folder / 'cat.jpg'}", f"-1:item:{ids[0]}"]

    like = run_json(capsys, "search", *common, "--like", ids[0], "-k", "7")
    assert ids[0] not in [h["id"] for h in like["hits"]] and len(like["hits"]) == 6
    floor = like["hits"][2]["score"]
    cut = run_json(capsys, "search", *common, "--like", ids[0], "-k", "7", "--min-score", str(floor))
    assert [h["id"] for h in cut["hits"]] == [h["id"] for h in like["hits"] if h["score"] >= floor]

    only = run_json(capsys, "search", "anything", *common, "-k", "7", "--tag", some)
    assert {h["id"] for h in only["hits"]} == {i for i, t in tagged.items() if some in t}

    gone = run_json(capsys, "delete", ids[1], *common)
    assert (gone["removed"], gone["collection_items"]) == (1, 6)
    tagged_left = {i for i, t in tagged.items() if some in t} - {ids[1]}
    gone = run_json(capsys, "delete", *common, "--tag", some)
    assert (gone["removed"], gone["collection_items"]) == (len(tagged_left), 6 - len(tagged_left))
    assert cli.main(["delete", *common]) == 1
    assert "one of the two" in capsys.readouterr().err
