"""What the example scripts share: the ``--model`` argument and the sample photos with captions."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

IMAGES = Path(__file__).resolve().parent / "images"


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=os.environ.get("CLIP_WEIGHTS", "ViT-B/32"),
                        help="model name or local weights path (default: $CLIP_WEIGHTS or ViT-B/32)")


def photos_with_captions(folder: str | os.PathLike = IMAGES) -> tuple[list[Path], list[str | None]]:
    """The images directly in ``folder`` (sorted) and their captions from its captions.json, if any."""
    from clip_embeddings.images import iter_image_files

    folder = Path(folder)
    files = list(iter_image_files(folder, recursive=False))
    captions_file = folder / "captions.json"
    captions = json.loads(captions_file.read_text()) if captions_file.exists() else {}
    return files, [captions.get(p.name) for p in files]
