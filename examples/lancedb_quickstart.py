"""Index a folder of photos into LanceDB with the ``clip-embeddings`` registry function.

The table's schema remembers the function (and the model's fingerprint), so LanceDB embeds
rows on ``add`` and queries on ``search``, here or in any later process that imports
``clip_embeddings``. Runs offline with local weights::

    python examples/lancedb_quickstart.py --model /path/to/ViT-B-32.pt --db lance-db
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _photos import IMAGES, add_model_argument, photos_with_captions, run, scratch_dir


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_argument(parser)
    parser.add_argument("--images", default=str(IMAGES), help="folder of images to index")
    parser.add_argument("--db", default=None, help="LanceDB directory (default: a temporary one)")
    parser.add_argument("--query", default="a cup of coffee", help="text to search for")
    parser.add_argument("-k", type=int, default=3, help="results per query")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    import lancedb
    from lancedb.embeddings import get_registry
    from lancedb.pydantic import LanceModel, Vector
    from PIL import Image

    import clip_embeddings  # noqa: F401  (registers "clip-embeddings" with LanceDB)

    clip = get_registry().get("clip-embeddings").create(model=args.model)

    class Photo(LanceModel):
        image_uri: str = clip.SourceField()
        vector: Vector(clip.ndims()) = clip.VectorField()

    db_dir = scratch_dir(args.db, "lancedb-quickstart-")
    files, _ = photos_with_captions(args.images)
    table = lancedb.connect(db_dir).create_table("photos", schema=Photo, mode="overwrite")
    table.add([{"image_uri": str(p)} for p in files])  # LanceDB calls CLIP on the image_uri column
    print(f"indexed {table.count_rows()} images into {db_dir}")

    print(f"\ntext -> image: {args.query!r}")
    for row in table.search(args.query).distance_type("cosine").limit(args.k).to_list():
        print(f"  {1 - row['_distance']:.3f}  {Path(row['image_uri']).name}")

    probe = files[0]
    print(f"\nimage -> image (PIL query): {probe.name}")
    for row in table.search(Image.open(probe)).distance_type("cosine").limit(args.k).to_list():
        print(f"  {1 - row['_distance']:.3f}  {Path(row['image_uri']).name}")


if __name__ == "__main__":
    run(main)
