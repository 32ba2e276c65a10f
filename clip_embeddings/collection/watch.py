"""Follow a folder as it changes: one sync after each burst of changes, until asked to stop.

Change detection uses `watchdog <https://github.com/gorakhargosh/watchdog>`_ (the ``watch``
extra: inotify, FSEvents, ReadDirectoryChangesW; well kept, and the usual choice in Python)
when it is installed, and otherwise polls the folder's file sizes and mtimes. Either way the
events only say *that* something changed: what changed is worked out by the sync itself
(:mod:`clip_embeddings.collection.sync`), so a missed or doubled event costs nothing but a sync.

Debouncing: a burst of events (a phone upload, an editor's save-as-temp-then-rename) becomes one
sync, run once the folder has been quiet for ``debounce`` seconds.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def snapshot(folder: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` (hidden ones too: captions may hide anywhere) as path -> (size, mtime_ns).

    Example:
        >>> snapshot("/no/such/folder")
        {}
    """
    found: dict[str, tuple[int, int]] = {}
    for root, _, files in os.walk(os.fspath(folder)):
        for name in files:
            path = os.path.join(root, name)
            try:
                st = os.stat(path)
            except OSError:  # gone between the listing and the stat: the next poll sees it
                continue
            found[path] = (st.st_size, st.st_mtime_ns)
    return found


class FolderWatcher:
    """Says when ``folder`` has changed and then been quiet for ``debounce`` seconds.

    ``backend`` is ``"watchdog"``, ``"poll"`` or ``None`` (watchdog when installed, else poll).

    Example:
        >>> from PIL import Image
        >>> changes = FolderWatcher("photos", debounce=0.2).changes(stop=lambda: False, initial=True)
        >>> next(changes)  # watching now
        >>> Image.open("cat.jpg").save("photos/cat.png")
        >>> next(changes)  # the folder changed, then stayed quiet for 0.2 s
        >>> store.index_folder("photos", sync=True).new
        1
        >>> changes.close()
    """

    def __init__(self, folder: str | os.PathLike, *, debounce: float = 1.0, poll_seconds: float = 2.0,
                 backend: str | None = None):
        self.folder, self.debounce, self.poll_seconds = Path(folder), debounce, poll_seconds
        if backend is None:
            try:
                import watchdog.observers  # noqa: F401
                backend = "watchdog"
            except ImportError:
                backend = "poll"
        if backend not in ("watchdog", "poll"):
            raise ValueError(f"backend must be 'watchdog' or 'poll', not {backend!r}")
        self.backend = backend
        self._changed_at: float | None = None  # monotonic time of the latest change not yet synced
        self._lock = threading.Lock()

    def _mark(self, *_: Any) -> None:
        with self._lock:
            self._changed_at = time.monotonic()

    def changes(self, stop: Callable[[], bool], tick: float = 0.2, initial: bool = False) -> Iterator[None]:
        """Yields once per settled burst of changes; returns when ``stop()`` becomes true.

        With ``initial`` it also yields once as soon as it is watching, so a first sync misses
        no change made while it runs.
        """
        observer = self._start_observer() if self.backend == "watchdog" else None
        last_poll, seen = time.monotonic(), snapshot(self.folder) if observer is None else None
        try:
            if initial and not stop():
                yield
            while not stop():
                time.sleep(tick)
                now = time.monotonic()
                if observer is None and now - last_poll >= self.poll_seconds:
                    current = snapshot(self.folder)
                    if current != seen:
                        seen = current
                        self._mark()
                    last_poll = now
                with self._lock:
                    settled = self._changed_at is not None and now - self._changed_at >= self.debounce
                    if settled:
                        self._changed_at = None
                if settled and not stop():
                    yield
        finally:
            if observer is not None:
                observer.stop()
                observer.join(timeout=5)

    def _start_observer(self) -> Any:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                if event.event_type not in ("opened", "closed_no_write"):  # reads change nothing
                    watcher._mark()

        observer = Observer()
        observer.schedule(Handler(), str(self.folder), recursive=True)
        observer.start()
        return observer


def watch(sync: Callable[[], Any], folder: str | os.PathLike, *, stop: Callable[[], bool],
          on_report: Callable[[Any], None] = print, debounce: float = 1.0, poll_seconds: float = 2.0,
          backend: str | None = None) -> int:
    """Run ``sync()`` now and after every settled burst of changes in ``folder``; returns the sync count.

    ``sync`` is typically ``lambda: store.index_folder(folder, sync=True)``; each report goes to
    ``on_report``. ``stop`` is polled a few times a second (the CLI passes its Ctrl-C flag), and
    never interrupts a sync: a stop leaves the collection as the last completed write left it.

    Example:
        >>> stop = threading.Event()
        >>> watch(lambda: "synced", "/tmp", stop=stop.is_set, on_report=lambda r: stop.set())
        1
    """
    watcher = FolderWatcher(folder, debounce=debounce, poll_seconds=poll_seconds, backend=backend)
    runs = 0
    for _ in watcher.changes(stop, initial=True):
        on_report(sync())
        runs += 1
    return runs
