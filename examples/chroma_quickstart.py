"""Chroma quickstart: photos and captions in one collection, searched across modalities.

    python examples/chroma_quickstart.py                       # ViT-B/32, downloaded once
    python examples/chroma_quickstart.py --model ~/ViT-B-32.pt # a local checkpoint (offline)
    CLIP_WEIGHTS=~/ViT-B-32.pt python examples/chroma_quickstart.py
"""

from __future__ import annotations

import argparse

import chromadb
import numpy as np
from PIL import Image

import clip_embeddings as ce
from _photos import IMAGES, add_model_argument, photos_with_captions, run, scratch_dir
from clip_embeddings.adapters.chroma import ImageLoader



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(parser)
    parser.add_argument("--db", default=None, help="Chroma directory (default: a temporary one)")
    args = parser.parse_args()

    client = chromadb.PersistentClient(scratch_dir(args.db, "chroma-"))
    photos = client.get_or_create_collection(
        "photos", embedding_function=ce.ClipEF(args.model), data_loader=ImageLoader()
    )

    paths, captions = photos_with_captions()
    # Images by uri (the data loader reads them) and captions as documents, in one collection.
    photos.add(ids=[p.stem for p in paths], uris=[str(p) for p in paths],
               metadatas=[{"kind": "image"} for _ in paths])
    photos.add(ids=[f"{p.stem}-caption" for p in paths], documents=captions,
               metadatas=[{"kind": "caption"} for _ in paths])

    print("text → image")
    for query in ["a cat", "a rocket on the launch pad", "a cup of coffee"]:
        hit = photos.query(query_texts=[query], n_results=1, where={"kind": "image"})
        print(f"  {query!r:32} → {hit['ids'][0][0]:12} (distance {hit['distances'][0][0]:.3f})")

    print("image → image and image → text")
    cat = np.asarray(Image.open(IMAGES / "cat.jpg").convert("RGB"))
    similar = photos.query(query_images=[cat], n_results=2, where={"kind": "image"})
    described = photos.query(query_images=[cat], n_results=1, where={"kind": "caption"})
    print(f"  cat.jpg looks like {similar['ids'][0]}, reads as {described['documents'][0][0]!r}")


if __name__ == "__main__":
    run(main)
