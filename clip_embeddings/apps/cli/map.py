"""``clip-embeddings map``: draw a collection's images on a 2-D map, clustered and named."""

from __future__ import annotations

import argparse

from ...collection.map import PROJECTIONS, render_map
from ..console import emit
from .common import loaded, positive_int
from .jobs import job_document, job_parser, open_collection


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``map`` sub-parser; :func:`run` carries it out."""
    p = job_parser(sub, "map",
                   help="draw the collection as thumbnails on a 2-D map, with named clusters",
                   description="Project the image vectors to 2-D (PCA; t-SNE; UMAP if umap-learn is "
                               "installed), lay the thumbnails out without overlaps, frame them by k-means "
                               "cluster and name each cluster by its nearest words (zero-shot).")
    p.add_argument("output", metavar="OUTPUT.png", help="the PNG to write")
    p.add_argument("--projection", choices=PROJECTIONS, default="pca", help="pca (default), tsne or umap")
    p.add_argument("--clusters", type=positive_int, help="k-means clusters (default: about sqrt(n/2), at most 12)")
    p.add_argument("--vocabulary", metavar="FILE", help="words to name clusters by, one per line (default: ImageNet's)")
    p.add_argument("--thumb", type=positive_int, default=96, help="thumbnail size in pixels (default 96)")
    p.add_argument("--limit", type=positive_int, default=5000, help="at most this many images (default 5000)")
    p.add_argument("--html", action="store_true", help="also write OUTPUT.html with the same layout")
    return p


def run(args: argparse.Namespace) -> int:
    """Draw the map and say where it is."""
    store = open_collection(args)
    loaded(store.ef)
    vocabulary = None
    if args.vocabulary:
        with open(args.vocabulary, encoding="utf-8") as f:
            vocabulary = [line.strip() for line in f if line.strip()]
    report = render_map(store, args.output, projection=args.projection, clusters=args.clusters,
                        vocabulary=vocabulary, thumb=args.thumb, limit=args.limit, html_page=args.html, progress=True)
    document = job_document(args) | {**report.to_dict()}
    text = [f"wrote {report.path} ({report.size[0]} x {report.size[1]}, {len(report.placements)} images, "
            f"{args.projection})" + (f" and {report.html}" if report.html else "")]
    text += [f"  cluster {c['cluster'] + 1} ({c['size']} images): {', '.join(c['words'])}" for c in report.clusters]
    if report.missing:
        text.append(f"  {len(report.missing)} image file(s) could not be read; drawn grey")
    emit(args, document, text)
    return 0
