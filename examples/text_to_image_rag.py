"""Text-to-image retrieval for RAG: a question in, the matching photos as LangChain Documents out.

The retrieved captions and image paths fill a prompt that any LangChain chat model (a
vision model can take the images themselves) would answer; offline, the prompt is printed.
Runs offline with local weights::

    python examples/text_to_image_rag.py --model /path/to/ViT-B-32.pt "Which photo shows space?"
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _photos import IMAGES, add_model_argument, photos_with_captions, run


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("question", nargs="?", default="Which of my photos were taken in space?")
    add_model_argument(parser)
    parser.add_argument("--images", default=str(IMAGES), help="folder of images to index")
    parser.add_argument("--store", choices=["qdrant", "lancedb", "chroma"], default="qdrant", help="vector database")
    parser.add_argument("--location", default=":memory:", help="':memory:', a folder, or a server URL")
    parser.add_argument("-k", type=int, default=3, help="photos to retrieve")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    from langchain_core.prompts import ChatPromptTemplate

    import clip_embeddings as ce
    from clip_embeddings.adapters import open_store
    from clip_embeddings.integrations.langchain import ClipRetriever

    folder = Path(args.images)
    files, captions = photos_with_captions(folder)
    store = open_store(args.store, args.location, "photos", ce.ClipEF(args.model))
    print(store.add_images(files, captions=captions, on_error="skip"))

    retriever = ClipRetriever(store=store, k=args.k)  # modality="image": the question searches the pictures
    docs = retriever.invoke(args.question)
    context = "\n".join(
        f"- {Path(d.metadata['source']).name} (score {d.metadata['score']:.3f}): {d.page_content}" for d in docs
    )
    prompt = ChatPromptTemplate.from_messages([
        ("system", "Answer using only the photos listed; name the files you rely on."),
        ("human", "Photos:\n{context}\n\nQuestion: {question}"),
    ])
    for message in prompt.invoke({"context": context, "question": args.question}).to_messages():
        print(f"\n[{message.type}]\n{message.content}")


if __name__ == "__main__":
    run(main)
