"""clip-embeddings: OpenAI CLIP as a first-class embedding function for vector databases.

Three names cover most uses::

    import clip_embeddings as ce
    model, preprocess = ce.load("ViT-B/32")        # openai/CLIP's API, our implementation
    tokens = ce.tokenize(["a photo of a cat"])
    ef = ce.ClipEF()                                # one embedding function for every database

``__all__`` is the public surface: the CLIP core (``load``, ``tokenize``, ``available_models``),
the embedding function and its config, stores (``open_store``, ``Store``, ``IngestReport``),
loader options, the errors, and the task functions. Lower-level names (``CLIP``,
``build_model``, ``contrastive_loss``, ``optimize_for_inference``, ``Preprocess``) stay
importable from here and from their modules, outside ``__all__``.
"""

from ._version import __version__
from .adapters import open_store, registration
from .adapters.base import IngestReport, Store
from .core.download import available_models
from .core.loading import load

# Lower level, importable from here for existing code and docs, but not part of __all__.
from .core.model import CLIP, build_model  # noqa: F401
from .core.preprocess import Preprocess  # noqa: F401
from .core.tokenizer import tokenize
from .embedding.cache import EmbeddingCache
from .embedding.function import ClipEF, ImageEmbeddings, SkippedItem
from .errors import (
    BadRequest,
    CacheWarning,
    ClipError,
    ClipWarning,
    CollectionError,
    CollectionNotFoundError,
    ConfigError,
    DownloadError,
    EmptyCollectionError,
    ImageLoadError,
    IncompatibleCollectionError,
    MissingExtraError,
    ModelLoadError,
    ModelMismatchError,
    QueueFull,
    ServerError,
    StoreAddressError,
    TextTooLongError,
    UsageError,
)
from .inputs.options import LoaderOptions
from .runtime.inference import optimize_for_inference  # noqa: F401
from .tasks.evaluation import evaluate
from .tasks.finetune import (
    contrastive_loss,  # noqa: F401
    finetune,
    linear_probe,
)
from .tasks.scores import clip_score
from .tasks.zeroshot import ZeroShotClassifier, classify, moderate, similarity

registration.install()

__all__ = [
    # the CLIP core
    "available_models", "load", "tokenize",
    # the embedding function
    "ClipEF", "EmbeddingCache", "ImageEmbeddings", "LoaderOptions", "SkippedItem",
    # stores
    "IngestReport", "Store", "open_store",
    # tasks
    "ZeroShotClassifier", "classify", "clip_score", "evaluate", "finetune", "linear_probe", "moderate", "similarity",
    # errors and warnings (the tree: clip_embeddings.errors)
    "BadRequest", "CacheWarning", "ClipError", "ClipWarning", "CollectionError", "CollectionNotFoundError",
    "ConfigError", "DownloadError", "EmptyCollectionError", "ImageLoadError", "IncompatibleCollectionError",
    "MissingExtraError",
    "ModelLoadError", "ModelMismatchError", "QueueFull", "ServerError", "StoreAddressError",
    "TextTooLongError", "UsageError",
    "__version__",
]
