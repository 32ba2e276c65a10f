"""Optional dependencies: import one, or say which ``clip-embeddings`` extra installs it.

Every adapter and integration imports its database or framework through :func:`require`, so a
user without it reads ``pip install 'clip-embeddings[qdrant]'`` instead of a bare
``ModuleNotFoundError`` from deep inside the package, from Python and from the command line alike.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingExtraError

# The distribution that provides each top-level module, where its name differs.
_DISTRIBUTIONS = {"qdrant_client": "qdrant-client", "langchain_core": "langchain-core", "chromadb": "chromadb",
                  "lancedb": "lancedb", "pyarrow": "pyarrow", "ray": "ray[data]",
                  "sklearn": "scikit-learn"}


def require(module: str, extra: str) -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtraError` naming the extra that installs it.

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
        package = _DISTRIBUTIONS.get(missing.split(".")[0], missing.split(".")[0])
        raise MissingExtraError(
            f"{package} is not installed (needed for {_PURPOSE.get(extra, extra)}): "
            f"pip install 'clip-embeddings[{extra}]'", extra=extra, module=missing) from e


_PURPOSE = {"chroma": "Chroma", "qdrant": "Qdrant", "lancedb": "LanceDB", "langchain": "LangChain",
            "ray": "the Ray engine", "notebook": "the notebook",
            "export": "exporting a collection", "map": "the collection map"}
