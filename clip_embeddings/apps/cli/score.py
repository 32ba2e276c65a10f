"""``clip-embeddings score``: CLIPScore of (image, caption) pairs from a CSV/JSONL file or a collection's
captioned items, with a --min filter."""

from __future__ import annotations

import argparse
import os

from ...collection.scores import score_collection
from ...tasks.scores import HESSEL_W, score_file
from ..console import UsageError, emit
from .common import add_store_arguments, common_options, loaded, make_ef, model_options, skipped_json, skipped_lines
from .jobs import open_collection


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``score`` sub-parser; :func:`run` carries it out."""
    p = sub.add_parser("score", parents=[common_options(), model_options(for_search=True)],
                       help="CLIPScore of image-caption pairs; keep those over --min",
                       description="Score each (image, caption) row of a CSV (with a header) or JSONL file: "
                                   "w * max(cos, 0) (Hessel et al. 2021: w = 2.5; --w 100 is torchmetrics' "
                                   "form; --w 1 --min 0.28 is LAION's ViT-B/32 filter). With --output, the "
                                   "rows scoring at least --min are written in the input's format with a "
                                   "clip_score column. Bad rows are reported, not fatal. Without PAIRS, a "
                                   "collection's captioned items are scored from their stored vectors (--store, "
                                   "or --db/--location/--collection); --output then gets id, image, caption, "
                                   "clip_score rows.")
    p.add_argument("pairs", metavar="PAIRS", nargs="?",
                   help="a .csv or .jsonl file; image paths relative to its folder (or give a collection)")
    add_store_arguments(p.add_argument_group("or a collection's captioned items"), required=False)
    p.add_argument("--output", "-o", metavar="FILE", help="where to write the kept rows (.csv or .jsonl)")
    p.add_argument("--min", type=float, dest="minimum", help="keep rows scoring at least this")
    p.add_argument("--w", type=float, default=HESSEL_W, help=f"the score's scale w (default {HESSEL_W})")
    p.add_argument("--image-column", help="the image column (default: image, image_path, path, url ...)")
    p.add_argument("--caption-column", help="the caption column (default: caption, text, prompt, title)")
    return p


def run(args: argparse.Namespace) -> int:
    """Score the pairs (of a file, or of a collection) and report how many were kept."""
    from_store = args.store or args.location or args.collection
    if args.pairs and from_store:
        raise UsageError("give a pair file or a collection (--store, or --location and --collection), not both")
    if not args.pairs:
        if not (args.location and args.collection):
            raise UsageError("score needs a pair file (PAIRS) or a collection: --store ADDRESS, or --location "
                             "and --collection")
        return run_collection(args)
    if not os.path.isfile(args.pairs):
        raise UsageError(f"{args.pairs}: no such file")
    ef = loaded(make_ef(args))
    report = score_file(args.pairs, args.output, minimum=args.minimum, w=args.w, ef=ef, image_key=args.image_column,
                        caption_key=args.caption_column, progress=True)
    document = {"command": "score", "pairs": args.pairs, "output": args.output, **report.to_dict(),
                "skipped": skipped_json(report.skipped)}
    bar = f" scoring at least {args.minimum}" if args.minimum is not None else ""
    text = [f"scored {report.scored} of {report.read} pair(s) (w = {args.w}); {report.kept} kept{bar}"
            + (f", written to {args.output}" if args.output else "")]
    text += skipped_lines(report.skipped)
    emit(args, document, text)
    return 0


def run_collection(args: argparse.Namespace) -> int:
    """Score a collection's captioned items from their stored vectors (no model run)."""
    store = open_collection(args)
    if store.count("text") == 0:
        raise UsageError(f"{args.db} collection {args.collection!r} at {args.location} holds no captions; "
                         "index images with captions (a captions file or --captions) to score them")
    report = score_collection(store, args.output, minimum=args.minimum, w=args.w, progress=True)
    document = {"command": "score", "db": args.db, "location": args.location, "collection": args.collection,
                "output": args.output, **report.to_dict(),
                "kept_pairs": [{"id": i, "clip_score": report.scores[i]} for i in report.kept_ids()]}
    bar = f" scoring at least {args.minimum}" if args.minimum is not None else ""
    text = [f"scored {report.scored} captioned item(s) of {args.collection!r} (w = {args.w}); {report.kept} kept{bar}"
            + (f", written to {args.output}" if args.output else "")
            + (f"; {report.uncaptioned} image(s) without a caption" if report.uncaptioned else "")]
    emit(args, document, text)
    return 0
