"""What the collection-job commands (dedup, export, map) share: opening a collection that must hold images."""

from __future__ import annotations

import argparse

from ..console import UsageError
from .common import open_search_store


def open_collection(args: argparse.Namespace, modality: str | None = "image"):
    """The existing collection the arguments name, or a usage error if it is missing or empty."""
    store = open_search_store(args)
    if store.count(modality) == 0:
        what = f"no {modality} records" if modality else "nothing"
        raise UsageError(f"{args.db} collection {args.collection!r} at {args.location} holds {what}; "
                         "fill it with `clip-embeddings index` first")
    return store
