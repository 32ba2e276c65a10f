"""``clip-embeddings index``: embed every image under FOLDER (and its captions) into a collection, writing as it goes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...adapters.registry import kinds
from ...config import ON_ERROR
from ...core.loading import default_model
from ..console import GracefulStop, UsageError, emit, format_table
from .common import common_options, make_ef, model_options, positive_int, skipped_lines, store_options


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``index`` sub-parser; :func:`run` carries it out."""
    p = sub.add_parser("index", parents=[common_options(), store_options(), model_options(remote=True)],
                       help="embed a folder of images into a collection",
                       description="Embed every image under FOLDER into a collection. Ids come from the image "
                                   "content, so re-indexing a folder stores nothing new.")
    p.add_argument("folder", metavar="FOLDER", help="folder of images to index")
    p.add_argument("--extensions", default=None, metavar=".jpg,.png",
                   help="comma-separated file extensions to pick up (default: common image types)")
    p.add_argument("--no-recursive", action="store_true", help="only index FOLDER itself, not its sub-folders")
    p.add_argument("--on-error", choices=ON_ERROR, default="skip",
                   help="skip unreadable images and list them at the end, or stop at the first one (default: skip)")
    captions = p.add_mutually_exclusive_group()
    captions.add_argument("--captions", metavar="FILE",
                          help="captions to store as text records: a JSON {\"path\": \"caption\"} object or a CSV "
                               "with path,caption columns, paths relative to FOLDER (default: FOLDER/captions.json "
                               "or FOLDER/captions.csv if present, and a .txt file beside an image)")
    captions.add_argument("--no-captions", action="store_true", help="store images only, even if captions exist")
    _add_ray_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Embed every image under FOLDER (and its captions) into a collection, writing as it goes."""
    from ...adapters import open_store
    from ...adapters.base import IngestReport
    from ...errors import ImageLoadError

    folder = Path(args.folder)
    # Checked before loading a model, so a typo costs milliseconds, not a model load.
    if not folder.exists():
        raise UsageError(f"{folder}: folder not found")
    if not folder.is_dir():
        raise UsageError(f"{folder}: not a folder (index takes a directory of images)")
    kinds()[args.db].require_client()  # before any model loads: "pip install 'clip-embeddings[qdrant]'"
    if getattr(args, "engine", "local") == "ray":
        return _index_with_ray(args, folder)
    captions = _captions(args)
    store = open_store(args.db, args.location, args.collection, make_ef(args, on_error=args.on_error))
    # A progress bar is for people watching; in logs and pipes it is only noise.
    options: dict[str, Any] = {"recursive": not args.no_recursive, "on_error": args.on_error,
                               "progress": sys.stderr.isatty(), "captions": captions}
    if args.extensions:
        options["extensions"] = _extensions(args.extensions)
    report = IngestReport()
    where = f"{args.db} collection {args.collection!r} at {args.location}"
    interrupted = (f"interrupted: {{new}} new item(s) were stored in {where} before the stop ({{stored}} of this "
                   "folder's items are in it); run the same command again to resume, it stores only what is missing")
    try:
        with GracefulStop() as stop:  # a Ctrl-C lets the write in flight land and be counted
            for batch in store.stream_folder(folder, **options):
                report.add(batch)
                if stop.requested:
                    break
    except KeyboardInterrupt:  # the second Ctrl-C: a write may have landed uncounted
        print("\n" + interrupted.format(new=f"at least {report.new}", stored=f"at least {report.stored}"),
              file=sys.stderr)
        return 130
    except ImageLoadError as e:
        raise UsageError(f"{e} (stopped there with --on-error raise; the {report.stored} item(s) before it are "
                         "stored, and a re-run resumes after fixing or removing it)") from e
    if stop.requested:
        print(interrupted.format(new=report.new, stored=report.stored), file=sys.stderr)
        return 130
    counts = {"items": store.count(), "images": store.count("image"), "texts": store.count("text")}
    document = {"folder": str(folder), "db": args.db, "location": str(args.location), "collection": args.collection,
                **report.to_dict(), "collection_counts": counts}
    emit(args, document, [
        f"indexed {folder} into {where}",
        f"  {report}".split("\n")[0],
        f"  the collection now holds {counts['items']} item(s): {counts['images']} image(s), {counts['texts']} text(s)",
    ])
    if not getattr(args, "json", False):
        _print_skipped(report.skipped)
    if report.unread_folders:  # what they hold is in no count: the run did not do what was asked
        print(f"error: {len(report.unread_folders)} folder(s) could not be read, so the report is incomplete: "
              + ", ".join(report.unread_folders), file=sys.stderr)
        return 1
    return 0


def _captions(args: argparse.Namespace) -> dict[str, str] | bool:
    """The captions file, read now (a bad one fails, named, before the model loads); or False for none.

    ``--captions FILE``, else ``FOLDER/captions.json`` or ``.csv`` if there is one; ``True`` leaves
    only the sidecar ``.txt`` files, which are read image by image.
    """
    if args.no_captions:
        return False
    if args.captions is None:
        from ...inputs.captions import folder_captions

        return folder_captions(args.folder) or True
    from ...inputs.captions import read_captions_file

    path = Path(args.captions)
    if not path.is_file():
        raise UsageError(f"{path}: captions file not found")
    return read_captions_file(path)


def _extensions(text: str) -> frozenset[str]:
    return frozenset(e.strip() for e in text.split(",") if e.strip())


def _index_with_ray(args: argparse.Namespace, folder: Path) -> int:
    """``index --engine ray``: list the images here, embed them on the cluster, write through the Store."""
    from ...adapters import open_store
    from ...embedding.function import ClipEF
    from ...inputs.folders import IMAGE_EXTENSIONS, iter_image_files
    from ..distributed.ray import import_ray, index_with_ray

    ray = import_ray()
    wanted = _extensions(args.extensions) if args.extensions else IMAGE_EXTENSIONS
    files = [str(p) for p in iter_image_files(folder, extensions=wanted, recursive=not args.no_recursive)]
    if not files:
        raise UsageError(f"no images found in {folder}")
    if not ray.is_initialized():
        ray.init(address=None if args.address == "local" else args.address, include_dashboard=False)
    model = args.model or default_model()
    ef = ClipEF(str(Path(model).resolve()) if Path(model).exists() else model, device="cpu",
                batch_size=args.batch_size, cache=False)
    store = open_store(args.db, args.location, args.collection, ef)
    report = index_with_ray(files, model=model, sink=store, num_actors=args.num_actors, batch_size=args.batch_size,
                            num_gpus=args.num_gpus or 0, progress=sys.stderr.isatty())  # bars are noise in logs
    document = {"folder": str(folder), "db": args.db, "location": str(args.location), "collection": args.collection,
                "engine": "ray", "stored": report.stored, "elapsed_s": report.elapsed,
                "skipped": [{"source": s, "reason": r} for s, r in report.skipped], "collection_items": store.count()}
    emit(args, document, [
        f"indexed {folder} into {args.db} collection {args.collection!r} at {args.location} with Ray "
        f"({args.num_actors} actors)",
        f"  stored {report.stored} item(s), skipped {len(report.skipped)} in {report.elapsed:.1f} s "
        f"({report.items_per_second:.0f} items/s); the collection now holds {store.count()} item(s)",
    ])
    if report.skipped and not getattr(args, "json", False):
        print(f"\nskipped {len(report.skipped)} item(s):")
        print(format_table(["source", "reason"], report.skipped, align="ll", max_width=80))
    if report.skipped and args.on_error == "raise":
        return 1  # the good items are stored (idempotently); the status says not all were
    return 0


def _add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("scale-out (Ray)")
    group.add_argument("--engine", choices=("local", "ray"), default="local",
                       help="embed in this process (local) or on a Ray cluster (ray; pip install clip-embeddings[ray])")
    group.add_argument("--address", default="auto", metavar="ADDR",
                       help="Ray cluster address: auto (the running cluster), ray://HOST:10001, or local (default: auto)")
    group.add_argument("--num-actors", type=positive_int, default=2, metavar="N", help="model replicas (default: 2)")
    group.add_argument("--num-gpus", type=float, default=0, metavar="G",
                       help="GPUs per actor; fractions share a GPU (default: 0, CPU)")


def _print_skipped(skipped: Sequence[Any]) -> None:
    for line in skipped_lines(skipped):
        print(line)
