"""``clip-embeddings finetune``: contrastively fine-tune a model on (image, caption) pairs and save the checkpoint."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

from ...config import ON_ERROR
from ..console import UsageError, emit, format_table
from .common import common_options, model_options, positive_int, skipped_json, skipped_lines


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``finetune`` sub-parser; :func:`run` carries it out."""
    p = sub.add_parser("finetune", parents=[common_options(), model_options(dtype=False)],
                       help="fine-tune on (image, caption) pairs",
                       description="Contrastively fine-tune CLIP on (image, caption) pairs and save a checkpoint "
                                   "that ce.load and --model read.")
    p.add_argument("--pairs", required=True, metavar="CSV_OR_JSONL",
                   help="pairs file: CSV with image,caption columns or JSONL with image/caption keys; "
                        "relative image paths are relative to this file")
    p.add_argument("--epochs", type=positive_int, default=1, help="passes over the pairs (default: 1)")
    p.add_argument("--lr", type=float, default=1e-5, help="learning rate (default: 1e-5)")
    p.add_argument("--output", required=True, metavar="PATH", help="where to save the fine-tuned checkpoint")
    p.add_argument("--freeze-image", action="store_true", help="keep the image tower fixed")
    p.add_argument("--freeze-text", action="store_true", help="keep the text tower fixed")
    p.add_argument("--warmup-steps", type=int, default=0, metavar="N",
                   help="steps of linear learning-rate warm-up (default: 0)")
    p.add_argument("--on-error", choices=ON_ERROR, default="skip",
                   help="drop pairs whose image cannot be read (listed at the end), or stop (default: skip)")
    return p


def run(args: argparse.Namespace) -> int:
    """Contrastively fine-tune a model on (image, caption) pairs and save the checkpoint."""
    from ...tasks.finetune import finetune

    if args.freeze_image and args.freeze_text:
        raise UsageError("--freeze-image and --freeze-text together leave nothing to train")
    pairs = read_pairs(args.pairs)
    if len(pairs) < 2:
        raise UsageError(f"{args.pairs}: fine-tuning needs at least 2 pairs (the other pairs of a batch are the negatives)")
    result = finetune(
        args.model, pairs, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
        freeze_image=args.freeze_image, freeze_text=args.freeze_text, output=args.output,
        device=args.device, warmup_steps=args.warmup_steps, on_error=args.on_error, progress=sys.stderr.isatty(),
    )
    frozen = [name for name, flag in (("image", args.freeze_image), ("text", args.freeze_text)) if flag]
    output = result.output or args.output
    document = {
        "command": "finetune", "model": args.model, "pairs": len(pairs), "epochs": args.epochs,
        "frozen": frozen, "epoch_losses": [float(v) for v in result.epoch_losses], "output": str(output),
        "skipped": skipped_json(result.skipped),
    }
    text = [f"fine-tuned {args.model} on {len(pairs)} pair(s) for {args.epochs} epoch(s)"
            + (f", {frozen[0]} tower frozen" if frozen else "")]
    if result.epoch_losses:
        text.append(format_table(["epoch", "mean loss"], [[i, float(v)] for i, v in enumerate(result.epoch_losses, 1)]))
    text += skipped_lines(result.skipped)
    text += [f"saved checkpoint: {output}", f"use it with --model {output} (or ce.load({str(output)!r}) in Python)"]
    emit(args, document, text)
    return 0


def read_pairs(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(image path, caption) pairs from a CSV (``image,caption`` columns) or JSONL file.

    A CSV may have a header naming ``image`` and ``caption`` (any column order) or be two bare
    columns; a JSONL line is ``{"image": ..., "caption": ...}``. Relative image paths are taken
    relative to the pairs file, so a dataset folder can move as a whole (the current directory is
    tried second).

    Example:
        >>> _ = Path("photos/train.csv").write_text("image,caption\\ncat.jpg,a close-up photo of a tabby cat\\n")
        >>> read_pairs("photos/train.csv")[:1]
        [('photos/cat.jpg', 'a close-up photo of a tabby cat')]
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: pairs file not found")
    raw: list[tuple[str, str]] = []
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                raw.append((str(row["image"]), str(row["caption"])))
            except (ValueError, KeyError, TypeError) as e:
                raise UsageError(f"{path}:{n}: expected {{\"image\": ..., \"caption\": ...}} ({e})") from None
    else:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
        header = [c.strip().lower() for c in rows[0]] if rows else []
        if "image" in header and "caption" in header:
            i, c = header.index("image"), header.index("caption")
            rows = rows[1:]
        else:
            i, c = 0, 1
        for n, row in enumerate(rows, 1):
            if len(row) <= max(i, c):
                raise UsageError(f"{path}: row {n} needs an image path and a caption")
            raw.append((row[i].strip(), row[c].strip()))
    if not raw:
        raise UsageError(f"{path}: no (image, caption) pairs in it")
    pairs = []
    for image, caption in raw:
        candidate = Path(image).expanduser()
        if not candidate.is_absolute():
            beside = path.parent / candidate
            candidate = beside if beside.exists() or not candidate.exists() else candidate
        pairs.append((str(candidate), caption))
    return pairs
