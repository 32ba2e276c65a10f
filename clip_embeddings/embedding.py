"""``ClipEF``: one CLIP embedding function for every vector database.

Databases rebuild an embedding function from its stored config whenever they please (Chroma does
on every add and query), so ``ClipEF`` objects are cheap: the model lives in a process-wide
registry, loaded once per (weights, device, dtype) and shared by every instance and thread.

Images stream through a small thread pool that reads, decodes and preprocesses a bounded window
ahead of the model, so file IO and JPEG decoding overlap the forward pass and memory stays flat
however many images come. A bad item is reported by index, source and reason; under
``on_error="skip"`` the rest of the batch is still embedded.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from .cache import EmbeddingCache
from .download import cache_dir
from .errors import ImageLoadError, ModelLoadError, ModelMismatchError
from .images import DEFAULT_OPTIONS, ImageLike, LoaderOptions, decode_image, describe, read_image_source
from .loading import default_device, load
from .model import CLIP, cast_weights
from .preprocess import Preprocess, resize_target
from .tokenizer import get_tokenizer, token_windows

CONFIG_VERSION = 1
OnError = Literal["raise", "skip"]
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# --- one model per process ------------------------------------------------------------------

@dataclass
class LoadedModel:
    """A model in the process-wide registry, with what identifies its embeddings."""

    model: CLIP
    preprocess: Preprocess
    device: torch.device
    dtype: torch.dtype
    fingerprint: str
    dim: int
    precision: str = "fp32"  # the numeric path the forward pass takes (dtype and rewrites)
    runtime: dict[str, Any] = field(default_factory=dict)  # what was decided and why (runtime.Decision)

    @property
    def cache_key(self) -> str:
        """What the embedding cache files vectors under: the weights *and* the precision path.

        The fingerprint says which space a vector lives in (a bf16 vector is comparable with an
        fp32 one); the cache must still never hand an fp32 caller a bf16 vector.
        """
        return f"{self.fingerprint}:{self.precision}"


_registry: dict[tuple, LoadedModel] = {}
_registry_lock = threading.Lock()
_load_count = 0


def model_load_count() -> int:
    """How many times this process has built a model from weights (each registry miss is one)."""
    return _load_count


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """A digest of the weights' names, shapes and a strided sample of their values.

    Independent of the file format and storage dtype (values are compared as fp32), and fast:
    a few thousand values per tensor instead of hashing hundreds of megabytes.
    """
    h = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach()
        flat = tensor.reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)].float().cpu().numpy()
        h.update(f"{name}{tuple(tensor.shape)}".encode())
        h.update(sample.tobytes())
    return h.hexdigest()


def fingerprint(state_dict: dict[str, torch.Tensor], preprocess: Preprocess) -> str:
    """What decides an embedding: the weights, the image preprocessing and the normalisation."""
    identity = {"weights": weights_digest(state_dict), "preprocess": preprocess.config(), "normalize": "l2"}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def shared_model(model: str, device: str | torch.device | None = None, dtype: str | None = None,
                 download_root: str | os.PathLike | None = None) -> LoadedModel:
    """The process-wide model for these weights, device and dtype, loaded on first use.

    ``dtype="auto"`` (or ``None``) on a CPU runs the path ``clip_embeddings.runtime`` decided for
    this machine (probed once per CPU model + torch version, then cached); an explicit dtype runs
    that dtype with every rewrite that applies. ``LoadedModel.runtime`` says what was chosen.

    Example:
        >>> lm = shared_model("ViT-B/32")  # doctest: +SKIP
        >>> lm is shared_model("ViT-B/32")  # doctest: +SKIP
        True
    """
    global _load_count
    from . import runtime
    from .inference import applicable_rewrites, prepare_for_inference

    device = torch.device(device or default_device())
    auto = dtype in (None, "auto") and device.type == "cpu"
    torch_dtype = None if auto else resolve_dtype(dtype, device)
    source = model if model in _known_names() else str(Path(model).expanduser().resolve())
    key = (source, str(device), "auto" if auto else torch_dtype, str(download_root))
    with _registry_lock:
        if key not in _registry:
            clip, preprocess = load(model, device="cpu", download_root=download_root, dtype=torch.float32)
            fp = fingerprint(clip.state_dict(), preprocess)
            caps = runtime.detect_capabilities()
            if auto:
                decision = runtime.auto_decision(clip, caps)
            elif device.type == "cpu" and torch_dtype in (torch.float32, torch.bfloat16):
                name = {torch.float32: "fp32", torch.bfloat16: "bf16"}[torch_dtype]
                decision = runtime.Decision(name, applicable_rewrites(clip, torch_dtype),
                                            f"dtype={dtype!r} asked for: every rewrite that applies", caps)
            else:  # CUDA, MPS, or fp16 on a CPU: cast only (SDPA attention is the model's own)
                name = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[torch_dtype]
                reason = "CUDA: fp16 weights with SDPA attention" if device.type == "cuda" and name == "fp16" \
                    else f"dtype={dtype!r} on {device.type}: weights cast, no CPU rewrite"
                decision = runtime.Decision(name, (), reason, caps)
            if device.type == "cpu":
                # Inference only from here on: the shared model is never trained or saved.
                clip = prepare_for_inference(clip, decision.torch_dtype, decision.rewrites)
            else:
                if decision.torch_dtype != torch.float32:
                    cast_weights(clip, decision.torch_dtype)
                clip = clip.to(device).eval()
            info = decision.as_dict(str(device))
            _registry[key] = LoadedModel(clip, preprocess, device, decision.torch_dtype, fp, clip.embed_dim,
                                         decision.precision, info)
            _load_count += 1
        return _registry[key]


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The torch dtype for a ``dtype`` setting; ``"auto"`` here is the device's static default.

    On a CPU, ``shared_model`` resolves ``"auto"`` by probing instead (``clip_embeddings.runtime``);
    this is what ``auto`` means on other devices: fp16 on CUDA, fp32 elsewhere.

    Example:
        >>> resolve_dtype("auto", torch.device("cuda"))
        torch.float16
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)} or 'auto', not {dtype!r}")
    return _DTYPES[dtype]


@lru_cache(maxsize=1)
def _known_names() -> frozenset[str]:
    from .download import available_models

    return frozenset(available_models())


# --- the image pipeline ---------------------------------------------------------------------

@dataclass(frozen=True)
class SkippedItem:
    """An input that could not be embedded: where it was in the batch, what it was, and why."""

    index: int
    source: str
    reason: str

    def __str__(self) -> str:
        return f"item {self.index} ({self.source}): {self.reason}"


@dataclass
class ImageEmbeddings:
    """The outcome of embedding a batch of images when bad items may be skipped.

    ``embeddings[i]`` belongs to input ``indices[i]``, whose content digest is ``digests[i]``.
    """

    embeddings: np.ndarray
    indices: list[int]
    digests: list[str]
    skipped: list[SkippedItem] = field(default_factory=list)
    cache_hits: int = 0


@lru_cache(maxsize=None)
def _decode_pool(workers: int) -> ThreadPoolExecutor:
    # Shared across instances: databases rebuild embedding functions too often to own threads.
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="clip-decode")


def _ordered_map(pool: ThreadPoolExecutor, fn: Callable, items: Iterable, window: int) -> Iterator:
    """``map`` in input order that keeps at most ``window`` items in flight (bounded memory)."""
    in_flight: deque[Future] = deque()
    try:
        for item in items:
            in_flight.append(pool.submit(fn, *item))
            if len(in_flight) >= window:
                yield in_flight.popleft().result()
        while in_flight:
            yield in_flight.popleft().result()
    finally:
        for future in in_flight:
            future.cancel()


def _local_path(item: Any) -> str | None:
    """The absolute path of an item that names a local file, else None."""
    if isinstance(item, os.PathLike) or (isinstance(item, str) and "://" not in item[:16] and not item.startswith("data:")):
        return os.path.abspath(os.fspath(item))
    return None


# --- the embedding function -----------------------------------------------------------------

class ClipEF:
    """CLIP as an embedding function: texts and images into one L2-normalised space.

    Works as is with Chroma (``embedding_function=ClipEF()``), and through the adapters with
    Qdrant, LanceDB and LangChain. Cheap to construct: weights load on first use, once per process.

    Args:
        model: a name from ``available_models()`` or a local checkpoint path (as ``load`` takes).
        device: ``"cpu"``, ``"cuda"``...; default CUDA when available.
        batch_size: images or texts per forward pass.
        dtype: ``"fp32"``, ``"fp16"``, ``"bf16"`` or ``"auto"`` (fp16 on CUDA, fp32 on CPU).
        long_text: ``"truncate"`` keeps the first 77 tokens; ``"chunk"`` averages 77-token windows.
        cache: keep image embeddings in the sqlite cache (``True``), not (``False``), or a path.
        on_error: ``"raise"`` stops at the first bad image; ``"skip"`` embeds the rest and reports.
        fast_decode: decode large JPEGs at reduced scale (Pillow draft mode) when that is safe.
        num_workers: threads that read, decode and preprocess images ahead of the model.
        loader_options: limits for image inputs (pixel count, bytes, URL timeout).
        download_root: where named models are cached (default ``~/.cache/clip``).

    Example:
        >>> import clip_embeddings as ce
        >>> ef = ce.ClipEF("ViT-B/32")  # doctest: +SKIP
        >>> ef.embed_texts(["a photo of a cat"]).shape  # doctest: +SKIP
        (1, 512)
        >>> collection = chroma_client.create_collection("photos", embedding_function=ef)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: str | os.PathLike = "ViT-B/32",
        device: str | None = None,
        batch_size: int = 32,
        dtype: str | None = "auto",
        long_text: Literal["truncate", "chunk"] = "truncate",
        cache: bool | str | os.PathLike = True,
        on_error: OnError = "raise",
        fast_decode: bool = True,
        num_workers: int = 4,
        loader_options: LoaderOptions = DEFAULT_OPTIONS,
        download_root: str | os.PathLike | None = None,
        *,
        expected_fingerprint: str | None = None,
        expected_dim: int | None = None,
    ):
        if long_text not in ("truncate", "chunk"):
            raise ValueError(f"long_text must be 'truncate' or 'chunk', not {long_text!r}")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
        if batch_size < 1 or num_workers < 1:
            raise ValueError("batch_size and num_workers must be at least 1")
        self.model_name = os.fspath(model)
        self.device = device
        self.batch_size = batch_size
        self.dtype = dtype
        self.long_text = long_text
        self.cache_setting = cache
        self.on_error = on_error
        self.fast_decode = fast_decode
        self.num_workers = num_workers
        self.loader_options = loader_options
        self.download_root = download_root
        self.expected_fingerprint = expected_fingerprint
        self.expected_dim = expected_dim

    # -- the model, loaded lazily and checked against what a collection expects --

    def _loaded(self) -> LoadedModel:
        try:
            lm = shared_model(self.model_name, self.device, self.dtype, self.download_root)
        except ModelLoadError as e:
            if self.expected_fingerprint is None:
                raise
            raise ModelMismatchError(
                f"this collection was built with model {self.model_name!r} (fingerprint {self.expected_fingerprint}, "
                f"dim {self.expected_dim}), which cannot be loaded here: {e} "
                "Open it with embedding_function=ClipEF(model=<path to the same weights>)."
            ) from None
        expected = (self.expected_fingerprint, self.expected_dim)
        if expected[0] is not None and (lm.fingerprint, lm.dim) != expected:
            raise ModelMismatchError(
                f"this collection was built with model {self.model_name!r} (fingerprint {expected[0]}, dim "
                f"{expected[1]}), but the weights loaded from {self.model_name!r} now have fingerprint "
                f"{lm.fingerprint} (dim {lm.dim}): its embeddings would not be comparable. Open it with "
                "ClipEF(model=<the weights it was built with>), or re-index it into a new collection."
            )
        return lm

    @property
    def dim(self) -> int:
        """Embedding dimension (512 for ViT-B/32)."""
        return self._loaded().dim

    @property
    def fingerprint(self) -> str:
        """Identifies the weights + preprocessing + normalisation behind these embeddings."""
        return self._loaded().fingerprint

    def runtime_info(self) -> dict[str, Any]:
        """What this function runs on and why: device, dtype, precision path, rewrites, CPU flags.

        ``from_cache`` says whether ``dtype="auto"`` reused a stored decision or probed just now;
        ``reason`` says why it chose what it did. Loads the model if it is not loaded yet.

        Example:
            >>> ClipEF().runtime_info()["precision"]  # doctest: +SKIP
            'bf16+onednn'
        """
        return dict(self._loaded().runtime)

    @property
    def cache(self) -> EmbeddingCache | None:
        if self.cache_setting is False:
            return None
        path = cache_dir() / "embeddings.sqlite3" if self.cache_setting is True else Path(self.cache_setting)
        return _open_cache(str(path))

    # -- texts --

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts into an ``[N, dim]`` float32 array of unit rows; long texts never raise.

        Texts are sorted by length into batches, and each batch runs only as far as its longest
        text, so short captions cost a fraction of the full 77-token context.

        Example:
            >>> ClipEF().embed_texts(["a dog", "a cat"]).shape  # doctest: +SKIP
            (2, 512)
        """
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"item {i}: texts must be str, got {type(text).__name__}")
        lm = self._loaded()
        tokenizer = get_tokenizer()
        context = lm.model.context_length
        owners, sequences = [], []
        for i, text in enumerate(texts):
            if self.long_text == "chunk":
                windows = token_windows(text, context)
            else:
                ids = tokenizer.encode(text)[: context - 2]
                windows = [[tokenizer.sot_token, *ids, tokenizer.eot_token]]
            owners += [i] * len(windows)
            sequences += windows
        vectors = _l2_normalize(self._encode_token_sequences(lm, sequences))
        out = np.zeros((len(texts), lm.dim), dtype=np.float32)
        np.add.at(out, np.asarray(owners, dtype=np.int64), vectors)  # a text's windows: mean of unit vectors
        return _l2_normalize(out)

    def _encode_token_sequences(self, lm: LoadedModel, sequences: list[list[int]]) -> np.ndarray:
        out = np.empty((len(sequences), lm.dim), dtype=np.float32)
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                width = max(len(sequences[i]) for i in batch)
                tokens = torch.zeros(len(batch), width, dtype=torch.long)
                for row, i in enumerate(batch):
                    tokens[row, : len(sequences[i])] = torch.tensor(sequences[i])
                features = lm.model.encode_text(tokens.to(lm.device)).float().cpu().numpy()
                out[batch] = features
        return out

    # -- images --

    def embed_images(self, images: Sequence[ImageLike], on_error: OnError | None = None) -> np.ndarray:
        """Embed images into an ``[N, dim]`` float32 array of unit rows.

        Items may be paths, URLs, bytes, data URIs, PIL images or numpy arrays. With
        ``on_error="skip"`` the rows of bad items are left out (a warning lists them); use
        :meth:`encode_images` to know which rows are which.

        Example:
            >>> ClipEF().embed_images(["cat.jpg", PIL.Image.open("dog.png")]).shape  # doctest: +SKIP
            (2, 512)
        """
        result = self.encode_images(images, on_error=on_error)
        if result.skipped:
            warnings.warn(f"skipped {len(result.skipped)} image(s): " + "; ".join(map(str, result.skipped)), stacklevel=2)
        return result.embeddings

    def encode_images(self, images: Iterable[ImageLike], on_error: OnError | None = None,
                      progress: bool = False, total: int | None = None) -> ImageEmbeddings:
        """Embed images and say which inputs each row belongs to and which were skipped, and why.

        Example:
            >>> result = ClipEF().encode_images(["cat.jpg", "missing.jpg"], on_error="skip")  # doctest: +SKIP
            >>> result.indices, [s.reason for s in result.skipped]  # doctest: +SKIP
            ([0], ['file not found'])
        """
        on_error = on_error or self.on_error
        lm = self._loaded()
        cache = self.cache
        draft = lm.preprocess.resolution if self.fast_decode else None
        prepare = lambda index, item: self._prepare_image(index, item, lm, cache, draft)  # noqa: E731

        vectors: dict[int, np.ndarray] = {}
        digests: dict[int, str] = {}
        skipped: list[SkippedItem] = []
        pending: list[tuple[int, str, torch.Tensor]] = []
        hits = 0

        def flush() -> None:
            if not pending:
                return
            batch = torch.stack([t for _, _, t in pending]).to(lm.device)
            with torch.inference_mode():
                features = _l2_normalize(lm.model.encode_image(batch).float().cpu().numpy())
            for (index, digest, _), vector in zip(pending, features):
                vectors[index], digests[index] = vector, digest
            if cache is not None:
                cache.put(lm.cache_key, {d: v for (_, d, _), v in zip(pending, features)})
            pending.clear()

        from tqdm import tqdm

        bar = tqdm(total=total, disable=not progress, unit="img", desc="embedding images")
        with bar:
            stream = _ordered_map(_decode_pool(self.num_workers), prepare, enumerate(images), 2 * self.batch_size)
            for index, kind, digest, payload in stream:
                bar.update(1)
                if kind == "error":
                    if on_error == "raise":
                        raise payload
                    skipped.append(SkippedItem(index, payload.source or "", payload.reason))
                elif kind == "hit":
                    vectors[index], digests[index] = payload, digest
                    hits += 1
                else:
                    pending.append((index, digest, payload))
                    if len(pending) >= self.batch_size:
                        flush()
            flush()

        indices = sorted(vectors)
        embeddings = np.stack([vectors[i] for i in indices]) if indices else np.zeros((0, lm.dim), np.float32)
        return ImageEmbeddings(embeddings, indices, [digests[i] for i in indices], skipped, hits)

    def _prepare_image(self, index: int, item: Any, lm: LoadedModel, cache: EmbeddingCache | None,
                       draft: int | None) -> tuple[int, str, str, Any]:
        """Runs in a worker thread: a cache hit, a preprocessed tensor, or the item's error."""
        try:
            path = _local_path(item)
            stat = None
            if cache is not None and path is not None:
                try:
                    stat = os.stat(path)
                except (OSError, ValueError):  # ValueError: a NUL byte or a lone surrogate in the name
                    stat = None  # read_image_source below says what is wrong with it
                known = cache.file_digest(path, stat) if stat else None
                hit = cache.get(lm.cache_key, [known]).get(known) if known else None
                if hit is not None:
                    return index, "hit", known, hit
            raw = read_image_source(item, self.loader_options)
            if cache is not None:
                if stat is not None:
                    cache.record_file_digest(path, stat, raw.digest)
                hit = cache.get(lm.cache_key, [raw.digest]).get(raw.digest)
                if hit is not None:
                    return index, "hit", raw.digest, hit
            image = decode_image(raw, self.loader_options, draft_resolution=draft)
            _check_resize(image, lm.preprocess.resolution, self.loader_options, raw.source)
            return index, "tensor", raw.digest, lm.preprocess(image)
        except ImageLoadError as e:
            return index, "error", "", ImageLoadError(e.reason, index=index, source=e.source or describe(item))
        except Exception as e:  # one odd item must not cost the batch: report it like any other
            return index, "error", "", ImageLoadError(f"{type(e).__name__}: {e}", index=index, source=_safe_describe(item))

    # -- the mixed-input protocol databases call --

    def __call__(self, input: Sequence[Any]) -> list[np.ndarray]:  # noqa: A002 (Chroma's name)
        """Embed a list of texts (``str``) and/or images (anything else), keeping the order.

        Example:
            >>> rows = ClipEF()(["a cat", np.zeros((32, 32, 3), np.uint8)])  # doctest: +SKIP
            >>> len(rows), rows[0].shape  # doctest: +SKIP
            (2, (512,))
        """
        text_at = [i for i, x in enumerate(input) if isinstance(x, str)]
        image_at = [i for i, x in enumerate(input) if not isinstance(x, str)]
        rows: list[np.ndarray | None] = [None] * len(input)
        if text_at:
            for i, v in zip(text_at, self.embed_texts([input[i] for i in text_at])):
                rows[i] = v
        if image_at:
            # A database needs one row per input, so bad images always raise here.
            for i, v in zip(image_at, self.encode_images([input[i] for i in image_at], on_error="raise").embeddings):
                rows[i] = v
        return rows  # type: ignore[return-value]

    def embed_query(self, input: Sequence[Any]) -> list[np.ndarray]:  # noqa: A002
        """Queries embed exactly like documents in CLIP's shared space."""
        return self.__call__(input)

    # -- the registry-plus-config protocol (Chroma's shape; LanceDB and Qdrant reuse the config) --

    @staticmethod
    def name() -> str:
        return "clip-embeddings"

    def default_space(self) -> str:
        return "cosine"

    def supported_spaces(self) -> list[str]:
        return ["cosine", "ip", "l2"]  # unit vectors: all three rank identically

    def get_config(self) -> dict[str, Any]:
        """What a database stores to rebuild this function, including the model fingerprint."""
        if self.expected_fingerprint is not None:
            fp, dim = self.expected_fingerprint, self.expected_dim
        else:
            lm = self._loaded()
            fp, dim = lm.fingerprint, lm.dim
        return {
            "model": self.model_name, "fingerprint": fp, "dim": dim, "batch_size": self.batch_size,
            "dtype": self.dtype, "long_text": self.long_text, "fast_decode": self.fast_decode,
            "version": CONFIG_VERSION,
        }

    @classmethod
    def build_from_config(cls, config: dict[str, Any]) -> ClipEF:
        """Rebuild from a stored config; the weights are checked against its fingerprint on use."""
        cls.validate_config(config)
        return cls(
            model=config["model"], batch_size=config.get("batch_size", 32), dtype=config.get("dtype", "auto"),
            long_text=config.get("long_text", "truncate"), fast_decode=config.get("fast_decode", True),
            expected_fingerprint=config["fingerprint"], expected_dim=config["dim"],
        )

    @staticmethod
    def validate_config(config: dict[str, Any]) -> None:
        missing = [k for k in ("model", "fingerprint", "dim") if k not in config]
        if missing:
            raise ValueError(f"not a clip-embeddings config: missing {', '.join(missing)} in {config}")
        if config.get("version", CONFIG_VERSION) > CONFIG_VERSION:
            raise ValueError(f"config version {config['version']} is newer than this clip-embeddings understands; upgrade it")

    def validate_config_update(self, old_config: dict[str, Any], new_config: dict[str, Any]) -> None:
        if "model" in new_config and new_config.get("fingerprint") not in (None, old_config.get("fingerprint")):
            raise ModelMismatchError(
                f"a collection built with {old_config.get('model')!r} cannot switch to {new_config.get('model')!r}: "
                "existing embeddings would not be comparable. Re-index into a new collection instead."
            )

    def is_legacy(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"ClipEF(model={self.model_name!r}, device={self.device!r}, dtype={self.dtype!r}, batch_size={self.batch_size})"


@lru_cache(maxsize=None)
def _open_cache(path: str) -> EmbeddingCache:
    return EmbeddingCache(path)


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def _check_resize(image: Any, resolution: int, options: LoaderOptions, source: str) -> None:
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


def _safe_describe(item: Any) -> str:
    try:
        return describe(item)
    except Exception:
        return f"<{type(item).__name__}>"
