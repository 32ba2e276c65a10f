"""``clip-embeddings eval``: zero-shot accuracy on an ImageFolder-style dataset (one sub-folder per class)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ..console import UsageError, emit, format_table
from .common import (
    common_options,
    loaded,
    make_ef,
    model_options,
    read_labels,
    skipped_json,
    skipped_lines,
    templates,
    templates_option,
)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``eval`` sub-parser; :func:`run` carries it out."""
    p = sub.add_parser("eval", parents=[common_options(), model_options(), templates_option()],
                       help="zero-shot accuracy on a labelled folder",
                       description="Zero-shot top-1/top-5 accuracy on an ImageFolder-style dataset: one sub-folder "
                                   "per class, named after the class (or mapped by --labels).")
    p.add_argument("--dataset", required=True, metavar="DIR", help="dataset folder with one sub-folder per class")
    p.add_argument("--labels", metavar="FILE",
                   help="class names: one per line in sub-folder order, or a JSON {folder: label} object "
                        "(default: the sub-folder names)")
    return p


def run(args: argparse.Namespace) -> int:
    """Zero-shot accuracy on an ImageFolder-style dataset (one sub-folder per class)."""
    from ...tasks.evaluation import evaluate

    dataset = Path(args.dataset)
    if not dataset.is_dir():
        raise UsageError(f"{dataset}: dataset folder not found (expected one sub-folder of images per class)")
    labels: Any = None
    if args.labels:
        if not os.path.isfile(args.labels):
            raise UsageError(f"{args.labels}: labels file not found")
        labels = read_labels(args.labels) if args.labels.endswith(".json") else args.labels
    result = evaluate(dataset, labels, ef=loaded(make_ef(args, on_error="skip")),
                      templates=templates(args.templates), progress=sys.stderr.isatty())
    classes = len(result.per_class)
    skipped = getattr(result, "skipped", [])
    document = {
        "command": "eval", "dataset": str(dataset), "templates": args.templates, "n": result.n,
        "top1": result.top1, "top5": result.top5,
        "per_class": [{"class": folder, "label": c.label, "n": c.n, "top1": _number(c.top1), "top5": _number(c.top5)}
                      for folder, c in result.per_class.items()],
        "skipped": skipped_json(skipped),
    }
    text = [f"zero-shot evaluation on {dataset}: {result.n} image(s), {classes} class(es), {args.templates} templates",
            f"  top-1 accuracy: {result.top1:.2%}",
            f"  top-5 accuracy: {result.top5:.2%}" + (f" (top-{classes}: only {classes} classes)" if classes < 5 else "")]
    if result.per_class:
        rows = [[folder, c.label, c.n, _percent(c.top1), _percent(c.top5)] for folder, c in result.per_class.items()]
        text += ["", format_table(["class", "label", "n", "top-1", "top-5"], rows, align="llrrr")]
    emit(args, document, text + skipped_lines(skipped))
    return 0


def _number(value: float) -> float | None:
    """JSON has no NaN: a class folder without images has no accuracy (null)."""
    return None if value != value else float(value)


def _percent(value: float) -> str:
    return "-" if value != value else f"{value:.1%}"  # nan: a class folder without images
