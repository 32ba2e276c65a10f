"""``clip-embeddings export``: write a collection's vectors and metadata to .npy + Parquet, or one Parquet file."""

from __future__ import annotations

import argparse

from ...collection.export import FORMATS, export
from ..console import emit
from .common import positive_int
from .jobs import job_document, job_parser, open_collection


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``export`` sub-parser; :func:`run` carries it out."""
    p = job_parser(sub, "export",
                   help="export vectors and metadata (clip-retrieval's npy + Parquet layout, or Parquet)",
                   description="Stream every stored vector with its metadata to files, memory flat: "
                               "--format npy writes clip-retrieval's img_emb/ text_emb/ metadata/ folders "
                               "under OUTPUT; --format parquet writes one file with a vector column.")
    p.add_argument("output", metavar="OUTPUT", help="a folder (npy) or a .parquet file (parquet)")
    p.add_argument("--format", choices=FORMATS, default="npy", help="npy (default) or parquet")
    p.add_argument("--modality", choices=("image", "text"), help="only images or only texts (default: both)")
    p.add_argument("--shard-size", type=positive_int, default=1_000_000, help="rows per .npy shard (default 1,000,000)")
    return p


def run(args: argparse.Namespace) -> int:
    """Export the collection and list the files written."""
    store = open_collection(args, args.modality)
    report = export(store, args.output, format=args.format, modality=args.modality, shard_size=args.shard_size,
                    progress=True)
    document = job_document(args) | {"format": args.format, **report.to_dict()}
    emit(args, document, [str(report)] + [f"  {f}" for f in report.files])
    return 0
