"""The one way an image becomes a vector.

read (path, URL, bytes, data URI, PIL image, array) → content digest → embedding-cache lookup →
decode (pixel guard, EXIF, alpha) → resize guard → preprocess → batched forward pass → L2
normalise → cache write. ``ClipEF.encode_images``, every ``Store``, the Ray embedder, fine-tuning
and the Chroma data loader all come through here; nothing else decodes an image.

Reading and decoding run in a thread pool that belongs to the call, a bounded window ahead of
the model: file IO and JPEG decoding overlap the forward pass, memory stays flat however many
items come, and one caller's slow URLs never hold up another caller's batch. Results come out in
input order, one model batch at a time, so a store can write each batch as soon as it exists.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from PIL import Image

from ..config import EmbeddingConfig
from ..config import OnError as OnError  # re-exported: its older import path
from ..core.preprocess import Preprocess, resize_target
from ..errors import ImageLoadError
from ..inputs.decode import decode_image
from ..inputs.names import stored_name
from ..inputs.options import DEFAULT_OPTIONS, LoaderOptions, RawImage, describe
from ..inputs.sources import read_image_source
from ..runtime import compute

if TYPE_CHECKING:
    from typing_extensions import TypeIs  # typing's own from Python 3.13

    from .cache import EmbeddingCache
    from .loaded import LoadedModel

MAX_WORKERS = 32  # threads one call may use, whatever it asks for: IO-bound work gains nothing past this


@dataclass(frozen=True)
class SkippedItem:
    """An input that could not be embedded: where it was in the batch, what it was, and why."""

    index: int
    source: str
    reason: str

    def __str__(self) -> str:
        return f"item {self.index} ({self.source}): {self.reason}"


@dataclass
class ImageResult:
    """What became of one input: its vector, or the reason it has none.

    ``entry`` is what the caller passed in (the image itself, or a caller's record around it, see
    :meth:`ImagePipeline.batches`); ``index`` its position in the input; ``digest`` the SHA-256
    of its content (``None`` when it could not be read).
    """

    index: int
    entry: Any
    source: str
    digest: str | None = None
    vector: np.ndarray | None = None
    reason: str | None = None
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.vector is not None

    def skipped(self) -> SkippedItem:
        return SkippedItem(self.index, self.source, self.reason or "")

    def error(self) -> ImageLoadError:
        return ImageLoadError(self.reason or "", index=self.index, source=self.source)


@dataclass
class _Prepared:
    """One input after the worker thread is done with it: a payload to encode, a cache hit, or an error."""

    result: ImageResult
    payload: Any = None


# --- reading and decoding, one item at a time ---------------------------------------------------

# A PIL image opened lazily decodes from its file on first access, and two threads decoding the
# same object at once corrupt each other's pixels. The same object may stand many times in one
# batch, so every access to a caller's PIL image holds a lock chosen by its identity.
_OBJECT_LOCKS = tuple(threading.RLock() for _ in range(64))  # re-entered by nested stages


def _lock_for(item: Any) -> Any:
    return _OBJECT_LOCKS[id(item) % len(_OBJECT_LOCKS)] if isinstance(item, Image.Image) else nullcontext()


def load_rgb(item: Any, options: LoaderOptions = DEFAULT_OPTIONS, *, draft_resolution: int | None = None,
             raw: RawImage | None = None) -> Image.Image:
    """Read and decode one image input into RGB, with every guard; raises :class:`ImageLoadError`.

    Example:
        >>> load_rgb(np.zeros((4, 6), np.uint8)).size
        (6, 4)
    """
    with _lock_for(item):
        raw = raw or read_image_source(item, options)
        return decode_image(raw, options, draft_resolution=draft_resolution)


def check_resize(image: Image.Image, resolution: int, options: LoaderOptions, source: str) -> None:
    """Refuse an image whose resize (shorter side to ``resolution``) would exceed ``max_pixels``.

    CLIP resizes the shorter side to R before the R x R centre crop, so a thin image is a memory
    bomb the header check cannot see: a 1 x 100000 PNG (100 k pixels) becomes 224 x 22.4 M pixels
    (15 GB of RGB) for ViT-B/32. ``max_pixels`` bounds every stage, this one included.
    """
    width, height = resize_target(image.width, image.height, resolution)
    if width * height > options.max_pixels:
        raise ImageLoadError(
            f"extreme aspect ratio: {image.width}x{image.height} would be resized to {width}x{height} = "
            f"{width * height} pixels before the {resolution}x{resolution} crop, more than max_pixels="
            f"{options.max_pixels}; crop or pad it first, or raise LoaderOptions.max_pixels", source=source)


def preprocess_one(item: Any, preprocess: Preprocess, options: LoaderOptions = DEFAULT_OPTIONS, *,
                   fast_decode: bool = True, raw: RawImage | None = None) -> torch.Tensor:
    """One image input as CLIP's ``[3, R, R]`` input tensor; raises :class:`ImageLoadError`.

    Example:
        >>> preprocess_one(np.zeros((40, 60, 3), np.uint8), Preprocess(32)).shape
        torch.Size([3, 32, 32])
    """
    draft = preprocess.resolution if fast_decode else None
    with _lock_for(item):
        image = load_rgb(item, options, draft_resolution=draft, raw=raw)
        check_resize(image, preprocess.resolution, options, raw.source if raw else describe(item))
        return preprocess(image)


def local_path(item: Any) -> str | None:
    """The absolute path of an item that names a local file, else None."""
    if isinstance(item, os.PathLike) or (isinstance(item, str) and "://" not in item[:16] and not item.startswith("data:")):
        return os.path.abspath(os.fspath(item))
    return None


def source_of(item: Any) -> str:
    """What a stored record shows as an image's origin: an absolute path, a URL, or a description.

    Example:
        >>> source_of("https://example.com/cat.jpg")
        'https://example.com/cat.jpg'
    """
    try:
        if not isinstance(item, (str, os.PathLike)) or str(item).startswith("data:"):
            return describe(item)
        text = os.fspath(item)
        # A file name that is not UTF-8 becomes a file:// URI of its bytes (inputs/names.py):
        # no database takes a surrogate-escaped string, and one such name cost a whole batch.
        return text if "://" in text[:16] else stored_name(os.path.abspath(text))
    except Exception:  # noqa: BLE001 - a description is for people, never a reason to fail
        return f"<{type(item).__name__}>"


def _as_load_error(error: BaseException, index: int, item: Any) -> ImageLoadError:
    if isinstance(error, ImageLoadError):
        return ImageLoadError(error.reason, index=index, source=error.source or source_of(item))
    # One odd item must not cost the batch: anything else is reported like a bad image.
    return ImageLoadError(f"{type(error).__name__}: {error}", index=index, source=source_of(item))


# --- ordered, bounded, per-call parallel map ------------------------------------------------------

def ordered_map(fn: Callable[[int, Any], Any], items: Iterable[Any], *, workers: int, window: int) -> Iterator[Any]:
    """``fn(index, item)`` over ``items`` in a pool of this call's own, results in input order.

    At most ``window`` items are in flight, so an endless iterator costs bounded memory; items are
    pulled from ``items`` lazily. Closing the iterator early cancels what has not started.

    Example:
        >>> list(ordered_map(lambda i, x: (i, x * 2), "ab", workers=2, window=4))
        [(0, 'aa'), (1, 'bb')]
    """
    workers = max(1, min(int(workers), MAX_WORKERS))
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="clip-decode")
    in_flight: deque[Future] = deque()
    try:
        for index, item in enumerate(items):
            in_flight.append(pool.submit(fn, index, item))
            if len(in_flight) >= window:
                yield in_flight.popleft().result()
        while in_flight:
            yield in_flight.popleft().result()
    finally:
        for future in in_flight:
            future.cancel()
        pool.shutdown(wait=False, cancel_futures=True)


def decode_many(items: Iterable[Any], options: LoaderOptions = DEFAULT_OPTIONS, *, workers: int = 4,
                draft_resolution: int | None = None) -> Iterator[Image.Image | ImageLoadError]:
    """Decode many inputs to RGB in parallel, in order; a bad one yields its :class:`ImageLoadError`.

    Example:
        >>> [type(x).__name__ for x in decode_many([np.zeros((2, 2), np.uint8), "missing.jpg"])]
        ['Image', 'ImageLoadError']
    """
    def one(index: int, item: Any) -> Image.Image | ImageLoadError:
        try:
            return load_rgb(item, options, draft_resolution=draft_resolution)
        except Exception as e:  # noqa: BLE001 - reported per item
            return _as_load_error(e, index, item)

    return ordered_map(one, items, workers=workers, window=4 * max(1, workers))


def preprocess_many(items: Iterable[Any], preprocess: Preprocess, options: LoaderOptions = DEFAULT_OPTIONS, *,
                    workers: int = 4, fast_decode: bool = True) -> Iterator[torch.Tensor | ImageLoadError]:
    """Preprocess many inputs to ``[3, R, R]`` tensors in parallel, in order (used by fine-tuning).

    Example:
        >>> [t.shape[-1] for t in preprocess_many([np.zeros((9, 9), np.uint8)], Preprocess(32))]
        [32]
    """
    def one(index: int, item: Any) -> torch.Tensor | ImageLoadError:
        try:
            return preprocess_one(item, preprocess, options, fast_decode=fast_decode)
        except Exception as e:  # noqa: BLE001 - reported per item
            return _as_load_error(e, index, item)

    return ordered_map(one, items, workers=workers, window=4 * max(1, workers))


# --- what turns prepared inputs into vectors ------------------------------------------------------

class Encoder(Protocol):
    """The model end of the pipeline: ``prepare`` runs in worker threads, ``encode`` once per batch.

    ``encode`` returns unit rows for the payloads it could embed, in order, and the reasons of those
    it could not, by position. ``cache_key`` files its vectors in the embedding cache (``None``:
    do not cache).
    """

    cache_key: str | None

    def prepare(self, item: Any, raw: RawImage) -> Any: ...

    def encode(self, payloads: list[Any]) -> tuple[np.ndarray, dict[int, str]]: ...


def _is_encoder(encoder: Encoder | LoadedModel) -> TypeIs[Encoder]:
    """An :class:`Encoder` already, as opposed to a ``LoadedModel`` to wrap in a :class:`LocalEncoder`."""
    return hasattr(encoder, "encode")


class LocalEncoder:
    """The shared model in this process: preprocess in the workers, one forward pass per batch."""

    def __init__(self, loaded: LoadedModel, options: LoaderOptions = DEFAULT_OPTIONS, fast_decode: bool = True):
        self.loaded, self.options, self.fast_decode = loaded, options, fast_decode
        self.cache_key: str | None = loaded.cache_key

    def prepare(self, item: Any, raw: RawImage) -> torch.Tensor:
        return preprocess_one(item, self.loaded.preprocess, self.options, fast_decode=self.fast_decode, raw=raw)

    def encode(self, payloads: list[torch.Tensor]) -> tuple[np.ndarray, dict[int, str]]:
        return l2_normalize(compute.run(self._features, payloads)), {}

    def _features(self, payloads: list[torch.Tensor]) -> np.ndarray:
        lm = self.loaded
        with torch.inference_mode():
            features = lm.model.encode_image(torch.stack(payloads).to(lm.device)).float().cpu().numpy()
        lm.used.set()  # dtype="auto"'s background work waits for the first forward pass
        return features


# --- the embedding pipeline -----------------------------------------------------------------------

class ImagePipeline:
    """Images in, unit vectors out, in input order, one model batch at a time.

    Args:
        encoder: what embeds a batch: a :class:`LocalEncoder` (or, as a shortcut, the
            ``LoadedModel`` it wraps), or a server's (``ClipEF(server=...)``).
        options: limits for image inputs.
        cache: the embedding cache, or ``None``.
        batch_size: images per forward pass.
        num_workers: threads reading and decoding ahead of the model (capped at ``MAX_WORKERS``).
        fast_decode: decode large JPEGs at a reduced scale (Pillow draft mode).

    Example:
        >>> pipeline = ImagePipeline(ef.loaded_model(), batch_size=32)
        >>> for batch in pipeline.batches(["cat.jpg", "missing.jpg"]):
        ...     print([(r.index, r.ok, r.reason) for r in batch])
        [(0, True, None), (1, False, 'file not found')]
    """

    def __init__(self, encoder: Encoder | LoadedModel, *, options: LoaderOptions = DEFAULT_OPTIONS,
                 cache: EmbeddingCache | None = None, batch_size: int = EmbeddingConfig.batch_size,
                 num_workers: int = EmbeddingConfig.num_workers,
                 fast_decode: bool = True):
        self.encoder: Encoder = encoder if _is_encoder(encoder) else LocalEncoder(encoder, options, fast_decode)
        self.options = options
        self.cache = cache if self.encoder.cache_key is not None else None
        self.batch_size = max(1, batch_size)
        self.num_workers = num_workers

    def batches(self, entries: Iterable[Any], *, item_of: Callable[[Any], Any] | None = None,
                progress: bool = False, total: int | None = None) -> Iterator[list[ImageResult]]:
        """Yield lists of :class:`ImageResult` in input order, each list ending with one forward pass.

        ``entries`` may be any iterable, endless too; with ``item_of`` each entry is a caller's
        record and ``item_of(entry)`` its image (the record comes back as ``result.entry``).
        A list holds at most ``batch_size`` results; identical content in one list is computed once.
        """
        from tqdm import tqdm

        item_of = item_of or (lambda entry: entry)
        prepared = ordered_map(lambda i, e: self._prepare(i, e, item_of(e)), entries,
                               workers=self.num_workers, window=2 * self.batch_size)
        pending: list[_Prepared] = []
        with tqdm(total=total, disable=not progress, unit="img", desc="embedding images") as bar:
            for item in prepared:
                bar.update(1)
                pending.append(item)
                if len(pending) >= self.batch_size:
                    yield self._finish(pending)
                    pending = []
            if pending:
                yield self._finish(pending)

    def _prepare(self, index: int, entry: Any, item: Any) -> _Prepared:
        """Runs in a worker thread: a cache hit, a preprocessed tensor, or the item's error."""
        result = ImageResult(index, entry, source_of(item))
        try:
            key = self.encoder.cache_key
            cache = self.cache if key is not None else None  # self.cache is None without a key already
            path = local_path(item)
            stat = None
            if cache is not None and key is not None and path is not None:
                try:
                    stat = os.stat(path)
                except (OSError, ValueError):  # ValueError: a NUL byte or a lone surrogate in the name
                    stat = None  # reading it below says what is wrong with it
                known = cache.file_digest(path, stat) if stat else None
                hit = cache.get(key, [known]).get(known) if known else None
                if hit is not None:
                    result.digest, result.vector, result.cached = known, hit, True
                    return _Prepared(result)
            with _lock_for(item):
                raw = read_image_source(item, self.options)
                result.digest = raw.digest
                if cache is not None and key is not None:
                    if stat is not None and path is not None:
                        cache.record_file_digest(path, stat, raw.digest)
                    hit = cache.get(key, [raw.digest]).get(raw.digest)
                    if hit is not None:
                        result.vector, result.cached = hit, True
                        return _Prepared(result)
                payload = self.encoder.prepare(item, raw)
            return _Prepared(result, payload)
        except Exception as e:  # noqa: BLE001 - reported per item
            error = _as_load_error(e, index, item)
            result.digest, result.reason, result.source = None, error.reason, error.source or result.source
            return _Prepared(result)

    def _finish(self, pending: list[_Prepared]) -> list[ImageResult]:
        """One encoder call over the batch's payloads (each distinct content once), then the cache."""
        first: dict[str, int] = {}
        payloads: list[Any] = []
        for p in pending:
            if p.payload is not None and p.result.digest is not None and p.result.digest not in first:
                first[p.result.digest] = len(payloads)
                payloads.append(p.payload)
        if not payloads:
            return [p.result for p in pending]
        vectors, failed = self.encoder.encode(payloads)
        row_of: dict[int, int] = {}
        for position in range(len(payloads)):
            if position not in failed:
                row_of[position] = len(row_of)
        for p in pending:
            if p.payload is None or p.result.digest is None:  # a payload always comes with its digest
                continue
            position = first[p.result.digest]
            if position in failed:
                p.result.reason = failed[position]
            else:
                p.result.vector = vectors[row_of[position]]
        key = self.encoder.cache_key
        if self.cache is not None and key is not None:
            good = {d: vectors[row_of[pos]] for d, pos in first.items() if pos not in failed}
            if good:
                self.cache.put(key, good)
        return [p.result for p in pending]


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, as float32 (a zero row stays zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
