"""Fetching an image named by URL, under the loader options' rules: the library's one guarded
client (:mod:`clip_embeddings.core.http`: public addresses only unless allowed, one wall-clock
deadline per fetch, redirects checked hop by hop, gzip/deflate bodies bounded by ``max_bytes``
after inflating), its failures worded as :class:`~clip_embeddings.errors.ImageLoadError`.

Connections are kept alive and reused across fetches (many images on one host share one
connection), in one pool for the public-only rule and one for the default.
"""

from __future__ import annotations

from ..core.http import Deadline, FetchError, HTTPClient, read_body, release
from ..errors import ImageLoadError
from .options import LoaderOptions

_CLIENTS = {public_only: HTTPClient(public_only=public_only) for public_only in (False, True)}
_ACCEPT = {"Accept": "image/*,*/*;q=0.8"}


def read_url(url: str, source: str, options: LoaderOptions) -> bytes:
    """The bytes at ``url`` (an image, or whatever the server sends: decoding judges it); raises
    :class:`ImageLoadError` naming ``source`` and the reason.

    Example:
        >>> try:
        ...     read_url("http://127.0.0.1:9/a.png", "a.png", LoaderOptions(allow_private_addresses=False))
        ... except ImageLoadError as e:
        ...     print(e.reason[:60])
        refused to connect to 127.0.0.1: it resolves to 127.0.0.1, n
    """
    timeout = options.url_timeout
    client = _CLIENTS[not options.allow_private_addresses]
    try:
        with Deadline(timeout) as deadline:
            response = client.open("GET", url, timeout=timeout, headers=_ACCEPT, deadline=deadline,
                                   max_redirects=options.max_redirects)
            try:
                if response.status != 200:
                    raise FetchError("status", f"HTTP {response.status} {response.reason or ''}".rstrip())
                data = read_body(response, max_bytes=options.max_bytes, deadline=deadline, limit_name="max_bytes")
            finally:
                release(response)
    except FetchError as e:
        raise ImageLoadError(_reason(e, options), source=source) from None
    if not data:
        raise ImageLoadError("empty response (0 bytes)", source=source)
    return data


def _reason(e: FetchError, options: LoaderOptions) -> str:
    """The client's reason, in the loader options' words."""
    if e.kind == "timeout":
        return e.reason.replace("timed out", f"timed out after {options.url_timeout:g} s (url_timeout)", 1)
    if e.kind == "private":
        return f"{e.reason} (LoaderOptions.allow_private_addresses is False)"
    if e.kind == "too_many_redirects":
        return f"too many redirects (more than max_redirects={options.max_redirects})"
    if e.kind == "connect":
        return f"cannot connect: {e.reason}"
    return e.reason
