"""CLIPScore against openai/CLIP's own model code with the same weights, and the --min filter.

JPEG draft decoding is off: the reference decodes every pixel, so both see the same image.

Expected values: ``w * max(cos, 0)`` from ``tests/reference.py`` embeddings (the reference
architecture and tokenizer), never from the code under test.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import clip_embeddings as ce
from clip_embeddings.tasks.scores import score_file
from tests.reference import reference_embeddings


@pytest.fixture(scope="module")
def pairs(sample_images):
    captions = json.loads((sample_images[0].parent / "captions.json").read_text())
    images = [str(p) for p in sample_images]
    # Right captions, then the same images with a caption from elsewhere in the set: a spread of scores.
    texts = [captions[p.name] for p in sample_images] + [captions[p.name] for p in sample_images[1:] + sample_images[:1]]
    return images + images, texts


@pytest.fixture(scope="module")
def expected_cosines(pairs, tiny_model_path):
    images, texts = pairs
    ims, txs = reference_embeddings(tiny_model_path, [Image.open(p).convert("RGB") for p in images], texts)
    return np.einsum("ij,ij->i", ims.astype(np.float64), txs.astype(np.float64))


def test_scores_equal_the_formula_on_reference_embeddings(pairs, expected_cosines, tiny_model_path):
    images, texts = pairs
    ef = ce.ClipEF(str(tiny_model_path), cache=False, fast_decode=False)
    hundred = ce.clip_score(images, texts, w=100, ef=ef)
    np.testing.assert_allclose(hundred.scores, 100 * np.maximum(expected_cosines, 0), atol=1e-3)
    hessel = ce.clip_score(images, texts, ef=ef)  # w = 2.5, Hessel et al. 2021
    np.testing.assert_allclose(hessel.scores, 2.5 * np.maximum(expected_cosines, 0), atol=1e-4)
    np.testing.assert_allclose(hessel.cosines, expected_cosines, atol=1e-5)
    assert hessel.skipped == []


def test_bad_items_are_reported_not_fatal(pairs, tiny_model_path, tmp_path):
    images, texts = pairs
    ef = ce.ClipEF(str(tiny_model_path), cache=False, fast_decode=False)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    result = ce.clip_score([images[0], str(tmp_path / "broken.jpg"), images[1], images[2]],
                           [texts[0], "a caption", "", texts[2]], ef=ef)
    assert [s.index for s in result.skipped] == [1, 2]
    assert "caption" in result.skipped[1].reason and "broken.jpg" in result.skipped[0].source
    assert math.isnan(result.scores[1]) and math.isnan(result.scores[2])
    good = ce.clip_score([images[0], images[2]], [texts[0], texts[2]], ef=ef).scores
    assert [result.scores[0], result.scores[3]] == pytest.approx(good)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_min_filter_keeps_exactly_the_pairs_over_the_bar(suffix, pairs, expected_cosines, tiny_model_path, tmp_path):
    images, texts = pairs
    rows = [{"image": Path(p).name if i % 2 else p, "caption": t, "row": str(i)} for i, (p, t) in enumerate(zip(images, texts))]
    rows.append({"image": "missing.jpg", "caption": "nothing here", "row": "missing"})
    folder = Path(images[0]).parent  # relative image paths resolve against the pair file's folder
    source = tmp_path / f"pairs{suffix}"
    if suffix == ".csv":
        with open(source, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["image", "caption", "row"])
            writer.writeheader()
            writer.writerows(rows)
    else:
        source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    relocated = folder / source.name  # the pair file beside the photos
    expected = 2.5 * np.maximum(expected_cosines, 0)
    bar = float(np.sort(expected)[len(expected) // 2] + np.sort(expected)[len(expected) // 2 - 1]) / 2  # between two scores
    try:
        relocated.write_bytes(source.read_bytes())
        report = score_file(relocated, tmp_path / f"kept{suffix}", minimum=bar,
                            ef=ce.ClipEF(str(tiny_model_path), cache=False, fast_decode=False), chunk=5)
    finally:
        relocated.unlink()
    if suffix == ".csv":
        with open(tmp_path / "kept.csv", newline="") as f:
            kept = list(csv.DictReader(f))
    else:
        kept = [json.loads(line) for line in (tmp_path / "kept.jsonl").read_text().splitlines()]
    assert [r["row"] for r in kept] == [str(i) for i in range(len(expected)) if expected[i] >= bar]
    assert [float(r["clip_score"]) for r in kept] == pytest.approx([s for s in expected if s >= bar], abs=1e-4)
    assert (report.read, report.scored, report.kept) == (len(rows), len(expected), len(kept))
    assert [s.index for s in report.skipped] == [len(rows) - 1]


@pytest.mark.parametrize("kind", ["chroma", "qdrant", "lancedb"])
def test_a_collections_captioned_items_score_as_the_reference(kind, pairs, expected_cosines, tiny_model_path, tmp_path):
    from clip_embeddings.adapters import open_store
    from tests.test_stores_parametrised import close

    images, texts = pairs
    n = len(images) // 2  # the right captions: one pair per picture
    store = open_store(kind, str(tmp_path / kind), "photos", ce.ClipEF(str(tiny_model_path), cache=False,
                                                                       fast_decode=False))
    try:
        report = store.add_images(images[:n], captions=texts[:n])
        store.add_images([images[0]], ids=["alone"])  # an image without a caption is no pair
        by_id = dict(zip(report.ids, range(n), strict=True))
        hundred = store.clip_scores(w=100)
        assert (hundred.read, hundred.scored, hundred.uncaptioned) == (n, n, 1)
        expected = {i: 100 * max(expected_cosines[j], 0.0) for i, j in by_id.items()}
        assert hundred.scores == pytest.approx(expected, abs=1e-3)
        ranked = sorted(expected.values())
        bar = (ranked[n // 2] + ranked[n // 2 - 1]) / 2  # between two scores
        kept = store.clip_scores(tmp_path / "kept.jsonl", minimum=bar / 40)  # w = 2.5: the same bar
        rows = [json.loads(line) for line in (tmp_path / "kept.jsonl").read_text().splitlines()]
        assert sorted(r["id"] for r in rows) == sorted(kept.kept_ids()) == sorted(i for i, s in expected.items()
                                                                                   if s / 40 >= bar / 40)
        assert all(r["caption"] == texts[by_id[r["id"]]] and r["image"] == str(Path(images[by_id[r["id"]]]).resolve())
                   for r in rows)
    finally:
        close(store)
