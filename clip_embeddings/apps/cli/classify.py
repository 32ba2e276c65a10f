"""``clip-embeddings classify``: zero-shot classify images over a label set and print each image's top labels."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..console import UsageError, emit, format_table
from .common import (
    common_options,
    loaded,
    make_ef,
    model_options,
    positive_int,
    read_labels,
    skipped_json,
    skipped_lines,
    templates,
    templates_option,
)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``classify`` sub-parser; :func:`run` carries it out."""
    p = sub.add_parser("classify", parents=[common_options(), model_options(remote=True), templates_option()],
                       help="zero-shot classify images",
                       description="Zero-shot classify images (or folders of images) over a set of labels.")
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files or folders")
    labels = p.add_mutually_exclusive_group(required=True)
    labels.add_argument("--labels", metavar="a,b,c", help="comma-separated labels")
    labels.add_argument("--labels-file", metavar="FILE", help="labels, one per line (or a JSON list)")
    p.add_argument("-k", type=positive_int, default=3, help="top labels to show per image (default: 3)")
    return p


def run(args: argparse.Namespace) -> int:
    """Zero-shot classify images over a label set and print each image's top labels."""
    from ...tasks.zeroshot import classify

    labels = _label_list(args)
    images = _images_in(args.images)
    result = classify(images, labels, templates(args.templates), ef=loaded(make_ef(args)), top_k=args.k,
                      on_error="skip")
    names = _short_names(images)
    rows = []
    for index, top_labels, top_scores in zip(result.indices, result.top_labels, result.top_scores, strict=True):
        for rank, (label, prob) in enumerate(zip(top_labels, top_scores, strict=True), 1):
            rows.append([names[index] if rank == 1 else "", rank, label, prob])
    document = {
        "command": "classify", "labels": labels, "templates": args.templates,
        "results": [{"image": images[index], "labels": [{"label": label, "probability": float(prob)}
                                                        for label, prob in zip(top_labels, top_scores, strict=True)]}
                    for index, top_labels, top_scores in zip(result.indices, result.top_labels, result.top_scores, strict=True)],
        "skipped": skipped_json(result.skipped),
    }
    text = [f"zero-shot classification of {len(images)} image(s) over {len(labels)} label(s) "
            f"({args.templates} templates):"]
    if rows:
        text.append(format_table(["image", "rank", "label", "probability"], rows, align="lrlr"))
    emit(args, document, text + skipped_lines(result.skipped))
    return 0 if result.indices else 1


def _images_in(paths: Sequence[str]) -> list[str]:
    """Expand folders among ``paths`` into their image files; plain files pass through as given."""
    from ...inputs.folders import iter_image_files

    out: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            out += [str(p) for p in iter_image_files(path)]
        else:
            out.append(path)
    if not out:
        raise UsageError(f"no images found in {', '.join(paths)}")
    return out


def _short_names(paths: Sequence[str]) -> list[str]:
    """File names, unless two share one: then the paths as given."""
    names = [Path(p).name for p in paths]
    return names if len(set(names)) == len(names) else list(paths)


def _print_skipped(skipped: Sequence[Any]) -> None:
    for line in skipped_lines(skipped):
        print(line)


def _label_list(args: argparse.Namespace) -> list[str]:
    if args.labels_file:
        labels = read_labels(args.labels_file)
        labels = list(labels.values()) if isinstance(labels, dict) else labels
    else:
        labels = [label.strip() for label in (args.labels or "").split(",") if label.strip()]
    if len(labels) < 2:
        raise UsageError("classify needs at least two labels (--labels a,b,c or --labels-file FILE)")
    return labels
