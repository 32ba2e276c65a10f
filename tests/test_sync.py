"""Sync: after files are deleted, edited, renamed and added, the collection equals a fresh index.

The expected state is never read from the code under test: it is a fresh index of the folder
into a new collection, compared record by record (ids, sources, captions, counts).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import clip_embeddings as ce
from clip_embeddings.adapters import open_store
from clip_embeddings.adapters.base import Store
from clip_embeddings.collection.sync import LocalFile, StoredItem, plan_sync

KINDS = ["chroma", "qdrant", "lancedb"]


def picture(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(path)
    return path


def snapshot(store: Store, under: Path | None = None) -> dict[tuple[str, str], tuple]:
    """Every record as (id, modality) -> (source, document, digest, metadata), optionally one folder's."""
    rows = {}
    for r in store.records(with_vectors=False):
        if under is None or (r.source or "").startswith(str(under) + os.sep):
            rows[(r.id, r.modality)] = (r.source, r.document, r.digest, r.metadata)
    return rows


@pytest.fixture
def folders(tmp_path):
    photos, other = tmp_path / "photos", tmp_path / "other"
    (photos / "trip").mkdir(parents=True)
    other.mkdir()
    for i, name in enumerate(["a.png", "b.png", "c.png", "keep.png", "trip/d.png"]):
        picture(photos / name, i)
    (photos / "keep.txt").write_text("a kept caption")
    (photos / "c.txt").write_text("c's caption")
    picture(other / "elsewhere.png", 99)
    return photos, other


def change(photos: Path) -> None:
    """Delete one, edit one, rename one (with its sidecar), add one, edit a caption."""
    (photos / "a.png").unlink()
    picture(photos / "b.png", 50)  # same path, new content
    (photos / "c.png").rename(photos / "trip" / "c-renamed.png")
    (photos / "c.txt").rename(photos / "trip" / "c-renamed.txt")
    picture(photos / "trip" / "new.png", 51)
    (photos / "keep.txt").write_text("an edited caption")


@pytest.mark.parametrize("kind", KINDS)
def test_sync_makes_the_collection_equal_a_fresh_index(kind, tmp_path, tiny_model_path, folders):
    photos, other = folders
    ef = ce.ClipEF(str(tiny_model_path), cache=False)
    store = open_store(kind, str(tmp_path / f"{kind}-db"), "photos", ef)
    store.index_folder(photos, progress=False)
    store.index_folder(other, progress=False)
    store.add_texts(["a text of its own"])
    renamed_before = {r.id: r.vector for r in store.records("image") if r.source == str(photos / "c.png")}
    outside = {k: v for k, v in snapshot(store).items() if not (v[0] or "").startswith(str(photos) + os.sep)}
    change(photos)

    before = snapshot(store)
    preview = store.index_folder(photos, sync=True, dry_run=True, progress=False)
    assert snapshot(store) == before  # a dry run changes nothing
    synced = store.index_folder(photos, sync=True, progress=False)
    # added: trip/new.png; updated: b.png (new content) and keep.png (new caption);
    # renamed: c.png -> trip/c-renamed.png; removed: a.png; unchanged: trip/d.png.
    expected = (1, 2, 1, 1, 1)
    for report in (preview, synced):
        assert (report.new, report.updated, report.renamed, report.removed, report.present) == expected
    assert preview.dry_run and "would have added 1" in str(preview)

    fresh = open_store(kind, str(tmp_path / f"{kind}-fresh"), "photos", ef)
    fresh.index_folder(photos, progress=False)
    assert snapshot(store, photos) == snapshot(fresh)
    assert sorted(synced.ids) == sorted({r.id for r in fresh.records("image", with_vectors=False)})
    assert {k: v for k, v in snapshot(store).items() if k not in snapshot(fresh)} == outside  # others survive
    assert store.count() == fresh.count() + 2 and store.count("image") == fresh.count("image") + 1
    renamed = {r.id: r.vector for r in store.records("image") if r.source == str(photos / "trip" / "c-renamed.png")}
    assert renamed.keys() == renamed_before.keys()
    np.testing.assert_array_equal(*renamed.values(), *renamed_before.values())
    hits = store.query(image=photos / "trip" / "c-renamed.png", k=1)
    assert hits[0].source == str(photos / "trip" / "c-renamed.png") and hits[0].document == "c's caption"

    again = store.index_folder(photos, sync=True, progress=False)
    assert (again.new, again.updated, again.renamed, again.removed, again.present) == (0, 0, 0, 0, 5)


@pytest.mark.parametrize("kind", ["lancedb"])
def test_sync_of_an_emptied_folder_removes_only_its_items(kind, tmp_path, tiny_model_path, folders):
    photos, other = folders
    store = open_store(kind, str(tmp_path / "db"), "photos", ce.ClipEF(str(tiny_model_path), cache=False))
    store.index_folder(photos, progress=False)
    store.index_folder(other, progress=False)
    shutil.rmtree(photos)
    photos.mkdir()
    report = store.index_folder(photos, sync=True, progress=False)
    assert (report.removed, store.count()) == (5, 1)
    assert [r.source for r in store.records("image")] == [str(other / "elsewhere.png")]


def test_the_plan_pairs_files_and_items_by_content_and_path():
    item_of = {"d1": "i1", "d2": "i2", "d3": "i3", "d4": "i4", "d5": "i5", "dx": "ix"}.__getitem__
    files = [LocalFile("/p/a.jpg", 1, 0, "d1"), LocalFile("/p/b.jpg", 1, 0, "d3"),  # b: new content
             LocalFile("/p/c2.jpg", 1, 0, "d4"), LocalFile("/p/c3.jpg", 1, 0, "d4"),  # c renamed, + a copy
             LocalFile("/p/new.jpg", 1, 0, "d5"), LocalFile("/p/locked.jpg", 1, 0, None),
             LocalFile("/p/same-as-other.jpg", 1, 0, "dx")]
    stored = [StoredItem("i1", "d1", "/p/a.jpg", "cap"), StoredItem("i2", "d2", "/p/b.jpg"),
              StoredItem("i4", "d4", "/p/c.jpg"), StoredItem("i9", "d9", "/p/gone.jpg"),
              StoredItem("i8", "d8", "/p/locked.jpg")]
    plan = plan_sync(files, stored, item_of, elsewhere={"ix"}.__contains__)
    assert [f.path for f in plan.add] == ["/p/new.jpg"]
    assert [(s.id, f.path) for s, f in plan.update] == [("i2", "/p/b.jpg")]
    assert [(s.id, f.path) for s, f in plan.rename] == [("i4", "/p/c2.jpg")]
    assert [(s.id, f.path) for s, f in plan.recaption] == [("i1", "/p/a.jpg")]  # its caption went away
    assert [s.id for s in plan.remove] == ["i9"]  # the unreadable file's item stays
    assert plan.duplicates == 1 and plan.unchanged == []
    assert plan.summary() == {"added": 1, "updated": 2, "renamed": 1, "removed": 1, "unchanged": 0}


def test_local_files_digests_a_file_without_hashlib_file_digest(tmp_path, monkeypatch):
    # hashlib.file_digest is Python 3.11+; the package supports 3.10 (found by mypy at python_version 3.10).
    import hashlib

    monkeypatch.delattr(hashlib, "file_digest", raising=False)
    content = bytes(range(256)) * 5000  # over one read chunk
    (tmp_path / "a.jpg").write_bytes(content)
    from clip_embeddings.collection.sync import local_files

    [found] = list(local_files(tmp_path, extensions={".jpg"}))
    assert found.digest == "7d471e4af16db5a30ce10aebbc29f5178b2edbad6c7dc2e8ff8ee6e4848a726f"  # sha256sum's
    assert found.size == len(content)
