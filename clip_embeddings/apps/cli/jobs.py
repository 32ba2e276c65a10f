"""What the collection-job commands (dedup, delete, export, map) share: their options, opening a collection
that must hold records, and the head of their ``--json`` document."""

from __future__ import annotations

import argparse
from typing import Any

from ..console import UsageError
from .common import common_options, model_options, open_search_store, store_options


def open_collection(args: argparse.Namespace, modality: str | None = "image"):
    """The existing collection the arguments name, or a usage error if it is missing or empty."""
    store = open_search_store(args)
    if store.count(modality) == 0:
        what = f"no {modality} records" if modality else "nothing"
        raise UsageError(f"{args.db} collection {args.collection!r} at {args.location} holds {what}; "
                         "fill it with `clip-embeddings index` first")
    return store


def job_parser(sub: argparse._SubParsersAction, name: str, **texts: Any) -> argparse.ArgumentParser:
    """The sub-parser of a job over a stored collection: ``--json``/``--debug``, the store options
    and the search model options; ``texts`` are ``help=`` and ``description=``."""
    return sub.add_parser(name, parents=[common_options(), store_options(), model_options(for_search=True)], **texts)


def job_document(args: argparse.Namespace) -> dict[str, Any]:
    """The head of a job's ``--json`` document: the command and the collection it ran on."""
    return {"command": args.command, "db": args.db, "location": args.location, "collection": args.collection}
