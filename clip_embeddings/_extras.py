"""Optional dependencies: import one, or say which ``clip-embeddings`` extra installs it.

Every adapter and integration imports its database or framework through :func:`require`, so a
user without it reads ``pip install 'clip-embeddings[qdrant]'`` instead of a bare
``ModuleNotFoundError`` from deep inside the package, from Python and from the command line alike.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingExtraError

# The distribution that provides each top-level module, where its name differs. A database
# client's is declared by its adapter (adapters/registry.py's StoreKind) and passed in.
_DISTRIBUTIONS = {"langchain_core": "langchain-core", "ray": "ray[data]", "llama_index": "llama-index-core",
                  "sklearn": "scikit-learn"}


def require(module: str, extra: str, *, purpose: str | None = None, distribution: str | None = None) -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtraError` naming the extra that installs it.

    ``purpose`` names what needs it in the message (default: the extra's entry below, else the
    extra); ``distribution`` is what pip installs for ``module`` when its name differs.

    Example:
        >>> require("json", extra="none").__name__
        'json'
        >>> require("qdrant_client", extra="qdrant")  # doctest: +SKIP
        MissingExtraError: qdrant-client is not installed (needed for Qdrant): pip install 'clip-embeddings[qdrant]'
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        # Only an absent module is this error; an install that is there but broken ("cannot
        # import name ...") must keep its own message.
        if not isinstance(e, ModuleNotFoundError):
            raise
        missing = e.name or module
        top = missing.split(".")[0]
        package = distribution if distribution and top == module.split(".")[0] else _DISTRIBUTIONS.get(top, top)
        raise MissingExtraError(
            f"{package} is not installed (needed for {purpose or _PURPOSE.get(extra, extra)}): "
            f"pip install 'clip-embeddings[{extra}]'", extra=extra, module=missing) from e


# What needs each extra that is not a database (a database's purpose is in its adapter's KIND).
_PURPOSE = {"langchain": "LangChain", "ray": "the Ray engine", "notebook": "the notebook",
            "llamaindex": "LlamaIndex",
            "export": "exporting a collection", "map": "the collection map"}
