"""``evaluate``: zero-shot accuracy over an ImageFolder directory whose answers are known.

The dataset is drawn with the constructed model of ``test_zeroshot`` (class ``k``'s tile image
has cosine ``c_k > 0`` with prototype ``k`` and 0 with the others), so every accuracy is exact.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

import clip_embeddings as ce
from clip_embeddings.tasks.evaluation import evaluate, read_labels
from clip_embeddings.tasks.zeroshot import DEFAULT_TEMPLATES, ZeroShotClassifier
from tests.test_zeroshot import LABELS, build_constructed_model

FOLDERS = [label.replace(" ", "_") for label in LABELS]  # "a cat" -> a_cat, read back as "a cat"


@pytest.fixture(scope="module")
def dataset(tiny_model_path, tmp_path_factory):
    """Two lossless images per class (one in a nested folder) and the model that knows them."""
    base = tmp_path_factory.mktemp("eval")
    images, _ = build_constructed_model(tiny_model_path, base / "constructed.pt", LABELS, DEFAULT_TEMPLATES)
    root = base / "data"
    for folder, image in zip(FOLDERS, images):
        (root / folder / "nested").mkdir(parents=True)
        Image.fromarray(image).save(root / folder / "one.png")
        Image.fromarray(image).save(root / folder / "nested" / "two.bmp")
    (root / ".hidden").mkdir()  # not a class
    return root, ce.ClipEF(str(base / "constructed.pt"), device="cpu", cache=False)


def test_constructed_dataset_is_classified_perfectly(dataset):
    root, ef = dataset
    result = evaluate(root, ef=ef, progress=False)
    assert (result.top1, result.top5, result.n) == (1.0, 1.0, 12)
    assert sorted(result.per_class) == sorted(FOLDERS) and result.labels == [f.replace("_", " ") for f in sorted(FOLDERS)]
    assert all((c.n, c.top1, c.top5) == (2, 1.0, 1.0) for c in result.per_class.values())
    assert result.per_class["a_weapon"].label == "a weapon" and result.skipped == []


def test_wrong_labels_give_exactly_the_predicted_accuracy(dataset, tmp_path):
    root, ef = dataset
    folders = sorted(FOLDERS)
    texts = [f.replace("_", " ") for f in folders]
    deranged = tmp_path / "deranged.tsv"  # every folder gets another folder's label
    deranged.write_text("# folder<TAB>label\n" + "".join(f"{f}\t{t}\n" for f, t in zip(folders, texts[1:] + texts[:1]))
                        + "not_a_folder\tignored\n")
    result = evaluate(root, deranged, ef=ef, progress=False)
    assert result.top1 == 0.0 and result.top1 <= result.top5 and result.n == 12

    swapped = texts[:]
    swapped[0], swapped[1] = swapped[1], swapped[0]  # 2 of 6 classes wrong
    plain = tmp_path / "plain.txt"
    plain.write_text("\n".join(swapped) + "\n\n")
    result = evaluate(root, plain, ef=ef, progress=False)
    assert result.top1 == pytest.approx(4 / 6)
    assert [result.per_class[f].top1 for f in folders] == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    assert evaluate(root, dict(zip(folders, swapped)), ef=ef, progress=False).top1 == result.top1
    assert evaluate(root, swapped, ef=ef, progress=False).top1 == result.top1


def test_repeated_class_names_share_one_prototype(dataset):
    # openai/CLIP's ImageNet class list names two classes 'missile' and two 'sunglasses'.
    assert len(set(ce.tasks.zeroshot.IMAGENET_CLASSES)) == len(ce.tasks.zeroshot.IMAGENET_CLASSES) - 2
    root, ef = dataset
    folders = sorted(FOLDERS)
    texts = [f.replace("_", " ") for f in folders]
    result = evaluate(root, [texts[0], texts[0], *texts[2:]], ef=ef, progress=False)
    assert result.labels == [texts[0], texts[0], *texts[2:]] and result.n == 12
    # The classes whose names are untouched stay perfect; the first keeps its image in its top 5.
    assert all(result.per_class[f].top1 == 1.0 for f in folders[2:])
    assert result.per_class[folders[0]].top5 == 1.0


def test_top5_is_capped_at_the_number_of_classes(dataset, tmp_path):
    root, ef = dataset
    for folder in sorted(FOLDERS)[:3]:
        (tmp_path / folder).symlink_to(root / folder)
    mapping = {f: "some other text" + "!" * i for i, f in enumerate(sorted(FOLDERS)[:3])}
    result = evaluate(tmp_path, mapping, ef=ef, progress=False)
    assert result.top5 == 1.0 and result.n == 6


def test_equals_a_direct_computation_with_the_classifier(tiny_model_path, tmp_path):
    rng = np.random.default_rng(0)
    folders, paths, truth = ["boat", "red_car", "sky"], [], []
    for k, folder in enumerate(folders):
        (tmp_path / folder).mkdir()
        for i in range(4):
            path = tmp_path / folder / f"{i}.png"
            Image.fromarray(rng.integers(0, 256, (32 + i, 40, 3), dtype=np.uint8)).save(path)
            paths.append(path)
            truth.append(k)
    ef = ce.ClipEF(str(tiny_model_path), device="cpu", cache=False, batch_size=5)
    result = evaluate(tmp_path, ef=ef, templates=["{}", "a photo of a {}."], batch_size=3, progress=False)
    assert ef.batch_size == 5  # batch_size applies to this evaluation only

    direct = ZeroShotClassifier(ef, ["boat", "red car", "sky"], ["{}", "a photo of a {}."]).predict(paths, top_k=5)
    hits = [direct.labels.index(p) == t for p, t in zip(direct.predictions, truth)]
    assert result.top1 == pytest.approx(np.mean(hits)) and result.top5 == 1.0 and result.n == 12
    for k, folder in enumerate(folders):
        assert result.per_class[folder].n == 4
        assert result.per_class[folder].top1 == pytest.approx(np.mean([h for h, t in zip(hits, truth) if t == k]))


def test_unreadable_images_follow_the_policy(dataset, tmp_path):
    root, ef = dataset
    shutil.copytree(root, tmp_path / "data")
    (tmp_path / "data" / "a_cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ce.ImageLoadError, match="broken.png"):
        evaluate(tmp_path / "data", ef=ef, progress=False)
    skipping = ce.ClipEF(ef.model_name, device="cpu", cache=False, on_error="skip")
    result = evaluate(tmp_path / "data", ef=skipping, progress=False)
    assert (result.n, result.top1, result.per_class["a_cat"].n) == (12, 1.0, 2)
    assert [s.source.endswith("broken.png") for s in result.skipped] == [True]


def test_labels_file_errors(tmp_path):
    folders = ["a", "b"]
    path = tmp_path / "labels.txt"
    path.write_text("a\tthe letter a\nb\tthe letter b\n")
    assert read_labels(path, folders) == ["the letter a", "the letter b"]
    path.write_text("a\tx\nonly a label\n")
    with pytest.raises(ValueError, match="mixes"):
        read_labels(path, folders)
    path.write_text("a\tx\n")
    with pytest.raises(ValueError, match="no label for folder"):
        read_labels(path, folders)
    path.write_text("x\n")
    with pytest.raises(ValueError, match="1 labels for 2"):
        read_labels(path, folders)
    with pytest.raises(FileNotFoundError):
        evaluate(tmp_path / "nowhere", ef=ce.ClipEF("ViT-B/32"))  # a name: nothing loads before the check
    with pytest.raises(ValueError, match="no class subfolders"):
        evaluate(tmp_path, ef=ce.ClipEF("ViT-B/32"))
