"""Index a folder of photos into PostgreSQL with pgvector and search it by text and by image.

Runs offline with local weights::

    python examples/pgvector_quickstart.py --model /path/to/ViT-B-32.pt --location postgresql://me@localhost/photos_db
    python examples/pgvector_quickstart.py --model /path/to/ViT-B-32.pt   # a throwaway PostgreSQL (pgserver)

Without ``--location`` it starts a PostgreSQL of its own in a temporary folder with the
``pgserver`` package (``pip install pgserver``), which ships PostgreSQL and pgvector. Without
``--model`` or ``CLIP_WEIGHTS`` it uses ``ViT-B/32``, downloaded on first use.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from _photos import photos_with_captions, quickstart_args, run, show_searches


def main() -> None:
    args = quickstart_args(__doc__, None,
                           "postgresql://user:password@host:5432/database (default: a throwaway server via pgserver)")
    # Imported after argument parsing so --help answers at once.
    import clip_embeddings as ce
    from clip_embeddings.adapters import open_store

    ef = ce.ClipEF(args.model)
    ef.dim  # noqa: B018 - load the weights first: a bad --model is reported before any server starts
    location, server = args.location, None
    if location is None:
        import pgserver

        server = pgserver.get_server(tempfile.mkdtemp(prefix="pgvector-quickstart-"), cleanup_mode="delete")
        location = server.get_uri()
    files, captions = photos_with_captions(Path(args.images))
    albums = [{"album": "space" if f.stem in ("astronaut", "galaxies", "rocket") else "earth"} for f in files]

    store = open_store("pgvector", location, "photos", ef)
    print(store.add_images(files, captions=captions, metadatas=albums, on_error="skip"))
    print(f"items in the table: {store.count()}; index: {store.index_parameters()}")

    show_searches(store, args.query, files[0], args.k, image_to_text=False)

    print("\ntext -> image, album 'space' only (a JSONB filter):")
    for hit in store.query(args.query, k=args.k, where={"album": "space"}):
        print(f"  {hit.score:.3f}  {Path(hit.source).name}")
    store.close()
    if server is not None:
        server.cleanup()


if __name__ == "__main__":
    run(main)
