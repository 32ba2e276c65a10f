"""The guarded URL client that fetches an image: one wall-clock deadline per fetch (a timer thread
shuts the socket down, so a slow-drip server cannot hold a worker), connections only to public
addresses unless allowed (checked on the address actually connected, after DNS, so a redirect or
a rebinding name cannot reach the private network), redirects followed by hand and checked one by
one, IDNA hosts, and gzip/deflate bodies bounded by ``max_bytes`` after inflating.

:func:`read_url` is the entry point; it raises :class:`~clip_embeddings.errors.ImageLoadError`
naming the URL and the reason.
"""

from __future__ import annotations

import functools
import http.client
import ipaddress
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib

from .._version import __version__
from ..errors import ImageLoadError
from .options import LoaderOptions, redact_url, shorten

_CHUNK = 64 * 1024
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})

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
    error: OSError | None = None
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


@functools.cache
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


def read_url(url: str, source: str, options: LoaderOptions) -> bytes:
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
                               f"{shorten(redact_url(target), 100)}") from None
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


def _declared_length(response, fail) -> int | None:
    declared = response.headers.get("Content-Length")
    if declared is None:
        return None
    text = declared.strip()
    if not text.isdigit() or not text.isascii():  # "-5", "1e3", "12, 12": the size is unknown
        raise fail(f"invalid Content-Length header {shorten(declared, 40)!r} (not a byte count)")
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
        raise fail(f"unsupported Content-Encoding {shorten(encoding, 40)!r} (identity, gzip and "
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
