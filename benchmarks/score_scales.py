"""How far apart the score scales of text→image, image→image and text→text queries sit.

Embeds the bundled photos (examples/images) and their captions, and prints the cosine
similarities of matching pairs, of all other pairs, and the gap between them, per modality pair.
docs/queries.md quotes its output. Run: ``python benchmarks/score_scales.py [MODEL]`` (default:
the tiny random test model, so it runs offline; pass ``ViT-B/32`` or a weights path for real ones).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

import clip_embeddings as ce

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT / "examples" / "images"


def tiny_model() -> str:
    sys.path.insert(0, str(ROOT))
    import torch

    from tests.model_factory import tiny_reference_clip

    path = Path(tempfile.mkdtemp()) / "tiny-vit.pt"
    torch.save(tiny_reference_clip("vit", seed=0).state_dict(), path)
    return str(path)


def stats(matrix: np.ndarray, diagonal: bool) -> dict[str, float]:
    off = matrix[~np.eye(len(matrix), dtype=bool)]
    out = {"others mean": float(off.mean()), "others max": float(off.max()), "others min": float(off.min())}
    if diagonal:
        out["matching mean"] = float(np.diag(matrix).mean())
    return {k: round(v, 3) for k, v in out.items()}


def main() -> None:
    model = sys.argv[1] if len(sys.argv) > 1 else tiny_model()
    captions = json.loads((PHOTOS / "captions.json").read_text())
    names = sorted(captions)
    ef = ce.ClipEF(model, cache=False)
    images = ef.embed_images([PHOTOS / n for n in names])
    texts = ef.embed_texts([captions[n] for n in names])
    result = {
        "model": Path(model).name,
        "text->image (caption vs photo)": stats(texts @ images.T, diagonal=True),
        "image->image (photo vs other photos)": stats(images @ images.T, diagonal=False),
        "text->text (caption vs other captions)": stats(texts @ texts.T, diagonal=False),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
