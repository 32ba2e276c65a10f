"""Tags at ingest: the labels of a vocabulary an image scores over a threshold, zero-shot.

Each label's prototype is the mean of its prompt ensemble (the :class:`ZeroShotClassifier`'s,
:data:`DEFAULT_TEMPLATES` unless told otherwise). An image gets every label whose probability
(softmax of ``logit_scale * cosine`` over the whole vocabulary, as zero-shot classification
computes it) is at least ``threshold``, best first, at most ``top_k`` of them.

Why a probability and not a raw cosine: text-image cosines of one model sit in a narrow band
whose place differs between models (see docs/queries.md), so no fixed cosine cut-off carries
from one model to the next; the probability is relative to the vocabulary and uses the model's
own learned temperature. The price: a larger vocabulary spreads the probability thinner, so
lower the threshold for one of hundreds of labels.

Stored as metadata (see :mod:`clip_embeddings.collection.records`): ``"tag:<label>": True``
per tag, which every database filters on exactly, so ``where={"tag": "beach"}`` works everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..embedding.function import ClipEF
from .zeroshot import DEFAULT_TEMPLATES, ZeroShotClassifier

TAG_PREFIX = "tag:"  # the metadata key of a tag is TAG_PREFIX + label (collection/records.py reads it)


def read_vocabulary(path: str | os.PathLike) -> list[str]:
    """Labels from a text file, one a line; blank lines and ``#`` comments are skipped, repeats dropped.

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "vocabulary.txt"
        >>> _ = f.write_text("beach\\n# places\\nmountain\\n\\nbeach\\n")
        >>> read_vocabulary(f)
        ['beach', 'mountain']
    """
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    labels = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not labels:
        raise ValueError(f"{path}: the vocabulary has no labels (one label a line)")
    return list(dict.fromkeys(labels))


class Tagger:
    """Tags images from a vocabulary: every label with probability ``>= threshold``, at most ``top_k``.

    Example:
        >>> ef = ClipEF()
        >>> tagger = Tagger(ef, ["beach", "mountain", "city"], threshold=0.3)
        >>> tagger.tag_vectors(ef.embed_images(["cat.jpg"]))  # the labels at least 30 % likely
        [[...]]
    """

    def __init__(self, ef: ClipEF, vocabulary: Sequence[str], *, threshold: float = 0.1, top_k: int = 5,
                 templates: Sequence[str] = DEFAULT_TEMPLATES):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold is a probability between 0 and 1, not {threshold}")
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, not {top_k}")
        for label in vocabulary:
            if isinstance(label, str) and (not label.strip() or '"' in label):
                raise ValueError(f"tag labels must be non-empty and hold no double quote, got {label!r}")
        self.classifier = ZeroShotClassifier(ef, vocabulary, templates)
        self.threshold, self.top_k = threshold, top_k

    @property
    def labels(self) -> tuple[str, ...]:
        return self.classifier.labels

    def tag_vectors(self, vectors: np.ndarray) -> list[list[str]]:
        """The tags of each image embedding (unit rows of the same model), best first.

        Example:
            >>> tagger = Tagger(ClipEF(), ["beach", "mountain", "city"])
            >>> tagger.tag_vectors(np.zeros((0, 512), np.float32))
            []
        """
        vectors = np.asarray(vectors, np.float32).reshape(-1, self.classifier.prototypes.shape[1])
        probs = self.classifier.classify_embeddings(vectors, top_k=1).probs
        out = []
        for row in probs:
            order = np.argsort(-row, kind="stable")[: self.top_k]
            out.append([self.labels[j] for j in order if row[j] >= self.threshold])
        return out

    def metadata(self, vectors: np.ndarray) -> list[dict[str, bool]]:
        """Each image's tags as the metadata keys a store filters on: ``{"tag:beach": True, ...}``.

        Example:
            >>> tagger = Tagger(ef, ["beach", "mountain", "city"], threshold=0.0, top_k=1)
            >>> tagger.metadata(ef.embed_images(["cat.jpg"]))
            [{'tag:...': True}]
        """
        return [{TAG_PREFIX + label: True for label in tags} for tags in self.tag_vectors(vectors)]

    def __repr__(self) -> str:
        return f"Tagger({len(self.labels)} labels, threshold={self.threshold}, top_k={self.top_k})"


def as_tagger(ef: ClipEF, tags: Tagger | Sequence[str] | str | os.PathLike | None) -> Tagger | None:
    """``tags=`` as the API takes it: a :class:`Tagger`, a list of labels, or a vocabulary file."""
    if tags is None or isinstance(tags, Tagger):
        return tags
    if isinstance(tags, (str, os.PathLike)):
        return Tagger(ef, read_vocabulary(tags))
    return Tagger(ef, list(tags))
