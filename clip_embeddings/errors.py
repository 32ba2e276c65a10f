"""The library's errors: one small hierarchy, each message says what was wrong and what to do.

Every error derives from :class:`ClipError`, so ``except ce.ClipError`` catches them all, and each
also derives from the builtin a caller would naturally expect (``ValueError``, ``OSError``...), so
code written against openai/CLIP keeps working.
"""

from __future__ import annotations


class ClipError(Exception):
    """Base class of every error raised by clip_embeddings."""


class ModelLoadError(ClipError, ValueError):
    """A checkpoint could not be read or is not a CLIP model.

    Example:
        >>> import clip_embeddings as ce
        >>> try:
        ...     ce.load("not-a-model")
        ... except ce.ModelLoadError as e:
        ...     print("no such model")
        no such model
    """


class DownloadError(ClipError, OSError):
    """A named model could not be downloaded or failed its SHA-256 check."""


class TextTooLongError(ClipError, ValueError):
    """A text has more tokens than the context length and truncation was not asked for."""


class ImageLoadError(ClipError, ValueError):
    """One input could not be turned into an image. ``index`` and ``source`` name the item."""

    def __init__(self, reason: str, *, index: int | None = None, source: str | None = None):
        self.reason = reason
        self.index = index
        self.source = source
        where = []
        if index is not None:
            where.append(f"item {index}")
        if source:
            where.append(source)
        prefix = f"{' '.join(where)}: " if where else ""
        super().__init__(prefix + reason)


class ModelMismatchError(ClipError, ValueError):
    """A collection was built with another model (or preprocessing) than the one at hand."""


class CollectionNotFoundError(ClipError, ValueError):
    """A collection (or the database holding it) does not exist, and nothing was asked to create it.

    Example:
        >>> from clip_embeddings.adapters import open_store
        >>> try:
        ...     open_store("chroma", "no-such-folder", "photos")
        ... except CollectionNotFoundError as e:
        ...     print(e)
        no chroma database at no-such-folder; create it by indexing into it first
    """


class EmptyCollectionError(ClipError, ValueError):
    """A collection exists but holds nothing a job can work on (no vectors of the kind it needs)."""


class MissingExtraError(ClipError, ImportError):
    """An optional dependency is not installed; the message names the extra to install.

    Example:
        >>> str(MissingExtraError("qdrant-client is not installed: pip install 'clip-embeddings[qdrant]'",
        ...                       extra="qdrant", module="qdrant_client"))
        "qdrant-client is not installed: pip install 'clip-embeddings[qdrant]'"
    """

    def __init__(self, message: str, *, extra: str, module: str):
        super().__init__(message, name=module)
        self.extra = extra
