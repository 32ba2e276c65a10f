"""clip-embeddings: OpenAI CLIP as a first-class embedding function for vector databases.

Three names cover most uses::

    import clip_embeddings as ce
    model, preprocess = ce.load("ViT-B/32")        # openai/CLIP's API, our implementation
    tokens = ce.tokenize(["a photo of a cat"])
    ef = ce.ClipEF()                                # one embedding function for Chroma, Qdrant, LanceDB
"""

from . import _registration
from .cache import EmbeddingCache
from .download import available_models
from .embedding import ClipEF, ImageEmbeddings, SkippedItem
from .evaluation import evaluate
from .finetune import contrastive_loss, finetune, linear_probe
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
from .inference import optimize_for_inference
from .loading import load
from .model import CLIP, build_model
from .preprocess import Preprocess
from .tasks.scores import clip_score
from .tokenizer import tokenize
from .zeroshot import ZeroShotClassifier, classify, moderate, similarity

__version__ = "0.1.0"

_registration.install()

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
