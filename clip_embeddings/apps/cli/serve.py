"""``clip-embeddings serve``: serve one loaded model (and a collection) over HTTP until interrupted."""

from __future__ import annotations

import argparse
import os
import sys

from ..console import UsageError
from .common import add_store_arguments, common_options, make_ef, model_options, open_search_store, positive_int

# The server's limits, one option each: (flag, type, default, metavar, what it bounds).
_LIMITS = (
    ("--max-upload-mb", float, 32, "MB", "largest request body"),
    ("--max-pixels", positive_int, 50_000_000, "N", "largest image width*height"),
    ("--timeout", float, 30, "S", "seconds a request may take to arrive and to be embedded"),
    ("--max-queue", positive_int, 256, "N", "requests waiting for the model before new ones get 429"),
    ("--max-batch", positive_int, 64, "N", "most texts+images in one shared forward pass"),
    ("--max-wait-ms", float, 5, "MS", "how long a request waits for others to share its pass"),
    ("--max-items", positive_int, 64, "N", "most texts, images or labels in one request"),
    ("--max-templates", positive_int, 32, "N", "most prompt templates in one /classify request"),
    ("--max-prompts", positive_int, 512, "N", "most labels x templates in one /classify request"),
    ("--max-prompt-chars", positive_int, 1000, "N", "longest label, and longest template filled with a label"),
    ("--max-urls", positive_int, 16, "N", "most image URLs in one request"),
    ("--max-terms", positive_int, 16, "N", "most terms in one /query compound query"),
    ("--max-query-chars", positive_int, 4000, "N", "longest /query query string"),
)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``serve`` sub-parser; :func:`run` carries it out."""
    p = sub.add_parser("serve", parents=[common_options(), model_options(for_search=True)],
                       help="serve the model (and a collection) over HTTP, with a search page",
                       description="One loaded model for many clients: POST /embed, /search, /classify, GET /health, "
                                   "and a search page at /. Concurrent requests share forward passes. "
                                   "See docs/serving.md.")
    add_store_arguments(p.add_argument_group("database (optional: without it, /search is off)"), required=False)
    group = p.add_argument_group("server")
    group.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    group.add_argument("--port", type=int, default=8765, help="port (default: 8765)")
    group.add_argument("--root-path", default="", metavar="PREFIX",
                       help="the path prefix a reverse proxy serves this under, e.g. /clip (default: none)")
    group.add_argument("--allowed-hosts", nargs="+", metavar="NAME", default=None,
                       help="Host header names to answer to, '*' for any (default: localhost, 127.0.0.1, ::1 and "
                            "--host; any name when --host is 0.0.0.0): DNS rebinding cannot reach a loopback server")
    group.add_argument("--token", default=None,
                       help="require Authorization: Bearer TOKEN on API calls (default: $CLIP_EMBEDDINGS_TOKEN, else none)")
    group = p.add_argument_group("limits")
    for flag, kind, default, metavar, text in _LIMITS:
        group.add_argument(flag, type=kind, default=default, metavar=metavar, help=f"{text} (default: {default})")
    group.add_argument("--threads", type=positive_int, default=None, metavar="N",
                       help="torch threads for the model (default: torch's, one per core); fewer leaves cores "
                            "for decoding uploads and for other processes")
    group.add_argument("--allow-private-urls", action="store_true",
                       help="let image URLs reach loopback/private addresses (off by default: no SSRF)")
    return p


def run(args: argparse.Namespace) -> int:
    """Serve one loaded model (and a collection) over HTTP until interrupted."""
    try:
        from ..server import ServeLimits, serve
        from ..server.limits import default_allowed_hosts
    except ImportError as e:
        raise UsageError(f"serve needs the serve extra ({e.name} is missing): pip install 'clip-embeddings[serve]'") from None
    if (args.location is None) != (args.collection is None):
        raise UsageError("serve takes --location and --collection together (or neither, to serve only /embed and /classify)")
    from ...runtime.compute import use_one_thread

    use_one_thread()  # before the store's model loads: this process's torch work all runs on one thread
    store = None
    if args.collection is not None:
        store = open_search_store(args)  # the collection's own model unless --model says otherwise
        ef = store.ef
    else:
        ef = make_ef(args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # before the model's first pass, which sizes torch's pool
    token = args.token or os.environ.get("CLIP_EMBEDDINGS_TOKEN") or None
    if args.host not in ("127.0.0.1", "localhost", "::1") and token is None:
        print(f"warning: serving on {args.host} without --token: anyone who can reach it can use it", file=sys.stderr)
    limits = ServeLimits(
        max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels, request_timeout=args.timeout,
        max_queue=args.max_queue, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_items=args.max_items,
        max_templates=args.max_templates, max_prompts=args.max_prompts, max_prompt_chars=args.max_prompt_chars,
        max_urls=args.max_urls, max_terms=args.max_terms, max_query_chars=args.max_query_chars, token=token,
        allow_private_urls=args.allow_private_urls,
        allowed_hosts=tuple(args.allowed_hosts) if args.allowed_hosts else default_allowed_hosts(args.host),
    )
    where = f"{args.db} collection {args.collection!r} at {args.location}" if store is not None else "no collection"
    print(f"serving {ef.model_name} ({where}) on http://{args.host}:{args.port}/", file=sys.stderr)
    serve(ef, store, limits, host=args.host, port=args.port, root_path=args.root_path)
    return 0
