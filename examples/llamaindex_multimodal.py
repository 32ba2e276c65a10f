"""LlamaIndex's multimodal guide with CLIP from clip-embeddings: index a folder of images and
captions, query text -> image and image -> image, persist, and reload with the same model.

Runs offline with local weights (no OpenAI key needed: CLIP embeds the texts too)::

    python examples/llamaindex_multimodal.py --model /path/to/ViT-B-32.pt --storage ./storage

Without ``--model`` or ``CLIP_WEIGHTS`` it uses ``ViT-B/32``, downloaded on first use.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _photos import IMAGES, add_model_argument, run


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_argument(parser)
    parser.add_argument("--images", default=str(IMAGES), help="folder of images (captions.json or .txt captions)")
    parser.add_argument("--storage", default=None, help="where to persist the index (default: a temporary folder)")
    parser.add_argument("--query", default="a rocket on the launch pad at night", help="text to search for")
    parser.add_argument("-k", type=int, default=3, help="results per query")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    # Imported after argument parsing so --help answers at once.
    import clip_embeddings as ce
    from clip_embeddings.integrations.llamaindex import (ClipEmbedding, folder_documents, load_index,
                                                         multimodal_index, persist_index)

    clip = ClipEmbedding(ce.ClipEF(args.model))
    documents = folder_documents(args.images)  # an ImageDocument per image, a Document per caption
    index = multimodal_index(documents, clip)  # CLIP for the text store too: nothing goes to OpenAI
    retriever = index.as_retriever(similarity_top_k=args.k, image_similarity_top_k=args.k)

    print(f"text -> image: {args.query!r}")
    for node in retriever.text_to_image_retrieve(args.query):
        print(f"  {node.score:.3f}  {Path(node.node.image_path).name}")
    probe = sorted(Path(args.images).glob("*.jpg"))[0]
    print(f"\nimage -> image: {probe.name}")
    for node in retriever.image_to_image_retrieve(str(probe)):
        print(f"  {node.score:.3f}  {Path(node.node.image_path).name}")

    storage = args.storage or tempfile.mkdtemp(prefix="llamaindex-storage-")
    persist_index(index, storage)
    reloaded = load_index(storage)  # the model rebuilt from the stored config, weights checked
    again = reloaded.as_retriever(image_similarity_top_k=args.k).text_to_image_retrieve(args.query)
    print(f"\nreloaded from {storage}: text -> image gives {[Path(n.node.image_path).name for n in again]}")


if __name__ == "__main__":
    run(main)
