"""The state behind the routes: the embedding function, its batcher, the store, thumbnails.

What runs where: the model thread (the batcher's worker) only ever sees bytes to decode and embed
and texts to encode. Reading an image (fetching a URL, opening a stored file) happens in the
request's own task, beside it; so does waiting, and a request whose client has gone cancels its
job, which the worker then drops unrun.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import time
from collections import OrderedDict
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from ...embedding.function import ClipEF, ImageEmbeddings, SkippedItem
from ...errors import ClipError, ImageLoadError
from ...inputs.options import LoaderOptions
from ...inputs.sources import load_image, read_image_source
from .batcher import Batcher, QueueFull
from .inputs import BadRequest, Body, ImageInput
from .limits import ServeLimits

ITEM_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")  # what a request may call an item
THUMBNAIL_DECODES = 2  # at most this many thumbnails decode at once: each may be max_pixels large
_THUMBNAIL_CACHE = 512
_COUNT_TTL = 10.0  # seconds /health reuses a collection's count: counting may scan the collection


class Service:
    """The embedding function, its batcher, the store and the thumbnail cache of one app."""

    def __init__(self, ef: ClipEF, store: Any, limits: ServeLimits):
        # A copy, so the caller's function keeps its own settings. No embedding cache: uploads are
        # anyone's bytes, and a disk cache keyed by them would grow without bound.
        self.ef = ClipEF.from_config(ef.config.replace(loader_options=limits.loader_options(), cache=False,
                                                       on_error="skip"))
        self.store, self.limits = store, limits
        self.batcher = Batcher(self.ef, limits.max_batch, limits.max_wait_ms / 1000, limits.max_queue)
        self._thumbnails: OrderedDict[str, bytes] = OrderedDict()
        self._decodes = asyncio.Semaphore(THUMBNAIL_DECODES)
        self._count: tuple[float, int] | None = None  # (when, count)
        self._counting: asyncio.Task | None = None

    # -- the model --

    async def run(self, kind: str, items: Any, request: Request | None = None) -> Any:
        """A batcher job, awaited within the request timeout and while the client is there.

        A request that times out (503) or whose client disconnects cancels its job: the worker
        drops a cancelled job before running it.
        """
        try:
            future = self.batcher.submit(kind, items)
        except QueueFull as e:
            raise BadRequest(str(e), 429) from None
        answer = asyncio.wrap_future(future)
        waiting = {answer} if request is None else {answer, client_gone(request)}
        done, _ = await asyncio.wait(waiting, timeout=self.limits.request_timeout, return_when=asyncio.FIRST_COMPLETED)
        if answer in done:
            return answer.result()
        future.cancel()
        answer.cancel()
        if done:
            raise BadRequest("the client disconnected before the model answered", 499)
        raise BadRequest(f"timed out after {self.limits.request_timeout:g} s waiting for the model", 503)

    async def embed_images(self, images: list[ImageInput], on_error: str = "raise",
                           request: Request | None = None) -> ImageEmbeddings:
        """Read the images here (URLs are fetched in this task), then embed the bytes on the model thread."""
        read = await asyncio.gather(*(self._read(image) for image in images))
        failed = [SkippedItem(i, images[i].label, r) for i, r in enumerate(read) if isinstance(r, str)]
        if failed and on_error == "raise":
            raise BadRequest(f"{failed[0].source}: {failed[0].reason}", 422)
        kept = [i for i, r in enumerate(read) if not isinstance(r, str)]
        result: ImageEmbeddings = await self.run("images", [read[i] for i in kept], request) if kept else _none(self.ef.dim)
        skipped = failed + [SkippedItem(kept[s.index], images[kept[s.index]].label, s.reason) for s in result.skipped]
        if skipped and on_error == "raise":
            first = min(skipped, key=lambda s: s.index)
            raise BadRequest(f"{first.source}: {first.reason}", 422)
        return ImageEmbeddings(result.embeddings, [kept[i] for i in result.indices], result.digests,
                               sorted(skipped, key=lambda s: s.index))

    async def _read(self, image: ImageInput) -> bytes | str:
        """The image's bytes, or the reason they cannot be had (never a server path)."""
        if image.data is not None:
            return image.data
        try:
            raw = await run_in_threadpool(read_image_source, image.item, self.ef.loader_options)  # its url
        except ImageLoadError as e:
            return _without_path(e.reason, image.url)
        if raw.data is None:  # a URL is read as bytes: only in-memory images come back without them
            raise RuntimeError(f"{image.label}: read without its bytes")
        return raw.data

    # -- the store --

    def require_store(self, body: Body) -> Any:
        if self.store is None:
            raise BadRequest("this server has no collection to search (start it with --location and --collection)", 404)
        name = body.get("collection")
        if name not in (None, "", self.store.name):
            raise BadRequest(f"unknown collection {_shown(name)}: this server serves {self.store.name!r}", 404)
        return self.store

    async def lookup(self, item: Any) -> Any:
        """The collection's image record with this id, or a 404: ids are all a request can name."""
        if not isinstance(item, str) or not ITEM_ID.match(item):
            raise BadRequest(f"item must be an item id from a search result, got {_shown(item)}")
        store = self.require_store(Body())
        hit = await run_in_threadpool(store.get_item, item)
        if hit is None or not hit.source:
            raise BadRequest(f"no image item {item!r} in collection {store.name!r}", 404)
        return hit

    async def count(self) -> int:
        """The collection's count, recounted at most every few seconds and by one task at a time.

        Counting may scan the collection (Chroma has no count of distinct items), so a flood of
        ``/health`` calls must not become a flood of scans beside the searches.
        """
        if self._count is None or time.monotonic() - self._count[0] > _COUNT_TTL:
            if self._counting is None or self._counting.done():
                self._counting = asyncio.ensure_future(self._recount())
            if self._count is None:
                await asyncio.shield(self._counting)
        return self._count[1] if self._count else 0

    async def _recount(self) -> None:
        self._count = (time.monotonic(), await run_in_threadpool(self.store.count))

    # -- thumbnails --

    async def thumbnail(self, item: str) -> bytes:
        if item not in self._thumbnails:
            hit = await self.lookup(item)
            async with self._decodes:  # decodes in flight bound the memory, not the number of clients
                try:
                    self._thumbnails[item] = await run_in_threadpool(make_thumbnail, hit.source, self.ef.loader_options)
                except ClipError as e:
                    reason = _without_path(getattr(e, "reason", None) or str(e), hit.source)
                    name = os.path.basename(hit.source)  # the file's name, never its directory
                    raise BadRequest(f"item {item!r} ({name}): its image cannot be read any more ({reason})", 404) from None
            while len(self._thumbnails) > _THUMBNAIL_CACHE:
                self._thumbnails.popitem(last=False)
        self._thumbnails.move_to_end(item)
        return self._thumbnails[item]


def make_thumbnail(source: str, options: LoaderOptions, size: int = 256) -> bytes:
    """A JPEG of at most ``size`` x ``size`` pixels (JPEGs are decoded at a reduced scale)."""
    image = load_image(source, options, draft_resolution=size)
    image.thumbnail((size, size))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


def client_gone(request: Request) -> asyncio.Future:
    """A future that completes when the client disconnects (one per request, however many jobs wait on it)."""
    watcher = getattr(request.state, "client_gone", None)
    if watcher is None:
        async def watch() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        watcher = request.state.client_gone = asyncio.ensure_future(watch())
    return watcher


def _without_path(reason: str, source: str | None) -> str:
    """A reason fit for a client: a server path in it becomes the file's name."""
    if source and not source.lower().startswith(("http://", "https://")):
        for shown in {source, os.path.abspath(source), os.path.realpath(source)}:
            reason = reason.replace(shown, os.path.basename(shown))
    return reason


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _none(dim: int) -> ImageEmbeddings:
    return ImageEmbeddings(np.zeros((0, dim), np.float32), [], [], [])
