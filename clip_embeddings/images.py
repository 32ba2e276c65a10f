"""Turn anything a user calls "an image" into a PIL RGB image, one item at a time.

Every database adapter takes images from the same places: paths in scraped folders, URLs,
``data:`` URIs, raw bytes, PIL images and numpy arrays. This module is the one loader they all
share, so that every input kind is decoded the same way and fails the same way.

Loading is split in two steps so that an embedding cache can sit between them:

* :func:`read_image_source` is cheap: it reads the encoded bytes (or takes the in-memory image)
  and computes a SHA-256 ``digest`` of the content, which is stable across processes.
* :func:`decode_image` does the expensive part, only on a cache miss: Pillow decoding with a
  decompression-bomb guard, a check that the file decodes completely (a truncated download fails
  instead of giving a half-grey picture), EXIF orientation, first frame of animations,
  transparency composited on white, 16-bit and float images scaled to 8 bits, and an optional
  JPEG draft mode that decodes large photos at a reduced scale that is still big enough for CLIP.

:func:`load_image` does both. Whatever goes wrong with one item raises
:class:`~clip_embeddings.errors.ImageLoadError`, whose message names the item and the reason, so
a caller can skip that item and keep the rest.

Example:
    >>> from clip_embeddings.images import load_image
    >>> import numpy as np
    >>> load_image(np.zeros((4, 6, 3), dtype=np.uint8)).size
    (6, 4)
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import contextvars
import dataclasses
import functools
import hashlib
import http.client
import io
import ipaddress
import math
import os
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from .errors import ImageLoadError
from .user_files import Refused, read_regular_file, walk_folder

__all__ = [
    "DEFAULT_OPTIONS",
    "DRAFT_MARGIN",
    "IMAGE_EXTENSIONS",
    "ImageLike",
    "LoaderOptions",
    "RawImage",
    "decode_image",
    "describe",
    "iter_image_files",
    "load_image",
    "read_image_source",
]

ImageLike = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray]
"""Everything :func:`read_image_source` accepts."""

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
)
"""File extensions :func:`iter_image_files` picks up by default (compared case-insensitively)."""

DRAFT_MARGIN: float = 2.0
"""JPEG draft decoding stops at a scale whose shorter side is still ``>= DRAFT_MARGIN * R``.

Measured with ``benchmarks/draft_mode.py`` (R = 224, 1-12 MP photos, JPEG quality 90): with a
margin of 2, ``Preprocess(224)`` of the draft decode differs from that of the full decode by at
most 0.075 and on average 0.002-0.006 in normalised units (one 8-bit level is ~0.015), about as
much as JPEG compression itself changes it, while decoding 3-12 MP photos is ~2x faster (1.3-1.7x
for heavily textured ones). A margin of 1 is barely faster and up to 0.42 (max) / 0.019 (mean)
off: the image then lands just above R, where the DCT-scaled pixels are still visible.
"""

_MAX_SOURCE_CHARS = 200  # long paths/URLs are shortened in error messages and payloads
_CHUNK = 64 * 1024
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})


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
    def from_config(cls, config: Optional[dict]) -> "LoaderOptions":
        """Rebuild options from :meth:`to_config`'s dict; absent keys take their defaults.

        Example:
            >>> LoaderOptions.from_config({"allow_private_addresses": False}).allow_private_addresses
            False
        """
        if config is None:
            return DEFAULT_OPTIONS
        if not isinstance(config, dict):
            raise ValueError(f"loader_options must be a dict, not {type(config).__name__}")
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - set(fields))
        if unknown:
            raise ValueError(f"unknown loader_options {unknown}; known: {sorted(fields)}")
        for name, value in config.items():
            want = bool if name.startswith("allow_") else float if name == "url_timeout" else int
            ok = isinstance(value, bool) if want is bool else (
                isinstance(value, (int, float)) and not isinstance(value, bool)
                and (want is float or float(value).is_integer()))
            if not ok:
                raise ValueError(f"loader_options[{name!r}] must be {want.__name__}, not {value!r}")
        return cls(**{k: (int(v) if isinstance(v, float) and k != "url_timeout" else v) for k, v in config.items()})

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
        >>> raw = read_image_source(b"GIF89a...")
        >>> raw.source, len(raw.digest)
        ('<bytes: 9 B>', 64)
    """

    source: str
    data: Optional[bytes]
    image: Optional[Image.Image]
    digest: str


# ---------------------------------------------------------------------------------------------
# Descriptions


def _shorten(text: str, limit: int = _MAX_SOURCE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _is_url(text: str) -> bool:
    head = text[:8].lower()
    return head.startswith("http://") or head.startswith("https://")


_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+)://")  # 2+ letters: "C://x" is a Windows path


def _redact_url(url: str) -> str:
    """The URL without a password in its user-info part."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


def _data_uri_parts(uri: str) -> tuple[str, str, bool]:
    """``(header, payload, is_base64)`` of a ``data:`` URI; raises ValueError without a comma."""
    header, comma, payload = uri[5:].partition(",")
    if not comma:
        raise ValueError("malformed data URI (no ',' before the data)")
    return header, payload, header.lower().endswith(";base64")


def _base64_length(payload: str) -> int:
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
                header, payload, b64 = _data_uri_parts(item)
            except ValueError:
                return _shorten(item, 40)
            size = _base64_length(payload) if b64 else len(urllib.parse.unquote_to_bytes(payload))
            return f"data:{_shorten(header, 60)},… ({size} B)"
        if _SCHEME_RE.match(item):
            return _shorten(_redact_url(item))
        return _shorten(item)
    if isinstance(item, os.PathLike):
        return _shorten(os.fsdecode(os.fspath(item)))
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


def _fmt_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"
    raise AssertionError  # unreachable


def _too_big(what: str, size: int, options: LoaderOptions) -> str:
    return (f"{what} is {size} bytes ({_fmt_bytes(size)}), more than max_bytes="
            f"{options.max_bytes} ({_fmt_bytes(options.max_bytes)})")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_image_source(item: ImageLike, options: LoaderOptions = DEFAULT_OPTIONS) -> RawImage:
    """Read one item's bytes (or take its in-memory image) and compute its content digest.

    * ``str`` / ``os.PathLike``: a local file. A ``str`` starting with ``http://`` or
      ``https://`` is fetched; ``data:`` is a data URI (base64 or percent-encoded); ``file://`` is
      a local path.
    * ``bytes`` / ``bytearray`` / ``memoryview``: an encoded image file.
    * ``PIL.Image.Image``: taken as it is (no EXIF rotation: it may already have been applied).
    * ``numpy.ndarray``: ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)``; ``uint8``,
      ``bool``, ``uint16`` (scaled to 8 bits) or float in ``[0, 1]``.

    Nothing is decoded here: pass the result to :func:`decode_image`.
    Raises :class:`ImageLoadError` naming the item and the reason.

    Example:
        >>> raw = read_image_source("does-not-exist.jpg")
        Traceback (most recent call last):
        ...
        clip_embeddings.errors.ImageLoadError: does-not-exist.jpg: file not found
    """
    if isinstance(item, Refused):  # a folder walk's entry it could not read: reported as this item
        raise ImageLoadError(item.reason, source=os.path.abspath(item.path))
    source = describe(item)
    if isinstance(item, str):
        low = item[:8].lower()
        if low.startswith("data:"):
            data = _read_data_uri(item, source, options)
        elif _is_url(item):
            if not options.allow_urls:
                raise ImageLoadError("URLs are not allowed (LoaderOptions.allow_urls is False)",
                                     source=source)
            data = _read_url(item, source, options)
        elif low.startswith("file://"):
            data = _read_file(_file_url_path(item, source), source, options)
        elif m := _SCHEME_RE.match(item):
            raise ImageLoadError(f"unsupported URL scheme {m.group(1)!r} (only http, https, "
                                 "data: and file:// are read)", source=source)
        else:
            data = _read_file(item, source, options)
        return RawImage(source=source, data=data, image=None, digest=_sha256(data))
    if isinstance(item, os.PathLike):
        data = _read_file(item, source, options)
        return RawImage(source=source, data=data, image=None, digest=_sha256(data))
    if isinstance(item, (bytes, bytearray, memoryview)):
        size = item.nbytes if isinstance(item, memoryview) else len(item)
        if size == 0:
            raise ImageLoadError("empty input (0 bytes)", source=source)
        if size > options.max_bytes:
            raise ImageLoadError(_too_big("input", size, options), source=source)
        data = item if isinstance(item, bytes) else bytes(item)
        return RawImage(source=source, data=data, image=None, digest=_sha256(data))
    if isinstance(item, Image.Image):
        _check_pixels(item.width, item.height, source, options)
        return RawImage(source=source, data=None, image=item, digest=_image_digest(item, source))
    if isinstance(item, np.ndarray):
        image = _array_to_image(item, source, options)
        return RawImage(source=source, data=None, image=image, digest=_image_digest(image, source))
    hint = ""
    if hasattr(item, "__array__"):  # a torch/jax/... tensor
        hint = "; convert it with numpy.asarray(x) in (H, W, C) layout"
    raise ImageLoadError(
        f"unsupported input type {type(item).__module__}.{type(item).__qualname__} (expected a "
        f"path, URL, data URI, bytes, PIL image or numpy array){hint}", source=source)


def _read_file(path: Union[str, os.PathLike], source: str, options: LoaderOptions) -> bytes:
    """A local file under the one rule for user files (:mod:`clip_embeddings.user_files`)."""
    try:
        data = read_regular_file(path, options.max_bytes, root=getattr(path, "root", None),
                                 too_big=lambda size: _too_big("file", size, options))
    except Refused as e:
        raise ImageLoadError(e.reason, source=source) from None
    if not data:
        raise ImageLoadError("empty file (0 bytes)", source=source)
    return data


def _file_url_path(url: str, source: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ImageLoadError(f"file:// URL with a remote host ({parts.netloc!r}) is not supported",
                             source=source)
    return urllib.request.url2pathname(parts.path)


def _read_data_uri(uri: str, source: str, options: LoaderOptions) -> bytes:
    try:
        _, payload, b64 = _data_uri_parts(uri)
    except ValueError as e:
        raise ImageLoadError(str(e), source=source) from None
    estimate = _base64_length(payload) if b64 else len(payload) // 3
    if estimate > options.max_bytes:
        raise ImageLoadError(_too_big("data URI payload", estimate, options), source=source)
    if b64:
        text = re.sub(r"\s+", "", urllib.parse.unquote(payload) if "%" in payload else payload)
        text = text.rstrip("=")
        text += "=" * (-len(text) % 4)
        try:
            if "-" in text or "_" in text:
                data = base64.b64decode(text, altchars=b"-_", validate=True)
            else:
                data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ImageLoadError(f"invalid base64 in data URI ({e})", source=source) from None
    else:
        data = urllib.parse.unquote_to_bytes(payload)
    if not data:
        raise ImageLoadError("empty data URI (0 bytes)", source=source)
    if len(data) > options.max_bytes:
        raise ImageLoadError(_too_big("data URI payload", len(data), options), source=source)
    return data


# ----- URLs ----------------------------------------------------------------------------------


class _Deadline:
    """A wall-clock limit for one URL fetch: when it passes, every socket it watches is shut down.

    Socket timeouts bound each read, but a server sending one byte every few seconds never
    trips them. Shutting the socket down from a timer thread wakes the blocked read at once.
    """

    def __init__(self, seconds: float, public_only: bool = False):
        self.seconds = seconds
        self.public_only = public_only  # the fetch's other rule, read by its connections
        self.end = time.monotonic() + seconds
        self.expired = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            if self.expired:
                self._shutdown(sock)
            else:
                self._sockets.append(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                self._shutdown(sock)

    @staticmethod
    def _shutdown(sock: socket.socket) -> None:
        # The plain socket method, also for SSL sockets: it only wakes the reader, leaving the
        # SSL object alone. On a socket already closed it fails harmlessly (no reused fd).
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except (OSError, ValueError):
            pass

    def cancel(self) -> None:
        with self._lock:
            self._timer.cancel()
            self._sockets.clear()


class _NotPublic(OSError):
    """Raised on connecting to a non-public address when private addresses are not allowed."""


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _connect_public(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None):
    """``socket.create_connection`` to public addresses only: resolve, check every address, connect.

    The host is resolved once; if any of its addresses is not public the fetch is refused before
    any socket exists, so nothing reaches a private address, the answer is the same whether its
    port is open or closed, and a second resolution cannot swap in another address (DNS
    rebinding): the socket connects to the very addresses that were checked.
    """
    host, port = address
    try:
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise OSError(f"cannot resolve {host!r} ({e.strerror})") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]
    refused = sorted({str(ip) for ip in addresses if not _is_public(ip)})
    if refused or not addresses:
        raise _NotPublic(f"refused to connect to {host}: it resolves to {', '.join(refused) or 'nothing'}, "
                         "not a public address (LoaderOptions.allow_private_addresses is False)")
    error: Optional[OSError] = None
    for family, kind, proto, _, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as e:
            error = e
            sock.close()
    raise error  # type: ignore[misc]  # infos is not empty here


class _WatchedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args, deadline: _Deadline, **kwargs):
        super().__init__(*args, **kwargs)
        self._deadline = deadline
        if deadline.public_only:  # connect() (and HTTPS, before its handshake) goes through it
            self._create_connection = _connect_public

    def connect(self) -> None:
        super().connect()
        self._deadline.watch(self.sock)


class _WatchedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args, deadline: _Deadline, **kwargs):
        super().__init__(*args, **kwargs)
        self._deadline = deadline
        if deadline.public_only:
            self._create_connection = _connect_public

    def connect(self) -> None:
        super().connect()
        self._deadline.watch(self.sock)


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline):
        super().__init__()
        self._deadline = deadline

    def http_open(self, req):
        return self.do_open(self._connection, req)

    def _connection(self, host, **kwargs):
        return _WatchedHTTPConnection(host, deadline=self._deadline, **kwargs)


@functools.lru_cache(maxsize=None)
def _ssl_context() -> ssl.SSLContext:
    """One verifying context for all fetches: loading the CA store takes tens of milliseconds."""
    return ssl.create_default_context()


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline):
        super().__init__(context=_ssl_context())
        self._deadline = deadline

    def https_open(self, req):
        return self.do_open(self._connection, req, context=_ssl_context())

    def _connection(self, host, **kwargs):
        return _WatchedHTTPSConnection(host, deadline=self._deadline, **kwargs)


def _opener(deadline: _Deadline) -> urllib.request.OpenerDirector:
    # No HTTPRedirectHandler: redirects are followed by hand, so each target can be checked.
    opener = urllib.request.OpenerDirector()
    # With public_only, no environment proxy: the proxy, not us, would pick the address.
    proxies = urllib.request.ProxyHandler({} if deadline.public_only else None)
    for handler in (proxies, _HTTPHandler(deadline), _HTTPSHandler(deadline),
                    urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


def _user_agent() -> str:
    from . import __version__

    return f"clip-embeddings/{__version__} (+https://pypi.org/project/clip-embeddings/) python-urllib"


def _normalize_url(url: str) -> str:
    """Make a URL sendable: IDNA host, percent-encoded spaces and non-ASCII characters."""
    parts = urllib.parse.urlsplit(url.strip())
    netloc = parts.netloc
    host = parts.hostname or ""
    if host and not host.isascii():
        netloc = netloc.replace(host, host.encode("idna").decode("ascii"))
    safe = "/%:@!$&'()*+,;=~-._"
    return urllib.parse.urlunsplit((
        parts.scheme.lower(), netloc, urllib.parse.quote(parts.path, safe=safe),
        urllib.parse.quote(parts.query, safe=safe + "?"), ""))


def _read_url(url: str, source: str, options: LoaderOptions) -> bytes:
    def fail(reason: str) -> ImageLoadError:
        return ImageLoadError(reason, source=source)

    timeout = options.url_timeout
    deadline = _Deadline(timeout, public_only=not options.allow_private_addresses)
    try:
        opener = _opener(deadline)
        try:
            current = _normalize_url(url)
        except (ValueError, UnicodeError) as e:
            raise fail(f"invalid URL ({e})") from None
        redirects = 0
        while True:
            left = deadline.remaining()
            if left <= 0 or deadline.expired:
                raise fail(f"timed out after {timeout:g} s (url_timeout)")
            request = urllib.request.Request(current, headers={
                "User-Agent": _user_agent(), "Accept": "image/*,*/*;q=0.8"})
            try:
                response = opener.open(request, timeout=min(left, timeout))
            except urllib.error.HTTPError as e:
                location = e.headers.get("Location") if e.headers else None
                code, phrase = e.code, e.reason
                e.close()
                if code not in _REDIRECT_CODES:
                    raise fail(f"HTTP {code} {phrase}".rstrip()) from None
                if not location:
                    raise fail(f"HTTP {code} redirect without a Location header") from None
                redirects += 1
                if redirects > options.max_redirects:
                    raise fail(f"too many redirects (more than max_redirects="
                               f"{options.max_redirects})") from None
                target = urllib.parse.urljoin(current, location.strip())
                scheme = urllib.parse.urlsplit(target).scheme.lower()
                if scheme not in ("http", "https"):
                    raise fail(f"redirect to a non-HTTP URL refused: "
                               f"{_shorten(_redact_url(target), 100)}") from None
                try:
                    current = _normalize_url(target)
                except (ValueError, UnicodeError) as e2:
                    raise fail(f"redirect to an invalid URL ({e2})") from None
                continue
            except ImageLoadError:
                raise
            except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
                raise fail(_network_reason(e, deadline, timeout)) from None
            with response:
                return _read_body(response, deadline, fail, options, timeout)
    finally:
        deadline.cancel()


def _network_reason(e: BaseException, deadline: _Deadline, timeout: float) -> str:
    if deadline.expired:
        return f"timed out after {timeout:g} s (url_timeout)"
    reason = getattr(e, "reason", None) or e
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return f"timed out after {timeout:g} s (url_timeout)"
    if isinstance(e, urllib.error.URLError):
        return f"cannot connect: {reason}"
    if isinstance(e, http.client.InvalidURL) or type(e) is ValueError:
        return f"invalid URL ({e})"
    return f"connection error: {type(e).__name__}: {e}"


# Content-Encodings decoded, as zlib window bits. A server may compress even unasked (S3 objects
# stored with Content-Encoding: gzip): the image inside is decoded, and max_bytes bounds both the
# bytes received and the bytes they inflate to, so a gzip bomb stops at max_bytes + 1.
_CONTENT_ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def _declared_length(response, fail) -> Optional[int]:
    declared = response.headers.get("Content-Length")
    if declared is None:
        return None
    text = declared.strip()
    if not text.isdigit() or not text.isascii():  # "-5", "1e3", "12, 12": the size is unknown
        raise fail(f"invalid Content-Length header {_shorten(declared, 40)!r} (not a byte count)")
    return int(text)


def _read_body(response, deadline: _Deadline, fail, options: LoaderOptions,
               timeout: float) -> bytes:
    status = getattr(response, "status", None) or response.getcode()
    if status != 200:
        raise fail(f"HTTP {status} {getattr(response, 'reason', '')}".rstrip())
    limit = options.max_bytes
    length = _declared_length(response, fail)
    if length is not None and length > limit:
        raise fail(f"response larger than {limit} bytes (Content-Length: {length})")
    encoding = (response.headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding not in ("identity", *_CONTENT_ENCODINGS):
        raise fail(f"unsupported Content-Encoding {_shorten(encoding, 40)!r} (identity, gzip and "
                   "deflate are decoded)")
    inflater = zlib.decompressobj(_CONTENT_ENCODINGS[encoding]) if encoding in _CONTENT_ENCODINGS else None
    chunks: list[bytes] = []
    received = total = 0  # bytes on the wire, bytes of content
    try:
        while True:
            chunk = response.read(min(_CHUNK, limit + 1 - received))
            if not chunk:
                break
            received += len(chunk)
            if inflater is not None:
                chunk = inflater.decompress(chunk, limit + 1 - total)  # never more than we may keep
            chunks.append(chunk)
            total += len(chunk)
            if received > limit or total > limit:
                what = "decoded response" if total > limit and inflater is not None else "response"
                raise fail(f"{what} larger than {limit} bytes (max_bytes)")
            if deadline.expired:
                break
    except ImageLoadError:
        raise
    except zlib.error as e:
        raise fail(f"invalid {encoding} response body ({e})") from None
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise fail(_network_reason(e, deadline, timeout)) from None
    if deadline.expired:
        raise fail(f"timed out after {timeout:g} s (url_timeout) with {received} bytes received")
    if length is not None and received < length:
        raise fail(f"connection closed after {received} of {length} bytes")
    if inflater is not None and not inflater.eof:
        raise fail(f"truncated {encoding} response body ({received} bytes received)")
    if total == 0:
        raise fail("empty response (0 bytes)")
    return b"".join(chunks)


# ----- in-memory inputs ----------------------------------------------------------------------


def _check_pixels(width: int, height: int, source: str, options: LoaderOptions) -> None:
    if width <= 0 or height <= 0:
        raise ImageLoadError(f"image has no pixels ({width}x{height})", source=source)
    if width * height > options.max_pixels:
        raise _too_many_pixels(width, height, source, options)


def _too_many_pixels(width: int, height: int, source: str, options: LoaderOptions) -> ImageLoadError:
    return ImageLoadError(
        f"image too large: {width}x{height} = {width * height} pixels, more than max_pixels="
        f"{options.max_pixels} (decompression-bomb guard; raise LoaderOptions.max_pixels "
        "if this image is expected)", source=source)


# Pillow asks ``Image._decompression_bomb_check(size)`` before it decodes anything: in
# ``Image.open`` and for each image nested inside another (the PNG or BMP frames of an ICO, which
# ``Image.open`` decodes at once; ICNS members; GIF frames on seek). Its limit is one global, so
# the hook below adds this thread's ``max_pixels`` while :func:`decode_image` runs: one check, at
# the point where every format reveals a size, before a single pixel is allocated.
_pixel_limit: contextvars.ContextVar[Optional[int]] = contextvars.ContextVar("clip_max_pixels", default=None)
_pillow_bomb_check = Image._decompression_bomb_check


class _OverPixelLimit(Image.DecompressionBombError):
    def __init__(self, size: tuple[int, int]):
        super().__init__(f"{size[0]}x{size[1]}")
        self.size = size


def _bomb_check(size: tuple[int, int], *args, **kwargs) -> None:
    limit = _pixel_limit.get()
    if limit is not None and size[0] * size[1] > limit:
        raise _OverPixelLimit(tuple(size))
    _pillow_bomb_check(size, *args, **kwargs)  # Pillow's signature varies (error_only=, ...)


if getattr(Image._decompression_bomb_check, "__module__", None) != __name__:  # once, even on reload
    Image._decompression_bomb_check = _bomb_check


@contextlib.contextmanager
def _max_pixels(limit: int) -> Iterator[None]:
    token = _pixel_limit.set(limit)
    try:
        yield
    finally:
        _pixel_limit.reset(token)


def _image_digest(image: Image.Image, source: str) -> str:
    """SHA-256 of an in-memory image's mode, size, palette, transparency and pixels."""
    try:
        pixels = image.tobytes()  # loads a lazily opened file image
        palette = image.palette
        header = repr((image.mode, image.size, palette.mode if palette else None,
                       image.info.get("transparency")))
        digest = hashlib.sha256(b"clip-embeddings image\0" + header.encode() + b"\0")
        if palette is not None:
            digest.update(bytes(palette.tobytes()))
        digest.update(pixels)
    except Exception as e:  # a lazily opened PIL image whose file is broken
        raise ImageLoadError(_pillow_reason(e), source=source) from e
    return digest.hexdigest()


def _array_to_image(arr: np.ndarray, source: str, options: LoaderOptions) -> Image.Image:
    """A numpy image, (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), as an 8-bit PIL image.

    How the value range is decided (the dtype alone cannot say it: Chroma declares images as
    ``int64``/``float64`` arrays, and its ``ImageLoader`` returns ``int32`` for mode-I files and
    ``float32`` holding 0..255 for mode-F files):

    - ``uint8`` is 8-bit and ``uint16`` is 16-bit (scaled by 255/65535), whatever the values.
    - ``bool`` is black and white.
    - Any other integer dtype is read by its values: all in 0..255 is 8-bit; else all in
      0..65535 is 16-bit (a 16-bit image whose brightest pixel is at most 255 would read as 8-bit:
      pass it as ``uint16`` to say so). Negative values or values above 65535 are refused.
    - Floats: all in [0, 1] is normalised data (times 255); else all in [0, 255] is 8-bit data
      (rounded). Values outside [0, 255], NaN and infinity are refused.
    """
    shape = tuple(arr.shape)
    if arr.ndim == 3 and shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        hint = ""
        if arr.ndim == 3 and shape[0] in (1, 3, 4):
            hint = "; it looks channels-first: pass arr.transpose(1, 2, 0)"
        elif arr.ndim == 4:
            hint = "; it looks like a batch: pass the images one by one"
        raise ImageLoadError(f"unsupported array shape {shape}: expected (H, W), (H, W, 1), "
                             f"(H, W, 3) or (H, W, 4){hint}", source=source)
    _check_pixels(arr.shape[1], arr.shape[0], source, options)
    kind = arr.dtype.kind
    if arr.dtype == np.uint8:
        out = arr
    elif kind == "b":
        out = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint16:
        out = _sixteen_bit_to_eight(arr)
    elif kind in "iu":
        lo, hi = int(arr.min()), int(arr.max())
        if lo >= 0 and hi <= 255:
            out = arr.astype(np.uint8)
        elif lo >= 0 and hi <= 65535:
            out = _sixteen_bit_to_eight(arr)
        else:
            raise ImageLoadError(
                f"{arr.dtype} array values must lie in 0..255 (8-bit) or 0..65535 (16-bit), got "
                f"[{lo}, {hi}]; rescale it to one of those ranges first", source=source)
    elif kind == "f":
        work = arr.astype(np.float32) if arr.dtype.itemsize < 4 else arr
        if not np.isfinite(work).all():
            raise ImageLoadError(f"array contains NaN or infinity (dtype {arr.dtype})",
                                 source=source)
        lo, hi = float(work.min()), float(work.max())
        if lo < 0.0 or hi > 255.0:
            raise ImageLoadError(
                f"{arr.dtype} array values must lie in [0, 1] (normalised) or [0, 255] (8-bit), "
                f"got [{lo:.4g}, {hi:.4g}]; rescale it first, e.g. to uint8", source=source)
        scale = 255.0 if hi <= 1.0 else 1.0
        out = np.rint(work * scale).astype(np.uint8)
    else:
        raise ImageLoadError(f"unsupported array dtype {arr.dtype} (shape {shape}): use an integer "
                             "dtype (0..255 or 0..65535), bool, or float in [0, 1] or [0, 255]",
                             source=source)
    image = Image.fromarray(np.ascontiguousarray(out))
    if np.may_share_memory(out, arr):  # Pillow maps L and RGBA arrays: snapshot the pixels
        image = image.copy()
    return image


def _sixteen_bit_to_eight(arr: np.ndarray) -> np.ndarray:
    """0..65535 to 0..255, rounded to nearest (the same rounding as 16-bit files get)."""
    return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Decoding

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
)


def _unidentified_reason(data: bytes) -> str:
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return f"truncated or corrupt image data: starts like a {name} file but its header " \
                   "cannot be read"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "truncated or corrupt image data: starts like a WebP file but its header " \
               "cannot be read"
    reason = "not an image (cannot identify image file)"
    head = data[:256].lstrip().lower()
    if head.startswith((b"<svg", b"<?xml")) and b"<svg" in data[:4096].lower():
        reason += "; it is an SVG drawing, which is not supported"
    elif head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        reason += "; it is an HTML page (an error or login page?)"
    elif head.startswith((b"{", b"[")):
        reason += "; it looks like JSON"
    return reason


def _pillow_reason(e: BaseException) -> str:
    if isinstance(e, Image.DecompressionBombError):
        return (f"image too large for Pillow's own decompression-bomb limit ({e}); a "
                "LoaderOptions.max_pixels above 2 * PIL.Image.MAX_IMAGE_PIXELS needs that raised too")
    if isinstance(e, Image.DecompressionBombWarning):
        return f"image too large ({e})"
    if isinstance(e, MemoryError):
        return "out of memory while decoding the image"
    text = str(e).strip() or type(e).__name__
    return f"truncated or corrupt image data: {text}"


def decode_image(raw: RawImage, options: LoaderOptions = DEFAULT_OPTIONS, *,
                 draft_resolution: Optional[int] = None) -> Image.Image:
    """Decode a :class:`RawImage` into an RGB PIL image, ready for CLIP preprocessing.

    The pixel count is checked against ``options.max_pixels`` from the header before decoding;
    the whole image must decode (truncated files fail); EXIF orientation is applied; animations
    give their first frame; transparent pixels are composited on white; 16-bit and float images
    are scaled to 8 bits; CMYK, palette and gray images are converted to RGB.

    ``draft_resolution=R`` lets a JPEG be decoded at a reduced scale (1/2, 1/4 or 1/8) whose
    shorter side stays at least ``DRAFT_MARGIN * R``: about twice as fast for 3-12 MP photos, and
    the preprocessed tensor changes about as little as JPEG compression changes it. Other formats ignore it. In-memory images (PIL,
    numpy) are only converted to RGB: no EXIF rotation, current frame.

    Example:
        >>> raw = read_image_source(np.full((2, 2), 0.5))
        >>> decode_image(raw).getpixel((0, 0))
        (128, 128, 128)
    """
    if draft_resolution is not None and draft_resolution < 1:
        raise ValueError(f"draft_resolution must be >= 1, got {draft_resolution}")
    source = raw.source
    if raw.image is not None:
        image = raw.image
        _check_pixels(image.width, image.height, source, options)
        return _convert(image, source)
    if raw.data is None:
        raise ImageLoadError("nothing to decode (RawImage has neither data nor image)",
                             source=source)
    with _max_pixels(options.max_pixels):
        image = _open_and_load(raw.data, source, options, draft_resolution)
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception:  # malformed EXIF: the pixels are fine, keep them as stored
        pass
    return _convert(image, source)


def _open_and_load(data: bytes, source: str, options: LoaderOptions,
                   draft_resolution: Optional[int]) -> Image.Image:
    """``Image.open`` then ``load``, under :func:`_max_pixels` (set by the caller)."""
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageLoadError(_unidentified_reason(data), source=source) from None
    except _OverPixelLimit as e:  # an ICO's frame, refused before Pillow decoded it
        raise _too_many_pixels(*e.size, source, options) from None
    except Exception as e:  # DecompressionBombError, SyntaxError from broken headers, ...
        raise ImageLoadError(_pillow_reason(e), source=source) from e
    _check_pixels(image.width, image.height, source, options)
    if image.format == "EPS":
        # Pillow decodes PostScript by running Ghostscript on it (when installed): a program from
        # the file, not pixel data. Refused before load(), which is what would start it.
        raise ImageLoadError("PostScript (EPS) files are not decoded: rendering them runs "
                             "Ghostscript on the file; convert it to PNG or JPEG first", source=source)
    try:
        if draft_resolution is not None and isinstance(image, JpegImagePlugin.JpegImageFile):
            side = max(1, math.ceil(DRAFT_MARGIN * draft_resolution))
            image.draft("RGB", (side, side))
        image.load()  # decodes everything; a truncated file raises (LOAD_TRUNCATED_IMAGES False)
    except _OverPixelLimit as e:
        raise _too_many_pixels(*e.size, source, options) from None
    except Exception as e:
        raise ImageLoadError(_pillow_reason(e), source=source) from e
    return image


def _convert(image: Image.Image, source: str) -> Image.Image:
    try:
        return _to_rgb(image)
    except ValueError as e:  # no conversion from this mode
        raise ImageLoadError(f"unsupported image mode {image.mode!r} ({e})", source=source) from e
    except Exception as e:  # a lazily opened PIL image whose file is broken
        raise ImageLoadError(_pillow_reason(e), source=source) from e


_PREMULTIPLIED = {"La": "LA", "RGBa": "RGBA"}  # Pillow converts these only to their straight-alpha twin


def _composite_on_white(image: Image.Image) -> Image.Image:
    if image.mode in _PREMULTIPLIED:
        image = image.convert(_PREMULTIPLIED[image.mode])
    rgba = image if image.mode == "RGBA" else image.convert("RGBA")
    alpha = rgba.getchannel("A")
    if alpha.getextrema()[0] == 255:  # fully opaque
        return rgba.convert("RGB")
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba.convert("RGB"), (0, 0), alpha)
    return background


def _gray_to_rgb(gray8: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(gray8)).convert("RGB")


def _sixteen_to_uint8(arr: np.ndarray, transparent: object) -> Image.Image:
    """16-bit gray (0..65535) to 8 bits, full range to full range; a tRNS value becomes white."""
    out = _sixteen_bit_to_eight(arr)
    if isinstance(transparent, int):
        out[arr == transparent] = 255
    return _gray_to_rgb(out)


def _stretch_to_uint8(arr: np.ndarray, lo: float, hi: float) -> Image.Image:
    if hi <= lo:
        return _gray_to_rgb(np.zeros(arr.shape, dtype=np.uint8))
    return _gray_to_rgb(np.clip(np.rint((arr - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8))


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode.startswith("I;16"):
        return _sixteen_to_uint8(np.asarray(image), image.info.get("transparency"))
    if mode == "I":
        arr = np.asarray(image).astype(np.int64)
        lo, hi = int(arr.min()), int(arr.max())
        if lo >= 0 and hi <= 65535:  # 16-bit data, as PNG and TIFF give it
            return _sixteen_to_uint8(arr, image.info.get("transparency"))
        return _stretch_to_uint8(arr.astype(np.float64), lo, hi)  # other integers: min..max
    if mode == "F":
        arr = np.asarray(image).astype(np.float64)
        finite = np.isfinite(arr)
        if not finite.any():
            return Image.new("RGB", image.size, (0, 0, 0))
        lo, hi = float(arr[finite].min()), float(arr[finite].max())
        if lo >= 0.0 and hi <= 1.0:  # normalised data: 0..1 -> 0..255
            lo, hi = 0.0, 1.0
        return _stretch_to_uint8(np.where(finite, arr, lo), lo, hi)  # NaN/inf: black
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        return _composite_on_white(image)
    if mode == "P" and image.palette is not None and image.palette.mode == "RGBA":
        return _composite_on_white(image)
    if mode == "RGB":
        return image
    return image.convert("RGB")  # 1, L, P, CMYK, YCbCr, LAB, HSV


def load_image(item: ImageLike, options: LoaderOptions = DEFAULT_OPTIONS,
               draft_resolution: Optional[int] = None) -> Image.Image:
    """Read and decode one item: :func:`read_image_source` then :func:`decode_image`.

    Example:
        >>> import numpy as np
        >>> load_image(np.zeros((480, 640), dtype=np.uint8)).mode
        'RGB'
    """
    return decode_image(read_image_source(item, options), options,
                        draft_resolution=draft_resolution)


# ---------------------------------------------------------------------------------------------
# Folders


def iter_image_files(folder: Union[str, os.PathLike],
                     extensions: Iterable[str] = IMAGE_EXTENSIONS,
                     recursive: bool = True, *, on_error: str = "raise") -> Iterator[Path]:
    """The image files in ``folder``, in a sorted, deterministic order.

    Extensions are compared case-insensitively (``"JPG"``, ``".jpg"`` and ``"jpg"`` are the same).
    Hidden files and hidden folders (names starting with ``"."``) are skipped. Paths are sorted by
    their parts, by code point, so the order does not depend on the platform or the locale.
    Symbolic links are followed inside ``folder``, each folder at most once; a link leading out of
    it is not (:mod:`clip_embeddings.user_files`). A subfolder that cannot be listed, or such a link,
    raises :class:`ImageLoadError` naming it (``on_error="skip"`` leaves them out).

    Example:
        >>> for path in iter_image_files("photos"):  # doctest: +SKIP
        ...     print(path)
        photos/a.jpg
        photos/trips/b.png
    """
    root = Path(folder)
    if not root.exists():
        raise ImageLoadError("folder not found", source=str(root))
    if not root.is_dir():
        raise ImageLoadError("not a folder", source=str(root))
    for found in walk_folder(root, extensions, recursive):
        if not isinstance(found, Refused):
            yield found
        elif on_error == "raise":
            raise ImageLoadError(found.reason, source=found.path)
