"""``ClipEF(server="http://host:port")``: the embedding function, computed by a ``clip-embeddings serve``.

Many processes (or every client of a Chroma server) then share one loaded model. The client reads
images itself, exactly as a local ``ClipEF`` would (paths on *its* disk, URLs fetched by *it*,
digests computed from the same bytes), sends the encoded bytes, and gets unit vectors back: the
same vectors, ids and errors as embedding locally on the same weights. The server's fingerprint
is checked against the one a collection stored, as for local weights.

The client needs neither FastAPI nor the model's weights: it talks through the library's one
HTTP client (:mod:`clip_embeddings.core.http`), keeping connections to the server alive between
calls. A server that answers 429 or 503 ("busy, retry later") is asked again, at most
``retries`` times, after the ``Retry-After`` it names (capped at ``max_wait`` seconds) or a short
backoff: those answers mean it did none of the work, so even ``POST /embed`` is safe to resend; a
request lost after it was sent is not resent as a POST (see :func:`~clip_embeddings.core.http.server_retry`).

A bearer token, if the server wants one, comes from ``$CLIP_EMBEDDINGS_TOKEN`` (never persisted)
and goes to that server only: a redirect to another scheme, host or port is refused.
"""

from __future__ import annotations

import base64
import io
import json
import os
import threading
from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np

from ..core.http import FetchError, HTTPClient, read_body, release, server_retry
from ..errors import ImageLoadError, ModelMismatchError, ServerError
from ..inputs.decode import decode_image
from ..inputs.options import LoaderOptions, RawImage

TOKEN_ENV = "CLIP_EMBEDDINGS_TOKEN"


class RemoteModel:
    """An HTTP client of one ``clip-embeddings serve``: health once, then ``/embed`` calls.

    Example:
        >>> remote = RemoteModel("http://127.0.0.1:8765")  # doctest: +SKIP
        >>> remote.health()["fingerprint"]  # doctest: +SKIP
        '3f1c0a9e5b7d2c44'
    """

    def __init__(self, url: str, timeout: float = 120.0, *, retries: int = 3, max_wait: float = 10.0):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"server must be an http:// or https:// URL, not {url!r}")
        self.url, self.timeout = url.rstrip("/"), timeout
        self._http = HTTPClient(same_origin=True, max_redirects=10, pool_size=8,
                                retries=server_retry(retries, max_wait))
        self._health: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def request(self, method: str, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        """One JSON call; a refusal raises :class:`ServerError` with the server's reason."""
        data = json.dumps(payload).encode() if payload is not None else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if os.environ.get(TOKEN_ENV):
            headers["Authorization"] = f"Bearer {os.environ[TOKEN_ENV]}"
        try:
            response = self._http.open(method, self.url + path, body=data, headers=headers, timeout=self.timeout)
            try:
                body = read_body(response)
            finally:
                release(response)
        except FetchError as e:
            if e.kind in ("origin", "redirect", "too_many_redirects"):
                raise ServerError(f"the embedding server at {self.url} {e.reason} (point server= at the address "
                                  "that answers)") from None
            raise ServerError(f"cannot reach the embedding server at {self.url}: {e.reason}; "
                              "is `clip-embeddings serve` running there?") from None
        if response.status >= 400:
            try:
                reason = json.loads(body).get("detail", response.reason)
            except (ValueError, AttributeError):
                reason = response.reason
            raise ServerError(f"the embedding server at {self.url} answered {response.status} to {path}: {reason}")
        return json.loads(body)

    def health(self) -> dict[str, Any]:
        """The server's ``/health``, fetched once (model, fingerprint and dim never change)."""
        with self._lock:
            if self._health is None:
                health = self.request("GET", "/health")
                if "fingerprint" not in health:  # a server with a token tells the rest only to its holders
                    raise ServerError(f"the embedding server at {self.url} needs a token: set ${TOKEN_ENV}")
                self._health = health
            return self._health

    def check(self, expected: tuple[str | None, int | None] = (None, None)) -> dict[str, Any]:
        """The server's identity, after checking it against the ``(fingerprint, dim)`` a collection
        expects (``(None, None)``: a new function, anything goes)."""
        health = self.health()
        if expected[0] is not None and (health["fingerprint"], health["dim"]) != expected:
            raise ModelMismatchError(
                f"this collection was built with fingerprint {expected[0]} (dim {expected[1]}), but the embedding "
                f"server at {self.url} runs {health['model']!r} with fingerprint {health['fingerprint']} (dim "
                f"{health['dim']}): its embeddings would not be comparable. Point server= at a server running "
                "the weights the collection was built with, or re-index into a new collection."
            )
        return health

    def embed(self, payload: dict[str, Any]) -> dict[str, Any]:
        """``POST /embed``, checked to come from the weights this client checked at first contact
        (a server restarted with other weights must not slip vectors from another space in)."""
        answer = self.request("POST", "/embed", payload)
        if answer.get("fingerprint") != self.health()["fingerprint"]:
            raise ModelMismatchError(
                f"the embedding server at {self.url} now runs weights with fingerprint {answer.get('fingerprint')}, "
                f"not {self.health()['fingerprint']} as when this process first asked; restart this process")
        return answer

    def embed_texts(self, texts: Sequence[str], expected: tuple[str | None, int | None], batch_size: int) -> np.ndarray:
        """Unit vectors of ``texts``, ``batch_size`` (within the server's limit) per request."""
        health = self.check(expected)
        step = _per_request(batch_size, health)
        parts = [np.asarray(self.embed({"texts": list(texts[i : i + step])})["texts"],
                            dtype=np.float32).reshape(-1, health["dim"])
                 for i in range(0, len(texts), step)]
        return np.concatenate(parts) if parts else np.zeros((0, health["dim"]), np.float32)

    def encoder(self, options: LoaderOptions, expected: tuple[str | None, int | None],
                batch_size: int) -> RemoteEncoder:
        """The image pipeline's model end on this server (see :class:`RemoteEncoder`), for a
        function with these loader options, expected ``(fingerprint, dim)`` and batch size."""
        return RemoteEncoder(self, options, batch_size, self.check(expected))


class RemoteEncoder:
    """The image pipeline's model end on a server: the pipeline reads, guards and digests each input
    here, exactly as a local ``ClipEF`` does, and the server decodes the very bytes a local run would.

    Encoded inputs travel as they are (JPEG draft mode happens on the server as it would here);
    in-memory images travel as lossless PNG of the RGB image the local pipeline would make of them,
    their digest staying the local one (of the pixels). Requests stay under the server's item and
    body limits; nothing is cached locally (``cache_key`` is ``None``): the server's model decides.
    """

    cache_key = None

    def __init__(self, model: RemoteModel, options: LoaderOptions, batch_size: int, health: dict[str, Any]):
        self.model, self.options, self.dim = model, options, health["dim"]
        limits = health.get("limits", {})
        self.max_body = limits.get("max_upload_bytes", 2**62)
        self.per_request = _per_request(batch_size, health)
        self.budget = int(self.max_body * 0.7)  # base64 grows bytes by 4/3; the rest of the JSON is small

    def prepare(self, item: Any, raw: RawImage) -> bytes:
        if raw.data is not None:
            data = raw.data
        else:
            out = io.BytesIO()
            decode_image(raw, self.options).save(out, "PNG", compress_level=1)
            data = out.getvalue()
        if len(data) > self.budget:
            raise ImageLoadError(f"{len(data)} bytes encoded, too large for the server's request limit of "
                                 f"{self.max_body} bytes", source=raw.source)
        return data

    def encode(self, payloads: list[bytes]) -> tuple[np.ndarray, dict[int, str]]:
        rows: dict[int, np.ndarray] = {}
        failed: dict[int, str] = {}
        for chunk in self._requests(payloads):
            answer = self.model.embed({
                "images": [{"base64": base64.b64encode(payloads[i]).decode("ascii")} for i in chunk],
                "on_error": "skip",
            })
            got = np.asarray(answer["images"], dtype=np.float32).reshape(-1, self.dim)
            for row, position in zip(got, answer["image_indices"], strict=True):
                rows[chunk[position]] = row
            for bad in answer["skipped"]:
                failed[chunk[bad["index"]]] = bad["reason"]
        vectors = np.stack([rows[i] for i in sorted(rows)]) if rows else np.zeros((0, self.dim), np.float32)
        return vectors, failed

    def _requests(self, payloads: list[bytes]) -> list[list[int]]:
        """Positions grouped into requests within the server's item count and body size."""
        groups: list[list[int]] = [[]]
        size = 0
        for i, data in enumerate(payloads):
            if groups[-1] and (len(groups[-1]) >= self.per_request or size + len(data) > self.budget):
                groups.append([])
                size = 0
            groups[-1].append(i)
            size += len(data)
        return [g for g in groups if g]


def _per_request(batch_size: int, health: dict[str, Any]) -> int:
    """Items per request: the function's batch size, within the server's per-request limit."""
    return max(1, min(batch_size, health.get("limits", {}).get("max_items", batch_size)))


@cache
def remote_model(url: str) -> RemoteModel:
    """The process-wide client for ``url`` (databases rebuild embedding functions often)."""
    return RemoteModel(url)
