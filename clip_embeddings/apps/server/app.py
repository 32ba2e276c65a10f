"""The server's routes: ``/embed``, ``/search``, ``/classify``, ``/health``, thumbnails and the page.

Every route that needs the model goes through one :class:`~.batcher.Batcher`, so concurrent
requests share forward passes and the model is only ever touched by its worker thread. Database
queries and thumbnail decoding run in Starlette's thread pool, beside it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import io
import json
import os
import re
from collections import OrderedDict
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from ...embedding.function import ClipEF, ImageEmbeddings
from ...errors import ClipError
from ...inputs.options import LoaderOptions
from ...inputs.sources import load_image
from ...tasks.zeroshot import DEFAULT_TEMPLATES, ZeroShotClassifier
from .batcher import Batcher, QueueFull
from .budget import check_images, check_prompts
from .inputs import BadRequest, Body, ImageInput, choice, integer, read_body, where_filter
from .limits import ServeLimits

STATIC = resources.files("clip_embeddings.apps.server") / "static"
_ITEM_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")
_PUBLIC = ("/", "/health", "/favicon.ico")  # and /static/: what the page needs before a token


class Service:
    """The state behind the routes: the embedding function, its batcher, the store, thumbnails."""

    def __init__(self, ef: ClipEF, store: Any, limits: ServeLimits):
        # A copy, so the caller's function keeps its own settings. No embedding cache: uploads are
        # anyone's bytes, and a disk cache keyed by them would grow without bound.
        self.ef = ClipEF.from_config(ef.config.replace(loader_options=limits.loader_options(), cache=False,
                                                       on_error="skip"))
        self.store, self.limits = store, limits
        self.batcher = Batcher(self.ef, limits.max_batch, limits.max_wait_ms / 1000, limits.max_queue)
        self._thumbnails: OrderedDict[str, bytes] = OrderedDict()

    async def run(self, kind: str, items: Any) -> Any:
        """A batcher job, awaited within the request timeout; a request that gives up drops its job."""
        try:
            future = self.batcher.submit(kind, items)
        except QueueFull as e:
            raise BadRequest(str(e), 429) from None
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.limits.request_timeout)
        except asyncio.TimeoutError:
            raise BadRequest(f"timed out after {self.limits.request_timeout:g} s waiting for the model", 503) from None

    async def embed_images(self, images: list[ImageInput], on_error: str = "raise") -> ImageEmbeddings:
        result: ImageEmbeddings = await self.run("images", [image.item for image in images])
        if on_error == "raise" and result.skipped:
            bad = result.skipped[0]
            raise BadRequest(f"{images[bad.index].label}: {bad.reason}", 422)
        return result

    def require_store(self, body: Body) -> Any:
        if self.store is None:
            raise BadRequest("this server has no collection to search (start it with --location and --collection)", 404)
        name = body.get("collection")
        if name not in (None, "", self.store.name):
            raise BadRequest(f"unknown collection {name!r}: this server serves {self.store.name!r}", 404)
        return self.store

    async def lookup(self, item: Any) -> Any:
        """The collection's image record with this id, or a 404: ids are all a request can name."""
        if not isinstance(item, str) or not _ITEM_ID.match(item):
            raise BadRequest(f"item must be an item id from a search result, got {item!r}")
        store = self.require_store(Body())
        hit = await run_in_threadpool(store.get_item, item)
        if hit is None or not hit.source:
            raise BadRequest(f"no image item {item!r} in collection {store.name!r}", 404)
        return hit

    async def thumbnail(self, item: str) -> bytes:
        if item not in self._thumbnails:
            hit = await self.lookup(item)
            try:
                self._thumbnails[item] = await run_in_threadpool(_thumbnail, hit.source, self.ef.loader_options)
            except ClipError as e:
                raise BadRequest(f"item {item!r}: its image cannot be read any more: {e}", 404) from None
            while len(self._thumbnails) > 512:
                self._thumbnails.popitem(last=False)
        self._thumbnails.move_to_end(item)
        return self._thumbnails[item]


def _thumbnail(source: str, options: LoaderOptions, size: int = 256) -> bytes:
    image = load_image(source, options, draft_resolution=size)
    image.thumbnail((size, size))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


def create_app(ef: ClipEF, store: Any = None, limits: ServeLimits = ServeLimits()) -> FastAPI:
    """The ASGI app serving ``ef`` (and ``store``, a :class:`~clip_embeddings.adapters.base.Store`).

    Example:
        >>> import uvicorn
        >>> app = create_app(ClipEF("ViT-B/32"), open_store("chroma", "db", "photos"))  # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8765)  # doctest: +SKIP
    """
    service = Service(ef, store, limits)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await run_in_threadpool(service.batcher.close)

    app = FastAPI(title="clip-embeddings", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.service = service
    app.add_middleware(_Guard, limits=limits)
    app.add_exception_handler(BadRequest, _refused)
    app.add_exception_handler(Exception, _failed)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"))

    @app.get("/health")
    async def health(request: Request) -> dict:
        lm = service.ef.loaded_model()
        collection = None
        if store is not None:
            collection = {"name": store.name, "kind": type(store).__name__, "count": await run_in_threadpool(store.count)}
        return {
            "status": "ok", "model": service.ef.model_name, "fingerprint": lm.fingerprint, "dim": lm.dim,
            "precision": lm.precision, "device": str(lm.device), "queue_depth": service.batcher.depth,
            "batching": dataclasses.asdict(service.batcher.stats) | {"max_batch": limits.max_batch,
                                                                     "max_wait_ms": limits.max_wait_ms},
            "collection": collection, "auth": limits.token is not None,
            "limits": {"max_upload_bytes": limits.max_upload_bytes, "max_items": limits.max_items},
        }

    @app.post("/embed")
    async def embed(request: Request) -> dict:
        body = await read_body(request, limits.max_items)
        check_images(body.images, limits)
        texts = _texts(body)
        on_error = choice(body, "on_error", "raise", ("raise", "skip"))
        if not texts and not body.images:
            raise BadRequest("nothing to embed: send texts and/or images")
        out: dict[str, Any] = {"fingerprint": service.ef.fingerprint, "dim": service.ef.dim}
        vectors, images = await asyncio.gather(
            service.run("texts", texts) if texts else _nothing(),
            service.embed_images(body.images, on_error) if body.images else _nothing(),
        )
        if texts:
            out["texts"] = vectors.tolist()
        if body.images:
            out["images"] = images.embeddings.tolist()
            out["image_indices"] = images.indices
            out["image_digests"] = images.digests
            out["skipped"] = [{"index": s.index, "source": body.images[s.index].label, "reason": s.reason}
                              for s in images.skipped]
        return out

    @app.post("/search")
    async def search(request: Request) -> dict:
        body = await read_body(request, limits.max_items)
        check_images(body.images, limits)
        store_ = service.require_store(body)
        k = integer(body, "k", 12, 1, 200)
        modality = choice(body, "modality", "image", ("image", "text"))
        where = where_filter(body)
        text, item = body.get("text"), body.get("item")
        given = [name for name, value in (("text", text), ("image", body.images), ("item", item)) if value]
        if len(given) != 1:
            raise BadRequest("search takes exactly one of text, image or item" + (f" (got {', '.join(given)})" if given else ""))
        if text is not None:
            if not isinstance(text, str):
                raise BadRequest("text must be a string")
            vector = (await service.run("texts", [text]))[0]
        else:
            if item is not None:
                image = ImageInput(f"item {item}", url=(await service.lookup(item)).source)  # a stored source, not a request's
            elif len(body.images) == 1:
                image = body.images[0]
            else:
                raise BadRequest(f"search takes one image, got {len(body.images)}")
            vector = (await service.embed_images([image])).embeddings[0]
        try:
            hits = await run_in_threadpool(lambda: store_.search(vector, k=k, modality=modality, where=where))
        except (ValueError, TypeError) as e:
            raise BadRequest(f"the query was refused: {e}") from None
        root = request.scope.get("root_path", "")
        return {"collection": store_.name, "modality": modality, "hits": [_hit(h, root) for h in hits]}

    @app.post("/classify")
    async def classify(request: Request) -> dict:
        body = await read_body(request, limits.max_items)
        labels = body.get("labels") or []
        if len(labels) < 2:
            raise BadRequest("classify needs at least two labels")
        if not body.images:
            raise BadRequest("classify needs at least one image")
        templates = body.get("templates") or DEFAULT_TEMPLATES
        check_images(body.images, limits)
        check_prompts(labels, templates, limits)
        try:
            classifier = ZeroShotClassifier(service.ef, labels, templates)
        except (ValueError, TypeError) as e:
            raise BadRequest(str(e)) from None
        k = integer(body, "k", min(5, len(labels)), 1, len(labels))
        embedded = await service.embed_images(body.images, choice(body, "on_error", "raise", ("raise", "skip")))
        # On the model's thread: the label prototypes may need encoding (they are cached after).
        result = await service.run("call", lambda: classifier.classify_embeddings(embedded, top_k=k))
        return {
            "labels": result.labels,
            "results": [{"index": i, "labels": top, "probabilities": scores}
                        for i, top, scores in zip(result.indices, result.top_labels, result.top_scores, strict=True)],
            "skipped": [{"index": s.index, "source": body.images[s.index].label, "reason": s.reason}
                        for s in embedded.skipped],
        }

    @app.get("/thumbnail/{item}")
    async def thumbnail(item: str) -> Response:
        return Response(await service.thumbnail(item), media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=3600"})

    return app


async def _nothing() -> None:
    return None


def _texts(body: Body) -> list[str]:
    texts = list(body.get("texts") or [])
    text = body.get("text")
    if text is not None:
        if not isinstance(text, str):
            raise BadRequest("text must be a string")
        texts.append(text)
    return texts


def _hit(hit: Any, root: str) -> dict:
    return {
        "id": hit.id, "score": hit.score, "modality": hit.modality, "document": hit.document,
        # The file name only: a server's directory layout is not the client's business.
        "name": os.path.basename(hit.source) if hit.source else None, "metadata": hit.metadata,
        "thumbnail": f"{root}/thumbnail/{hit.id}" if hit.modality == "image" and hit.source else None,
    }


async def _refused(request: Request, exc: BadRequest) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=exc.status)


async def _failed(request: Request, exc: Exception) -> JSONResponse:
    # A bug or a broken store must cost one request, never the server: say what happened.
    return JSONResponse({"detail": f"{type(exc).__name__}: {exc}"}, status_code=500)


class _Guard:
    """Bearer token, body size and body deadline, before any route reads a byte of the body."""

    def __init__(self, app: Any, limits: ServeLimits):
        self.app, self.limits = app, limits

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope["path"]
        if self.limits.token and path not in _PUBLIC and not path.startswith("/static/"):
            given = headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.limits.token}".encode()):
                reason = "wrong bearer token" if given else "this server needs Authorization: Bearer <token>"
                return await _send(send, 401, reason, {"www-authenticate": "Bearer"})
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.limits.max_upload_bytes:
            return await _send(send, 413, f"request body of {length} bytes is over the limit of "
                                          f"{self.limits.max_upload_bytes} bytes")
        await self.app(scope, self._limited(receive), send)

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


async def _send(send: Any, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": reason}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
