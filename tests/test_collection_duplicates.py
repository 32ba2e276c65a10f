"""Duplicates on a planted set: every planted group found, no two distinct pictures merged, on
Chroma, Qdrant and LanceDB, with the threshold each test states.

The planted set (tests/conftest.py ``planted_duplicates``): 300 distinct synthetic pictures, each
with 0-3 near copies (JPEG re-encode, 80 % resize, 2 % crop per edge, 5 % brightness). The
expected groups are the planted ones, known by construction, never computed by the code under test.
"""

from __future__ import annotations

import pytest

import clip_embeddings as ce
from clip_embeddings.adapters import open_store
from clip_embeddings.collection.duplicates import copies, default_threshold
from clip_embeddings.errors import EmptyCollectionError

KINDS = ["chroma", "qdrant", "lancedb"]
THRESHOLD = 0.99  # cosine; with the tiny model a 4 % crop already drifts as far as another picture


def found(report) -> set[frozenset[str]]:
    return {frozenset(m.id for m in g.members) for g in report.groups}


@pytest.mark.parametrize("kind", KINDS)
def test_every_planted_group_is_found_and_nothing_else(kind, tmp_path, tiny_planted):
    store = tiny_planted.store(kind, tmp_path / kind)
    report = store.duplicates(threshold=THRESHOLD)
    groups = found(report)
    assert groups == tiny_planted.groups
    assert all(len(g & tiny_planted.originals) == 1 for g in groups)  # no two distinct pictures merged
    assert report.scanned == len(tiny_planted.paths) and len(tiny_planted.groups) > 150


def test_the_guard_is_what_keeps_distinct_pictures_apart(tmp_path, tiny_planted):
    # The same cut-off without the guard (gap=1): the tiny model puts some distinct pictures
    # closer than 0.99, so a global cut-off alone merges them.
    store = tiny_planted.store("lancedb", tmp_path / "db")
    unguarded = found(store.duplicates(threshold=THRESHOLD, gap=1.0))
    assert any(len(g & tiny_planted.originals) > 1 for g in unguarded)
    assert found(store.duplicates(threshold=THRESHOLD)) == tiny_planted.groups


def test_keeper_is_the_largest_then_the_oldest(tmp_path, tiny_planted):
    store = tiny_planted.store("lancedb", tmp_path / "db")
    report = store.duplicates(threshold=THRESHOLD)
    from PIL import Image

    for group in report.groups:
        sizes = {m.id: Image.open(m.source).size for m in group.members}
        largest = max(w * h for w, h in sizes.values())
        # Originals are at least as large as every copy (resize and crop shrink) and older than all.
        assert group.keeper.id in tiny_planted.originals
        assert sizes[group.keeper.id][0] * sizes[group.keeper.id][1] == largest
        assert (group.keeper.width, group.keeper.height) == sizes[group.keeper.id]
        assert group.keeper.similarity == pytest.approx(1.0, abs=1e-5)
    as_json = report.to_dict()
    assert as_json["removable"] == sum(len(g) - 1 for g in tiny_planted.groups)
    assert {frozenset(m["id"] for m in g["members"]) for g in as_json["groups"]} == tiny_planted.groups


def test_same_content_under_two_ids_is_an_exact_group(tmp_path, tiny_model_path, sample_images):
    store = open_store("chroma", str(tmp_path / "db"), "exact", ce.ClipEF(str(tiny_model_path), cache=False))
    paths = [str(p) for p in sample_images]
    store.add_images(paths)
    store.add_images(paths[:1], ids=["my-own-id"])  # the same file again, under a user id
    report = store.duplicates(threshold=0.9999)
    exact = [g for g in report.groups if g.kind == "exact"]
    assert [sorted(m.id for m in g.members) for g in exact] == [sorted(["my-own-id", store.add_images(paths[:1]).ids[0]])]


def test_copies_rule_on_hand_made_distances():
    assert copies([(0.001, "a"), (0.0012, "b"), (0.01, "c"), (0.02, "d")], cutoff=0.015, gap=1.5) == ["a", "b", "c"]
    assert copies([(0.001, "a"), (0.0012, "b"), (0.01, "c"), (0.012, "d")], cutoff=0.015, gap=1.5) == ["a", "b"]
    assert copies([(0.0, "a"), (0.0, "b")], cutoff=0.01, gap=1.5) == ["a"]  # identical vectors: always copies
    assert copies([(0.02, "a"), (float("inf"), "")], cutoff=0.01, gap=1.5) == []  # beyond the cut-off


def test_defaults_and_errors(tmp_path, tiny_model_path):
    assert default_threshold("ViT-B/32") == 0.99  # Immich's maxDistance 0.01 on ViT-B-32__openai
    store = open_store("lancedb", str(tmp_path / "db"), "empty", ce.ClipEF(str(tiny_model_path), cache=False))
    with pytest.raises(ValueError, match="no published duplicate threshold .* pass threshold="):
        store.duplicates()
    with pytest.raises(EmptyCollectionError, match="holds no image vectors: nothing to de-duplicate"):
        store.duplicates(threshold=0.95)


@pytest.mark.parametrize("kind", KINDS)
def test_delete_keeps_only_the_keepers(kind, tmp_path, tiny_planted):
    store = tiny_planted.store(kind, tmp_path / kind)
    report = store.duplicates(threshold=THRESHOLD, delete=True)
    assert store.count("image") == len(tiny_planted.paths) - report.removable
    left = {r.id for r in store.records("image", with_vectors=False)}
    assert left == tiny_planted.originals  # every copy gone, every distinct picture kept
    # Nothing of the deleted items lingers (index entries, captions): a second pass sees exactly
    # what a collection built from the originals alone shows. It need not be empty: the guard
    # judges an image by its neighbours, and with the copies gone the tiny model's closest
    # distinct pictures (cos ~0.996 > 0.99) have no closer neighbour left to tell them apart.
    fresh = tiny_planted.store(kind, tmp_path / "fresh", only=tiny_planted.originals)
    assert found(store.duplicates(threshold=THRESHOLD)) == found(fresh.duplicates(threshold=THRESHOLD))


@pytest.fixture(scope="module")
def vit_planted(tmp_path_factory):
    """A planted set of 120 pictures embedded by full-size ViT-B/32 (12 + 12 layers), random weights.

    Smaller than the tiny model's 300: each full-size forward pass costs ~100x more on a CPU.
    """
    import torch

    from tests.conftest import Planted, planted_duplicates
    from tests.model_factory import reference_clip

    path = tmp_path_factory.mktemp("vit-b-32") / "vit-b-32-random.pt"
    torch.save(reference_clip("ViT-B/32", scaled=False, seed=0).state_dict(), path)
    return Planted(planted_duplicates(tmp_path_factory.mktemp("planted-vit"), originals=120, seed=1), str(path))


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_full_size_random_vit_b_32_on_the_planted_set(tmp_path, vit_planted):
    """Random weights are not CLIP: they put near copies at cosine >= 0.997 but distinct random
    textures almost as close, so the threshold alone merges pictures and the guard separates them.

    Measured (2026-12-03, 120 pictures, 86 planted groups): nothing merged; 84 groups found whole,
    2 found less one copy each (a crop or a brightness change as close to another picture as to its
    original). So this test asks for no merge and at least 95 % of the groups whole, not all of them.
    """
    for kind in KINDS:
        store = vit_planted.store(kind, tmp_path / kind)
        groups = found(store.duplicates(threshold=THRESHOLD))
        assert all(len(g & vit_planted.originals) == 1 for g in groups), kind  # nothing distinct merged
        assert all(any(g <= p for p in vit_planted.groups) for g in groups), kind  # each inside one planted group
        assert len(groups & vit_planted.groups) >= 0.95 * len(vit_planted.groups), (kind, len(groups & vit_planted.groups))
