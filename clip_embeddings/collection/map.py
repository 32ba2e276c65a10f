"""A picture of a collection: its images laid out by a 2-D projection of their CLIP vectors.

* **Projection** (scikit-learn): PCA always; t-SNE (scikit-learn) or UMAP (``umap-learn``, if
  installed) on request. PCA is linear and deterministic; t-SNE and UMAP keep neighbourhoods
  better and cost more.
* **Layout**: each image goes to the free grid cell nearest its projected point, so thumbnails
  never overlap and every image is visible.
* **Clusters**: k-means (scikit-learn) on the unit vectors; each cluster is named by the words of a
  vocabulary (default: the ImageNet class names) whose zero-shot prototypes (the prompt ensembles
  of :mod:`clip_embeddings.zeroshot`) are nearest its centroid. A cluster's colour frames its
  thumbnails; the legend below the grid says which words go with which colour.
* **Output**: a PNG (Pillow), and optionally an HTML page with the same layout (thumbnails
  linking to the local files).

The map holds every image vector in memory (``n x dim`` float32, 2 MB per 1,000 images at 512-d);
``limit`` caps how many images are drawn (the first ``limit`` the store returns).
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .._extras import require
from ..tasks.zeroshot import DEFAULT_TEMPLATES, IMAGENET_CLASSES, ZeroShotClassifier
from .protocol import StoreLike, require_records

PROJECTIONS = ("pca", "tsne", "umap")
PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40),
           (128, 0, 0), (170, 255, 195), (128, 128, 0), (0, 0, 128)]  # Sasha Trubetskoy's distinct colours
FRAME = 3  # pixels of cluster colour around each thumbnail
LEGEND_LINE = 22


@dataclass
class Placement:
    """Where one image was drawn: ``box`` is the thumbnail's (left, top, right, bottom) in pixels."""

    id: str
    source: str | None
    cluster: int
    box: tuple[int, int, int, int]


@dataclass
class MapReport:
    """What a map shows: each image's placement and each cluster's words and size."""

    path: str
    size: tuple[int, int]
    projection: str
    placements: list[Placement] = field(default_factory=list)
    clusters: list[dict[str, Any]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # images whose file could not be read (drawn grey)
    html: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": list(self.size), "projection": self.projection, "html": self.html,
                "clusters": self.clusters, "missing": self.missing,
                "placements": [{"id": p.id, "source": p.source, "cluster": p.cluster, "box": list(p.box)}
                               for p in self.placements]}


def project(vectors: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """``[n, 2]`` coordinates of ``[n, dim]`` vectors by PCA, t-SNE or UMAP.

    Example:
        >>> project(np.eye(4, dtype=np.float32)).shape
        (4, 2)
    """
    if method not in PROJECTIONS:
        raise ValueError(f"projection must be one of {', '.join(PROJECTIONS)}, not {method!r}")
    n = len(vectors)
    if n < 3:  # nothing to project: a row
        return np.stack([np.arange(n, dtype=np.float64), np.zeros(n)], axis=1)
    if method == "umap":
        umap = require("umap", "map")
        return umap.UMAP(n_components=2, random_state=seed, n_neighbors=min(15, n - 1)).fit_transform(vectors)
    if method == "tsne":
        manifold = require("sklearn.manifold", "map")
        return manifold.TSNE(2, perplexity=min(30.0, (n - 1) / 3), random_state=seed, init="pca").fit_transform(vectors)
    decomposition = require("sklearn.decomposition", "map")
    return decomposition.PCA(2, random_state=seed).fit_transform(vectors)


def cluster(vectors: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """k-means labels ``[n]`` and unit centroids ``[k, dim]`` of unit vectors."""
    k = max(1, min(k, len(vectors)))
    kmeans = require("sklearn.cluster", "map").KMeans(n_clusters=k, n_init=4, random_state=seed).fit(vectors)
    centres = kmeans.cluster_centers_.astype(np.float32)
    centres /= np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
    return kmeans.labels_, centres


def name_clusters(ef: Any, centres: np.ndarray, vocabulary: Sequence[str], words: int = 2,
                  templates: Sequence[str] = DEFAULT_TEMPLATES) -> list[list[str]]:
    """The ``words`` vocabulary entries whose zero-shot prototypes are nearest each centre."""
    prototypes = ZeroShotClassifier(ef, list(dict.fromkeys(vocabulary)), templates)
    scores = centres @ prototypes.prototypes.T
    order = np.argsort(-scores, axis=1)[:, :words]
    return [[prototypes.labels[j] for j in row] for row in order]


def grid_cells(points: np.ndarray, columns: int, rows: int) -> list[tuple[int, int]]:
    """Each point's (column, row): the free cell nearest its position scaled to the grid.

    Points are placed in order of distance from the layout's centre, each in the nearest cell
    not yet taken (searched ring by ring), so no two share a cell; of equally near cells, the
    smaller (column, row) wins.

    Example:
        >>> grid_cells(np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]]), 2, 2)
        [(0, 0), (0, 1), (1, 1)]
    """
    if len(points) > columns * rows:
        raise ValueError(f"{len(points)} images do not fit a {columns} x {rows} grid")
    lo, hi = points.min(axis=0), points.max(axis=0)
    scaled = (points - lo) / np.where(hi > lo, hi - lo, 1.0) * [columns - 1, rows - 1]
    taken: set[tuple[int, int]] = set()
    cells: list[tuple[int, int]] = [(0, 0)] * len(points)
    centre = scaled.mean(axis=0)
    for i in np.argsort(np.linalg.norm(scaled - centre, axis=1), kind="stable"):
        x, y = scaled[i]
        cells[i] = _nearest_free(x, y, columns, rows, taken)
        taken.add(cells[i])
    return cells


def _nearest_free(x: float, y: float, columns: int, rows: int, taken: set[tuple[int, int]]) -> tuple[int, int]:
    cx, cy = int(round(x)), int(round(y))
    for radius in range(max(columns, rows) + 1):
        ring = [(cx + dx, cy + dy) for dx in range(-radius, radius + 1) for dy in range(-radius, radius + 1)
                if max(abs(dx), abs(dy)) == radius]
        free = [(c, r) for c, r in ring if 0 <= c < columns and 0 <= r < rows and (c, r) not in taken]
        if free:
            return min(free, key=lambda cell: ((cell[0] - x) ** 2 + (cell[1] - y) ** 2, cell))
    raise ValueError("the grid is full")


def _thumbnail(source: str | None, size: int) -> Image.Image | None:
    if not source or not os.path.isfile(source):
        return None
    try:
        with Image.open(source) as image:
            image = image.convert("RGB")
            image.thumbnail((size, size))
            return image.copy()
    except OSError:
        return None


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def render_map(store: StoreLike, path: str | os.PathLike, *, projection: str = "pca", clusters: int | None = None,
               vocabulary: Sequence[str] | None = None, thumb: int = 96, limit: int = 5000, html_page: bool = False,
               seed: int = 0, progress: bool = False) -> MapReport:
    """Draw the collection's images as thumbnails laid out by ``projection``, framed by k-means
    cluster, with a legend naming each cluster; write a PNG to ``path`` (and ``path`` with
    ``.html`` when ``html_page``).

    ``clusters`` defaults to about ``sqrt(n / 2)`` (at most 12); ``vocabulary`` to the ImageNet
    class names. Raises :class:`~clip_embeddings.errors.EmptyCollectionError` with no images.

    Example:
        >>> report = render_map(store, "map.png", clusters=3, vocabulary=["cat", "rocket", "coffee", "galaxy"])
        >>> len(report.clusters), len(report.placements), Image.open("map.png").format
        (3, 7, 'PNG')
        >>> report.clusters[0]["words"]  # the vocabulary entries nearest the cluster's centre
        ['...', ...]
    """
    require_records(store, "image", "map")
    ids: list[str] = []
    sources: list[str | None] = []
    rows: list[np.ndarray] = []
    for batch in store._scan("image", batch_size=512):
        for r in batch[: max(0, limit - len(ids))]:
            ids.append(r.id)
            sources.append(r.source)
            rows.append(np.asarray(r.vector, np.float32))
        if len(ids) >= limit:
            break
    vectors = np.stack(rows)
    n = len(ids)
    k = clusters if clusters is not None else min(12, max(1, round(math.sqrt(n / 2))))
    labels, centres = cluster(vectors, k, seed)
    words = name_clusters(store.ef, centres, vocabulary or IMAGENET_CLASSES)
    points = project(vectors, projection, seed)
    columns = max(2, math.ceil(math.sqrt(n * 1.6)))  # room to keep the projection's shape
    grid_rows = max(2, math.ceil(n * 1.6 / columns))
    cells = grid_cells(points, columns, grid_rows)
    cell = thumb + 2 * FRAME + 4
    pad = 16
    legend_h = pad + LEGEND_LINE * len(centres)
    canvas = Image.new("RGB", (2 * pad + columns * cell, 2 * pad + grid_rows * cell + legend_h), "white")
    draw = ImageDraw.Draw(canvas)
    report = MapReport(str(path), canvas.size, projection)
    from tqdm.auto import tqdm

    for i in tqdm(range(n), disable=not progress, desc="map", unit="img"):
        x0, y0 = pad + cells[i][0] * cell, pad + cells[i][1] * cell
        colour = PALETTE[int(labels[i]) % len(PALETTE)]
        draw.rectangle((x0, y0, x0 + thumb + 2 * FRAME - 1, y0 + thumb + 2 * FRAME - 1), fill=colour)
        image = _thumbnail(sources[i], thumb)
        if image is None:
            report.missing.append(ids[i])
            image = Image.new("RGB", (thumb, thumb), (200, 200, 200))
        left = x0 + FRAME + (thumb - image.width) // 2
        top = y0 + FRAME + (thumb - image.height) // 2
        draw.rectangle((x0 + FRAME, y0 + FRAME, x0 + FRAME + thumb - 1, y0 + FRAME + thumb - 1), fill="white")
        canvas.paste(image, (left, top))
        report.placements.append(Placement(ids[i], sources[i], int(labels[i]), (left, top, left + image.width,
                                                                               top + image.height)))
    font = _font(16)
    legend_top = 2 * pad + grid_rows * cell
    for c, names in enumerate(words):
        y = legend_top + c * LEGEND_LINE
        draw.rectangle((pad, y + 3, pad + 14, y + 17), fill=PALETTE[c % len(PALETTE)])
        size = int((labels == c).sum())
        draw.text((pad + 22, y), f"cluster {c + 1} ({size} images): {', '.join(names)}", fill="black", font=font)
        report.clusters.append({"cluster": c, "words": names, "size": size})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    if html_page:
        report.html = write_html(report, Path(path).with_suffix(".html"))
    return report


def write_html(report: MapReport, path: Path) -> str:
    """The map's layout as an HTML page: the same boxes, the local files as images, the legend."""
    width, height = report.size
    items = []
    for p in report.placements:
        left, top, right, bottom = p.box
        colour = "rgb({},{},{})".format(*PALETTE[p.cluster % len(PALETTE)])
        src = Path(p.source).resolve().as_uri() if p.source and os.path.isabs(p.source) else html.escape(p.source or "")
        items.append(f'<a href="{src}"><img src="{src}" title="{html.escape(p.source or p.id)}" style="position:absolute;'
                     f"left:{left}px;top:{top}px;width:{right - left}px;height:{bottom - top}px;"
                     f'outline:{FRAME}px solid {colour}"></a>')
    legend = "".join(
        f'<li><span style="color:rgb({",".join(map(str, PALETTE[c["cluster"] % len(PALETTE)]))})">&#9632;</span> '
        f'cluster {c["cluster"] + 1} ({c["size"]} images): {html.escape(", ".join(c["words"]))}</li>'
        for c in report.clusters)
    path.write_text(f'<!doctype html><meta charset="utf-8"><title>collection map</title>'
                    f'<div style="position:relative;width:{width}px;height:{height}px">{"".join(items)}</div>'
                    f"<ul>{legend}</ul>", encoding="utf-8")
    return str(path)
