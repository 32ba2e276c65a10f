"""Parity of clip_embeddings.core.preprocess with openai/CLIP's torchvision preprocessing.

The expected tensors were made by real torchvision (``tests/fixtures/make_preprocess_golden.py``,
not run here); the inputs are rebuilt by ``tests/preprocess_cases.py``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import PIL
import pytest
import torch
from PIL import Image

from clip_embeddings.errors import ImageLoadError
from clip_embeddings.core.preprocess import MEAN, STD, Preprocess, center_crop, resize_target
from tests.preprocess_cases import PHOTOS, build_cases, digest, load_photo

GOLDEN = Path(__file__).parent / "fixtures" / "preprocess_golden.npz"
CASES = {case.name: case for case in build_cases()}
pytestmark = pytest.mark.filterwarnings("ignore:Palette images with Transparency:UserWarning")


@lru_cache(maxsize=None)
def golden() -> tuple[dict, dict[str, np.ndarray]]:
    with np.load(GOLDEN) as data:
        arrays = {key: data[key] for key in data.files}
    return json.loads(arrays.pop("meta").tobytes()), arrays


def expected(name: str) -> np.ndarray:
    return golden()[1][f"out:{name}"]


def assert_same(ours: torch.Tensor, name: str) -> None:
    want = expected(name)
    assert ours.dtype == torch.float32 and tuple(ours.shape) == want.shape
    diff = float(np.abs(ours.numpy() - want).max())
    versions = golden()[0]["versions"]
    assert diff <= 1e-6, (f"{name}: max |ours - torchvision| = {diff}; golden made with Pillow "
                          f"{versions['pillow']}, this is Pillow {PIL.__version__}")


def by_kind(kind: str) -> list[str]:
    return [name for name, case in CASES.items() if case.kind == kind]


def test_golden_covers_every_case_with_the_same_inputs():
    meta, _ = golden()
    assert set(meta["cases"]) == set(CASES), "rerun make_preprocess_golden.py after changing the cases"
    for name, case in CASES.items():
        assert meta["cases"][name]["digest"] == digest(case.image), f"{name}: the input image changed"
    for name, info in meta["photos"].items():
        assert info["digest"] == digest(load_photo(name)), f"{name}: the photo (or its decoding) changed"
    assert set(meta["errors"]) == set(by_kind("error"))


@pytest.mark.parametrize("name", by_kind("pipeline"))
def test_matches_torchvision(name):
    case = CASES[name]
    assert_same(Preprocess(case.resolution)(case.image), name)


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_matches_torchvision_on_photos(name):
    assert_same(Preprocess(PHOTOS[name])(load_photo(name)), name)


@pytest.mark.parametrize("name", by_kind("crop"))
def test_center_crop_pads_like_torchvision(name):
    # zero padding never happens after a shorter-side resize, so CenterCrop is checked on its own
    case = CASES[name]
    cropped = center_crop(case.image, case.resolution).convert("RGB")
    pre = Preprocess(case.resolution)  # no resize happens on an R x R image: this is ToTensor+Normalize
    assert_same(pre(cropped), name)


@pytest.mark.parametrize("name", by_kind("error"))
def test_torchvision_failures_raise_image_load_error(name):
    assert name in golden()[0]["errors"]
    case = CASES[name]
    with pytest.raises(ImageLoadError) as info:
        Preprocess(case.resolution)(case.image)
    assert isinstance(info.value, ValueError)
    assert case.image.mode in str(info.value) or "empty" in str(info.value)


def test_not_an_image_is_a_type_error():
    with pytest.raises(TypeError, match="PIL image"):
        Preprocess(32)(np.zeros((4, 4, 3), dtype=np.uint8))


def test_resize_target_matches_torchvision_size_rule():
    table = golden()[1]["resize_table"]
    ours = np.array([resize_target(int(w), int(h), int(r)) for w, h, r, _, _ in table])
    mismatch = np.flatnonzero((ours != table[:, 3:]).any(axis=1))
    assert mismatch.size == 0, f"first mismatch (w, h, R, new_w, new_h): {table[mismatch[0]]}"
    assert resize_target(640, 427, 224) == (335, 224)
    with pytest.raises(ValueError):
        resize_target(0, 10, 224)


def test_from_the_definition_on_a_real_photo():
    # written out independently, in plain PIL and numpy float32: shorter side to R with BICUBIC,
    # centre crop with round-half-even offsets, RGB, scale to 0..1, normalise
    image, res = load_photo("cat.jpg"), 224
    w, h = image.size  # 451 x 300
    new_w, new_h = int(res * w / h), res
    resized = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = int(round((new_w - res) / 2.0)), int(round((new_h - res) / 2.0))
    rgb = np.asarray(resized.crop((left, top, left + res, top + res)).convert("RGB"), dtype=np.float32)
    want = (rgb / np.float32(255) - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    ours = Preprocess(res)(image)
    assert float(np.abs(ours.numpy() - want.transpose(2, 0, 1)).max()) <= 1e-6


def test_batch_equals_stacked_single_calls():
    pre = Preprocess(32)
    images = [CASES[n].image for n in ("rgb_odd_37x53", "P_47x39", "RGBA_50x40", "I16_45x38_low", "1bit_60x45")]
    images.append(load_photo("coffee.jpg"))
    stacked = torch.stack([pre(image) for image in images])
    batch = pre.batch(iter(images))
    assert batch.shape == (len(images), 3, 32, 32) and torch.equal(batch, stacked)
    assert pre.batch([]).shape == (0, 3, 32, 32)


def test_batch_error_names_the_item():
    with pytest.raises(ImageLoadError) as info:
        Preprocess(32).batch([CASES["rgb_1x1"].image, CASES["err_La_40x30"].image])
    assert info.value.index == 1 and "item 1" in str(info.value)


def test_config_round_trips():
    pre = Preprocess(336)
    config = json.loads(json.dumps(pre.config()))
    assert config == {"resolution": 336, "interpolation": "bicubic", "crop": "center",
                      "mean": list(MEAN), "std": list(STD)}
    again = Preprocess.from_config(config)
    assert again == pre and hash(again) == hash(pre) and again.config() == pre.config()
    assert Preprocess(224) != pre
    custom = Preprocess(64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert Preprocess.from_config(custom.config()) == custom != Preprocess(64)
    with pytest.raises(ValueError, match="interpolation"):
        Preprocess.from_config({**config, "interpolation": "bilinear"})


def test_repr_and_validation():
    assert repr(Preprocess(224)) == "Preprocess(resolution=224, resize='shorter side, bicubic', crop='center')"
    assert "mean=(0.5, 0.5, 0.5)" in repr(Preprocess(64, mean=(0.5,) * 3, std=(0.5,) * 3))
    for bad in (0, -3, 2.5, True, "224"):
        with pytest.raises(ValueError):
            Preprocess(bad)
    with pytest.raises(ValueError):
        Preprocess(224, std=(0.5, 0.0, 0.5))


def test_rgb_shows_the_cropped_image():
    image = Preprocess(64).rgb(load_photo("cameraman.jpg"))
    assert image.mode == "RGB" and image.size == (64, 64)
