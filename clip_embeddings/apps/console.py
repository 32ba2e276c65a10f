"""What the command line shows people and scripts: tables, one-line errors, ``--json`` documents.

Kept apart from the ``cli`` package so library modules (the Ray engine, the demo, the server) can print
the same way without importing the command line, and so nothing in the library imports it.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import Any, TextIO

from ..errors import UsageError  # re-exported: its old import path

# --- output -----------------------------------------------------------------------------------

def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, align: str | None = None,
                 max_width: int = 60) -> str:
    """A plain-text table: a header, a rule, one line per row; long cells are cut with ``...``.

    ``align`` has one character per column, ``"l"`` or ``"r"`` (default: numbers right, text left).

    Example:
        >>> print(format_table(["rank", "label"], [[1, "cat"], [2, "dog"]]))
        rank  label
        ----  -----
           1  cat
           2  dog
    """
    def cell(value: Any) -> str:
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        text = " ".join(text.split())  # one line per row, whatever a caption holds
        return text if len(text) <= max_width else text[: max_width - 3] + "..."

    cells = [[cell(v) for v in row] for row in rows]
    if align is None:
        first = rows[0] if rows else [""] * len(headers)
        align = "".join("r" if isinstance(v, (int, float)) else "l" for v in first)
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if a == "r" else v.ljust(w) for v, w, a in zip(values, widths, align, strict=True)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def one_line(error: BaseException) -> str:
    """An exception as a single line for ``error: ...``; unexpected types keep their name.

    Example:
        >>> one_line(ValueError("bad\\nvalue"))
        'bad; value'
        >>> one_line(KeyError("x"))
        "KeyError: 'x'"
    """
    from ..errors import ClipError

    message = "; ".join(part.strip() for part in str(error).splitlines() if part.strip())
    # Our own errors and the usual OS/value errors already say what is wrong; anything else is a
    # surprise, so its type is worth showing.
    expected = isinstance(error, (ClipError, UsageError, ValueError, OSError, ImportError))
    if not message:
        return type(error).__name__
    return message if expected else f"{type(error).__name__}: {message}"


def report_error(error: BaseException, debug: bool, hint: str | None = None) -> None:
    """Print ``error`` to stderr: one line, or the full traceback with ``debug``.

    ``hint`` is appended to the line; by default a download failure gets one about local weights.
    """
    from ..errors import DownloadError, ModelMismatchError


    if hint is None:
        hint = ""
        if isinstance(error, DownloadError):
            hint = " From the command line: pass --model /path/to/checkpoint.pt or set CLIP_WEIGHTS to it."
        elif isinstance(error, ModelMismatchError):
            hint = " From the command line: pass --model with the weights the collection was indexed with."
    if debug:
        traceback.print_exception(type(error), error, error.__traceback__)
    else:
        print(f"error: {one_line(error)}{hint}", file=sys.stderr)


def emit(args: Any, document: dict[str, Any], text: str | Sequence[str] | None = None) -> None:
    """Print a command's result: ``document`` as one JSON object with ``--json``, else ``text``.

    Scripts read the JSON (one document on stdout, nothing else there); people read the text.

    Example:
        >>> import argparse
        >>> emit(argparse.Namespace(json=True), {"stored": 3}, "stored 3 item(s)")
        {"stored": 3}
        >>> emit(argparse.Namespace(json=False), {"stored": 3}, "stored 3 item(s)")
        stored 3 item(s)
    """
    if getattr(args, "json", False):
        print(json.dumps(document, ensure_ascii=False, default=_jsonable))
        return
    if text is None:
        return
    print(text if isinstance(text, str) else "\n".join(text))


@contextlib.contextmanager
def status(message: str, stream: TextIO | None = None) -> Iterator[None]:
    """Show ``message`` on stderr while the block runs, then erase it; only on a terminal.

    Loading a model takes seconds and prints nothing; a person at a terminal should see why the
    command waits. Logs, pipes and ``--json`` consumers read stdout or redirected stderr, so they
    get nothing.

    Example:
        >>> with status("loading model ViT-B/32 ..."):  # doctest: +SKIP
        ...     ef.dim
    """
    stream = sys.stderr if stream is None else stream
    shown = hasattr(stream, "isatty") and stream.isatty()
    if shown:
        stream.write(message)
        stream.flush()
    try:
        yield
    finally:
        if shown:
            stream.write("\r\x1b[K")  # back to the line start, clear it: the next output starts clean
            stream.flush()


class GracefulStop:
    """A first Ctrl-C asks a loop to stop at its next safe point; a second one stops it at once.

    A Ctrl-C that lands in the middle of a database write would otherwise leave rows stored that
    the caller never counted. Outside the main thread (where Python cannot take signals) it does
    nothing.

    Example:
        >>> with GracefulStop() as stop:
        ...     for batch in ingest():  # doctest: +SKIP
        ...         count(batch)
        ...         if stop.requested:
        ...             break
    """

    def __init__(self, message: str = "stopping after the current write (Ctrl-C again to stop now)"):
        self.message, self.requested = message, False
        self._previous: Callable[[int, FrameType | None], Any] | int | None = None  # what signal.signal returns

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{self.message}", file=sys.stderr, flush=True)

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _jsonable(value: Any) -> Any:
    """What json.dumps cannot write itself: numpy scalars and arrays, paths, dataclasses."""
    import dataclasses
    import os

    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # an instance, not the class
        return dataclasses.asdict(value)
    return str(value)
