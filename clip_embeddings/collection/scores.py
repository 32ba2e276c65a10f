"""CLIPScore of a collection's captioned items, from the vectors already stored (no model run).

An item added with a caption holds two vectors: its image's and its caption's. Their CLIPScore
is ``w * max(cos, 0)`` of those two (see :mod:`clip_embeddings.tasks.scores` for ``w``), so
scoring a collection reads the vectors back batch by batch instead of decoding and embedding
again: image records come from ``_scan("image")``, and each batch's caption vectors from one
``_vectors`` lookup by item id. Images without a caption are counted, not scored. With
``minimum``, the pairs scoring at least that are kept (LAION's filter: ``w=1, minimum=0.28``
for ViT-B/32), and with ``output`` written to a CSV or JSONL file.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..tasks.scores import HESSEL_W, FileScoreReport, PairWriter, clip_score_of, is_jsonl
from .protocol import StoreLike, require_records


@dataclass
class CollectionScoreReport(FileScoreReport):
    """What scoring a collection did: ``read`` captioned pairs, ``uncaptioned`` images left out, and
    ``scores`` (item id -> score) of every scored pair; ``kept`` of them scored at least ``minimum``.

    Example:
        >>> report = CollectionScoreReport(read=2, scored=2, kept=1, minimum=0.5, scores={"a": 0.7, "b": 0.2})
        >>> report.kept_ids()
        ['a']
    """

    uncaptioned: int = 0
    scores: dict[str, float] = field(default_factory=dict)

    def kept_ids(self) -> list[str]:
        """The item ids of the pairs scoring at least ``minimum`` (every scored pair without one)."""
        return [i for i, s in self.scores.items() if self.minimum is None or s >= self.minimum]

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "uncaptioned": self.uncaptioned}


def score_collection(store: StoreLike, output: str | os.PathLike | None = None, *, minimum: float | None = None,
                     w: float = HESSEL_W, batch_size: int = 512, progress: bool = False) -> CollectionScoreReport:
    """CLIPScore ``w * max(cos, 0)`` of every stored (image, caption) pair; with ``output``, the pairs
    scoring at least ``minimum`` (all, without one) written as CSV or JSONL rows ``id, image,
    caption, clip_score`` (``image`` is the stored source).

    Raises :class:`~clip_embeddings.errors.EmptyCollectionError` when the store holds no images
    or no captions.

    Example:
        >>> report = score_collection(store, "kept.jsonl", minimum=0.28, w=1)  # LAION's filter
        >>> report.kept <= 7, report.uncaptioned  # of the 7 captioned photos
        (True, 0)
    """
    total = require_records(store, "image", "score")
    require_records(store, "text", "score (no captions stored)")
    from tqdm.auto import tqdm

    report = CollectionScoreReport(minimum=minimum, w=w)
    writer = PairWriter(Path(output), is_jsonl(Path(output))) if output is not None else None
    try:
        with tqdm(total=total, disable=not progress, desc="scores", unit="img") as bar:
            for batch in store._scan("image", batch_size=batch_size):
                _score_batch(store, batch, report, writer)
                bar.update(len(batch))
    finally:
        if writer is not None:
            writer.close()
    return report


def _score_batch(store: StoreLike, batch: list[Any], report: CollectionScoreReport, writer: PairWriter | None) -> None:
    captions = store._vectors([(r.id, "text") for r in batch])
    pairs = [r for r in batch if (r.id, "text") in captions]
    report.uncaptioned += len(batch) - len(pairs)
    report.read += len(pairs)
    if not pairs:
        return
    scores = clip_score_of(np.stack([r.vector for r in pairs]), np.stack([captions[(r.id, "text")] for r in pairs]),
                           report.w)
    for r, score in zip(pairs, scores.tolist(), strict=True):
        if math.isnan(score):
            continue
        report.scored += 1
        report.scores[r.id] = score
        if report.minimum is None or score >= report.minimum:
            report.kept += 1
            if writer is not None:
                writer.write({"id": r.id, "image": r.source, "caption": r.document, "clip_score": score})
