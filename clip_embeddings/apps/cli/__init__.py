"""``clip-embeddings``: index, search, classify, evaluate and fine-tune from the shell.

Each subcommand is a thin layer over the library: it parses arguments, calls one public function
and prints a readable table. Errors print one line, ``error: <message>``, and exit with status 1
(2 for usage errors); ``--debug`` prints the traceback instead.

Example::

    $ clip-embeddings index examples/images --db chroma --location ./db --collection photos
    $ clip-embeddings search "a photo of a cat" --db chroma --location ./db --collection photos
    $ clip-embeddings classify examples/images/*.jpg --labels cat,rocket,coffee
    $ clip-embeddings models
    $ clip-embeddings serve --db chroma --location ./db --collection photos

Adding a command is one module in this package, plus its name in :data:`COMMANDS`:

.. code-block:: python

    # clip_embeddings/apps/cli/hello.py
    \"\"\"``clip-embeddings hello``: say hello.\"\"\"
    import argparse
    from ..console import emit
    from .common import common_options

    def add_parser(sub) -> argparse.ArgumentParser:
        p = sub.add_parser("hello", parents=[common_options()], help="say hello")  # --json, --debug
        p.add_argument("name")
        return p

    def run(args: argparse.Namespace) -> int:
        emit(args, {"hello": args.name}, [f"hello {args.name}"])  # JSON with --json, text without
        return 0  # 1: error, 2: usage error (raise console.UsageError)

``add_parser(sub)`` adds the sub-parser (with ``--help`` text) and returns it; ``run(args)``
carries the command out and returns the exit status. :func:`build_parser` wires ``run`` to the
sub-parser; :func:`main` handles errors and Ctrl-C for every command alike. Shared option groups
(model, database, templates) and helpers live in :mod:`.common`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from ..console import report_error
from . import (
    bench,
    cache,
    classify,
    common,
    dedup,
    delete,
    evaluate,
    export,
    finetune,
    index,
    map,
    models,
    score,
    search,
    serve,
)

COMMANDS = (index, search, delete, dedup, export, map, score, classify, evaluate, finetune, serve, models, cache, bench)
"""The command modules, in the order ``clip-embeddings --help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    """The ``clip-embeddings`` argument parser, one sub-parser per module in :data:`COMMANDS`.

    Example:
        >>> build_parser().parse_args(["models"]).command
        'models'
    """
    parser = argparse.ArgumentParser(
        prog="clip-embeddings",
        description="OpenAI CLIP embeddings for Chroma, Qdrant and LanceDB: index images, search them by text "
                    "or image, zero-shot classify, evaluate and fine-tune.",
        epilog="Run `clip-embeddings COMMAND --help` for a command's options. The default model is "
               "$CLIP_WEIGHTS when set, else ViT-B/32 (downloaded once into the cache).",
    )
    parser.add_argument("--debug", action="store_true", default=False,
                        help="print full tracebacks instead of one-line errors")
    parser.add_argument("--json", action="store_true", default=False,
                        help="print one JSON document on stdout instead of tables")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Every command takes --debug and --json, before or after its name (common_options).
    for command in COMMANDS:
        command.add_parser(sub).set_defaults(func=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 error, 2 usage error).

    Example:
        >>> main(["models"])  # prints the named models, what is cached, and this machine's runtime
        cache: ...
        0
    """
    parser = build_parser()
    argv, passthrough = bench.split_args(list(sys.argv[1:] if argv is None else argv))
    try:
        args = parser.parse_args(argv)
        common.resolve_store(args, parser)  # --store ADDRESS, or --db/--location/--collection
    except SystemExit as e:  # --help and usage errors: argparse has already printed
        return e.code if isinstance(e.code, int) else 1
    if passthrough is not None:
        args.bench_args = passthrough
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        report_error(e, args.debug)
        return 1


if __name__ == "__main__":
    sys.exit(main())
