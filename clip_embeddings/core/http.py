"""The one HTTP client of the library: images named by URL (:mod:`clip_embeddings.inputs.http`),
checkpoint downloads (:mod:`.download`) and the client of ``clip-embeddings serve``
(:mod:`clip_embeddings.embedding.remote`) all fetch through :class:`HTTPClient`.

urllib3 does the HTTP: connection pools and keep-alive, timeouts on each socket operation,
proxies, and retries with a bounded backoff that honours (and caps) ``Retry-After``. This module
adds only the guards no library has:

* ``public_only``: connections to public addresses only, checked on the very addresses the socket
  connects to, after DNS (so neither a redirect nor a rebinding name reaches the private network);
* :class:`Deadline`: one wall-clock limit for a whole fetch. Socket timeouts bound each read, but a
  server that drips a byte every few seconds never trips them: a timer shuts the sockets down;
* redirects followed here, hop by hop: a limit, http(s) targets only, and with ``same_origin`` a
  refusal to leave the first URL's scheme, host and port (a bearer token must not travel);
* :func:`iter_body`: a body bounded by ``max_bytes`` both on the wire and after gzip/deflate
  decoding (a gzip bomb stops at ``max_bytes + 1``); fewer bytes than ``Content-Length`` is an error.

Every failure is a :class:`FetchError` with a ``kind`` and a reason without the URL: each caller
words it for its own users (``ImageLoadError``, ``DownloadError``, ``ServerError``).
"""

from __future__ import annotations

import contextvars
import functools
import ipaddress
import os
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
import weakref
import zlib
from collections.abc import Iterator, Mapping
from typing import Any

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    LocationParseError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ProxyError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.response import BaseHTTPResponse
from urllib3.util.retry import Retry
from urllib3.util.ssl_ import create_urllib3_context

from .._version import __version__

__all__ = ["Deadline", "FetchError", "HTTPClient", "iter_body", "normalize_url", "origin", "read_body",
           "redact_url", "release", "server_retry"]

USER_AGENT = f"clip-embeddings/{__version__} (+https://pypi.org/project/clip-embeddings/) urllib3/{urllib3.__version__}"
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024


class FetchError(Exception):
    """A fetch that failed. ``kind``: ``invalid`` (the URL), ``private`` (``public_only`` refused
    the address), ``connect`` (no connection), ``connection`` (it broke during the exchange),
    ``timeout``, ``redirect``, ``origin`` (a redirect to another origin, refused),
    ``too_many_redirects``, ``too_large``, ``body`` (short or undecodable)."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind, self.reason = kind, reason


# ----- the deadline --------------------------------------------------------------------------

_ACTIVE: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar("clip_embeddings_deadline", default=None)


class Deadline:
    """A wall-clock limit for one fetch: when it passes, every socket the fetch used is shut down,
    which wakes a blocked read at once. Use it as a context manager around the fetch and the
    reading of its body; the connections made or reused inside are watched.

    Example:
        >>> with Deadline(5.0) as deadline:
        ...     deadline.remaining() > 4
        True
    """

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.expired = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._token: contextvars.Token | None = None

    def __enter__(self) -> Deadline:
        self._timer.start()
        self._token = _ACTIVE.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _ACTIVE.reset(self._token)
        with self._lock:
            self._timer.cancel()
            self._sockets.clear()

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


def _watch(sock: socket.socket | None) -> None:
    deadline = _ACTIVE.get()
    if deadline is not None and sock is not None:
        deadline.watch(sock)


# ----- connections: public addresses only, watched by the deadline --------------------------


class _Unreachable(NewConnectionError):
    """No connection to the host; ``why`` says so in words (urllib3's message starts with the
    connection object's repr)."""

    def __init__(self, conn: Any, why: str):
        super().__init__(conn, why)
        self.why = why


class _NotPublic(_Unreachable):
    """A connection refused before any socket exists: the host resolves to a non-public address."""


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _connect_public(conn: HTTPConnection) -> socket.socket:
    """Resolve once, refuse if any address is not public, then connect to the checked addresses.

    Nothing reaches a private address, the answer is the same whether its port is open or closed,
    and a second resolution cannot swap in another address (DNS rebinding).
    """
    host, port = conn._dns_host, conn.port
    try:
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise _Unreachable(conn, f"cannot resolve {host!r} ({e.strerror})") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]  # IPv4/6: a str
    refused = sorted({str(ip) for ip in addresses if not _is_public(ip)})
    if refused or not addresses:
        raise _NotPublic(conn, f"refused to connect to {host}: it resolves to {', '.join(refused) or 'nothing'}, "
                               "not a public address")
    error: OSError | None = None
    for family, kind, proto, _, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            if conn.timeout is not None:
                sock.settimeout(conn.timeout)
            for option in conn.socket_options or ():
                sock.setsockopt(*option)
            sock.connect(sockaddr)
            return sock
        except OSError as e:
            error = e
            sock.close()
    if isinstance(error, TimeoutError):
        raise ConnectTimeoutError(conn, f"connection to {host} timed out")
    raise _Unreachable(conn, str(error))


class _Guarded:
    """Mixed into urllib3's connections: the public-address check, and the deadline's watch over
    every socket a fetch makes or reuses."""

    public_only = False

    def _new_conn(self) -> socket.socket:
        # A mixin: self is one of urllib3's connections, whose _new_conn the super() call reaches.
        return _connect_public(self) if self.public_only else super()._new_conn()  # type: ignore[misc, arg-type]

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        _watch(self.sock)  # type: ignore[attr-defined]  # the TLS socket, once wrapped

    def request(self, *args: Any, **kwargs: Any) -> None:
        _watch(self.sock)  # type: ignore[attr-defined]  # a kept-alive connection this fetch reuses
        super().request(*args, **kwargs)  # type: ignore[misc]


def _pool_classes(public_only: bool) -> dict[str, type[HTTPConnectionPool]]:
    """urllib3's pool classes, per scheme, whose connections are guarded (public-only if asked)."""
    classes: dict[str, type[HTTPConnectionPool]] = {}
    for scheme, pool, connection in (("http", HTTPConnectionPool, HTTPConnection),
                                     ("https", HTTPSConnectionPool, HTTPSConnection)):
        guarded = type(f"Guarded{connection.__name__}", (_Guarded, connection), {"public_only": public_only})
        classes[scheme] = type(f"Guarded{pool.__name__}", (pool,), {"ConnectionCls": guarded})
    return classes


_POOLS = {public_only: _pool_classes(public_only) for public_only in (False, True)}


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One verifying context for all connections: loading the CA store takes tens of milliseconds."""
    context = create_urllib3_context()
    context.load_default_certs()
    return context


# ----- URLs ----------------------------------------------------------------------------------


def normalize_url(url: str) -> str:
    """A URL made sendable: IDNA host, percent-encoded spaces and non-ASCII characters, no fragment.

    Example:
        >>> normalize_url("HTTP://bücher.example/a b.jpg#top")
        'http://xn--bcher-kva.example/a%20b.jpg'
    """
    parts = urllib.parse.urlsplit(url.strip())
    netloc = parts.netloc
    host = parts.hostname or ""
    if host and not host.isascii():
        netloc = netloc.replace(host, host.encode("idna").decode("ascii"))
    safe = "/%:@!$&'()*+,;=~-._"
    return urllib.parse.urlunsplit((
        parts.scheme.lower(), netloc, urllib.parse.quote(parts.path, safe=safe),
        urllib.parse.quote(parts.query, safe=safe + "?"), ""))


def origin(url: str) -> tuple[str, str, int]:
    """A URL's (scheme, host, port): where credentials may go.

    Example:
        >>> origin("HTTP://Example.com/a"), origin("https://example.com:8443/")
        (('http', 'example.com', 80), ('https', 'example.com', 8443))
    """
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or (443 if scheme == "https" else 80)


def redact_url(url: str) -> str:
    """The URL without a password in its user-info part.

    Example:
        >>> redact_url("https://user:secret@example.com/a.jpg")
        'https://user:***@example.com/a.jpg'
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


def _shown(url: str, limit: int = 100) -> str:
    url = redact_url(url)
    return url if len(url) <= limit else url[: limit - 1] + "…"


# ----- the client ----------------------------------------------------------------------------


def server_retry(attempts: int = 3, max_wait: float = 10.0) -> Retry:
    """Retries for a server that answers 429/503 ("busy, retry later"): at most ``attempts`` more
    tries, waiting as ``Retry-After`` says (at most ``max_wait`` seconds) or backing off.

    429 and 503 mean the server took none of the work, so they are retried for any method; a
    connection that failed before the request was sent is retried too. A request that was sent
    and then lost (a read error, a reset) is retried only for idempotent methods (GET, ...):
    a POST may have been processed, and is not sent twice.

    Example:
        >>> server_retry(attempts=2).status
        2
    """
    return _BusyRetry(total=None, connect=2, read=1, redirect=0, other=0, status=attempts,
                      status_forcelist=frozenset({429, 503}), allowed_methods=Retry.DEFAULT_ALLOWED_METHODS,
                      backoff_factor=0.25, backoff_max=max_wait, raise_on_status=False, respect_retry_after_header=True,
                      # urllib3 annotates it int but only compares seconds with it: a float is as good.
                      retry_after_max=max_wait)  # type: ignore[arg-type]


class _BusyRetry(Retry):
    RETRY_AFTER_STATUS_CODES = frozenset({429, 503})

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        # "Busy" answers are retried whatever the method (see server_retry); allowed_methods
        # still guards read errors, where the request may have been processed.
        return bool(self.status_forcelist) and status_code in self.status_forcelist


_CLIENTS: weakref.WeakSet[HTTPClient] = weakref.WeakSet()


class HTTPClient:
    """Pooled, guarded HTTP: ``open`` sends a request, follows redirects hop by hop, and returns the
    final response unread (read it with :func:`iter_body` or :func:`read_body`, then :func:`release`).

    Args:
        public_only: connect only to public addresses (and use no proxy: it would pick the address).
        same_origin: refuse a redirect to another scheme, host or port (for credentials).
        max_redirects: redirects followed per request (``open`` may lower it).
        retries: urllib3 retries (:func:`server_retry`), or ``False`` for none.
        pool_size: connections kept alive per host.

    Example:
        >>> client = HTTPClient(public_only=True)
        >>> client.open("GET", "http://127.0.0.1:9/", timeout=1.0)
        Traceback (most recent call last):
        ...
        clip_embeddings.core.http.FetchError: refused to connect to 127.0.0.1: it resolves to 127.0.0.1, not a public address
    """

    def __init__(self, *, public_only: bool = False, same_origin: bool = False, max_redirects: int = 5,
                 retries: Retry | bool = False, pool_size: int = 4):
        self.public_only, self.same_origin, self.max_redirects = public_only, same_origin, max_redirects
        self.retries, self.pool_size = retries, pool_size
        self._lock = threading.Lock()
        self._reset()
        _CLIENTS.add(self)

    def _reset(self) -> None:
        """Fresh pools (after a fork, the parent's sockets must not be shared with a child)."""
        self._direct = self._manager(urllib3.PoolManager)
        self._proxied: dict[str, urllib3.ProxyManager] = {}

    def _manager(self, kind: type, *args: Any) -> Any:
        manager = kind(*args, num_pools=16, maxsize=self.pool_size, ssl_context=_ssl_context())
        manager.pool_classes_by_scheme = _POOLS[self.public_only]
        return manager

    def _manager_for(self, url: str) -> urllib3.PoolManager:
        if self.public_only:
            return self._direct
        parts = urllib.parse.urlsplit(url)
        proxy = urllib.request.getproxies().get(parts.scheme)
        if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
            return self._direct
        with self._lock:
            if proxy not in self._proxied:
                self._proxied[proxy] = self._manager(urllib3.ProxyManager, proxy)
            return self._proxied[proxy]

    def open(self, method: str, url: str, *, timeout: float, body: bytes | None = None,
             headers: Mapping[str, str] | None = None, deadline: Deadline | None = None,
             max_redirects: int | None = None) -> BaseHTTPResponse:
        """Send ``method url``; the final response (any status but a redirect), its body unread."""
        limit = self.max_redirects if max_redirects is None else max_redirects
        headers = {"User-Agent": USER_AGENT, **(headers or {})}
        current = _checked(url, "invalid", "invalid URL")
        first = origin(current)
        for _ in range(limit + 1):
            response = self._send(method, current, body, headers, timeout, deadline)
            if response.status not in REDIRECT_CODES:
                return response
            status, location = response.status, response.headers.get("Location")
            release(response)
            if not location:
                raise FetchError("redirect", f"HTTP {status} redirect without a Location header")
            target = urllib.parse.urljoin(current, location.strip())
            if urllib.parse.urlsplit(target).scheme.lower() not in ("http", "https"):
                raise FetchError("redirect", f"redirect to a non-HTTP URL refused: {_shown(target)}")
            if self.same_origin and origin(target) != first:
                scheme, host, port = origin(target)
                raise FetchError("origin", f"redirected to {scheme}://{host}:{port}, another origin; refused, so "
                                           "no credentials are sent there")
            current = _checked(target, "redirect", "redirect to an invalid URL")
            if status == 303 or (status in (301, 302) and method == "POST"):
                method, body = "GET", None  # as browsers do; 307 and 308 keep the method and body
        raise FetchError("too_many_redirects", f"too many redirects (more than {limit})")

    def _send(self, method: str, url: str, body: bytes | None, headers: dict[str, str], timeout: float,
              deadline: Deadline | None) -> BaseHTTPResponse:
        if deadline is not None:
            if deadline.expired or deadline.remaining() <= 0:
                raise FetchError("timeout", "timed out")
            timeout = min(timeout, deadline.remaining())
        try:
            return self._manager_for(url).urlopen(
                method, url, body=body, headers=headers, redirect=False, retries=self.retries,
                timeout=urllib3.Timeout(connect=timeout, read=timeout), preload_content=False,
                decode_content=False, enforce_content_length=False)
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as e:
            raise _failure(e, deadline) from None


def _checked(url: str, kind: str, what: str) -> str:
    try:
        return normalize_url(url)
    except (ValueError, UnicodeError) as e:
        raise FetchError(kind, f"{what} ({e})") from None


def _failure(e: BaseException, deadline: Deadline | None) -> FetchError:
    """urllib3's exception as a FetchError whose reason a user can read."""
    if isinstance(e, MaxRetryError) and e.reason is not None:
        e = e.reason
    if isinstance(e, ProxyError) and e.original_error is not None:
        e = e.original_error
    if deadline is not None and deadline.expired:
        return FetchError("timeout", "timed out")
    if isinstance(e, _NotPublic):
        return FetchError("private", e.why)
    if isinstance(e, NewConnectionError):  # before the timeouts: urllib3 derives it from ConnectTimeoutError
        return FetchError("connect", getattr(e, "why", None) or str(e.__cause__ or e))
    if isinstance(e, (ConnectTimeoutError, ReadTimeoutError, TimeoutError)):
        return FetchError("timeout", "timed out")
    if isinstance(e, SSLError):
        return FetchError("connect", f"TLS: {e.args[0] if e.args else e}")
    if isinstance(e, (LocationParseError, ValueError)):
        return FetchError("invalid", f"invalid URL ({e})")
    if isinstance(e, ProtocolError) and len(e.args) > 1 and isinstance(e.args[1], BaseException):
        e = e.args[1]
    return FetchError("connection", f"connection error: {type(e).__name__}: {e}")


def release(response: BaseHTTPResponse) -> None:
    """Give the response's connection back: kept alive when its body was read to the end, closed
    otherwise (an unread body is never drained: it may be endless)."""
    if not response.closed:
        response.close()
    response.release_conn()


# ----- bodies --------------------------------------------------------------------------------

# Content-Encodings decoded, as zlib window bits. A server may compress even unasked (S3 objects
# stored with Content-Encoding: gzip): the content inside is decoded, and max_bytes bounds both the
# bytes received and the bytes they inflate to.
_CONTENT_ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def _declared_length(response: BaseHTTPResponse) -> int | None:
    declared = response.headers.get("Content-Length")
    if declared is None:
        return None
    text = declared.strip()
    if not text.isdigit() or not text.isascii():  # "-5", "1e3", "12, 12": the size is unknown
        raise FetchError("body", f"invalid Content-Length header {declared[:40]!r} (not a byte count)")
    return int(text)


def iter_body(response: BaseHTTPResponse, *, max_bytes: int | None = None, deadline: Deadline | None = None,
              chunk: int = _CHUNK, limit_name: str | None = None) -> Iterator[bytes]:
    """The response's content, chunk by chunk, decoded (gzip, deflate) and bounded by ``max_bytes``
    on the wire and decoded; raises :class:`FetchError` for a body cut short, too large or
    undecodable, or when the deadline passes. ``limit_name`` is named in the too-large reason."""
    limit = max_bytes if max_bytes is not None else 2**62
    named = f" ({limit_name})" if limit_name else ""
    length = _declared_length(response)
    if length is not None and length > limit:
        raise FetchError("too_large", f"response larger than {limit} bytes (Content-Length: {length})")
    encoding = (response.headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding not in ("identity", *_CONTENT_ENCODINGS):
        raise FetchError("body", f"unsupported Content-Encoding {encoding[:40]!r} (identity, gzip and deflate are decoded)")
    inflater = zlib.decompressobj(_CONTENT_ENCODINGS[encoding]) if encoding in _CONTENT_ENCODINGS else None
    received = total = 0  # bytes on the wire, bytes of content
    while not (deadline is not None and deadline.expired):
        try:
            raw = response.read(min(chunk, limit + 1 - received), decode_content=False)
            data = inflater.decompress(raw, limit + 1 - total) if inflater is not None and raw else raw
        except zlib.error as e:
            raise FetchError("body", f"invalid {encoding} response body ({e})") from None
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as e:
            raise _failure(e, deadline) from None
        if not raw:
            break
        received += len(raw)
        total += len(data)
        if received > limit or total > limit:
            what = "decoded response" if total > limit and inflater is not None else "response"
            raise FetchError("too_large", f"{what} larger than {limit} bytes{named}")
        if data:
            yield data
    if deadline is not None and deadline.expired:
        raise FetchError("timeout", f"timed out with {received} bytes received")
    if length is not None and received < length:
        raise FetchError("body", f"connection closed after {received} of {length} bytes")
    if inflater is not None and not inflater.eof:
        raise FetchError("body", f"truncated {encoding} response body ({received} bytes received)")


def read_body(response: BaseHTTPResponse, **limits: Any) -> bytes:
    """The whole content of ``response`` (see :func:`iter_body` for ``limits``)."""
    return b"".join(iter_body(response, **limits))


def _after_fork_in_child() -> None:
    for client in list(_CLIENTS):
        client._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
