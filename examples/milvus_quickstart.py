"""Index a folder of photos into Milvus (Milvus Lite in a local .db, or a server) and search it.

Runs offline with local weights::

    python examples/milvus_quickstart.py --model /path/to/ViT-B-32.pt --location ./photos.db
    python examples/milvus_quickstart.py --model /path/to/ViT-B-32.pt --location http://localhost:19530

Without ``--location`` it writes a Milvus Lite database in a temporary folder. Without
``--model`` or ``CLIP_WEIGHTS`` it uses ``ViT-B/32``, downloaded on first use.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from _photos import photos_with_captions, quickstart_args, run, show_searches


def main() -> None:
    args = quickstart_args(__doc__, None,
                           "a Milvus Lite path ending in .db, or a Milvus server URL (default: a temporary .db)")
    # Imported after argument parsing so --help answers at once.
    import clip_embeddings as ce
    from clip_embeddings.adapters import open_store

    location = args.location or str(Path(tempfile.mkdtemp(prefix="milvus-quickstart-")) / "photos.db")
    files, captions = photos_with_captions(Path(args.images))

    store = open_store("milvus", location, "photos", ce.ClipEF(args.model))
    print(store.add_images(files, captions=captions, on_error="skip"))
    print(f"items in the collection: {store.count()}")

    show_searches(store, args.query, files[0], args.k)
    store.close()  # Milvus Lite: the .db is free for another process once closed


if __name__ == "__main__":
    run(main)
