"""The server's routes: ``/embed``, ``/search``, ``/query``, ``/classify``, ``/health``, thumbnails and the page.

Every route that needs the model goes through one :class:`~.batcher.Batcher`, so concurrent
requests share forward passes and the model is only ever touched by its worker thread. Reading
images (URLs, stored files), database queries and thumbnail decoding run beside it, in the
request's task and Starlette's thread pool. Every request is checked by :class:`~.guard.Guard`
(host, token, body size) and by the cost budget (:mod:`.budget`) before any work is queued.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from ...core.loading import model_label
from ...embedding.function import ClipEF
from ...tasks.zeroshot import DEFAULT_TEMPLATES, ZeroShotClassifier
from . import compound
from .budget import check_images, check_prompts
from .guard import Guard, bearer_matches
from .inputs import BadRequest, Body, ImageInput, choice, integer, number, read_body, where_filter
from .limits import ServeLimits
from .service import Service

STATIC = resources.files("clip_embeddings.apps.server") / "static"
log = logging.getLogger("clip_embeddings.server")

__all__ = ["ServeLimits", "create_app"]


def create_app(ef: ClipEF, store: Any = None, limits: ServeLimits = ServeLimits()) -> FastAPI:
    """The ASGI app serving ``ef`` (and ``store``, a :class:`~clip_embeddings.adapters.base.Store`).

    Example:
        >>> import uvicorn
        >>> app = create_app(ClipEF("ViT-B/32"), open_store("chroma", "db", "photos"))  # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8765)  # doctest: +SKIP
    """
    app = FastAPI(title="clip-embeddings", lifespan=_lifespan, docs_url="/docs", redoc_url=None)
    app.state.service = Service(ef, store, limits)
    app.add_middleware(Guard, limits=limits)
    app.add_exception_handler(BadRequest, _refused)  # type: ignore[arg-type]  # called with BadRequests only
    app.add_exception_handler(Exception, _failed)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    app.add_api_route("/", page, methods=["GET"], include_in_schema=False)
    app.add_api_route("/health", health, methods=["GET"])
    for path, route in (("/embed", embed), ("/search", search), ("/query", query), ("/classify", classify)):
        app.add_api_route(path, route, methods=["POST"])
    app.add_api_route("/thumbnail/{item}", thumbnail, methods=["GET"])
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI):
    yield
    await run_in_threadpool(app.state.service.batcher.close)


def _service(request: Request) -> Service:
    return request.app.state.service


# -- routes --

async def page() -> FileResponse:
    return FileResponse(str(STATIC / "index.html"))


async def health(request: Request) -> dict:
    service = _service(request)
    limits, store = service.limits, service.store
    token = limits.token
    if token and not bearer_matches(dict(request.headers.raw).get(b"authorization"), token):
        return {"status": "ok", "auth": True}  # the rest is for clients that hold the token
    lm = service.ef.loaded_model()
    collection = None
    if store is not None:
        collection = {"name": store.name, "kind": type(store).__name__, "count": await service.count()}
    return {
        "status": "ok", "model": model_label(service.ef.model_name), "fingerprint": lm.fingerprint, "dim": lm.dim,
        "logit_scale": service.ef.logit_scale,
        "precision": lm.precision, "device": str(lm.device), "queue_depth": service.batcher.depth,
        "batching": dataclasses.asdict(service.batcher.stats) | {"max_batch": limits.max_batch,
                                                                 "max_wait_ms": limits.max_wait_ms},
        "collection": collection, "auth": token is not None,
        "limits": {"max_upload_bytes": limits.max_upload_bytes, "max_items": limits.max_items},
    }


async def embed(request: Request) -> dict:
    service = _service(request)
    body = await read_body(request, service.limits.max_items)
    check_images(body.images, service.limits)
    texts = _texts(body)
    on_error = choice(body, "on_error", "raise", ("raise", "skip"))
    if not texts and not body.images:
        raise BadRequest("nothing to embed: send texts and/or images")
    out: dict[str, Any] = {"fingerprint": service.ef.fingerprint, "dim": service.ef.dim}
    vectors, images = await asyncio.gather(
        service.run("texts", texts, request) if texts else _nothing(),
        service.embed_images(body.images, on_error, request) if body.images else _nothing(),
    )
    if texts:
        out["texts"] = vectors.tolist()
    if body.images and images is not None:
        out["images"] = images.embeddings.tolist()
        out["image_indices"] = images.indices
        out["image_digests"] = images.digests
        out["skipped"] = [{"index": s.index, "source": s.source, "reason": s.reason} for s in images.skipped]
    return out


async def search(request: Request) -> dict:
    service = _service(request)
    body = await read_body(request, service.limits.max_items)
    check_images(body.images, service.limits)
    store = service.require_store(body)
    k = integer(body, "k", 12, 1, 200)
    modality = choice(body, "modality", "image", ("image", "text"))
    where = where_filter(body)
    min_score = number(body, "min_score", -1.0, 1.0)
    vector = await _query_vector(service, body, request)
    hits = await _search(store, vector, k, modality, where, min_score)
    root = request.scope.get("root_path", "")
    return {"collection": store.name, "modality": modality, "hits": [_hit(h, root) for h in hits]}


async def query(request: Request) -> dict:
    """A compound query or more-like-this (see :mod:`.compound`): the budget is checked first."""
    service = _service(request)
    body = await read_body(request, service.limits.max_items)
    store = service.require_store(body)
    k = integer(body, "k", 12, 1, 200)
    modality = choice(body, "modality", "image", ("image", "text"))
    where = where_filter(body)
    min_score = number(body, "min_score", -1.0, 1.0)
    terms, fields, exclude = compound.read_terms(body, service.limits)
    vector = await compound.query_vector(service, store, terms, fields, request)
    hits = await _search(store, vector, k + len(exclude), modality, where, min_score)
    root = request.scope.get("root_path", "")
    return {"collection": store.name, "modality": modality,
            "terms": [compound.describe(t, f) for t, f in zip(terms, fields, strict=True)],
            "hits": [_hit(h, root) for h in hits if h.id not in exclude][:k]}


async def _search(store: Any, vector: Any, k: int, modality: str, where: Any, min_score: float | None) -> list:
    try:
        return await run_in_threadpool(lambda: store.search(vector, k=k, modality=modality, where=where,
                                                            min_score=min_score))
    except (ValueError, TypeError) as e:
        raise BadRequest(f"the query was refused: {e}") from None


async def _query_vector(service: Service, body: Body, request: Request) -> Any:
    """The one query of a search: a text, an uploaded image, or a stored item by id."""
    text, item = body.get("text"), body.get("item")
    given = [name for name, value in (("text", text), ("image", body.images), ("item", item)) if value]
    if len(given) != 1:
        raise BadRequest("search takes exactly one of text, image or item" + (f" (got {', '.join(given)})" if given else ""))
    if text is not None:
        if not isinstance(text, str):
            raise BadRequest("text must be a string")
        return (await service.run("texts", [text], request))[0]
    if item is not None:
        image = ImageInput(f"item {item}", url=(await service.lookup(item)).source)  # a stored source, not a request's
    elif len(body.images) == 1:
        image = body.images[0]
    else:
        raise BadRequest(f"search takes one image, got {len(body.images)}")
    return (await service.embed_images([image], request=request)).embeddings[0]


async def classify(request: Request) -> dict:
    service = _service(request)
    body = await read_body(request, service.limits.max_items)
    labels = body.get("labels") or []
    if len(labels) < 2:
        raise BadRequest("classify needs at least two labels")
    if not body.images:
        raise BadRequest("classify needs at least one image")
    templates = body.get("templates") or DEFAULT_TEMPLATES
    check_images(body.images, service.limits)
    check_prompts(labels, templates, service.limits)
    try:
        classifier = ZeroShotClassifier(service.ef, labels, templates)
    except (ValueError, TypeError) as e:
        raise BadRequest(str(e)) from None
    k = integer(body, "k", min(5, len(labels)), 1, len(labels))
    embedded = await service.embed_images(body.images, choice(body, "on_error", "raise", ("raise", "skip")), request)
    # On the model's thread: the label prototypes may need encoding (they are cached after).
    result = await service.run("call", lambda: classifier.classify_embeddings(embedded, top_k=k), request)
    return {
        "labels": result.labels,
        "results": [{"index": i, "labels": top, "probabilities": scores}
                    for i, top, scores in zip(result.indices, result.top_labels, result.top_scores, strict=True)],
        "skipped": [{"index": s.index, "source": s.source, "reason": s.reason} for s in embedded.skipped],
    }


async def thumbnail(request: Request, item: str) -> Response:
    return Response(await _service(request).thumbnail(item), media_type="image/jpeg",
                    headers={"Cache-Control": "private, max-age=3600"})


# -- helpers --

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
    # A bug or a broken store must cost one request, never the server. The details (which may
    # name files) go to the server's log, not to the client.
    log.exception("%s %s failed", request.method, request.url.path)
    return JSONResponse({"detail": f"internal error ({type(exc).__name__}); the server's log has the details"},
                        status_code=500)
