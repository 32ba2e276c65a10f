"""``clip-embeddings search``: query a collection with a text or an image and print the nearest items."""

from __future__ import annotations

import argparse
import os

from ..console import UsageError, emit, format_table
from .common import common_options, loaded, model_options, open_search_store, positive_int, store_options


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``search`` sub-parser; :func:`run` carries it out."""
    p = sub.add_parser("search", parents=[common_options(), store_options(), model_options(for_search=True, remote=True)],
                       help="find the nearest items to a text or an image",
                       description="Query a collection with a text (text-to-image search by default) or with "
                                   "--image (image-to-image); --modality text searches stored captions/texts.")
    p.add_argument("query", nargs="?", metavar="QUERY_TEXT", help="the text to search for")
    p.add_argument("--image", metavar="PATH", help="search with this image instead of a text")
    p.add_argument("--modality", choices=("image", "text"), default="image",
                   help="which stored records to rank: images or texts/captions (default: image)")
    p.add_argument("-k", type=positive_int, default=5, help="number of results (default: 5)")
    return p


def run(args: argparse.Namespace) -> int:
    """Query a collection with a text or an image and print the nearest items."""
    if (args.query is None) == (args.image is None):
        raise UsageError("search takes a QUERY_TEXT or --image PATH, exactly one of them")
    if args.image is not None and not os.path.exists(args.image) and "://" not in args.image:
        raise UsageError(f"{args.image}: image not found")
    store = open_search_store(args)
    if store.count(args.modality) == 0:
        hint = ("fill it with `clip-embeddings index` first" if args.modality == "image" else
                "index a folder with captions (captions.json, captions.csv or .txt files beside the images)")
        raise UsageError(f"{args.db} collection {args.collection!r} at {args.location} holds no {args.modality} "
                         f"records; {hint}")
    loaded(store.ef)
    if args.image is not None:
        hits = store.query(image=args.image, k=args.k, modality=args.modality)
    else:
        hits = store.query(args.query, k=args.k, modality=args.modality)
    query = f"image {args.image}" if args.image is not None else repr(args.query)
    document = {
        "command": "search", "db": args.db, "location": args.location, "collection": args.collection,
        "query": {"text": args.query} if args.image is None else {"image": args.image},
        "modality": args.modality, "k": args.k,
        "hits": [{"rank": rank, "id": h.id, "score": h.score, "source": h.source, "document": h.document,
                  "modality": h.modality, "metadata": h.metadata} for rank, h in enumerate(hits, 1)],
    }
    text = [f"{len(hits)} nearest {args.modality} record(s) to {query} in {args.db} collection {args.collection!r}:"]
    if hits:
        rows = [[rank, h.score, h.id, h.source or h.document or ""] for rank, h in enumerate(hits, 1)]
        headers = ["rank", "score", "id", "source" if args.modality == "image" else "document"]
        if args.modality == "image" and any(h.document for h in hits):
            headers.append("caption")
            for row, h in zip(rows, hits, strict=True):
                row.append(h.document or "")
        text.append(format_table(headers, rows, align="rrll", max_width=250))  # whole paths: they get copied
    emit(args, document, text)
    return 0
