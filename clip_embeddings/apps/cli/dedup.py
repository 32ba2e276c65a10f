"""``clip-embeddings dedup``: find duplicate images in a collection (and, with --delete, remove them)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ...collection.duplicates import THRESHOLD_SOURCE, find_duplicates, remove_duplicates
from ..console import UsageError, emit, format_table
from .common import loaded, positive_int
from .jobs import job_document, job_parser, open_collection


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``dedup`` sub-parser; :func:`run` carries it out."""
    p = job_parser(sub, "dedup",
                   help="find exact and near-duplicate images",
                   description="Group duplicate images: the same content, or CLIP cosine >= --threshold with a "
                               "clear gap to every other neighbour (see docs/collection-jobs.md). Each group "
                               "lists its suggested keeper first (largest, then oldest). Nothing is deleted "
                               "without --delete.")
    p.add_argument("--threshold", type=float, metavar="COS",
                   help=f"cosine similarity cut-off (default for OpenAI's weights: 0.99, {THRESHOLD_SOURCE})")
    p.add_argument("--gap", type=float, default=1.5,
                   help="a copy must be this many times closer than the nearest non-copy (default 1.5; 1 = off)")
    p.add_argument("-k", type=positive_int, default=8, help="neighbours fetched per image (default 8)")
    p.add_argument("--delete", action="store_true", help="delete every group member but its keeper")
    p.add_argument("--sheets", metavar="DIR", help="write a contact sheet PNG per group into DIR")
    return p


def run(args: argparse.Namespace) -> int:
    """Find duplicate groups, print them, and delete the extras only when asked."""
    store = open_collection(args)
    loaded(store.ef)
    try:
        report = find_duplicates(store, args.threshold, gap=args.gap, k=args.k, progress=True)
    except ValueError as e:
        if "threshold" in str(e):
            raise UsageError(str(e).replace("pass threshold=", "pass --threshold ")) from e
        raise
    deleted = remove_duplicates(store, report.groups) if args.delete else 0
    sheets = write_sheets(report, Path(args.sheets)) if args.sheets else []
    document = job_document(args) | {**report.to_dict(), "deleted": deleted, "sheets": sheets}
    text = [str(report).splitlines()[0]]
    rows = [[n, g.kind, "keep" if i == 0 else "", f"{m.similarity:.4f}", m.source or m.id]
            for n, g in enumerate(report.groups, 1) for i, m in enumerate(g.members)]
    if rows:
        text.append(format_table(["group", "kind", "", "cosine", "source"], rows, align="rllrl", max_width=250))
    if args.delete:
        text.append(f"deleted {deleted} item(s); every keeper stays")
    elif report.groups:
        text.append("nothing deleted; run again with --delete to keep only each group's keeper")
    emit(args, document, text)
    return 0


def write_sheets(report, folder: Path) -> list[str]:
    """One contact sheet per group (the demo's sheet: the keeper first, its cosine under each)."""
    from ..demo import QueryRow, contact_sheet

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, group in enumerate(report.groups, 1):
        members = [m for m in group.members if m.source and Path(m.source).is_file()]
        if not members:
            continue
        row = QueryRow(f"group {n}: keep {Path(members[0].source).name}", Path(members[0].source).name,
                       [(m.source, m.similarity) for m in members])
        path = folder / f"group-{n:04d}.png"
        contact_sheet([row], f"duplicates, group {n} ({group.kind})", top=len(members)).save(path)
        paths.append(str(path))
    return paths
