"""Index a folder of photos into Qdrant and search it by text and by image.

Runs offline with local weights::

    python examples/qdrant_quickstart.py --model /path/to/ViT-B-32.pt
    CLIP_WEIGHTS=/path/to/ViT-B-32.pt python examples/qdrant_quickstart.py --location qdrant-db

Without ``--model`` or ``CLIP_WEIGHTS`` it uses ``ViT-B/32``, downloaded on first use.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _photos import IMAGES, add_model_argument, photos_with_captions, run


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_argument(parser)
    parser.add_argument("--images", default=str(IMAGES), help="folder of images to index")
    parser.add_argument("--location", default=":memory:",
                        help="':memory:', a folder for a persistent local collection, or a Qdrant server URL")
    parser.add_argument("--query", default="a rocket on the launch pad at night", help="text to search for")
    parser.add_argument("-k", type=int, default=3, help="results per query")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    # Imported after argument parsing so --help answers at once.
    import clip_embeddings as ce
    from clip_embeddings.adapters import open_store

    folder = Path(args.images)
    files, captions = photos_with_captions(folder)

    store = open_store("qdrant", args.location, "photos", ce.ClipEF(args.model))
    report = store.add_images(files, captions=captions, on_error="skip")
    print(report)
    print(f"points in the collection: {store.count()}")

    print(f"\ntext -> image: {args.query!r}")
    for hit in store.query(args.query, k=args.k):
        print(f"  {hit.score:.3f}  {Path(hit.source).name}  ({hit.document or 'no caption'})")

    probe = files[0]
    print(f"\nimage -> image: {probe.name}")
    for hit in store.query(image=probe, k=args.k):
        print(f"  {hit.score:.3f}  {Path(hit.source).name}")

    print(f"\nimage -> text: {probe.name}")
    for hit in store.query(image=probe, k=args.k, modality="text"):
        print(f"  {hit.score:.3f}  {hit.document}")


if __name__ == "__main__":
    run(main)
