"""Index a folder of photos into Milvus (Milvus Lite in a local .db, or a server) and search it.

Runs offline with local weights::

    python examples/milvus_quickstart.py --model /path/to/ViT-B-32.pt --location ./photos.db
    python examples/milvus_quickstart.py --model /path/to/ViT-B-32.pt --location http://localhost:19530

Without ``--location`` it writes a Milvus Lite database in a temporary folder. Without
``--model`` or ``CLIP_WEIGHTS`` it uses ``ViT-B/32``, downloaded on first use.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _photos import IMAGES, add_model_argument, photos_with_captions, run


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_argument(parser)
    parser.add_argument("--images", default=str(IMAGES), help="folder of images to index")
    parser.add_argument("--location", default=None,
                        help="a Milvus Lite path ending in .db, or a Milvus server URL (default: a temporary .db)")
    parser.add_argument("--query", default="a rocket on the launch pad at night", help="text to search for")
    parser.add_argument("-k", type=int, default=3, help="results per query")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    # Imported after argument parsing so --help answers at once.
    import clip_embeddings as ce
    from clip_embeddings.adapters import open_store

    location = args.location or str(Path(tempfile.mkdtemp(prefix="milvus-quickstart-")) / "photos.db")
    files, captions = photos_with_captions(Path(args.images))

    store = open_store("milvus", location, "photos", ce.ClipEF(args.model))
    print(store.add_images(files, captions=captions, on_error="skip"))
    print(f"items in the collection: {store.count()}")

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
    store.close()  # Milvus Lite: the .db is free for another process once closed


if __name__ == "__main__":
    run(main)
