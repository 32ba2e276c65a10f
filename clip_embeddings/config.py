"""The configuration of an embedding function: every default, its validation and its dict form, once.

:class:`EmbeddingConfig` is what a :class:`~clip_embeddings.ClipEF` is made of. The function, the
stored config a database keeps (``get_config`` / ``build_from_config``), LanceDB's registry model,
the command line's model options and the server all take their defaults and their checks from
here, so a default changes in one place and a bad value gets the same message everywhere.

The dict form (:meth:`EmbeddingConfig.to_dict`) is what databases persist. It carries a
``version``; a dict written by an older release (no ``version``, fewer keys) still loads, with the
defaults it was written under, and a newer one is refused with :class:`ConfigError`. Settings that
describe the machine rather than the collection (``device``, ``cache``, ``download_root``) are not
persisted: a collection built on a GPU box must open on a laptop.

This module is a leaf: it imports nothing from the package but :mod:`clip_embeddings.errors`.

Example:
    >>> config = EmbeddingConfig(model="ViT-B/32", batch_size=64)
    >>> config.num_workers, config.on_error
    (4, 'raise')
    >>> EmbeddingConfig.from_dict({**config.to_dict(), "fingerprint": "ab12", "dim": 512}).batch_size
    64
    >>> EmbeddingConfig(on_error="ignore")
    Traceback (most recent call last):
    ...
    clip_embeddings.errors.ConfigError: on_error must be 'raise' or 'skip', not 'ignore'
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .errors import ConfigError, IncompatibleCollectionError

CONFIG_VERSION = 1
"""The version of the dict form written today; a stored dict with a higher one is refused."""

OnError = Literal["raise", "skip"]
LongText = Literal["truncate", "chunk"]
ON_ERROR: tuple[str, ...] = ("raise", "skip")
LONG_TEXT: tuple[str, ...] = ("truncate", "chunk")

# What a stored config must hold to rebuild a function: without them it was not written by us.
REQUIRED_KEYS = ("model", "fingerprint", "dim")
# Describe this machine, not the collection: never persisted, always this process's defaults.
LOCAL_FIELDS = ("device", "cache", "download_root")


def check_on_error(on_error: Any) -> OnError:
    """``on_error`` if it is ``"raise"`` or ``"skip"``, else a :class:`ConfigError` saying so.

    Every per-call ``on_error=`` argument of the library is checked here.

    Example:
        >>> check_on_error("skip")
        'skip'
    """
    if on_error not in ON_ERROR:
        raise ConfigError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    return on_error


@dataclass(frozen=True)
class EmbeddingConfig:
    """Every setting of an embedding function, with its default, validated when built.

    Fields (the :class:`~clip_embeddings.ClipEF` arguments of the same names):
        model: a model name or checkpoint path; ``None`` is the default model
            (``$CLIP_WEIGHTS`` when set, else ``"ViT-B/32"``, resolved by ``ClipEF``).
        device: torch device; ``None`` picks CUDA when available. Not persisted.
        batch_size: images or texts per forward pass (>= 1).
        dtype: ``"auto"``, ``"fp32"``, ``"fp16"``, ``"bf16"``, ``"int8"`` (CPU) (or ``None`` for fp32).
        long_text: ``"truncate"`` or ``"chunk"``.
        cache: the image-embedding cache: ``True``, ``False`` or a path. Not persisted.
        on_error: ``"raise"`` or ``"skip"``.
        fast_decode: decode large JPEGs at reduced scale when that is safe.
        num_workers: threads reading and decoding images ahead of the model (>= 1).
        loader_options: the image-input policy: ``None`` for the defaults, a
            ``LoaderOptions`` or its ``to_config()`` dict (checked by ``LoaderOptions``).
        download_root: where named models are cached. Not persisted.
        server: URL of a ``clip-embeddings serve`` doing the work instead of a local model.
        fingerprint, dim: the weights a stored collection was built with (set when rebuilt
            from a stored config; checked against the weights on first use).
    """

    model: str | None = None
    device: str | None = None
    batch_size: int = 32
    dtype: str | None = "auto"
    long_text: LongText = "truncate"
    cache: bool | str = True
    on_error: OnError = "raise"
    fast_decode: bool = True
    num_workers: int = 4
    loader_options: Any = None
    download_root: str | None = None
    server: str | None = None
    fingerprint: str | None = None
    dim: int | None = None

    def __post_init__(self) -> None:
        # Paths arrive as PathLike from users; the config holds strings so it compares and persists.
        for name in ("model", "download_root"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, name, os.fspath(value))
        if isinstance(self.cache, os.PathLike):
            object.__setattr__(self, "cache", os.fspath(self.cache))
        self._validate()

    def _validate(self) -> None:
        if self.long_text not in LONG_TEXT:
            raise ConfigError(f"long_text must be 'truncate' or 'chunk', not {self.long_text!r}")
        check_on_error(self.on_error)
        for name in ("batch_size", "num_workers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be an int >= 1, not {value!r}")
        # dtype and server are checked where they are used (the model registry, the remote client):
        # a torch.dtype is accepted there, and a server is only reached on first use.
        if self.dim is not None and (not isinstance(self.dim, int) or isinstance(self.dim, bool) or self.dim < 1):
            raise ConfigError(f"dim must be a positive int, not {self.dim!r}")

    def replace(self, **changes: Any) -> EmbeddingConfig:
        """A copy with ``changes`` applied, validated like a new one.

        Example:
            >>> EmbeddingConfig().replace(batch_size=8).batch_size
            8
        """
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The persisted form: JSON-ready, with ``version``, without the machine-local settings.

        Example:
            >>> sorted(EmbeddingConfig(model="ViT-B/32").to_dict())  # doctest: +NORMALIZE_WHITESPACE
            ['batch_size', 'dim', 'dtype', 'fast_decode', 'fingerprint', 'loader_options', 'long_text',
             'model', 'num_workers', 'on_error', 'version']
        """
        options = self.loader_options
        if options is not None and hasattr(options, "to_config"):
            options = options.to_config()
        document: dict[str, Any] = {
            "model": self.model, "fingerprint": self.fingerprint, "dim": self.dim, "batch_size": self.batch_size,
            "dtype": self.dtype, "long_text": self.long_text, "fast_decode": self.fast_decode,
            # The input policy travels with the function: a collection made with allow_urls=False
            # must not fetch URLs once reopened (Chroma rebuilds the function from this).
            "loader_options": None if options is None else dict(options), "on_error": self.on_error,
            "num_workers": self.num_workers, "version": CONFIG_VERSION,
        }
        if self.server:
            document["server"] = self.server
        return document

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> EmbeddingConfig:
        """A config from :meth:`to_dict`'s form, including those written by older releases.

        Keys a newer minor release added are ignored; missing ones take the defaults they were
        written under. A dict without ``model``, ``fingerprint`` and ``dim`` was not written by
        clip-embeddings (:class:`IncompatibleCollectionError`); a higher ``version`` or a bad value
        is a :class:`ConfigError`. ``loader_options`` stays a dict (``LoaderOptions`` checks it).

        Example:
            >>> EmbeddingConfig.from_dict({"model": "RN50", "fingerprint": "ab", "dim": 1024}).num_workers
            4
        """
        if not isinstance(document, Mapping):
            raise IncompatibleCollectionError(f"not a clip-embeddings config: {document!r}")
        missing = [k for k in REQUIRED_KEYS if k not in document]
        if missing:
            raise IncompatibleCollectionError(f"not a clip-embeddings config: missing {', '.join(missing)} in {dict(document)}")
        version = document.get("version", CONFIG_VERSION)
        if not isinstance(version, int) or version > CONFIG_VERSION:
            raise ConfigError(f"config version {version} is newer than this clip-embeddings understands; upgrade it")
        persisted = {f.name for f in dataclasses.fields(cls)} - set(LOCAL_FIELDS)
        values = {k: document[k] for k in persisted if k in document}
        try:
            return cls(**values)
        except ConfigError as e:
            raise ConfigError(f"config {e}") from None
