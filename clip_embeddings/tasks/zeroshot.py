"""Zero-shot tasks on top of :class:`~clip_embeddings.ClipEF`: labels, similarity, moderation.

CLIP classifies without training by embedding each candidate label as text and picking the label
whose embedding is closest to the image's. Following the paper (Section 3.1.4), each label is
written into several prompt templates ("a photo of a {}.", ...) and the unit text embeddings are
averaged and renormalised into one *class prototype* ("prompt ensembling"); the prototypes of a
label set are computed once per process and model.

Example:
    >>> from clip_embeddings.tasks.zeroshot import classify
    >>> result = classify(["cat.jpg"], ["cat", "dog", "car"])
    >>> result.top_labels[0][0], round(result.top_scores[0][0], 2)  # the best label and its probability
    ('...', 0...)
"""

from __future__ import annotations

import json
import os
import string
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources

import numpy as np
from PIL import Image

from ..embedding.function import ClipEF, ImageEmbeddings, OnError, SkippedItem

__all__ = [
    "DEFAULT_TEMPLATES",
    "IMAGENET_CLASSES",
    "IMAGENET_SELECTED_TEMPLATES",
    "IMAGENET_TEMPLATES",
    "ClassificationResult",
    "ModerationResult",
    "ModerationResults",
    "SimilarityResult",
    "ZeroShotClassifier",
    "classify",
    "clear_prototype_cache",
    "moderate",
    "prototype_cache_bytes",
    "similarity",
    "template_parts",
]


def _data(name: str) -> dict:
    return json.loads(resources.files("clip_embeddings").joinpath("data").joinpath(name).read_text(encoding="utf-8"))


_TEMPLATE_DATA = _data("imagenet_templates.json")

#: The paper's 80-template ImageNet ensemble (openai/CLIP, Prompt_Engineering_for_ImageNet.ipynb).
IMAGENET_TEMPLATES: tuple[str, ...] = tuple(_TEMPLATE_DATA["templates"])

#: The 7 of those 80 that the notebook's forward selection kept; slightly better than all 80.
IMAGENET_SELECTED_TEMPLATES: tuple[str, ...] = tuple(_TEMPLATE_DATA["selected"])

#: The 1000 ImageNet class names in class-index order, as OpenAI edited them for prompting.
IMAGENET_CLASSES: tuple[str, ...] = tuple(_data("imagenet_classes.json")["classes"])

#: A small general-purpose ensemble: the canonical prompt plus five of the notebook's forward-selected
#: templates (its "origami" and "video game" renditions are left out: they suit ImageNet-R more
#: than arbitrary user labels). Six text encodes per label.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "itap of a {}.",
    "a bad photo of the {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "art of the {}.",
)


# --- results ----------------------------------------------------------------------------------

@dataclass
class ClassificationResult:
    """Zero-shot predictions for a batch of images.

    Row ``i`` of ``probs``/``cosine`` and entry ``i`` of ``top_labels``/``top_scores`` belong to
    input ``indices[i]``; inputs that could not be read are in ``skipped`` (``on_error="skip"``).

    Attributes:
        labels: the candidate labels, in the column order of ``probs``.
        probs: ``[N, C]`` softmax over labels of ``logit_scale * cosine``; rows sum to 1.
        cosine: ``[N, C]`` cosine similarity of each image to each class prototype.
        top_labels: the ``k`` most probable labels per image, best first.
        top_scores: their probabilities.
        indices: the input position of each row.
        skipped: the inputs left out, with the reason.
        logit_scale: the temperature multiplier used (the model's ``logit_scale.exp()``).
    """

    labels: list[str]
    probs: np.ndarray
    cosine: np.ndarray
    top_labels: list[list[str]]
    top_scores: list[list[float]]
    indices: list[int]
    skipped: list[SkippedItem] = field(default_factory=list)
    logit_scale: float = 100.0

    @property
    def predictions(self) -> list[str]:
        """The top-1 label of each embedded image."""
        return [row[0] for row in self.top_labels]

    def __len__(self) -> int:
        return len(self.indices)


@dataclass
class SimilarityResult:
    """Image-text similarities: ``cosine[i, j]`` and ``probs[i, j]`` for image ``indices[i]`` and text ``j``.

    ``probs`` is the softmax over texts of ``logit_scale * cosine``: what openai/CLIP's
    ``model(image, text)[0].softmax(dim=-1)`` gives.
    """

    cosine: np.ndarray
    probs: np.ndarray
    indices: list[int]
    skipped: list[SkippedItem] = field(default_factory=list)
    logit_scale: float = 100.0


@dataclass
class ModerationResult:
    """The screening outcome for one image (input ``index``).

    Attributes:
        index: the input position of this image.
        flagged: whether ``unsafe_score >= threshold``.
        unsafe_score: summed probability of all unsafe labels (0..1).
        top_unsafe_label: the most probable unsafe label.
        top_unsafe_score: its probability.
        top_label: the most probable label overall (safe or unsafe).
        scores: probability of every label.
    """

    index: int
    flagged: bool
    unsafe_score: float
    top_unsafe_label: str
    top_unsafe_score: float
    top_label: str
    scores: dict[str, float]


class ModerationResults(list):
    """A ``list`` of :class:`ModerationResult` that also says which inputs were not screened.

    Images in ``skipped`` (unreadable, under ``on_error="skip"``) have no result: treat them as
    unscreened, not as safe.
    """

    def __init__(self, results: Iterable[ModerationResult] = (), skipped: Sequence[SkippedItem] = ()):
        super().__init__(results)
        self.skipped: list[SkippedItem] = list(skipped)

    @property
    def flagged(self) -> list[ModerationResult]:
        """The results whose images were flagged."""
        return [r for r in self if r.flagged]


# --- the prototype cache ----------------------------------------------------------------------

_PROTOTYPE_CACHE_SIZE = 32
# Keys hold the labels and templates a caller (a server's client) wrote: bounded in bytes, not
# only in entries, so large label sets cannot pile up (10 requests once kept +318 MB).
_PROTOTYPE_CACHE_BYTES = 64 * 2**20
_prototypes: OrderedDict[tuple, np.ndarray] = OrderedDict()
_prototype_bytes: dict[tuple, int] = {}
_prototypes_lock = threading.Lock()


def prototype_cache_bytes() -> int:
    """What the prototype cache holds: its vectors plus the labels and templates in its keys.

    Example:
        >>> clear_prototype_cache(); prototype_cache_bytes()
        0
    """
    with _prototypes_lock:
        return sum(_prototype_bytes.values())


def _entry_bytes(key: tuple, prototypes: np.ndarray) -> int:
    labels, templates = key[-2], key[-1]
    return prototypes.nbytes + sum(len(s.encode("utf-8", "surrogatepass")) + 64 for s in (*labels, *templates))


def clear_prototype_cache() -> None:
    """Forget every cached class prototype (they are recomputed on next use).

    Example:
        >>> clear_prototype_cache()
    """
    with _prototypes_lock:
        _prototypes.clear()
        _prototype_bytes.clear()


def _cache_key(ef: ClipEF, labels: tuple[str, ...], templates: tuple[str, ...]) -> tuple:
    # Beyond (fingerprint, labels, templates): the dtype changes the vectors slightly and
    # long_text="chunk" changes them for prompts over 77 tokens, so both are part of the identity.
    # A server's vectors are keyed by its URL as well: it runs its own dtype, which only it knows.
    precision = ("server", ef.server) if ef.server else str(ef.loaded_model().dtype)
    return (ef.fingerprint, precision, ef.long_text, labels, templates)


def _compute_prototypes(ef: ClipEF, labels: tuple[str, ...], templates: tuple[str, ...]) -> np.ndarray:
    parts = [template_parts(template) for template in templates]
    texts = [prefix + label + suffix for label in labels for prefix, suffix in parts]
    unit = ef.embed_texts(texts).reshape(len(labels), len(templates), -1)
    mean = unit.astype(np.float64).mean(axis=1)
    return (mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _cached_prototypes(ef: ClipEF, labels: tuple[str, ...], templates: tuple[str, ...]) -> np.ndarray:
    key = _cache_key(ef, labels, templates)
    with _prototypes_lock:
        if key in _prototypes:
            _prototypes.move_to_end(key)
            return _prototypes[key]
    # Encoded outside the lock: two threads may both compute a miss, which is only wasted work.
    prototypes = _compute_prototypes(ef, labels, templates)
    prototypes.setflags(write=False)  # shared between classifiers: nobody may edit it in place
    size = _entry_bytes(key, prototypes)
    if size > _PROTOTYPE_CACHE_BYTES:
        return prototypes  # larger than the whole cache: used once, kept by no one
    with _prototypes_lock:
        _prototypes[key] = prototypes
        _prototype_bytes[key] = size
        _prototypes.move_to_end(key)
        while len(_prototypes) > _PROTOTYPE_CACHE_SIZE or sum(_prototype_bytes.values()) > _PROTOTYPE_CACHE_BYTES:
            oldest, _ = _prototypes.popitem(last=False)
            del _prototype_bytes[oldest]
    return prototypes


# --- helpers ----------------------------------------------------------------------------------

def _as_list(images) -> list:
    """One image or many, as a list (a path string is one image, not a sequence of characters)."""
    if isinstance(images, (str, bytes, bytearray, memoryview, os.PathLike, Image.Image)):
        return [images]
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else [images]
    return list(images)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return (z / z.sum(axis=1, keepdims=True)).astype(np.float32)


def best_columns(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` largest scores per row, best first; ties go to the lower index."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def _logit_scale(ef: ClipEF) -> float:
    return ef.logit_scale


def _check_labels(labels: Sequence[str], what: str = "labels") -> tuple[str, ...]:
    if isinstance(labels, str):
        raise TypeError(f"{what} must be a sequence of strings, not one string")
    labels = tuple(labels)
    if not labels:
        raise ValueError(f"{what} must not be empty")
    for label in labels:
        if not isinstance(label, str):
            raise TypeError(f"{what} must be strings, got {type(label).__name__}")
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ValueError(f"{what} must be distinct; repeated: {', '.join(map(repr, duplicates))}")
    return labels


def template_parts(template: str) -> tuple[str, str]:
    """The text before and after a prompt template's one ``{}``, braces unescaped.

    A template is literal text around exactly one bare ``{}``: no field names or attribute access
    (``{0.__class__}``), no conversions (``{!r}``), no format specs (``{:>40000000}`` would pad the
    label to 40 MB); ``{{`` and ``}}`` are literal braces. Anything else is a ``ValueError``, so
    filling a template never runs more than a string concatenation.

    Example:
        >>> template_parts("a photo of a {}.")
        ('a photo of a ', '.')
        >>> template_parts("{{}} {:>9}")
        Traceback (most recent call last):
        ValueError: template '{{}} {:>9}' has a format spec (':>9'); a template is text around exactly one '{}'
    """
    if not isinstance(template, str):
        raise TypeError(f"a template must be a string, got {type(template).__name__}")
    shown = repr(template) if len(template) <= 60 else repr(template[:57]) + "..."
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(f"template {shown} is not a valid template ({e}); write a literal brace as {{{{ or }}}}") from None
    fields = [i for i, (_, name, _, _) in enumerate(parsed) if name is not None]
    why = f"has {len(fields)} placeholders, needs exactly one" if len(fields) != 1 else None
    if why is None:
        _, name, spec, conversion = parsed[fields[0]]
        if name:
            why = f"names a field ({name!r})"
        elif conversion is not None:
            why = f"has a conversion ('!{conversion}')"
        elif spec:
            why = f"has a format spec (':{spec}')"
    if why is not None:
        raise ValueError(f"template {shown} {why}; a template is text around exactly one '{{}}'")
    prefix = "".join(text for text, *_ in parsed[: fields[0] + 1])
    suffix = "".join(text for text, *_ in parsed[fields[0] + 1 :])
    escaped = [part.replace("{", "{{").replace("}", "}}") for part in (prefix, suffix)]
    if escaped[0] + "{}" + escaped[1] != template:  # e.g. "{:}": an empty spec is still a spec
        raise ValueError(f"template {shown} has a format spec or conversion; a template is text around exactly one '{{}}'")
    return prefix, suffix


def _check_templates(templates: Sequence[str]) -> tuple[str, ...]:
    if isinstance(templates, str):
        templates = (templates,)
    templates = tuple(templates)
    if not templates:
        raise ValueError("templates must not be empty")
    for template in templates:
        template_parts(template)
    return templates


# --- the classifier ---------------------------------------------------------------------------

class ZeroShotClassifier:
    """Classify images among text labels, with prompt ensembling.

    The class prototypes (``[C, dim]`` unit vectors) are computed on first use and shared through a
    process-wide LRU keyed by (model fingerprint, dtype, labels, templates), so building another
    classifier for the same labels costs no text encoding.

    Args:
        ef: the embedding function (its model, device, dtype and ``on_error`` policy are used).
        labels: the candidate class names, distinct.
        templates: prompt templates, each with one ``{}``; default :data:`DEFAULT_TEMPLATES`.
            Pass ``["{}"]`` to embed the labels as they are.

    Example:
        >>> clf = ZeroShotClassifier(ClipEF(), ["cat", "dog"])
        >>> clf.predict(["cat.jpg"], top_k=1).top_labels
        [['...']]
    """

    def __init__(self, ef: ClipEF, labels: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES):
        self.ef = ef
        self.labels: tuple[str, ...] = _check_labels(labels)
        self.templates: tuple[str, ...] = _check_templates(templates)

    def prompts(self, label: str) -> list[str]:
        """The texts embedded for ``label``: each template filled with it.

        Example:
            >>> ZeroShotClassifier(ClipEF(), ["cat", "dog"], ["a {}.", "{{{}}}"]).prompts("cat")
            ['a cat.', '{cat}']
        """
        return [prefix + label + suffix for prefix, suffix in map(template_parts, self.templates)]

    @property
    def prototypes(self) -> np.ndarray:
        """The class prototypes, ``[len(labels), dim]`` float32 unit rows (read-only)."""
        return _cached_prototypes(self.ef, self.labels, self.templates)

    @property
    def logit_scale(self) -> float:
        """The model's learned temperature multiplier (100 for OpenAI's checkpoints)."""
        return _logit_scale(self.ef)

    def predict(self, images, top_k: int = 5, *, on_error: OnError | None = None,
                progress: bool = False) -> ClassificationResult:
        """Classify images (paths, URLs, bytes, PIL images, arrays; one or many).

        ``top_k`` is capped at the number of labels. Bad images follow ``on_error`` (default: the
        embedding function's policy).

        Example:
            >>> clf = ZeroShotClassifier(ClipEF(), ["cat", "rocket"])
            >>> result = clf.predict(["cat.jpg", "rocket.jpg"], top_k=2)
            >>> len(result.predictions), sorted(result.top_labels[0])
            (2, ['cat', 'rocket'])
        """
        images = _as_list(images)
        embedded = self.ef.encode_images(images, on_error=on_error, progress=progress, total=len(images))
        return self.classify_embeddings(embedded, top_k)

    def classify_embeddings(self, embedded: ImageEmbeddings | np.ndarray, top_k: int = 5) -> ClassificationResult:
        """Classify image embeddings already computed by the same model (unit rows, ``[N, dim]``).

        Example:
            >>> clf = ZeroShotClassifier(ef, ["cat", "rocket"])
            >>> clf.classify_embeddings(ef.encode_images(["cat.jpg", "rocket.jpg"])).predictions
            ['...', '...']
        """
        if isinstance(embedded, ImageEmbeddings):
            vectors, indices, skipped = embedded.embeddings, list(embedded.indices), list(embedded.skipped)
        else:
            vectors = np.asarray(embedded, dtype=np.float32)
            indices, skipped = list(range(len(vectors))), []
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        prototypes = self.prototypes
        cosine = (vectors.astype(np.float32) @ prototypes.T).reshape(len(vectors), len(self.labels))
        scale = self.logit_scale
        probs = _softmax(scale * cosine)
        order = best_columns(cosine, min(top_k, len(self.labels)))
        return ClassificationResult(
            labels=list(self.labels), probs=probs, cosine=cosine,
            top_labels=[[self.labels[j] for j in row] for row in order],
            top_scores=[[float(probs[i, j]) for j in row] for i, row in enumerate(order)],
            indices=indices, skipped=skipped, logit_scale=scale,
        )

    def __repr__(self) -> str:
        return f"ZeroShotClassifier({self.ef!r}, {len(self.labels)} labels, {len(self.templates)} templates)"


# --- one-call functions -----------------------------------------------------------------------

def classify(images, labels: Sequence[str], templates: Sequence[str] | None = None, *,
             ef: ClipEF | None = None, top_k: int = 5, on_error: OnError | None = None) -> ClassificationResult:
    """Zero-shot classify images among ``labels`` in one call.

    ``ef`` defaults to ``ClipEF()`` (``$CLIP_WEIGHTS`` when set, else ViT-B/32); ``templates``
    to :data:`DEFAULT_TEMPLATES`.

    Example:
        >>> sorted(classify("cat.jpg", ["cat", "dog"]).top_labels[0])  # best first, unsorted
        ['cat', 'dog']
    """
    classifier = ZeroShotClassifier(ef or ClipEF(), labels, DEFAULT_TEMPLATES if templates is None else templates)
    return classifier.predict(images, top_k=top_k, on_error=on_error)


def similarity(images, texts: Sequence[str], *, ef: ClipEF | None = None,
               on_error: OnError | None = None) -> SimilarityResult:
    """Cosine similarity and CLIP's probabilities of every image against every text.

    ``probs`` is the softmax over the texts of ``logit_scale * cosine``, i.e. openai/CLIP's
    ``logits_per_image.softmax(dim=-1)``. Texts are embedded as given (no templates).

    Example:
        >>> r = similarity(["cat.jpg"], ["a cat", "a dog"])
        >>> r.probs.shape, float(r.probs.sum().round(4))  # a row of probabilities per image
        ((1, 2), 1.0)
    """
    ef = ef or ClipEF()
    if isinstance(texts, str):
        texts = [texts]
    if not texts:
        raise ValueError("texts must not be empty")
    text_vectors = ef.embed_texts(list(texts))
    images = _as_list(images)
    embedded = ef.encode_images(images, on_error=on_error)
    cosine = (embedded.embeddings @ text_vectors.T).reshape(len(embedded.indices), len(text_vectors))
    scale = _logit_scale(ef)
    return SimilarityResult(cosine=cosine, probs=_softmax(scale * cosine), indices=list(embedded.indices),
                            skipped=list(embedded.skipped), logit_scale=scale)


def moderate(images, unsafe_labels: Sequence[str], safe_labels: Sequence[str], threshold: float = 0.5, *,
             ef: ClipEF | None = None, templates: Sequence[str] | None = None,
             on_error: OnError | None = None) -> ModerationResults:
    """Screen images for unwanted content by zero-shot classification over unsafe + safe labels.

    An image is flagged when the probabilities of the unsafe labels sum to at least ``threshold``.
    The safe labels matter: they are what an image can be *instead*, so describe the content you
    expect (e.g. ``["a landscape", "a pet", "food"]``).

    This is a screening aid, not a guarantee. CLIP misses content, flags harmless images, carries
    the biases of its web training data, and its scores depend on the wording of the labels.
    Calibrate the threshold on your own data and keep a human in the loop for decisions that matter.
    Unreadable images (``on_error="skip"``) are listed in ``.skipped`` and were not screened.

    Example:
        >>> results = moderate(["cat.jpg", "rocket.jpg"], ["a weapon", "blood"], ["a pet", "a landscape"])
        >>> sorted(results[0].scores)
        ['a landscape', 'a pet', 'a weapon', 'blood']
        >>> [(r.index, r.top_unsafe_label) for r in results.flagged]  # which were flagged, and why
        [...]
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be within [0, 1], got {threshold}")
    unsafe = _check_labels(unsafe_labels, "unsafe_labels")
    safe = _check_labels(safe_labels, "safe_labels")
    both = sorted(set(unsafe) & set(safe))
    if both:
        raise ValueError(f"a label cannot be both unsafe and safe: {', '.join(map(repr, both))}")
    classifier = ZeroShotClassifier(ef or ClipEF(), unsafe + safe, DEFAULT_TEMPLATES if templates is None else templates)
    result = classifier.predict(images, top_k=1, on_error=on_error)
    n_unsafe = len(unsafe)
    out = ModerationResults(skipped=result.skipped)
    for row, index in enumerate(result.indices):
        probs = result.probs[row]
        unsafe_score = float(probs[:n_unsafe].astype(np.float64).sum())
        worst = int(np.argmax(probs[:n_unsafe]))
        out.append(ModerationResult(
            index=index, flagged=unsafe_score >= threshold, unsafe_score=unsafe_score,
            top_unsafe_label=unsafe[worst], top_unsafe_score=float(probs[worst]),
            top_label=result.top_labels[row][0],
            scores={label: float(p) for label, p in zip(classifier.labels, probs, strict=True)},
        ))
    return out
