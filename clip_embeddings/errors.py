"""The library's errors: one tree, each message says what was wrong and what to do.

Every error derives from :class:`ClipError`, so ``except ce.ClipError`` catches them all, and each
also derives from the builtin a caller would naturally expect (in brackets below), so code written
against openai/CLIP, or code that caught the builtin before a failure was typed, keeps working::

    ClipError
    ├── ModelLoadError [ValueError]              a checkpoint is unreadable or not a CLIP model
    ├── DownloadError [OSError]                  a named model's download or SHA-256 check failed
    ├── TextTooLongError [ValueError]            too many tokens and truncation was not asked for
    ├── ImageLoadError [ValueError]              one input could not be turned into an image
    ├── ConfigError [ValueError]                 a bad option value or persisted config
    ├── StoreAddressError [ValueError]           a store kind, location or address that cannot be parsed
    ├── CollectionError [ValueError]             a stored collection cannot be used as asked
    │   ├── CollectionNotFoundError [ValueError] it does not exist and nothing was asked to create it
    │   ├── EmptyCollectionError [ValueError]    it holds nothing a job can work on
    │   ├── IncompatibleCollectionError [ValueError]  it was not made by clip-embeddings
    │   └── ModelMismatchError [ValueError]      it was made with another model or preprocessing
    ├── MissingExtraError [ImportError]          an optional dependency is not installed
    ├── ServerError [OSError]                    the embedding server is unreachable or refused
    ├── UsageError [ValueError]                  the command line asked for something impossible
    ├── BadRequest [ValueError]                  the server refuses a request (``status``: HTTP code)
    └── QueueFull [RuntimeError]                 the server's batcher is full (answered 429)

    ClipWarning [UserWarning]
    └── CacheWarning [RuntimeWarning]            the embedding cache was moved aside or turned off

The older import paths keep working: ``clip_embeddings.embedding.remote.ServerError``,
``clip_embeddings.embedding.cache.CacheWarning``, ``clip_embeddings.apps.console.UsageError``,
``clip_embeddings.apps.server.BadRequest`` and ``QueueFull`` are these classes.

Example:
    >>> import clip_embeddings as ce
    >>> issubclass(ce.ConfigError, ValueError) and issubclass(ce.ConfigError, ce.ClipError)
    True
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


class ConfigError(ClipError, ValueError):
    """A configuration value is not valid, or a persisted config cannot be read by this release.

    Example:
        >>> from clip_embeddings.config import EmbeddingConfig
        >>> try:
        ...     EmbeddingConfig.from_dict({"model": "ViT-B/32", "fingerprint": "x", "dim": 512, "version": 99})
        ... except ConfigError as e:
        ...     print("newer" in str(e))
        True
    """


class StoreAddressError(ClipError, ValueError):
    """A store kind, location or one-string address that cannot be parsed; the message shows a valid form."""


class CollectionError(ClipError, ValueError):
    """A stored collection cannot be used as asked (the subclasses say why)."""


class IncompatibleCollectionError(CollectionError):
    """A collection (or its stored config) was not made by clip-embeddings, so nothing can rebuild its function."""


class ModelMismatchError(CollectionError):
    """A collection was built with another model (or preprocessing) than the one at hand."""


class CollectionNotFoundError(CollectionError):
    """A collection (or the database holding it) does not exist, and nothing was asked to create it.

    Example:
        >>> from clip_embeddings.adapters import open_store
        >>> try:
        ...     open_store("chroma", "no-such-folder", "photos")
        ... except CollectionNotFoundError as e:
        ...     print(e)
        no chroma database at no-such-folder; create it by indexing into it first
    """


class EmptyCollectionError(CollectionError):
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


class ServerError(ClipError, OSError):
    """The embedding server could not be reached, or refused a request (its reason is included)."""


class UsageError(ClipError, ValueError):
    """A problem with what the user asked for, found after parsing (reported as one line, exit 1)."""


class BadRequest(ClipError, ValueError):
    """A request the server refuses; ``status`` is the HTTP code, the message the reason.

    Example:
        >>> BadRequest("too many images", 413).status
        413
    """

    def __init__(self, reason: str, status: int = 400):
        super().__init__(reason)
        self.status = status


class QueueFull(ClipError, RuntimeError):
    """The server's batcher already holds ``max_queue`` waiting jobs (the server answers 429)."""


class ClipWarning(UserWarning):
    """Base class of every warning clip_embeddings issues."""


class CacheWarning(ClipWarning, RuntimeWarning):
    """The embedding cache hit a fault and was moved aside or turned off; embedding goes on."""
