"""``ClipEF(server="http://host:port")``: the embedding function, computed by a ``clip-embeddings serve``.

Many processes (or every client of a Chroma server) then share one loaded model. The client reads
images itself, exactly as a local ``ClipEF`` would (paths on *its* disk, URLs fetched by *it*,
digests computed from the same bytes), sends the encoded bytes, and gets unit vectors back: the
same vectors, ids and errors as embedding locally on the same weights. The server's fingerprint
is checked against the one a collection stored, as for local weights.

Only the standard library is used here: a client needs neither FastAPI nor torch's model weights.
A bearer token, if the server wants one, comes from ``$CLIP_EMBEDDINGS_TOKEN`` (never persisted).
"""

from __future__ import annotations

import base64
import io
import json
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ClipError, ImageLoadError, ModelMismatchError
from .images import LoaderOptions, decode_image, describe, read_image_source

if TYPE_CHECKING:
    from .embedding import ClipEF, ImageEmbeddings

TOKEN_ENV = "CLIP_EMBEDDINGS_TOKEN"


class ServerError(ClipError, OSError):
    """The embedding server could not be reached, or refused a request (its reason is included)."""


class RemoteModel:
    """An HTTP client of one ``clip-embeddings serve``: health once, then ``/embed`` calls.

    Example:
        >>> remote = RemoteModel("http://127.0.0.1:8765")  # doctest: +SKIP
        >>> remote.health()["fingerprint"]  # doctest: +SKIP
        '3f1c0a9e5b7d2c44'
    """

    def __init__(self, url: str, timeout: float = 120.0):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"server must be an http:// or https:// URL, not {url!r}")
        self.url, self.timeout = url.rstrip("/"), timeout
        self._health: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def request(self, method: str, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        """One JSON call; a refusal raises :class:`ServerError` with the server's reason."""
        data = json.dumps(payload).encode() if payload is not None else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if os.environ.get(TOKEN_ENV):
            headers["Authorization"] = f"Bearer {os.environ[TOKEN_ENV]}"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            try:
                reason = json.loads(e.read()).get("detail", e.reason)
            except ValueError:
                reason = e.reason
            raise ServerError(f"the embedding server at {self.url} answered {e.code} to {path}: {reason}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ServerError(f"cannot reach the embedding server at {self.url}: {reason}; "
                              "is `clip-embeddings serve` running there?") from None

    def health(self) -> dict[str, Any]:
        """The server's ``/health``, fetched once (model, fingerprint and dim never change)."""
        with self._lock:
            if self._health is None:
                self._health = self.request("GET", "/health")
            return self._health

    def check(self, ef: ClipEF) -> dict[str, Any]:
        """The server's identity, after checking it against what ``ef``'s collection expects."""
        health = self.health()
        expected = (ef.expected_fingerprint, ef.expected_dim)
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

    def embed_texts(self, ef: ClipEF, texts: Sequence[str]) -> np.ndarray:
        health = self.check(ef)
        step = _per_request(ef, health)
        parts = [np.asarray(self.embed({"texts": list(texts[i : i + step])})["texts"],
                            dtype=np.float32).reshape(-1, health["dim"])
                 for i in range(0, len(texts), step)]
        return np.concatenate(parts) if parts else np.zeros((0, health["dim"]), np.float32)

    def encode_images(self, ef: ClipEF, images: Iterable[Any], on_error: str) -> ImageEmbeddings:
        from .embedding import ImageEmbeddings, SkippedItem

        health = self.check(ef)
        vectors: dict[int, np.ndarray] = {}
        digests: dict[int, str] = {}
        skipped: list[SkippedItem] = []
        chunk: list[tuple[int, str, str, bytes]] = []  # (index, source, digest, encoded bytes)

        def send() -> None:
            answer = self.embed({
                "images": [{"base64": base64.b64encode(data).decode("ascii")} for *_, data in chunk],
                "on_error": "skip",
            })
            rows = np.asarray(answer["images"], dtype=np.float32).reshape(-1, health["dim"])
            for row, position in zip(rows, answer["image_indices"]):
                index, _, digest, _ = chunk[position]
                vectors[index], digests[index] = row, digest
            for bad in answer["skipped"]:
                index, source, _, _ = chunk[bad["index"]]
                if on_error == "raise":
                    raise ImageLoadError(bad["reason"], index=index, source=source)
                skipped.append(SkippedItem(index, source, bad["reason"]))
            chunk.clear()

        limits = health.get("limits", {})
        per_request = _per_request(ef, health)
        # base64 grows bytes by 4/3; the rest of the JSON is small. Stay under the server's body limit.
        budget = int(limits.get("max_upload_bytes", 2**62) * 0.7)
        for index, item in enumerate(images):
            try:
                source, digest, data = _encoded(item, ef.loader_options)
                if len(data) > budget:
                    raise ImageLoadError(f"{len(data)} bytes encoded, too large for the server's request limit "
                                         f"of {limits['max_upload_bytes']} bytes", source=source)
            except ImageLoadError as e:
                if on_error == "raise":
                    raise ImageLoadError(e.reason, index=index, source=e.source or describe(item)) from None
                skipped.append(SkippedItem(index, e.source or describe(item), e.reason))
                continue
            if chunk and sum(len(c[3]) for c in chunk) + len(data) > budget:
                send()
            chunk.append((index, source, digest, data))
            if len(chunk) >= per_request:
                send()
        if chunk:
            send()
        indices = sorted(vectors)
        embeddings = np.stack([vectors[i] for i in indices]) if indices else np.zeros((0, health["dim"]), np.float32)
        return ImageEmbeddings(embeddings, indices, [digests[i] for i in indices], sorted(skipped, key=lambda s: s.index))


def _per_request(ef: ClipEF, health: dict[str, Any]) -> int:
    """Items per request: the function's batch size, within the server's per-request limit."""
    return max(1, min(ef.batch_size, health.get("limits", {}).get("max_items", ef.batch_size)))


def _encoded(item: Any, options: LoaderOptions) -> tuple[str, str, bytes]:
    """(source, digest, bytes to send) for one item, read here as a local ``ClipEF`` would read it.

    Encoded inputs travel as they are, so the server decodes the very bytes a local run would (JPEG
    draft mode included). In-memory images travel as lossless PNG of the RGB image the local
    pipeline would have made of them; their digest stays the local one (of the pixels).
    """
    raw = read_image_source(item, options)
    if raw.data is not None:
        return raw.source, raw.digest, raw.data
    out = io.BytesIO()
    decode_image(raw, options).save(out, "PNG", compress_level=1)
    return raw.source, raw.digest, out.getvalue()


@lru_cache(maxsize=None)
def remote_model(url: str) -> RemoteModel:
    """The process-wide client for ``url`` (databases rebuild embedding functions often)."""
    return RemoteModel(url)
