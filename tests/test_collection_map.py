"""The collection map: the picture's size, and every image's thumbnail present pixel for pixel.

The expected thumbnails are made here with Pillow from the files (not by the code under test's
helpers), and compared with the PNG read back at the boxes the map reports.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import clip_embeddings as ce
from clip_embeddings.adapters import open_store
from clip_embeddings.collection.map import grid_cells

VOCABULARY = ["cat", "dog", "rocket", "galaxy", "beach", "mountain", "city"]


@pytest.fixture
def photos(tmp_path, tiny_model_path, sample_images):
    store = open_store("lancedb", str(tmp_path / "db"), "photos", ce.ClipEF(str(tiny_model_path), cache=False))
    store.add_images([str(p) for p in sample_images])
    return store


def test_every_image_appears_and_the_size_is_the_reported_one(photos, tmp_path, sample_images):
    report = photos.map(tmp_path / "map.png", clusters=3, vocabulary=VOCABULARY, html=True)
    picture = Image.open(tmp_path / "map.png").convert("RGB")
    assert picture.size == tuple(report.size)
    assert sorted(p.source for p in report.placements) == sorted(str(p.resolve()) for p in sample_images)
    boxes = [p.box for p in report.placements]
    for i, a in enumerate(boxes):  # no thumbnail covers another
        for b in boxes[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
    for p in report.placements:
        expected = Image.open(p.source).convert("RGB")
        expected.thumbnail((96, 96))
        assert np.array_equal(np.asarray(picture.crop(p.box)), np.asarray(expected)), p.source
    assert len(report.clusters) == 3 and sum(c["size"] for c in report.clusters) == len(sample_images)
    assert all(len(c["words"]) == 2 and set(c["words"]) <= set(VOCABULARY) for c in report.clusters)
    page = (tmp_path / "map.html").read_text()
    assert all(p.source.split("/")[-1] in page for p in report.placements)


@pytest.mark.parametrize("projection", ["pca", "tsne"])
def test_projections_place_every_image(photos, tmp_path, projection):
    report = photos.map(tmp_path / f"{projection}.png", projection=projection, clusters=2, vocabulary=VOCABULARY)
    assert len(report.placements) == photos.count("image") and report.projection == projection


def test_grid_cells_are_distinct_and_follow_the_points():
    rng = np.random.default_rng(0)
    points = rng.standard_normal((50, 2))
    cells = grid_cells(points, 10, 8)
    assert len(set(cells)) == 50
    left, right = np.argmin(points[:, 0]), np.argmax(points[:, 0])
    assert cells[left][0] < cells[right][0]


def test_an_empty_collection_is_a_clear_error(tmp_path, tiny_model_path):
    store = open_store("lancedb", str(tmp_path / "db"), "empty", ce.ClipEF(str(tiny_model_path), cache=False))
    with pytest.raises(ce.EmptyCollectionError, match="holds no image vectors: nothing to map"):
        store.map(tmp_path / "map.png")
