"""The checks every request passes before any route reads a byte of its body.

* ``Host``: only names this server answers to (``allowed_hosts``). A server on loopback without a
  token trusts whoever can reach it, and DNS rebinding lets any web page its user opens reach it
  under the page's own host name; refusing other ``Host`` headers closes that door.
* ``Authorization: Bearer <token>`` on every route but the page, its static files and ``/health``,
  compared as UTF-8 bytes in constant time.
* The body: its size (``Content-Length``, then while reading) and its deadline.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from typing import Any

from .inputs import BadRequest
from .limits import ServeLimits

PUBLIC = ("/", "/health", "/favicon.ico")  # and /static/: what the page needs before a token


def host_name(header: str) -> str:
    """The host of a ``Host`` header, without its port, lower-case.

    Example:
        >>> host_name("LocalHost:8765"), host_name("[::1]:8765"), host_name("::1")
        ('localhost', '::1', '::1')
    """
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    if header.count(":") == 1:
        return header.partition(":")[0]
    return header


def route_path(scope: dict) -> str:
    """The path the app routes on: a proxy's ``root_path`` prefix taken off, as Starlette does."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and (path == root or path.startswith(root + "/")):
        return path[len(root):] or "/"
    return path


def bearer_matches(header: bytes | None, token: str) -> bool:
    """Whether ``Authorization`` carries ``token``: UTF-8 bytes, compared in constant time.

    Example:
        >>> bearer_matches("Bearer pässwort".encode(), "pässwort"), bearer_matches(b"Bearer guess", "pässwort")
        (True, False)
    """
    return hmac.compare_digest(header or b"", b"Bearer " + token.encode("utf-8"))


class Guard:
    """ASGI middleware: host, token, body size and body deadline (see the module docstring)."""

    def __init__(self, app: Any, limits: ServeLimits):
        self.app, self.limits = app, limits
        self.hosts = {h.lower() for h in limits.allowed_hosts}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])  # raw bytes: a token is compared as the bytes sent
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            return await send_refusal(send, *refusal)
        await self.app(scope, self._limited(receive), send)

    def _refusal(self, scope: dict, headers: dict[bytes, bytes]) -> tuple | None:
        host = host_name(headers.get(b"host", b"").decode("latin-1"))
        if "*" not in self.hosts and host not in self.hosts:
            return 400, (f"Host header {host[:80]!r} is not a name this server answers to; start it with "
                         f"--allowed-hosts {host[:80] or 'NAME'} to allow it")
        path = route_path(scope)
        token = self.limits.token
        if token and path not in PUBLIC and not path.startswith("/static/"):
            given = headers.get(b"authorization")
            if not bearer_matches(given, token):
                reason = "wrong bearer token" if given else "this server needs Authorization: Bearer <token>"
                return 401, reason, {"www-authenticate": "Bearer"}
        length = headers.get(b"content-length", b"").decode("latin-1")
        if length.isdigit() and int(length) > self.limits.max_upload_bytes:
            return 413, f"request body of {length} bytes is over the limit of {self.limits.max_upload_bytes} bytes"
        return None

    def _limited(self, receive: Any) -> Any:
        limit, loop = self.limits.max_upload_bytes, asyncio.get_running_loop()
        deadline = loop.time() + self.limits.request_timeout
        seen, complete = 0, False

        async def limited_receive() -> dict:
            nonlocal seen, complete
            if complete:  # after the body: Starlette only listens for a disconnect, no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.001, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise BadRequest(f"the request body did not arrive within {self.limits.request_timeout:g} s", 408) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BadRequest(f"request body is over the limit of {limit} bytes", 413)
                complete = not message.get("more_body", False)
            return message

        return limited_receive


async def send_refusal(send: Any, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
    """Answer ``{"detail": reason}`` with ``status``, from outside the app's routes."""
    body = json.dumps({"detail": reason}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
