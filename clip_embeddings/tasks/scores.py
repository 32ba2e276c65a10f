"""CLIPScore: how well a caption describes an image, for filtering datasets or judging generations.

Hessel et al. 2021 ("CLIPScore: A Reference-free Evaluation Metric for Image Captioning")
define ``CLIP-S(c, v) = w * max(cos(c, v), 0)`` with ``w = 2.5``, the cosine taken between
CLIP's image and caption embeddings. torchmetrics' ``CLIPScore`` reports the same quantity with
``w = 100``; LAION-400M/5B kept a pair when the raw cosine (``w = 1``) was at least 0.28 with
ViT-B/32. Every form here is ``w * max(cos, 0)``: choose ``w``.

Example:
    >>> result = clip_score(["cat.jpg"], ["a photo of a cat"])
    >>> result.scores[0] == 2.5 * max(result.cosines[0], 0.0)  # CLIPScore: w * max(cosine, 0), w = 2.5
    True
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..embedding.function import ClipEF, SkippedItem

HESSEL_W = 2.5  # Hessel et al. 2021, Section 3
IMAGE_KEYS = ("image", "image_path", "path", "url", "filepath", "file")
CAPTION_KEYS = ("caption", "text", "prompt", "title")


def clip_score_of(image_vectors: np.ndarray, text_vectors: np.ndarray, w: float = HESSEL_W) -> np.ndarray:
    """``w * max(cos, 0)`` row by row, from unit image and caption vectors.

    Example:
        >>> clip_score_of(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[0.6, 0.8], [1.0, 0.0]]))
        array([1.5, 0. ])
    """
    cosines = np.einsum("ij,ij->i", np.asarray(image_vectors, np.float64), np.asarray(text_vectors, np.float64))
    return w * np.maximum(cosines, 0.0)


@dataclass
class ScoreResult:
    """Scores of (image, caption) pairs: ``scores[i]`` and ``cosines[i]`` are NaN for skipped pairs.

    Example:
        >>> r = ScoreResult(scores=[0.75, float("nan")], cosines=[0.3, float("nan")], w=2.5)
        >>> r.kept(0.5)
        [0]
    """

    scores: list[float]
    cosines: list[float]
    w: float
    skipped: list[SkippedItem] = field(default_factory=list)

    def kept(self, minimum: float) -> list[int]:
        """Indices of the pairs whose score is at least ``minimum`` (skipped pairs never are)."""
        return [i for i, s in enumerate(self.scores) if not math.isnan(s) and s >= minimum]

    def to_dict(self) -> dict[str, Any]:
        return {"w": self.w, "scores": [None if math.isnan(s) else s for s in self.scores],
                "cosines": [None if math.isnan(c) else c for c in self.cosines],
                "skipped": [{"index": s.index, "source": s.source, "reason": s.reason} for s in self.skipped]}


def clip_score(images: Sequence[Any], captions: Sequence[Any], *, w: float = HESSEL_W, ef: ClipEF | None = None,
               progress: bool = False) -> ScoreResult:
    """CLIPScore ``w * max(cos, 0)`` of each (image, caption) pair; bad items are reported, not fatal.

    Images go through the embedding function's image pipeline (parallel decode, batching, cache);
    an image that cannot be read, or a caption that is not a non-empty string, skips its pair with
    the reason in ``result.skipped``.

    Example:
        >>> result = clip_score(["cat.jpg", "missing.jpg"], ["a cat", "a dog"], w=100)
        >>> [s.reason for s in result.skipped]
        ['file not found']
    """
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions: give one caption per image")
    ef = ef or ClipEF()
    skipped = [SkippedItem(i, str(images[i])[:200], "caption is not a non-empty string")
               for i, c in enumerate(captions) if not isinstance(c, str) or not c.strip()]
    bad = {s.index for s in skipped}
    wanted = [i for i in range(len(images)) if i not in bad]
    encoded = ef.encode_images([images[i] for i in wanted], on_error="skip", progress=progress, total=len(wanted))
    skipped += [SkippedItem(wanted[s.index], s.source, s.reason) for s in encoded.skipped]
    rows = [wanted[i] for i in encoded.indices]
    scores, cosines = [math.nan] * len(images), [math.nan] * len(images)
    if rows:
        texts = ef.embed_texts([captions[i] for i in rows])
        cos = np.einsum("ij,ij->i", encoded.embeddings.astype(np.float64), texts.astype(np.float64))
        for i, c in zip(rows, cos, strict=True):
            cosines[i], scores[i] = float(c), float(w * max(c, 0.0))
    return ScoreResult(scores, cosines, w, sorted(skipped, key=lambda s: s.index))


# --- pair files: CSV or JSONL in, the same format out -------------------------------------------

def read_pairs(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """The rows of a CSV (with a header) or JSONL file of pairs, one dict per row, streamed."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as f:
        if is_jsonl(path):
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{n}: not a JSON object ({e.msg})") from None
        else:
            yield from csv.DictReader(f)


def is_jsonl(path: Path) -> bool:
    """Whether ``path`` names a JSON-lines file (``.jsonl``, ``.ndjson``, ``.json``) rather than CSV."""
    return path.suffix.lower() in (".jsonl", ".ndjson", ".json")


def _key(row: dict[str, Any], given: str | None, candidates: tuple[str, ...], what: str, path: Path) -> str:
    if given is not None:
        if given not in row:
            raise ValueError(f"{path}: no {given!r} column (columns: {', '.join(row)})")
        return given
    for key in candidates:
        if key in row:
            return key
    raise ValueError(f"{path}: no {what} column; name one of {', '.join(candidates)} or pass its name")


@dataclass
class FileScoreReport:
    """What scoring a pair file did: pairs read, scored, kept (over ``minimum``) and skipped."""

    read: int = 0
    scored: int = 0
    kept: int = 0
    minimum: float | None = None
    w: float = HESSEL_W
    skipped: list[SkippedItem] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"read": self.read, "scored": self.scored, "kept": self.kept, "minimum": self.minimum, "w": self.w,
                "skipped": [{"index": s.index, "source": s.source, "reason": s.reason} for s in self.skipped]}


def score_file(pairs: str | os.PathLike, output: str | os.PathLike | None = None, *, minimum: float | None = None,
               w: float = HESSEL_W, ef: ClipEF | None = None, image_key: str | None = None,
               caption_key: str | None = None, chunk: int = 1024, progress: bool = False) -> FileScoreReport:
    """Score a CSV/JSONL file of (image, caption) pairs chunk by chunk; write the rows (with a
    ``clip_score`` column) to ``output`` in the same format, only those scoring ``>= minimum`` if given.

    Image paths are read relative to the pair file's folder. A bad image or caption is reported
    in the result and left out of the output.

    Example:
        >>> _ = Path("pairs.csv").write_text("image,caption\\ncat.jpg,a cat\\nrocket.jpg,a rocket\\nlost.jpg,a dog\\n")
        >>> report = score_file("pairs.csv", "kept.csv", minimum=0.28, w=1)  # LAION's filter
        >>> report.read, report.scored, [s.reason for s in report.skipped]
        (3, 2, ['file not found'])
    """
    pairs, ef = Path(pairs), ef or ClipEF()
    report = FileScoreReport(minimum=minimum, w=w)
    writer = PairWriter(Path(output), is_jsonl(Path(output))) if output is not None else None
    try:
        for rows in _chunks(read_pairs(pairs), chunk):
            keys = (_key(rows[0], image_key, IMAGE_KEYS, "image", pairs),
                    _key(rows[0], caption_key, CAPTION_KEYS, "caption", pairs))
            images = [_image_ref(row.get(keys[0]), pairs.parent) for row in rows]
            result = clip_score(images, [row.get(keys[1]) for row in rows], w=w, ef=ef, progress=progress)
            report.skipped += [SkippedItem(report.read + s.index, s.source, s.reason) for s in result.skipped]
            for row, score in zip(rows, result.scores, strict=True):
                if math.isnan(score):
                    continue
                report.scored += 1
                if minimum is None or score >= minimum:
                    report.kept += 1
                    if writer is not None:
                        writer.write({**row, "clip_score": score})
            report.read += len(rows)
    finally:
        if writer is not None:
            writer.close()
    return report


def _image_ref(value: Any, folder: Path) -> Any:
    if isinstance(value, str) and value and "://" not in value and not os.path.isabs(value):
        return str(folder / value)
    return value


def _chunks(rows: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class PairWriter:
    """Rows out to a file: JSON lines (``jsonl=True``), or CSV with the first row's columns."""

    def __init__(self, path: Path, jsonl: bool):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "w", newline="", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self.jsonl = jsonl
        self.csv: csv.DictWriter[str] | None = None

    def write(self, row: dict[str, Any]) -> None:
        if self.jsonl:
            self.file.write(json.dumps(row, ensure_ascii=False) + "\n")
            return
        if self.csv is None:
            self.csv = csv.DictWriter(self.file, fieldnames=list(row))
            self.csv.writeheader()
        self.csv.writerow(row)

    def close(self) -> None:
        self.file.close()
