"""Find duplicate images in a collection: exact (same content digest) and near (CLIP cosine).

How near duplicates are found, in order:

1. **Neighbours from the database.** Every stored image vector is read batch by batch
   (``Store.records``) and its ``k`` nearest images come from the database's own search
   (``Store._search_many``: one batched query per batch), so nothing builds an all-pairs matrix; the cost is one nearest-neighbour
   query per image (linear in the collection where the database has an ANN index: Chroma's HNSW,
   a Qdrant server, an indexed LanceDB table; local Qdrant and unindexed LanceDB search by brute
   force, so there it grows with the square).
2. **A cut-off.** A pair is a candidate when its cosine similarity is at least ``threshold``.
   The default depends on the model (:data:`DEFAULT_THRESHOLDS`): 0.99 for OpenAI's weights, from
   Immich's duplicate detection, whose default ``maxDistance`` is 0.01 cosine distance on
   ``ViT-B-32__openai`` (immich-app/immich, server system-config defaults). Other weights have
   no default: pass ``threshold=``.
3. **A guard against one global cut-off** (model-agnostic). In distance ``d = 1 - cos``, sort an
   image's neighbours ``d_1 <= d_2 <= ... <= d_k``. Its copies are ``d_1 .. d_m`` for the largest
   ``m`` with ``d_m <= 1 - threshold`` and ``d_{m+1} >= gap * d_m``: every copy is at least
   ``gap`` times (default 1.5) closer than the image's nearest non-copy neighbour. A pair is kept
   only when each image is among the other's copies. In a dense region (dark frames, documents,
   shots of one scene) neighbours come at steadily growing distances with no such gap, so nothing
   there is called a copy, however high the similarities; a re-encoded or resized copy sits far
   closer to its original than anything else does. (If all ``k`` neighbours fetched but the last
   are copies, the search is repeated with a larger ``k``, up to ``max_k``.) Limit: distinct shots that are all
   far closer to each other than to anything else, and within the cut-off, still group together;
   and since the guard judges an image by its neighbours, a pass after a deletion can pair two
   pictures whose deleted copies used to sit between them.
4. **Groups.** Kept pairs and same-digest images are joined into connected components
   (union-find). Each group is sorted best first, and its first member is the suggested keeper:
   the largest resolution (``width``/``height`` metadata, else the local file's header), then the
   oldest (``mtime`` metadata, else the file's modification time), then the smallest id.

Deleting is a separate, explicit step: :func:`remove_duplicates` deletes every member but the keeper.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from .protocol import StoreLike, require_records

# Cosine-similarity cut-offs with published evidence, per model name. Immich's default
# duplicate-detection maxDistance is 0.01 (cosine distance) with ViT-B-32__openai; Immich applies
# the same value to every CLIP model it serves, and so do we for OpenAI's other weights.
DEFAULT_THRESHOLDS: dict[str, float] = {name: 0.99 for name in (
    "RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px")}
THRESHOLD_SOURCE = "Immich duplicateDetection.maxDistance = 0.01 (ViT-B-32__openai)"


@dataclass
class Member:
    """One image of a duplicate group; ``similarity`` is its cosine to the keeper (1.0 for the keeper)."""

    id: str
    source: str | None
    digest: str | None
    similarity: float
    width: int | None = None
    height: int | None = None
    mtime: float | None = None


@dataclass
class DuplicateGroup:
    """Images that are copies of each other, best first: ``members[0]`` is the suggested keeper."""

    kind: str  # "exact": one content digest; "near": CLIP cosine (possibly with exact copies inside)
    members: list[Member]

    @property
    def keeper(self) -> Member:
        return self.members[0]

    @property
    def extras(self) -> list[Member]:
        """Every member but the keeper: what a removal deletes."""
        return self.members[1:]


@dataclass
class DuplicateReport:
    """The groups found and the settings that found them.

    Example:
        >>> report = DuplicateReport(threshold=0.99, gap=1.5, k=8, scanned=3)
        >>> print(report)
        0 duplicate groups among 3 images (threshold 0.99, gap 1.5): 0 images could go
    """

    threshold: float
    gap: float
    k: int
    scanned: int
    groups: list[DuplicateGroup] = field(default_factory=list)

    @property
    def removable(self) -> int:
        return sum(len(g.extras) for g in self.groups)

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "gap": self.gap, "k": self.k, "scanned": self.scanned,
                "removable": self.removable,
                "groups": [{"kind": g.kind, "keeper": g.keeper.id, "members": [asdict(m) for m in g.members]}
                           for g in self.groups]}

    def __str__(self) -> str:
        lines = [f"{len(self.groups)} duplicate groups among {self.scanned} images (threshold {self.threshold}, "
                 f"gap {self.gap}): {self.removable} images could go"]
        for n, group in enumerate(self.groups, 1):
            lines.append(f"group {n} ({group.kind}):")
            lines += [f"  {'keep' if i == 0 else '    '} {m.source or m.id}  cos {m.similarity:.4f}"
                      for i, m in enumerate(group.members)]
        return "\n".join(lines)


def default_threshold(model_name: str) -> float:
    """The published cut-off for ``model_name``, or a ``ValueError`` asking for one.

    Example:
        >>> default_threshold("ViT-B/32")
        0.99
    """
    try:
        return DEFAULT_THRESHOLDS[model_name]
    except KeyError:
        raise ValueError(f"no published duplicate threshold for model {model_name!r} (known: OpenAI's "
                         f"{', '.join(DEFAULT_THRESHOLDS)}); pass threshold=<cosine similarity>, e.g. 0.95") from None


def copies(distances: list[tuple[float, str]], cutoff: float, gap: float) -> list[str]:
    """The ids among one image's neighbours that the guard calls its copies (see the module doc).

    ``distances``: (cosine distance, id) of its neighbours, itself excluded, nearest first.

    Example:
        >>> copies([(0.001, "a"), (0.002, "b"), (0.2, "c")], cutoff=0.01, gap=1.5)
        ['a', 'b']
        >>> copies([(0.004, "a"), (0.005, "b"), (0.006, "c")], cutoff=0.01, gap=1.5)  # dense: no gap
        []
    """
    m = 0
    for j, (d, _) in enumerate(distances[:-1], 1):
        if d > cutoff:
            break
        if distances[j][0] >= gap * d:
            m = j
    return [i for _, i in distances[:m]]


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]  # path halving
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> list[list[str]]:
        out: dict[str, list[str]] = {}
        for x in self.parent:
            out.setdefault(self.find(x), []).append(x)
        return [sorted(g) for g in out.values() if len(g) > 1]


def find_duplicates(store: StoreLike, threshold: float | None = None, *, gap: float = 1.5, k: int = 8,
                    max_k: int = 128, batch_size: int = 256, progress: bool = False) -> DuplicateReport:
    """Groups of duplicate images in ``store``, each with a suggested keeper (nothing is deleted).

    ``threshold`` is a cosine similarity (default: :func:`default_threshold` of the store's
    model); ``gap`` the guard's factor (``1`` turns the guard off); ``k`` the neighbours fetched
    per image. See the module docstring for the method.

    Example:
        >>> from PIL import Image
        >>> Image.open("photos/cat.jpg").save("photos/cat.png")  # the same picture, other bytes
        >>> store.index_folder("photos").new
        1
        >>> report = find_duplicates(store, threshold=0.999)
        >>> [m.source for m in report.groups[0].members]
        ['.../photos/cat.jpg', '.../photos/cat.png']
    """
    threshold = default_threshold(store.ef.model_name) if threshold is None else float(threshold)
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold is a cosine similarity in (0, 1], not {threshold}")
    if gap < 1:
        raise ValueError(f"gap must be at least 1 (1 turns the guard off), not {gap}")
    total = require_records(store, "image", "de-duplicate")
    cutoff = 1.0 - threshold
    info: dict[str, dict[str, Any]] = {}
    by_digest: dict[str, list[str]] = {}
    wanted: set[tuple[str, str]] = set()  # (a, b): b is among a's copies
    from tqdm.auto import tqdm

    with tqdm(total=total, disable=not progress, desc="duplicates", unit="img") as bar:
        for batch in _batches(store._scan("image", batch_size=16 * batch_size), batch_size):
            for r, (near, found) in zip(batch, _copies_in_batch(store, batch, cutoff, gap, k, max_k), strict=True):
                if r.digest:
                    by_digest.setdefault(r.digest, []).append(r.id)
                wanted.update((r.id, other) for other in found)
                if near and near[0][0] <= cutoff or len(by_digest.get(r.digest, ())) > 1:
                    info[r.id] = {"source": r.source, "digest": r.digest, "metadata": r.metadata, "vector": r.vector}
            bar.update(len(batch))
    exact, near_sets = _UnionFind(), _UnionFind()
    for ids in by_digest.values():
        for other in ids[1:]:
            exact.union(ids[0], other)
            near_sets.union(ids[0], other)
    for a, b in wanted:
        if (b, a) in wanted:  # mutual: each is among the other's copies
            near_sets.union(a, b)
    exact_groups = {frozenset(g) for g in exact.groups()}
    groups = [_group("exact" if frozenset(ids) in exact_groups else "near", ids, info) for ids in near_sets.groups()]
    groups.sort(key=lambda g: (-len(g.members), g.keeper.id))
    return DuplicateReport(threshold=threshold, gap=gap, k=k, scanned=total, groups=groups)


def _batches(pages: Any, size: int) -> Any:
    """Scanned pages cut into query batches of ``size``: a page of a scan can cost as much as the
    whole collection (Chroma pages by offset), so it is read in pages 16 times larger."""
    for page in pages:
        for start in range(0, len(page), size):
            yield page[start:start + size]


def _copies_in_batch(store: StoreLike, batch: list[Any], cutoff: float, gap: float, k: int,
                     max_k: int) -> list[tuple[list[tuple[float, str]], list[str]]]:
    """For each record of a batch: its nearest other images as (distance, id), and its copies.

    One batched query for the batch (``_search_many``). When every neighbour fetched but the
    last is a copy, more copies may lie beyond: that record is asked again for ``4k`` (up to
    ``max_k``). A dense region without a gap is not searched further.
    """
    import numpy as np

    out: list[Any] = [None] * len(batch)
    todo = list(range(len(batch)))
    while todo:
        vectors = np.stack([np.asarray(batch[i].vector, np.float32) for i in todo])
        again = []
        for i, hits in zip(todo, store._search_many(vectors, k + 1, "image", None), strict=True):
            near = sorted((max(0.0, 1.0 - h.score), h.id) for h in hits if h.id != batch[i].id)
            if len(hits) < k + 1:  # the whole collection: nothing further away, so no gap is hidden
                near.append((float("inf"), ""))
            found = copies(near, cutoff, gap)
            out[i] = (near, found)
            if len(hits) >= k + 1 and len(found) == len(near) - 1 and k < max_k:
                again.append(i)
        todo, k = again, min(max_k, 4 * k)
    return out


def _group(kind: str, ids: list[str], info: dict[str, dict[str, Any]]) -> DuplicateGroup:
    import numpy as np

    members = []
    for i in ids:
        width, height, mtime = _describe(info[i]["source"], info[i]["metadata"])
        members.append(Member(i, info[i]["source"], info[i]["digest"], 0.0, width, height, mtime))
    members.sort(key=_keeper_order)
    keeper = np.asarray(info[members[0].id]["vector"], np.float32)
    for m in members:
        m.similarity = round(float(np.dot(keeper, np.asarray(info[m.id]["vector"], np.float32))), 6)
    return DuplicateGroup(kind, members)


def _keeper_order(m: Member) -> tuple:
    pixels = (m.width or 0) * (m.height or 0)
    return (-pixels, m.mtime if m.mtime is not None else float("inf"), m.id)


def _describe(source: str | None, metadata: dict[str, Any]) -> tuple[int | None, int | None, float | None]:
    """(width, height, mtime) from the record's metadata, else from the local file (header only)."""
    width, height, mtime = metadata.get("width"), metadata.get("height"), metadata.get("mtime")
    if source and os.path.isfile(source):
        if width is None or height is None:
            try:
                from PIL import Image

                with Image.open(source) as image:  # reads the header, not the pixels
                    width, height = image.size
            except OSError:
                pass
        if mtime is None:
            mtime = os.path.getmtime(source)
    return (int(width) if width is not None else None, int(height) if height is not None else None,
            float(mtime) if mtime is not None else None)


def remove_duplicates(store: Any, groups: Iterable[DuplicateGroup]) -> int:
    """Delete every member of ``groups`` but its keeper (image and caption); returns the items deleted.

    Uses ``store.delete(ids=...)`` where the store has it, else the ``_delete`` primitive.

    Example:
        >>> from PIL import Image
        >>> Image.open("photos/cat.jpg").save("photos/cat.png")
        >>> store.index_folder("photos").new, store.count("image")
        (1, 8)
        >>> remove_duplicates(store, find_duplicates(store, 0.999).groups), store.count("image")
        (1, 7)
    """
    ids = [m.id for g in groups for m in g.extras]
    if not ids:
        return 0
    if hasattr(store, "delete"):
        return store.delete(ids=ids)
    if hasattr(store, "_delete"):
        store._delete([(i, modality) for i in ids for modality in ("image", "text")])
        return len(ids)
    raise NotImplementedError(f"{store.describe()} cannot delete records yet (no delete/_delete primitive)")
