"""What the command line shows people and scripts: tables, one-line errors, ``--json`` documents.

Kept apart from the ``cli`` package so library modules (the Ray engine, the demo, the server) can print
the same way without importing the command line, and so nothing in the library imports it.
"""

from __future__ import annotations

import contextlib
import json
import math
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
        print(to_json(document))
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
        >>> with status("loading model ViT-B/32 ..."):
        ...     ef.dim
        512
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
        >>> import os
        >>> stored = []
        >>> with GracefulStop() as stop:
        ...     for batch in (["cat.jpg"], ["rocket.jpg"], ["coffee.jpg"]):
        ...         stored.extend(batch)  # a write a Ctrl-C must not cut in half
        ...         os.kill(os.getpid(), signal.SIGINT)  # as if the user pressed Ctrl-C during it
        ...         if stop.requested:
        ...             break
        >>> stored  # the write in progress finished, and the loop stopped after it
        ['cat.jpg']
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


def to_json(document: Any) -> str:
    """``document`` as one line of strict JSON that is always valid UTF-8: the one ``--json`` writer.

    NaN and infinities become ``null`` (JSON has no such numbers); text that is not valid Unicode
    (a file name Python holds surrogate-escaped, PEP 383) and ``bytes`` keep their readable part
    with each byte that does not decode written ``\\xNN``; numpy values, paths and dataclasses
    become plain JSON values; anything else its ``str``.

    Example:
        >>> print(to_json({"score": float("nan"), "name": "caf\\udce9.jpg", "raw": b"\\xff", "n": [1, float("inf")]}))
        {"score": null, "name": "caf\\\\xe9.jpg", "raw": "\\\\xff", "n": [1, null]}
    """
    return json.dumps(_plain(document), ensure_ascii=False, allow_nan=False)


def _plain(value: Any, depth: int = 0) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)  # an IntEnum or other int subclass as a plain number
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "backslashreplace")
    if depth > 200:  # a document this deep is a cycle or a bug: say so instead of recursing on
        return "<too deep>"
    if isinstance(value, dict):
        return {_key(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v, depth + 1) for v in value]
    return _plain(_jsonable(value), depth + 1)


def _key(key: Any) -> str:
    plain = _plain(key)
    return plain if isinstance(plain, str) else json.dumps(plain)


def _text(text: str) -> str:
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:  # lone surrogates: the bytes they stand for, escaped
        return text.encode("utf-8", "surrogateescape" if _escaped_only(text) else "surrogatepass").decode(
            "utf-8", "backslashreplace")


def _escaped_only(text: str) -> bool:
    return all(not "\ud800" <= c <= "\udfff" or "\udc80" <= c <= "\udcff" for c in text)


def _jsonable(value: Any) -> Any:
    """What json.dumps cannot write itself: numpy scalars and arrays, paths, dataclasses."""
    import dataclasses
    import os

    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item") and callable(value.item):  # a numpy or torch scalar without tolist
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # an instance, not the class
        return dataclasses.asdict(value)
    return str(value)
