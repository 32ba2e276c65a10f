"""``clip-embeddings cache``: show, prune or clear the embedding cache (``stats`` / ``prune`` / ``clear``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..console import UsageError, emit, format_table
from .common import common_options, human_size


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``cache`` sub-parser; :func:`run` carries it out."""
    p = sub.add_parser("cache", parents=[common_options()], help="show, prune or clear the embedding cache",
                       description="The embedding cache keeps image vectors so re-indexing unchanged files "
                                   "never runs the model. `stats` shows its size, `prune` evicts the least "
                                   "recently used vectors down to the cap and compacts the file, `clear` "
                                   "empties it.")
    p.add_argument("action", choices=["stats", "prune", "clear"], help="what to do (default: stats)",
                   nargs="?", default="stats")
    p.add_argument("--path", default=None,
                   help="the cache file (default: embeddings.sqlite3 in $CLIP_CACHE_DIR or ~/.cache/clip)")
    p.add_argument("--max-size", default=None, metavar="SIZE",
                   help="the cap for prune, e.g. 500M or 2G (default: $CLIP_CACHE_MAX_BYTES or 1G)")
    return p


def run(args: argparse.Namespace) -> int:
    """Show, prune or clear the embedding cache (``stats`` / ``prune`` / ``clear``)."""
    from ...core.download import cache_dir
    from ...embedding.cache import EmbeddingCache, not_a_cache, parse_size

    path = Path(args.path) if args.path else cache_dir() / "embeddings.sqlite3"
    if args.action != "stats" and not path.exists():
        raise UsageError(f"no embedding cache at {path} (nothing to {args.action})")
    # Checked read-only before anything opens it for writing: a --path naming another file (a
    # system file, another program's database) used to be moved aside or converted in place.
    if (path.exists() or path.is_symlink()) and (reason := not_a_cache(path)) is not None:
        raise UsageError(f"{path} is not an embedding cache ({reason}); it was left untouched")
    max_bytes = parse_size(args.max_size) if args.max_size is not None else None
    cache = EmbeddingCache(path, max_bytes=max_bytes)
    document: dict[str, Any] = {"action": args.action}
    if args.action == "prune":
        document["removed"] = cache.prune()
    elif args.action == "clear":
        document["removed"] = cache.clear()
    stats = cache.stats()
    cache.close()
    if stats["disabled"]:
        raise UsageError(f"the embedding cache {path} cannot be used: {stats['disabled']}")
    document.update(stats)
    lines = [f"cache: {path}  (set CLIP_CACHE_DIR to move it, CLIP_CACHE_MAX_BYTES to change the cap)"]
    if "removed" in document:
        lines.append(f"removed {document['removed']} vector(s)")
    lines.append(format_table(["entries", "models", "file digests", "live size", "on disk", "cap"], [[
        stats["entries"], stats["models"], stats["file_digests"], human_size(stats["live_bytes"]),
        human_size(stats["file_bytes"]), human_size(stats["max_bytes"])]], align="rrrrrr"))
    emit(args, document, lines)
    return 0
