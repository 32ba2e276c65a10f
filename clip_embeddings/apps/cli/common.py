"""What the commands share: the option groups every sub-parser takes (model, database, --json,
--debug), building and loading the embedding function, opening a collection to search, and
printing skipped items.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...adapters.registry import kind_names, kinds
from ...config import EmbeddingConfig
from ...core.loading import default_model, model_label
from ..console import UsageError, format_table, status

DBS = kind_names()  # every store kind, from the adapters' own KIND entries (adapters/registry.py)
DB_MODULES = {kind: (entry.client, entry.extra) for kind, entry in kinds().items()}  # kept for older imports

DEFAULTS = EmbeddingConfig()  # the embedding function's defaults, which the model options show


SERVER_ENV = "CLIP_EMBEDDINGS_SERVER"  # the default of --server: a running `clip-embeddings serve` to embed with


def make_ef(args: argparse.Namespace, **options: Any):
    from ...embedding.function import ClipEF

    server = getattr(args, "server", None) or None
    ef = ClipEF(args.model or default_model(), device=args.device, batch_size=args.batch_size,
                dtype=getattr(args, "dtype", None) or DEFAULTS.dtype, server=server, **options)
    if server and args.model:
        check_served_model(args.model, server)
    return ef


def check_served_model(wanted: str, server: str) -> None:
    """Refuse ``--model`` beside ``--server`` unless the server runs that model: one would be ignored.

    The server's ``/health`` names its model as :func:`~clip_embeddings.core.loading.model_label`
    does (a checkpoint by its file name), so that is what ``wanted`` is compared as.
    """
    from ...embedding.remote import remote_model

    served = remote_model(server).health()["model"]
    if served != model_label(wanted):
        raise UsageError(f"--model {wanted} and --server {server} name two models: the server runs {served}. "
                         f"Drop --model to embed with the server's model, or drop --server (and unset "
                         f"${SERVER_ENV}) to load {wanted} here")


def loaded(ef: Any) -> Any:
    """``ef`` with its model loaded, under a status line on a terminal (a first load takes seconds).

    With a server, nothing is loaded here: the server's model is asked for its fingerprint (and
    checked against a collection's, as local weights are).
    """
    what = f"asking the embedding server {ef.server} ..." if ef.server else f"loading model {ef.model_name} ..."
    with status(what):
        ef.dim  # noqa: B018  (loads, and checks the weights against a collection's fingerprint)
    return ef


def skipped_lines(skipped: Sequence[Any]) -> list[str]:
    if not skipped:
        return []
    return ["", f"skipped {len(skipped)} item(s):",
            format_table(["#", "source", "reason"], [[s.index, s.source, s.reason] for s in skipped],
                         align="rll", max_width=80)]


def skipped_json(skipped: Sequence[Any]) -> list[dict[str, Any]]:
    return [{"index": s.index, "source": s.source, "reason": s.reason} for s in skipped]


def read_labels(path: str) -> list[str] | dict[str, str]:
    """Labels from a file: one per line (``#`` comments), a JSON list, or a JSON {folder: label} map."""
    text = Path(path).read_text(encoding="utf-8")
    if path.endswith(".json"):
        labels = json.loads(text)
        if not isinstance(labels, (list, dict)) or not labels:
            raise UsageError(f"{path}: expected a JSON list of labels or a {{folder: label}} object")
        return labels
    labels = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not labels:
        raise UsageError(f"{path}: no labels in it (one label per line)")
    return labels


def templates(name: str) -> list[str]:
    from ...tasks import zeroshot

    return list(zeroshot.IMAGENET_TEMPLATES if name == "imagenet" else zeroshot.DEFAULT_TEMPLATES)


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"  # unreachable; keeps type checkers content


def open_search_store(args: argparse.Namespace):
    """Open an existing collection; without --model, with the model it was indexed with.

    Searching only reads: ``open_store(create=False)`` reports a location without a database, never makes one.
    """
    from ...adapters import open_store
    from ...errors import CollectionNotFoundError

    # A missing database client is the first thing to say, wherever the location points.
    kinds()[args.db].require_client()
    # With --model the store checks those weights against the collection's, so a wrong one fails
    # with a message naming the right one instead of returning meaningless neighbours.
    ef = loaded(make_ef(args)) if args.model else None
    try:
        store = open_store(args.db, args.location, args.collection, ef, create=False)
    except CollectionNotFoundError as e:
        raise UsageError(f"no {args.db} collection {args.collection!r} at {args.location}; "
                         "create it with `clip-embeddings index FOLDER ...` first") from e
    if ef is not None:
        return store
    # The rebuilt embedding function keeps the stored model; where (and in which dtype, or on which
    # server) to run it is this machine's call. A server's fingerprint is checked against the
    # collection's stored one on first use, as local weights are.
    store.ef.device, store.ef.batch_size = args.device, args.batch_size
    if getattr(args, "dtype", None):
        store.ef.dtype = args.dtype
    if getattr(args, "server", None):
        store.ef.server = args.server
    return store


def model_options(for_search: bool = False, remote: bool = False, dtype: bool = True) -> argparse.ArgumentParser:
    """--model, --device, --batch-size; ``dtype``: --dtype; ``remote``: --server (default $CLIP_EMBEDDINGS_SERVER)."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("model")
    group.add_argument(
        # None where --server may stand in for it: an explicit --model is then checked against the server's.
        "--model", default=None if for_search or remote else default_model(), metavar="NAME_OR_PATH",
        help="a model name (see `clip-embeddings models`) or a checkpoint path "
             + ("(default: the model the collection was indexed with)" if for_search
                else "(default: $CLIP_WEIGHTS, else ViT-B/32)"),
    )
    group.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cuda if available)")
    group.add_argument("--batch-size", type=positive_int, default=DEFAULTS.batch_size, metavar="N",
                       help=f"images or texts per forward pass (default: {DEFAULTS.batch_size})")
    if dtype:
        group.add_argument("--dtype", choices=("auto", "fp32", "bf16", "fp16", "int8"), default=None,
                           help="numeric path: auto (default: what this CPU runs fastest, see `clip-embeddings "
                                "models`), fp32 (exact), bf16, fp16 (CUDA), int8 (CPU linears; ~0.1%% off fp32)")
    if remote:
        group.add_argument("--server", default=os.environ.get(SERVER_ENV) or None, metavar="URL",
                           help="embed with a running `clip-embeddings serve` at URL instead of loading a model "
                                f"here (default: ${SERVER_ENV}); its weights are checked against the collection's")
    return parent


def store_options() -> argparse.ArgumentParser:
    """``--store ADDRESS``, or ``--db``, ``--location`` and ``--collection``: :func:`resolve_store` checks them."""
    parent = argparse.ArgumentParser(add_help=False)
    add_store_arguments(parent.add_argument_group("database"), required=True)
    return parent


def add_store_arguments(group: Any, *, required: bool) -> None:
    """The store options, into an argument group; ``required``: a command that needs a collection."""
    group.add_argument("--store", metavar="ADDRESS",
                       help="the collection as one address, e.g. chroma:///data/db#photos or "
                            "qdrant+http://localhost:6333#photos (instead of --db, --location, --collection)")
    group.add_argument("--db", choices=DBS, default=None, help="vector database (default: chroma)")
    forms = "; ".join(f"{kind}: {entry.locations}" for kind, entry in kinds().items())
    group.add_argument("--location", metavar="PATH_OR_URL", help=f"where the database is ({forms})")
    group.add_argument("--collection", metavar="NAME", help="collection (table) name")
    group.set_defaults(store_required=required)


def resolve_store(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Fill ``args.db``, ``args.location``, ``args.collection`` from ``--store``, or check they are given.

    A usage error exits with status 2 through ``parser.error``, as argparse's own do.
    """
    if not hasattr(args, "store_required"):
        return
    if args.store:
        from ...adapters import parse_address
        from ...errors import StoreAddressError

        if args.db or args.location or args.collection:
            parser.error("--store names the database, location and collection; give it or --db/--location/--collection")
        try:
            args.db, args.location, args.collection = parse_address(args.store)
        except StoreAddressError as e:
            parser.error(f"--store: {e}")
        return
    args.db = args.db or "chroma"
    if args.store_required and (args.location is None or args.collection is None):
        parser.error("the following arguments are required: --location and --collection (or --store ADDRESS)")


def common_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False, parents=[json_option()])
    # SUPPRESS, so `clip-embeddings search --debug` and `clip-embeddings --debug search` both work
    # without the subcommand's default overwriting the global flag.
    parent.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="print full tracebacks instead of one-line errors")
    return parent


def json_option() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print one JSON document on stdout instead of tables")
    return parent


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def templates_option() -> argparse.ArgumentParser:
    """``--templates``, shared by classify and eval."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--templates", choices=("default", "imagenet"), default="default",
                           help="prompt templates: a few generic ones, or CLIP's 80 ImageNet prompts "
                                "(slower, usually a little more accurate) (default: default)")
    return parent
