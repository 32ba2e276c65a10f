"""``ClipEF``: one CLIP embedding function for every vector database.

Databases rebuild an embedding function from its stored config whenever they please (Chroma does
on every add and query), so ``ClipEF`` objects are cheap: the model lives in a process-wide
registry, loaded once per (weights, device, dtype) and shared by every instance and thread.

Images go through :mod:`clip_embeddings.embedding.pipeline`, the one image path of the library. A bad item
is reported by index, source and reason; under ``on_error="skip"`` the rest is still embedded.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import (
    CONFIG_VERSION,  # noqa: F401 - re-exported: its old import path
    EmbeddingConfig,
    LongText,
    OnError,
    check_on_error,
)
from ..core.download import cache_dir
from ..core.loading import check_model_reference, default_model
from ..core.tokenizer import get_tokenizer, prefix_worth_sharing, token_windows
from ..errors import ClipError, ConfigError, ImageLoadError, ModelLoadError, ModelMismatchError, ServerError
from ..inputs.options import DEFAULT_OPTIONS, ImageLike, LoaderOptions
from ..runtime import compute
from .cache import CacheWarning, EmbeddingCache
from .loaded import LoadedModel, shared_model
from .pipeline import ImagePipeline, SkippedItem, l2_normalize

# long_text="chunk" embeds at most this many 75-token windows per text (about 20 KB of English):
# one forward pass each, so a 1 MB text would otherwise cost thousands of them (66 s measured).
MAX_TEXT_WINDOWS = 64
# Tokens per text forward pass on a CPU. Quiet 2-core Zen 4, 256 captions of 9-20 tokens, whole
# embed_texts: 512-1024 tokens a pass ran 5-10% faster than 2,464 (batch_size 32 x 77) in bf16, fp32
# and fp32 held to AVX2 kernels, and 4,928 slower still (the MLP's activations outgrow the caches);
# under load fewer, larger passes win over 32 short rows (~480 tokens), so the cap sits at the top
# of the quiet optimum. Other devices keep the full batch_size x 77 (not measured: no GPU here).
CPU_TEXT_TOKENS = 1024

# --- results ------------------------------------------------------------------------------

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


# --- the embedding function -----------------------------------------------------------------

_DEFAULTS = EmbeddingConfig()


def _setting(name: str) -> property:
    """An attribute of ClipEF that reads and (validated) writes field ``name`` of its config."""

    def get(self: ClipEF) -> Any:
        return getattr(self._config, name)

    def set_(self: ClipEF, value: Any) -> None:
        self._config = self._config.replace(**{name: value})

    return property(get, set_, doc=f"The ``{name}`` setting of :attr:`ClipEF.config`.")


def _path_str(value: str | os.PathLike) -> str:
    """A path a user passed as a ``PathLike``, as the string the config holds (a string stays as it is)."""
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _loader_options(value: LoaderOptions | dict[str, Any] | None) -> LoaderOptions:
    """The options as a (hashable) LoaderOptions; a stored dict is checked and rebuilt."""
    if isinstance(value, LoaderOptions):
        return value
    try:
        return LoaderOptions.from_config(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"loader_options: {e}") from None


class ClipEF:
    """CLIP as an embedding function: texts and images into one L2-normalised space.

    Works as is with Chroma (``embedding_function=ClipEF()``), and through the adapters with
    Qdrant, LanceDB and LangChain. Cheap to construct: weights load on first use, once per process.

    Args:
        model: a name from ``available_models()`` or a local checkpoint path (as ``load`` takes);
            default ``$CLIP_WEIGHTS`` when set, else ``"ViT-B/32"``. A name that is not known and
            a path that does not exist raise :class:`ModelLoadError` here, not at first use.
        device: ``"cpu"``, ``"cuda"``...; default CUDA when available.
        batch_size: images per forward pass; for texts, the token budget of ``batch_size``
            full 77-token rows (short captions run many more rows per pass in the same memory),
            at most ``CPU_TEXT_TOKENS`` (1,024) on a CPU.
        dtype: ``"fp32"``, ``"fp16"``, ``"bf16"``, ``"int8"`` or ``"auto"`` (fp16 on CUDA, fp32 on CPU).
        long_text: ``"truncate"`` keeps the first 77 tokens; ``"chunk"`` averages 77-token windows
            (the first ``MAX_TEXT_WINDOWS`` = 64 of them, about 4,800 tokens; the rest is ignored).
        cache: keep image embeddings in the sqlite cache (``True``), not (``False``), or a path.
        on_error: ``"raise"`` stops at the first bad image; ``"skip"`` embeds the rest and reports.
        fast_decode: decode large JPEGs at reduced scale (Pillow draft mode) when that is safe.
        num_workers: threads that read, decode and preprocess images ahead of the model.
        loader_options: limits for image inputs (pixel count, bytes, URL timeout).
        download_root: where named models are cached (default ``~/.cache/clip``).
        server: the URL of a ``clip-embeddings serve`` that computes the embeddings instead of a
            local model (see :mod:`clip_embeddings.embedding.remote`); persisted in the config.

    Example:
        >>> import clip_embeddings as ce
        >>> ef = ce.ClipEF()  # ViT-B/32, or the weights $CLIP_WEIGHTS names
        >>> ef.embed_texts(["a photo of a cat"]).shape
        (1, 512)
        >>> import chromadb
        >>> collection = chromadb.EphemeralClient().create_collection("photos", embedding_function=ef)
    """

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        device: str | None = _DEFAULTS.device,
        batch_size: int = _DEFAULTS.batch_size,
        dtype: str | None = _DEFAULTS.dtype,
        long_text: LongText = _DEFAULTS.long_text,
        cache: bool | str | os.PathLike = _DEFAULTS.cache,
        on_error: OnError = _DEFAULTS.on_error,
        fast_decode: bool = _DEFAULTS.fast_decode,
        num_workers: int = _DEFAULTS.num_workers,
        loader_options: LoaderOptions | dict[str, Any] = DEFAULT_OPTIONS,
        download_root: str | os.PathLike | None = _DEFAULTS.download_root,
        *,
        expected_fingerprint: str | None = None,
        expected_dim: int | None = None,
        server: str | None = _DEFAULTS.server,
    ):
        # The defaults above are EmbeddingConfig's, and so is every check: one place for both.
        model_ref = _path_str(default_model() if model is None else model)
        config = EmbeddingConfig(
            model=model_ref, device=device, batch_size=batch_size, dtype=dtype,
            long_text=long_text, cache=cache if isinstance(cache, bool) else _path_str(cache), on_error=on_error,
            fast_decode=fast_decode, num_workers=num_workers, loader_options=_loader_options(loader_options),
            download_root=None if download_root is None else _path_str(download_root), server=server,
            fingerprint=expected_fingerprint, dim=expected_dim,
        )
        if expected_fingerprint is None:
            # A typo fails here, not at the first add; a function rebuilt from a collection's
            # config keeps failing on use, with a ModelMismatchError saying how to open it.
            check_model_reference(model_ref)
        self._config = config

    @classmethod
    def from_config(cls, config: EmbeddingConfig) -> ClipEF:
        """The function an :class:`~clip_embeddings.config.EmbeddingConfig` describes.

        Example:
            >>> from clip_embeddings.config import EmbeddingConfig
            >>> ClipEF.from_config(EmbeddingConfig(model="ViT-B/32", batch_size=8)).batch_size
            8
        """
        values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        fingerprint, dim = values.pop("fingerprint"), values.pop("dim")
        return cls(**values, expected_fingerprint=fingerprint, expected_dim=dim)

    @property
    def config(self) -> EmbeddingConfig:
        """Every setting of this function, as one frozen :class:`~clip_embeddings.config.EmbeddingConfig`."""
        return self._config

    # The settings read as attributes and can be changed (a server or a CLI command adjusts a
    # function rebuilt from a stored config); each change is validated by EmbeddingConfig.
    model_name = _setting("model")
    device = _setting("device")
    batch_size = _setting("batch_size")
    dtype = _setting("dtype")
    long_text = _setting("long_text")
    cache_setting = _setting("cache")
    on_error = _setting("on_error")
    fast_decode = _setting("fast_decode")
    num_workers = _setting("num_workers")
    download_root = _setting("download_root")
    expected_fingerprint = _setting("fingerprint")
    expected_dim = _setting("dim")
    server = _setting("server")

    @property
    def loader_options(self) -> LoaderOptions:
        return self._config.loader_options

    @loader_options.setter
    def loader_options(self, value: LoaderOptions | dict[str, Any]) -> None:
        self._config = self._config.replace(loader_options=_loader_options(value))

    # -- the model, loaded lazily and checked against what a collection expects --

    def _loaded(self) -> LoadedModel:
        if self.server:
            raise ClipError(f"this ClipEF embeds on the server {self.server}; it has no local model to use here")
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

    def loaded_model(self) -> LoadedModel:
        """The shared model behind this function (loaded on first use), checked against the collection's.

        Example:
            >>> ClipEF(dtype="fp32").loaded_model().precision  # and the rewrites this CPU runs, e.g. '+onednn'
            'fp32...'
        """
        return self._loaded()

    @property
    def dim(self) -> int:
        """Embedding dimension (512 for ViT-B/32)."""
        return self._remote().check(self._expected())["dim"] if self.server else self._loaded().dim

    @property
    def fingerprint(self) -> str:
        """Identifies the weights + preprocessing + normalisation behind these embeddings."""
        return self._remote().check(self._expected())["fingerprint"] if self.server else self._loaded().fingerprint

    @property
    def logit_scale(self) -> float:
        """The model's learned temperature multiplier (``logit_scale.exp()``, 100 for OpenAI's
        checkpoints): zero-shot probabilities are the softmax of it times the cosines. With a
        server, the server's model's (from its ``/health``), so nothing is loaded here."""
        if self.server:
            health = self._remote().check(self._expected())
            if "logit_scale" not in health:
                raise ServerError(f"the embedding server at {self.server} does not report its model's logit_scale "
                                  "(an older clip-embeddings serve): upgrade it, or run without server=")
            return float(health["logit_scale"])
        return float(self._loaded().model.logit_scale.detach().float().exp().item())

    def _expected(self) -> tuple[str | None, int | None]:
        """The ``(fingerprint, dim)`` this function's collection was built with, or ``(None, None)``."""
        return self.expected_fingerprint, self.expected_dim

    def _remote(self):
        from .remote import remote_model

        return remote_model(self.server)

    def runtime_info(self) -> dict[str, Any]:
        """What this function runs on and why: device, dtype, precision path, rewrites, CPU flags.

        ``from_cache`` says whether ``dtype="auto"`` reused a stored decision or probed just now;
        ``reason`` says why it chose what it did. Loads the model if it is not loaded yet.

        Example:
            >>> ClipEF().runtime_info()["precision"]  # what dtype="auto" chose on this machine
            '...'
        """
        return dict(self._loaded().runtime)

    @property
    def cache(self) -> EmbeddingCache | None:
        if self.cache_setting is False:
            return None
        if self.cache_setting is not True:
            return _open_cache(str(Path(self.cache_setting)))
        try:
            root = cache_dir()
        except OSError as e:  # a read-only home: the cache is an optimisation, embed without it
            _warn_once(f"no embedding cache: its folder cannot be created ({e}); set CLIP_CACHE_DIR to a "
                       "writable folder, or pass cache=False")
            return None
        return _open_cache(str(root / "embeddings.sqlite3"))

    # -- texts --

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts into an ``[N, dim]`` float32 array of unit rows; long texts never raise.

        Texts are sorted by length into batches, and each batch runs only as far as its longest
        text, so short captions cost a fraction of the full 77-token context.

        Example:
            >>> ClipEF().embed_texts(["a dog", "a cat"]).shape
            (2, 512)
        """
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"item {i}: texts must be str, got {type(text).__name__}")
        if self.server:
            return self._remote().embed_texts(texts, self._expected(), self.batch_size)
        lm = self._loaded()
        tokenizer = get_tokenizer()
        context = lm.model.context_length
        owners, sequences = [], []
        for i, text in enumerate(texts):
            if self.long_text == "chunk":
                windows = token_windows(text, context, max_windows=MAX_TEXT_WINDOWS)
            else:
                ids = tokenizer.encode(text, max_ids=context - 2)[: context - 2]
                windows = [[tokenizer.sot_token, *ids, tokenizer.eot_token]]
            owners += [i] * len(windows)
            sequences += windows
        vectors = l2_normalize(self._encode_token_sequences(lm, sequences))
        out = np.zeros((len(texts), lm.dim), dtype=np.float32)
        np.add.at(out, np.asarray(owners, dtype=np.int64), vectors)  # a text's windows: mean of unit vectors
        return l2_normalize(out)

    def _encode_token_sequences(self, lm: LoadedModel, sequences: list[list[int]]) -> np.ndarray:
        return compute.run(self._encode_token_sequences_here, lm, sequences)

    def _encode_token_sequences_here(self, lm: LoadedModel, sequences: list[list[int]]) -> np.ndarray:
        out = np.empty((len(sequences), lm.dim), dtype=np.float32)
        # By length, then by ids: texts from one prompt template land side by side and share a prefix.
        order = sorted(range(len(sequences)), key=lambda i: (len(sequences[i]), sequences[i]))
        with torch.inference_mode():
            budget = self.batch_size * lm.model.context_length
            if lm.device.type == "cpu":
                budget = min(budget, CPU_TEXT_TOKENS)
            for batch in token_budget_batches([len(sequences[i]) for i in order], order, budget):
                width = max(len(sequences[i]) for i in batch)
                tokens = torch.zeros(len(batch), width, dtype=torch.long)
                for row, i in enumerate(batch):
                    tokens[row, : len(sequences[i])] = torch.tensor(sequences[i])
                if lm.device.type == "cpu" and not prefix_worth_sharing(tokens, tokens.argmax(dim=-1)):
                    # Packed, no padding: 6-7% faster for 64-256 captions (quiet Zen 4, bf16 and fp32).
                    # Other devices keep one padded batch: untested here, and launches cost more there.
                    groups, start = [], 0
                    for length, run in itertools.groupby(len(sequences[i]) for i in batch):  # batch is length-sorted
                        rows = sum(1 for _ in run)
                        groups.append(tokens[start:start + rows, :length])
                        start += rows
                    features = lm.model.encode_text_packed(groups)
                else:  # a prompt template's common head is computed once on the padded batch
                    features = lm.model.encode_text(tokens.to(lm.device))
                out[batch] = features.float().cpu().numpy()
        lm.used.set()  # dtype="auto"'s background work waits for the first forward pass
        return out

    # -- images --

    def embed_images(self, images: Sequence[ImageLike], on_error: OnError | None = None) -> np.ndarray:
        """Embed images into an ``[N, dim]`` float32 array of unit rows.

        Items may be paths, URLs, bytes, data URIs, PIL images or numpy arrays. With
        ``on_error="skip"`` the rows of bad items are left out (a warning lists them); use
        :meth:`encode_images` to know which rows are which.

        Example:
            >>> from PIL import Image
            >>> ClipEF().embed_images(["cat.jpg", Image.open("rocket.jpg")]).shape
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
            >>> result = ClipEF().encode_images(["cat.jpg", "missing.jpg"], on_error="skip")
            >>> result.indices, [s.reason for s in result.skipped]
            ([0], ['file not found'])
        """
        on_error = check_on_error(on_error or self.on_error)
        rows: list[np.ndarray] = []
        indices: list[int] = []
        digests: list[str] = []
        skipped: list[SkippedItem] = []
        hits = 0
        for batch in self.image_pipeline().batches(images, progress=progress, total=total):
            for r in batch:
                if r.vector is None or r.digest is None:  # not r.ok: a vector always comes with its digest
                    if on_error == "raise":
                        raise r.error()
                    skipped.append(r.skipped())
                    continue
                rows.append(r.vector)
                indices.append(r.index)
                digests.append(r.digest)
                hits += r.cached
        embeddings = np.stack(rows) if rows else np.zeros((0, self.dim), np.float32)
        return ImageEmbeddings(embeddings, indices, digests, skipped, hits)

    def image_pipeline(self) -> ImagePipeline:
        """The image pipeline with this function's model, cache, limits and batching.

        Example:
            >>> for batch in ClipEF().image_pipeline().batches(["cat.jpg", "missing.jpg"]):
            ...     print([r.vector.shape if r.ok else r.reason for r in batch])
            [(512,), 'file not found']
        """
        if self.server:  # the same reading and guards here; the server's model does the rest
            encoder = self._remote().encoder(self.loader_options, self._expected(), self.batch_size)
            return ImagePipeline(encoder, options=self.loader_options, batch_size=encoder.per_request,
                                 num_workers=self.num_workers)
        return ImagePipeline(self._loaded(), options=self.loader_options, cache=self.cache,
                             batch_size=self.batch_size, num_workers=self.num_workers, fast_decode=self.fast_decode)

    # -- the mixed-input protocol databases call --

    def __call__(self, input: Sequence[Any]) -> list[np.ndarray]:  # noqa: A002 (Chroma's name)
        """Embed a list of texts (``str``) and/or images (anything else), keeping the order.

        Example:
            >>> rows = ClipEF()(["a cat", np.zeros((32, 32, 3), np.uint8)])
            >>> len(rows), rows[0].shape
            (2, (512,))
        """
        text_at = [i for i, x in enumerate(input) if isinstance(x, str)]
        image_at = [i for i, x in enumerate(input) if not isinstance(x, str)]
        rows: list[np.ndarray | None] = [None] * len(input)
        if text_at:
            for i, v in zip(text_at, self.embed_texts([input[i] for i in text_at]), strict=True):
                rows[i] = v
        if image_at:
            # A database needs one row per input, so bad images always raise here, naming the
            # bad image's place in ``input`` (the pipeline only saw the images).
            try:
                encoded = self.encode_images([input[i] for i in image_at], on_error="raise")
            except ImageLoadError as e:
                if e.index is None:
                    raise
                raise ImageLoadError(e.reason, index=image_at[e.index], source=e.source) from None
            for i, v in zip(image_at, encoded.embeddings, strict=True):
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
        """What a database stores to rebuild this function (:meth:`EmbeddingConfig.to_dict`), with
        the model fingerprint and dimension."""
        if self.expected_fingerprint is not None:
            fp, dim = self.expected_fingerprint, self.expected_dim
        else:
            fp, dim = self.fingerprint, self.dim
        model = self._remote().health()["model"] if self.server else self.model_name  # what the server runs
        return self._config.replace(model=model, fingerprint=fp, dim=dim).to_dict()

    @classmethod
    def build_from_config(cls, config: dict[str, Any]) -> ClipEF:
        """Rebuild from a stored config; the weights are checked against its fingerprint on use.

        Configs written before a key existed get the default they were made with.
        """
        return cls.from_config(_stored(config))

    @staticmethod
    def validate_config(config: dict[str, Any]) -> None:
        """Raise :class:`ConfigError` (or :class:`IncompatibleCollectionError`) if ``config`` cannot be rebuilt."""
        _stored(config)

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


def _stored(document: dict[str, Any]) -> EmbeddingConfig:
    """A stored config checked and read, its loader options as LoaderOptions."""
    config = EmbeddingConfig.from_dict(document)
    try:
        return config.replace(loader_options=_loader_options(config.loader_options))
    except ConfigError as e:
        raise ConfigError(f"config {e}") from None


_MAX_OPEN_CACHES = 8
_open_caches: OrderedDict[str, EmbeddingCache] = OrderedDict()
_open_caches_lock = threading.Lock()
_warned: set[str] = set()


def _open_cache(path: str) -> EmbeddingCache:
    """The process's cache object for ``path``; the 8 most recently used stay open, older ones closed.

    Databases rebuild functions constantly, so the objects are shared; but each open cache holds
    file descriptors, and a process cycling through many cache paths must not run out of them.
    A closed cache still in use by some call simply reopens.
    """
    with _open_caches_lock:
        cache = _open_caches.pop(path, None)
        if cache is None:  # not `or`: an empty cache has len() 0
            cache = EmbeddingCache(path)
        _open_caches[path] = cache
        while len(_open_caches) > _MAX_OPEN_CACHES:
            _open_caches.popitem(last=False)[1].close()
        return cache


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, CacheWarning, stacklevel=3)


def token_budget_batches(lengths: Sequence[int], items: Sequence[Any], budget: int) -> Iterable[list[Any]]:
    """Split ``items`` (sorted by ascending ``lengths``) into batches of at most ``budget`` tokens.

    (A row longer than ``budget`` alone still makes a batch of its own.)

    A batch's cost is its rows times its longest row. Counting tokens instead of texts keeps
    every batch within the memory of ``batch_size`` full-length rows while short captions run
    many rows per forward pass: on a CPU each transformer op has a fixed cost (a thread barrier,
    a kernel launch), so fewer, larger ops are faster, most of all on a loaded machine.

    Example:
        >>> list(token_budget_batches([3, 3, 4, 9], ["a", "b", "c", "d"], budget=12))
        [['a', 'b', 'c'], ['d']]
    """
    batch: list[Any] = []
    for length, item in zip(lengths, items, strict=True):
        if batch and (len(batch) + 1) * length > budget:
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch
