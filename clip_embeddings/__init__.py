"""clip-embeddings: OpenAI CLIP as a first-class embedding function for vector databases.

Three names cover most uses::

    import clip_embeddings as ce
    model, preprocess = ce.load("ViT-B/32")        # openai/CLIP's API, our implementation
    tokens = ce.tokenize(["a photo of a cat"])
    ef = ce.ClipEF()                                # one embedding function for Chroma, Qdrant, LanceDB
"""

from ._version import __version__ as __version__  # re-exported: the facade's version
from .adapters import registration
from .core.download import available_models
from .core.loading import load
from .core.model import CLIP, build_model
from .core.preprocess import Preprocess
from .core.tokenizer import tokenize
from .embedding.cache import EmbeddingCache
from .embedding.function import ClipEF, ImageEmbeddings, SkippedItem
from .errors import (
    ClipError,
    CollectionNotFoundError,
    DownloadError,
    EmptyCollectionError,
    ImageLoadError,
    ModelLoadError,
    ModelMismatchError,
    TextTooLongError,
)
from .runtime.inference import optimize_for_inference
from .tasks.evaluation import evaluate
from .tasks.finetune import contrastive_loss, finetune, linear_probe
from .tasks.scores import clip_score
from .tasks.zeroshot import ZeroShotClassifier, classify, moderate, similarity

registration.install()

__all__ = [
    "CLIP",
    "ClipEF",
    "EmbeddingCache",
    "ImageEmbeddings",
    "SkippedItem",
    "ClipError",
    "CollectionNotFoundError",
    "DownloadError",
    "EmptyCollectionError",
    "ImageLoadError",
    "ModelLoadError",
    "ModelMismatchError",
    "Preprocess",
    "TextTooLongError",
    "ZeroShotClassifier",
    "available_models",
    "build_model",
    "classify",
    "clip_score",
    "contrastive_loss",
    "evaluate",
    "finetune",
    "linear_probe",
    "load",
    "moderate",
    "optimize_for_inference",
    "similarity",
    "tokenize",
]
