"""``clip-embeddings serve``: one loaded model for many clients, over HTTP.

* :func:`create_app` builds the FastAPI app (``/embed``, ``/search``, ``/classify``, ``/health``,
  ``/thumbnail/{id}`` and a search page at ``/``); :func:`serve` runs it with uvicorn.
* :class:`~.batcher.Batcher` gives every request that arrives within a few milliseconds one
  shared forward pass, on the one thread that owns the model.
* ``ClipEF(server="http://host:port")`` (:mod:`clip_embeddings.remote`) is the client.

Importing this package needs the ``serve`` extra: ``pip install 'clip-embeddings[serve]'``.
See docs/serving.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ...embedding.function import ClipEF
from ...runtime.compute import use_one_thread
from .app import create_app
from .batcher import Batcher, QueueFull
from .limits import LOOPBACK_NAMES, ServeLimits, default_allowed_hosts

__all__ = ["Batcher", "QueueFull", "ServeLimits", "create_app", "serve"]


def serve(ef: ClipEF, store: Any = None, limits: ServeLimits = ServeLimits(), host: str = "127.0.0.1",
          port: int = 8765, root_path: str = "", log_level: str = "info") -> None:
    """Serve ``ef`` (and ``store``) until interrupted; bound to loopback unless ``host`` says otherwise.

    ``root_path`` is the prefix a reverse proxy serves the app under (``/clip``), so the links it
    returns (thumbnails) point through the proxy. Unless ``limits.allowed_hosts`` says otherwise,
    the server answers to loopback names and ``host`` (any name when bound to ``0.0.0.0``).

    uvicorn has no deadline for reading a request's headers: a client that sends them slowly holds
    a connection (never the model). On an untrusted network, put a
    reverse proxy in front (docs/serving.md).

    Example:
        >>> serve(ClipEF("ViT-B/32"), open_store("chroma", "db", "photos"), port=8765)  # doctest: +SKIP
    """
    import uvicorn

    use_one_thread()  # a server's requests come from other threads: all its torch work runs on one
    # The model loads before the port opens: the first request must not pay for it.
    ef.fingerprint  # noqa: B018
    if limits.allowed_hosts == LOOPBACK_NAMES:
        limits = dataclasses.replace(limits, allowed_hosts=default_allowed_hosts(host))
    uvicorn.run(create_app(ef, store, limits), host=host, port=port, root_path=root_path, log_level=log_level,
                proxy_headers=True, forwarded_allow_ips="127.0.0.1", timeout_keep_alive=5,
                h11_max_incomplete_event_size=16 * 1024)
