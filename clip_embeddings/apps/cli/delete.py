"""``clip-embeddings delete``: remove items (an image with its caption) by id, by metadata or by tag."""

from __future__ import annotations

import argparse
import json

from ..console import UsageError, emit
from .common import open_search_store
from .jobs import job_document, job_parser


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``delete`` sub-parser; :func:`run` carries it out."""
    p = job_parser(sub, "delete",
                   help="remove items from a collection",
                   description="Remove items (an image and its caption go together) by id, or every item "
                               "matching --where / --tag. Prints how many were removed.")
    p.add_argument("ids", nargs="*", metavar="ID", help="item ids (from search results)")
    p.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                   help="remove items whose metadata KEY (or source, document, item_id) equals VALUE; "
                        "VALUE is read as JSON when it can be (2024, true), else as text; repeat for all of several")
    p.add_argument("--tag", action="append", default=[], metavar="LABEL", help="remove items tagged LABEL")
    return p


def parse_where(pairs: list[str], tags: list[str]) -> dict | None:
    """``["album=space", "year=2024"]`` and tags as the portable ``where`` dict.

    Example:
        >>> parse_where(["album=space", "year=2024"], ["beach"])
        {'album': 'space', 'year': 2024, 'tag': ['beach']}
    """
    where: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--where takes KEY=VALUE, got {pair!r}")
        try:
            where[key] = json.loads(value)
        except ValueError:
            where[key] = value
    if tags:
        where["tag"] = tags
    return where or None


def run(args: argparse.Namespace) -> int:
    """Remove items by id or by filter and say how many went."""
    where = parse_where(args.where, args.tag)
    if bool(args.ids) == (where is not None):
        raise UsageError("delete takes item IDs or --where/--tag filters, one of the two")
    store = open_search_store(args)
    removed = store.delete(args.ids) if args.ids else store.delete(where=where)
    emit(args, job_document(args) | {"removed": removed, "ids": args.ids, "where": where,
                                     "collection_items": store.count()},
         [f"removed {removed} item(s) from {args.db} collection {args.collection!r}; {store.count()} left"])
    return 0
