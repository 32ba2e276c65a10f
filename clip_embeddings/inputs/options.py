"""What an image input is: the types every loading step shares, the loader's options and limits,
and how an item is named in error messages (:func:`describe`), without reading it.

Example:
    >>> from clip_embeddings.inputs.options import LoaderOptions, describe
    >>> LoaderOptions(allow_urls=False).allow_urls
    False
    >>> describe("photos/cat.jpg")
    'photos/cat.jpg'
"""

from __future__ import annotations

import dataclasses
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..core.http import redact_url
from ..errors import ConfigError

ImageLike = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray
"""Everything :func:`read_image_source` accepts."""

MAX_SOURCE_CHARS = 200  # long paths/URLs are shortened in error messages and payloads


# ---------------------------------------------------------------------------------------------
# Public data types


@dataclass(frozen=True)
class LoaderOptions:
    """Limits and switches for loading images; the defaults suit untrusted, scraped inputs.

    Attributes:
        max_pixels: the largest ``width * height`` accepted, checked from the header before any
            pixel is decoded (a decompression-bomb guard); applies to in-memory images and arrays
            too. The default equals Pillow's ``Image.MAX_IMAGE_PIXELS``. Pillow itself refuses
            images over twice its own limit, so going beyond ``2 * Image.MAX_IMAGE_PIXELS`` also
            needs that global raised.
        max_bytes: the largest encoded size accepted for a file, a URL body, bytes or a data URI.
        url_timeout: seconds allowed for one URL: it is both the socket timeout (connect, each
            read) and a wall-clock deadline for the whole fetch, redirects, headers and body
            included, so a server that drips a byte at a time cannot hold a worker.
        max_redirects: how many HTTP redirects are followed (to http/https URLs only).
        allow_urls: ``False`` refuses http(s) URLs (local files, bytes and data URIs still work).
        allow_private_addresses: ``False`` refuses to connect to any address that is not public
            (loopback, private, link-local such as cloud metadata at 169.254.169.254, CGNAT,
            multicast, reserved), for the first URL and every redirect. The host is resolved
            once, every address it resolves to must be public, and the socket connects to those
            checked addresses: no connection is ever opened to a refused one (the answer is the
            same for open and closed ports) and DNS rebinding has no second lookup to exploit;
            proxies from the environment are not used then. Turn it off for services that fetch
            URLs given by untrusted users (SSRF). The default ``True`` keeps local servers usable.

    Example:
        >>> opts = LoaderOptions(max_pixels=50_000_000, url_timeout=5.0)
        >>> opts.max_redirects
        5
    """

    max_pixels: int = 89_478_485
    max_bytes: int = 64 * 2**20
    url_timeout: float = 10.0
    max_redirects: int = 5
    allow_urls: bool = True
    allow_private_addresses: bool = True

    def to_config(self) -> dict[str, object]:
        """The options as a JSON-ready dict, for a database to store with its embedding function.

        Example:
            >>> LoaderOptions(allow_urls=False).to_config()["allow_urls"]
            False
        """
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config: dict | None) -> LoaderOptions:
        """Rebuild options from :meth:`to_config`'s dict; absent keys take their defaults.

        Example:
            >>> LoaderOptions.from_config({"allow_private_addresses": False}).allow_private_addresses
            False
        """
        if config is None:
            return DEFAULT_OPTIONS
        if not isinstance(config, dict):
            raise ConfigError(f"loader_options must be a dict, not {type(config).__name__}")
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - set(fields))
        if unknown:
            raise ConfigError(f"unknown loader_options {unknown}; known: {sorted(fields)}")
        for name, value in config.items():
            want = bool if name.startswith("allow_") else float if name == "url_timeout" else int
            ok = isinstance(value, bool) if want is bool else (
                isinstance(value, (int, float)) and not isinstance(value, bool)
                and (want is float or float(value).is_integer()))
            if not ok:
                raise ValueError(f"loader_options[{name!r}] must be {want.__name__}, not {value!r}")
        values: dict[str, Any] = {k: (int(v) if isinstance(v, float) and k != "url_timeout" else v)
                                  for k, v in config.items()}  # each checked above against its field's type
        return cls(**values)

    def __post_init__(self) -> None:
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {self.max_pixels}")
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {self.max_bytes}")
        if not self.url_timeout > 0:
            raise ValueError(f"url_timeout must be > 0 seconds, got {self.url_timeout}")
        if self.max_redirects < 0:
            raise ValueError(f"max_redirects must be >= 0, got {self.max_redirects}")


DEFAULT_OPTIONS = LoaderOptions()
"""The options used when none are given."""


@dataclass
class RawImage:
    """One input, read but not decoded: what :func:`read_image_source` returns.

    Exactly one of ``data`` (encoded file bytes: paths, URLs, bytes, data URIs) and ``image``
    (in-memory inputs: PIL images, numpy arrays) is set.

    Attributes:
        source: a short human description of the item, for errors and payloads.
        data: the encoded bytes, or ``None``.
        image: the in-memory image, or ``None``.
        digest: SHA-256 hex of the encoded bytes; for in-memory images, of the mode, size,
            palette and pixel bytes. The same content gives the same digest in any process.

    Example:
        >>> from clip_embeddings.inputs.sources import read_image_source
        >>> raw = read_image_source(b"GIF89a...")
        >>> raw.source, len(raw.digest)
        ('<bytes: 9 B>', 64)
    """

    source: str
    data: bytes | None
    image: Image.Image | None
    digest: str


# ---------------------------------------------------------------------------------------------
# Descriptions


def shorten(text: str, limit: int = MAX_SOURCE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def is_url(text: str) -> bool:
    head = text[:8].lower()
    return head.startswith("http://") or head.startswith("https://")


SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+)://")  # 2+ letters: "C://x" is a Windows path


def data_uri_parts(uri: str) -> tuple[str, str, bool]:
    """``(header, payload, is_base64)`` of a ``data:`` URI; raises ValueError without a comma."""
    header, comma, payload = uri[5:].partition(",")
    if not comma:
        raise ValueError("malformed data URI (no ',' before the data)")
    return header, payload, header.lower().endswith(";base64")


def base64_length(payload: str) -> int:
    """Decoded size of a base64 payload, computed without decoding it."""
    stripped = payload.rstrip(" \t\r\n=")
    return (len(stripped) - sum(stripped.count(c) for c in " \t\r\n")) * 3 // 4


def describe(item: object) -> str:
    """The short description of ``item`` used in errors and payloads, without reading it.

    Paths and URLs are shown as given (long ones shortened, URL passwords masked), other inputs
    by kind and size.

    Example:
        >>> describe("photos/cat.jpg")
        'photos/cat.jpg'
        >>> describe(b"\\x89PNG....")
        '<bytes: 8 B>'
        >>> import numpy as np
        >>> describe(np.zeros((480, 640, 3), dtype=np.uint8))
        '<ndarray uint8 (480, 640, 3)>'
    """
    if isinstance(item, str):
        if not item:  # an empty string names nothing: say so, not "" (a skipped item needs a name)
            return "<empty string>"
        if item[:5].lower() == "data:":
            try:
                header, payload, b64 = data_uri_parts(item)
            except ValueError:
                return shorten(item, 40)
            size = base64_length(payload) if b64 else len(urllib.parse.unquote_to_bytes(payload))
            return f"data:{shorten(header, 60)},… ({size} B)"
        if SCHEME_RE.match(item):
            return shorten(redact_url(item))
        return shorten(item)
    if isinstance(item, os.PathLike):
        return shorten(os.fsdecode(os.fspath(item)))
    if isinstance(item, (bytes, bytearray)):
        return f"<bytes: {len(item)} B>"
    if isinstance(item, memoryview):
        return f"<bytes: {item.nbytes} B>"
    if isinstance(item, Image.Image):
        return f"<PIL {item.mode} {item.width}x{item.height}>"
    if isinstance(item, np.ndarray):
        return f"<ndarray {item.dtype} {tuple(item.shape)}>"
    return f"<{type(item).__name__}>"


# ---------------------------------------------------------------------------------------------
# Reading


def fmt_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}"
    raise AssertionError  # unreachable


def too_big(what: str, size: int, options: LoaderOptions) -> str:
    return (f"{what} is {size} bytes ({fmt_bytes(size)}), more than max_bytes="
            f"{options.max_bytes} ({fmt_bytes(options.max_bytes)})")
