"""``clip-embeddings bench``: run ``benchmarks/run_all.py`` with this interpreter, passing the remaining arguments on."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from ..console import UsageError
from .common import common_options


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``bench`` sub-parser; :func:`run` carries it out."""
    p = sub.add_parser("bench", parents=[common_options()], help="run the benchmark suite (source checkout only)",
                       description="Run benchmarks/run_all.py with this Python; arguments after `bench` are "
                                   "passed to it. The benchmarks ship with the source checkout, not the package.")
    p.add_argument("bench_args", nargs="*", metavar="ARGS",
                   help="arguments for run_all.py, passed on as they are (`bench -- --help` shows its help)")
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``benchmarks/run_all.py`` with this interpreter, passing the remaining arguments on."""
    script = benchmarks_script()
    if not script.is_file():
        raise UsageError(
            f"{script} not found: the benchmarks ship with the source checkout, not the installed package. "
            "Clone the repository and run `clip-embeddings bench` (or `make bench`) from there."
        )
    return subprocess.call([sys.executable, str(script), *args.bench_args], cwd=script.parent.parent)


def benchmarks_script() -> Path:
    """Where ``benchmarks/run_all.py`` is in a source checkout (it is not part of the wheel)."""
    return Path(__file__).resolve().parents[3] / "benchmarks" / "run_all.py"


def split_args(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """Cut what follows ``bench`` off the command line: it belongs to run_all.py, options and all.

    argparse would reject options it does not know (``bench --quick``); ``bench --help`` stays ours.
    """
    command = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if command is None or argv[command] != "bench":
        return argv, None
    rest = argv[command + 1 :]
    if rest[:1] in (["-h"], ["--help"]):
        return argv, None
    return argv[: command + 1], rest[1:] if rest[:1] == ["--"] else rest
