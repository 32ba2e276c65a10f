"""Zero-shot accuracy on a labelled image folder (ImageFolder layout: one subfolder per class).

Example:
    >>> from clip_embeddings.tasks.evaluation import evaluate
    >>> result = evaluate("data/val", progress=False)  # data/val/cat/*.jpg, data/val/coffee/*.jpg, ...
    >>> f"top-1 {result.top1:.1%}, top-5 {result.top5:.1%} on {result.n} images"
    'top-1 ...%, top-5 100.0% on 3 images'
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..embedding.function import ClipEF, SkippedItem
from ..inputs.folders import IMAGE_EXTENSIONS, iter_image_files
from .zeroshot import DEFAULT_TEMPLATES, ZeroShotClassifier, best_columns

__all__ = ["ClassAccuracy", "EvalResult", "evaluate", "read_labels"]


@dataclass
class ClassAccuracy:
    """Accuracy on the images of one class folder (``nan`` when the folder has none)."""

    label: str
    n: int
    top1: float
    top5: float


@dataclass
class EvalResult:
    """Zero-shot accuracy over a dataset, as fractions in ``[0, 1]``.

    ``top5`` counts a hit among the ``min(5, classes)`` best labels. ``per_class`` is keyed by
    folder name; ``skipped`` lists unreadable images (under ``on_error="skip"``), which are not
    counted in ``n``.
    """

    top1: float
    top5: float
    n: int
    per_class: dict[str, ClassAccuracy]
    labels: list[str] = field(default_factory=list)
    skipped: list[SkippedItem] = field(default_factory=list)


def _class_folders(root: Path) -> list[str]:
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder; expected one subfolder of images per class")
    folders = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not folders:
        raise ValueError(f"{root}: no class subfolders (expected e.g. {root}/cat/*.jpg, {root}/dog/*.jpg)")
    return folders


def read_labels(path: str | os.PathLike, folders: Sequence[str]) -> list[str]:
    """Label texts for ``folders`` from a labels file.

    Either every line is ``folder<TAB>label`` (entries for absent folders are ignored, so one file
    can serve a subset), or every line is a label, in the sorted folder order. Blank lines and
    lines starting with ``#`` are skipped.

    Example:
        >>> _ = Path("labels.tsv").write_text("n01440764\\ttench\\nn01443537\\tgoldfish\\n")
        >>> read_labels("labels.tsv", ["n01440764", "n01443537"])
        ['tench', 'goldfish']
    """
    lines = [line.rstrip("\r\n") for line in Path(path).read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    tabbed = ["\t" in line for line in lines]
    if lines and all(tabbed):
        mapping = {}
        for line in lines:
            folder, label = line.split("\t", 1)
            mapping[folder.strip()] = label.strip()
        return _labels_from_mapping(mapping, folders, str(path))
    if any(tabbed):
        raise ValueError(f"{path}: mixes 'folder<TAB>label' lines with plain label lines; use one form")
    if len(lines) != len(folders):
        raise ValueError(f"{path}: {len(lines)} labels for {len(folders)} class folders; a plain labels "
                         "file needs one line per folder, in sorted folder order")
    return [line.strip() for line in lines]


def _labels_from_mapping(mapping: Mapping[str, str], folders: Sequence[str], where: str) -> list[str]:
    missing = [f for f in folders if f not in mapping]
    if missing:
        raise ValueError(f"{where}: no label for folder(s) {', '.join(missing[:10])}"
                         + (f" and {len(missing) - 10} more" if len(missing) > 10 else ""))
    return [mapping[f] for f in folders]


def _resolve_labels(labels, folders: Sequence[str]) -> list[str]:
    if labels is None:
        return [f.replace("_", " ") for f in folders]
    if isinstance(labels, (str, os.PathLike)):
        return read_labels(labels, folders)
    if isinstance(labels, Mapping):
        return _labels_from_mapping(labels, folders, "labels")
    labels = list(labels)
    if len(labels) != len(folders):
        raise ValueError(f"{len(labels)} labels for {len(folders)} class folders (sorted: {', '.join(folders[:5])}...)")
    return labels


def evaluate(dataset_dir: str | os.PathLike, labels=None, *, ef: ClipEF | None = None,
             templates: Sequence[str] | None = None, batch_size: int | None = None,
             progress: bool = True) -> EvalResult:
    """Zero-shot top-1/top-5 accuracy of a CLIP model on an ImageFolder-style directory.

    Args:
        dataset_dir: a folder with one subfolder of images per class (searched recursively).
        labels: the label text of each class. ``None``: the folder names with ``_`` as spaces;
            a path: a labels file (see :func:`read_labels`); a mapping ``{folder: label}``; or a
            list in sorted folder order (e.g. ``IMAGENET_CLASSES`` for ImageNet's WordNet-id folders).
        ef: the embedding function (default ``ClipEF()``); its ``on_error`` policy applies.
        templates: prompt templates (default :data:`~clip_embeddings.tasks.zeroshot.DEFAULT_TEMPLATES`).
        batch_size: images per forward pass (default: the embedding function's).
        progress: show a progress bar.

    Example:
        >>> labels = {"cat": "cat", "coffee": "cup of coffee", "rocket": "rocket"}
        >>> result = evaluate("data/val", labels, ef=ClipEF(batch_size=8), progress=False)
        >>> result.n, result.top5
        (3, 1.0)
    """
    root = Path(dataset_dir)
    folders = _class_folders(root)
    label_texts = _resolve_labels(labels, folders)
    ef = ef or ClipEF()
    if batch_size is not None:
        ef = copy.copy(ef)  # the caller's instance keeps its own batch size
        ef.batch_size = batch_size
    # Class names may repeat (openai/CLIP's ImageNet list has 'missile' and 'sunglasses' twice):
    # one prototype per distinct name, one row per class, as the original's per-class weights.
    distinct = list(dict.fromkeys(label_texts))
    classifier = ZeroShotClassifier(ef, distinct, DEFAULT_TEMPLATES if templates is None else templates)
    prototypes = classifier.prototypes[[distinct.index(label) for label in label_texts]]

    paths, targets = [], []
    for target, folder in enumerate(folders):
        for path in iter_image_files(root / folder, IMAGE_EXTENSIONS, recursive=True):
            paths.append(path)
            targets.append(target)
    if not paths:
        raise ValueError(f"{root}: no images in the class folders ({', '.join(sorted(IMAGE_EXTENSIONS))})")

    embedded = ef.encode_images(paths, progress=progress, total=len(paths))
    k = min(5, len(folders))
    best = best_columns(embedded.embeddings @ prototypes.T, k)
    truth = np.asarray(targets, dtype=np.int64)[embedded.indices]
    hit1 = best[:, 0] == truth
    hit5 = (best == truth[:, None]).any(axis=1)

    per_class = {}
    for target, (folder, label) in enumerate(zip(folders, label_texts, strict=True)):
        mine = truth == target
        n = int(mine.sum())
        per_class[folder] = ClassAccuracy(label, n, float(hit1[mine].mean()) if n else float("nan"),
                                          float(hit5[mine].mean()) if n else float("nan"))
    n = len(truth)
    return EvalResult(
        top1=float(hit1.mean()) if n else float("nan"), top5=float(hit5.mean()) if n else float("nan"),
        n=n, per_class=per_class, labels=list(label_texts), skipped=list(embedded.skipped),
    )
