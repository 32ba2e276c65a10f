"""Register ``ClipEF`` with a database's registry when that database is imported, not before.

Importing chromadb takes over a second; ``import clip_embeddings`` should not pay it for users who
never touch Chroma. So registration waits for the first ``import chromadb`` (or runs at once if it
already happened), which is all ``client.get_collection(name)`` needs to rebuild the function.
"""

from __future__ import annotations

import functools
import importlib
import importlib.abc
import importlib.util
import sys
from collections.abc import Callable

from .registry import kinds

# database module -> adapter module whose import registers ClipEF with it (kinds with a registry)
ADAPTERS = {entry.client: entry.module for entry in kinds().values() if entry.registry}


def _register(database: str) -> None:
    if importlib.util.find_spec(ADAPTERS[database].rsplit(".", 1)[0]) is not None:
        try:
            importlib.import_module(ADAPTERS[database])
        except ImportError:
            pass  # an adapter module not written or a database too old: nothing to register


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs a callback right after a given top-level module finishes importing."""

    def __init__(self, name: str, callback: Callable[[], None]):
        self.name, self.callback = name, callback

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # find the real module without finding ourselves again
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            self.callback()

        spec.loader.exec_module = exec_then_register
        return spec


def install() -> None:
    for database in ADAPTERS:
        if database in sys.modules:
            _register(database)
        elif importlib.util.find_spec(database) is not None:
            sys.meta_path.insert(0, _AfterImport(database, functools.partial(_register, database)))
