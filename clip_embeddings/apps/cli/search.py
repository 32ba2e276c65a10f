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
    p.add_argument("query", nargs="?", metavar="QUERY",
                   help="the text to search for, or a compound query: weighted terms joined by ' + ' and ' - ', "
                        "e.g. '2:beach + img:sunset.jpg - people' (img:PATH an image, id:ID a stored item, "
                        "\"quoted text\" kept whole; grammar in docs/queries.md)")
    p.add_argument("--image", metavar="PATH", help="search with this image instead of a text")
    p.add_argument("--modality", choices=("image", "text"), default="image",
                   help="which stored records to rank: images or texts/captions (default: image)")
    p.add_argument("--like", action="append", metavar="ID",
                   help="more like this stored item (repeatable); the item itself is never returned")
    p.add_argument("--unlike", action="append", default=[], metavar="ID", help="with --like: less like this item")
    p.add_argument("--min-score", type=float, default=None, metavar="S",
                   help="drop hits with a cosine similarity below S (scales differ per modality: docs/queries.md)")
    p.add_argument("--tag", action="append", metavar="LABEL",
                   help="only items tagged LABEL at ingest (index --tags); repeat for all of several")
    p.add_argument("-k", type=positive_int, default=5, help="number of results (default: 5)")
    return p


def run(args: argparse.Namespace) -> int:
    """Query a collection with a text or an image and print the nearest items."""
    if sum(x is not None for x in (args.query, args.image, args.like)) != 1:
        raise UsageError("search takes a QUERY, --image PATH or --like ID, exactly one of them")
    if args.unlike and not args.like:
        raise UsageError("--unlike goes with --like")
    terms = _terms(args.query) if args.query is not None else None
    if args.image is not None and not os.path.exists(args.image) and "://" not in args.image:
        raise UsageError(f"{args.image}: image not found")
    store = open_search_store(args)
    if store.count(args.modality) == 0:
        hint = ("fill it with `clip-embeddings index` first" if args.modality == "image" else
                "index a folder with captions (captions.json, captions.csv or .txt files beside the images)")
        raise UsageError(f"{args.db} collection {args.collection!r} at {args.location} holds no {args.modality} "
                         f"records; {hint}")
    loaded(store.ef)
    options = {"k": args.k, "modality": args.modality, "min_score": args.min_score,
               "where": {"tag": args.tag} if args.tag else None}
    try:
        if args.like:
            hits = store.more_like(args.like, unlike=args.unlike, **options)
        elif args.image is not None:
            hits = store.query(image=args.image, **options)
        else:
            hits = store.query(terms or args.query, **options)
    except ValueError as e:  # an id not stored, terms that cancel out
        raise UsageError(str(e)) from e
    query = (f"image {args.image}" if args.image is not None else f"items like {', '.join(args.like)}" if args.like
             else repr(args.query))
    document = {
        "command": "search", "db": args.db, "location": args.location, "collection": args.collection,
        "query": ({"image": args.image} if args.image is not None else {"like": args.like, "unlike": args.unlike}
                  if args.like else {"text": args.query, **({"terms": [str(t) for t in terms]} if terms else {})}),
        "min_score": args.min_score, "tags": args.tag or [],
        "modality": args.modality, "k": args.k,
        "hits": [{"rank": rank, "id": h.id, "score": h.score, "source": h.source, "document": h.document,
                  "modality": h.modality, "metadata": h.metadata} for rank, h in enumerate(hits, 1)],
    }
    text = [f"{len(hits)} nearest {args.modality} record(s) to {query} in {args.db} collection {args.collection!r}:"]
    if hits:
        # The caption (if any) before the source, so the whole path stays last: it gets copied.
        captions = args.modality == "image" and any(h.document for h in hits)
        rows = [[rank, h.score, h.id, *([h.document or ""] if captions else []), h.source or h.document or ""]
                for rank, h in enumerate(hits, 1)]
        headers = ["rank", "score", "id", *(["caption"] if captions else []),
                   "source" if args.modality == "image" else "document"]
        align = "rrll" + "l" * (len(headers) - 4)
        text.append(format_table(headers, rows, align=align, max_width=250))  # whole paths: they get copied
    emit(args, document, text)
    return 0


def _terms(query: str) -> list | None:
    """The compound terms of QUERY, or None when it is one plain text (searched as it is)."""
    from ...collection.query import parse_query

    try:
        terms = parse_query(query)
    except ValueError as e:
        raise UsageError(str(e)) from e
    if len(terms) == 1 and terms[0].kind == "text" and terms[0].weight == 1 and terms[0].value == query.strip():
        return None  # a plain text: searched as it is
    for term in terms:
        if term.kind == "image" and "://" not in str(term.value) and not os.path.exists(term.value):
            raise UsageError(f"{term.value}: image not found (in the query term {term})")
    return terms
