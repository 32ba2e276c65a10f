"""Index a folder of photos into Qdrant and search it by text and by image.

Runs offline with local weights::

    python examples/qdrant_quickstart.py --model /path/to/ViT-B-32.pt
    CLIP_WEIGHTS=/path/to/ViT-B-32.pt python examples/qdrant_quickstart.py --location qdrant-db

Without ``--model`` or ``CLIP_WEIGHTS`` it uses ``ViT-B/32``, downloaded on first use.
"""

from __future__ import annotations

from pathlib import Path

from _photos import photos_with_captions, quickstart_args, run, show_searches


def main() -> None:
    args = quickstart_args(__doc__, ":memory:",
                           "':memory:', a folder for a persistent local collection, or a Qdrant server URL")
    # Imported after argument parsing so --help answers at once.
    import clip_embeddings as ce
    from clip_embeddings.adapters import open_store

    folder = Path(args.images)
    files, captions = photos_with_captions(folder)

    store = open_store("qdrant", args.location, "photos", ce.ClipEF(args.model))
    report = store.add_images(files, captions=captions, on_error="skip")
    print(report)
    print(f"points in the collection: {store.count()}")

    show_searches(store, args.query, files[0], args.k)

if __name__ == "__main__":
    run(main)
