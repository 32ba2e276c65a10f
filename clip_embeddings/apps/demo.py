"""``python -m clip_embeddings.demo``: the whole job on the example photos, in about a minute.

1. index ``examples/images`` (with the captions from its ``captions.json``) into an embedded
   Chroma database under the output folder;
2. search it with a few texts and print the top hits;
3. zero-shot classify every photo over labels built from the captions file;
4. save a contact sheet (``contact_sheet.png``): one row per query with its top-3 thumbnails.

The model is ``$CLIP_WEIGHTS`` (a local checkpoint) when set, else ViT-B/32, downloaded once.

Example::

    $ python -m clip_embeddings.demo --output demo_output
    $ CLIP_WEIGHTS=~/models/ViT-B-32.pt python -m clip_embeddings.demo
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..core.loading import default_model
from .console import format_table, report_error, status

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "images"

# Each query paraphrases one caption, so the photo it should find is known in advance.
QUERIES: tuple[tuple[str, str], ...] = (
    ("a photo of a cat", "cat.jpg"),
    ("a rocket launch", "rocket.jpg"),
    ("a cup of coffee", "coffee.jpg"),
    ("an astronaut in a spacesuit", "astronaut.jpg"),
    ("galaxies in deep space", "galaxies.jpg"),
)
TOP = 3  # thumbnails per query on the contact sheet

# Contact-sheet geometry, in pixels (the tests check the PNG against sheet_size).
THUMB = 160
PAD = 12
TEXT_W = 260
LABEL_H = 40
HEADER_H = 48
ROW_H = THUMB + LABEL_H + PAD


@dataclass
class QueryRow:
    """One query's outcome: its top hits as (image path, cosine score), best first."""

    query: str
    expected: str
    hits: list[tuple[str, float]]


def sheet_size(rows: int, top: int = TOP) -> tuple[int, int]:
    """Width and height of a contact sheet with ``rows`` queries of ``top`` thumbnails each.

    Example:
        >>> sheet_size(5)
        (788, 1120)
    """
    return PAD + TEXT_W + top * (THUMB + PAD), HEADER_H + rows * ROW_H + PAD


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # scalable since Pillow 10.1 (with FreeType)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _thumbnail(path: str) -> Image.Image:
    """The image scaled to fit a THUMB square, centred on a light background."""
    tile = Image.new("RGB", (THUMB, THUMB), (235, 235, 235))
    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((THUMB, THUMB))
        tile.paste(image, ((THUMB - image.width) // 2, (THUMB - image.height) // 2))
    return tile


def contact_sheet(rows: Sequence[QueryRow], title: str, top: int = TOP) -> Image.Image:
    """Draw one row per query: the query text, then its ``top`` hits with file name and score.

    The expected hit gets a green frame, any other a grey one, so a glance shows what worked.

    Example:
        >>> sheet = contact_sheet([QueryRow("a cat", "cat.jpg", [("cat.jpg", 0.31)])], "demo")
        >>> sheet.save("sheet.png")
    """
    sheet = Image.new("RGB", sheet_size(len(rows), top), "white")
    draw = ImageDraw.Draw(sheet)
    big, small = _font(20), _font(14)
    draw.text((PAD, PAD), title, fill="black", font=big)
    for r, row in enumerate(rows):
        y = HEADER_H + r * ROW_H
        lines = textwrap.wrap(f'"{row.query}"', width=24)[:4]
        draw.multiline_text((PAD, y + 8), "\n".join(lines), fill="black", font=big, spacing=6)
        draw.text((PAD, y + THUMB - 10), f"expected: {row.expected}", fill=(90, 90, 90), font=small)
        for i, (path, score) in enumerate(row.hits[:top]):
            x = PAD + TEXT_W + i * (THUMB + PAD)
            sheet.paste(_thumbnail(path), (x, y))
            good = Path(path).name == row.expected
            draw.rectangle((x - 2, y - 2, x + THUMB + 1, y + THUMB + 1), outline=(0, 150, 60) if good else (170, 170, 170),
                           width=3 if good else 1)
            draw.text((x, y + THUMB + 6), f"{i + 1}. {Path(path).name}", fill="black", font=small)
            draw.text((x, y + THUMB + 22), f"score {score:.3f}", fill=(90, 90, 90), font=small)
    return sheet


def load_captions(folder: Path) -> dict[str, str]:
    """``captions.json`` of an images folder: {file name: caption}; empty if there is none."""
    path = folder / "captions.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def photos_in(images: Path) -> list[str]:
    """The photos the demo runs on, or a one-line reason and the fix (checked before any model loads).

    The sample photos live in the source checkout (``examples/images``), not in the installed
    package, so an installed ``python -m clip_embeddings.demo`` needs ``--images``.
    """
    from ..inputs.folders import iter_image_files
    from .console import UsageError

    if images == EXAMPLES and not images.is_dir():
        raise UsageError(
            "the sample photos are not installed with the package (they are in examples/images of the source "
            "checkout): pass --images DIR with a folder of your photos, or run the demo from a clone of the repository")
    if not images.is_dir():
        raise UsageError(f"{images}: folder not found (--images takes a folder of photos)")
    files = [str(p) for p in iter_image_files(images)]
    if not files:
        raise UsageError(f"{images}: no photos in it (jpg, png, webp...)")
    return files


def run(model: str, output: Path, images: Path = EXAMPLES) -> int:
    """Run the demo and print its tables; returns the exit status."""
    import chromadb

    from ..adapters.chroma import ChromaStore
    from ..embedding.function import ClipEF
    from ..tasks.zeroshot import classify

    files = photos_in(images)
    captions = load_captions(images)

    ef = ClipEF(model, on_error="skip")
    with status(f"loading model {model} ..."):
        ef.dim  # noqa: B018  (the first load takes seconds: say why the terminal waits)
    print(f"clip-embeddings demo: model {model} (embedding dim {ef.dim}, fingerprint {ef.fingerprint})\n")
    output.mkdir(parents=True, exist_ok=True)  # only once the model loaded: a failed run leaves nothing

    # One collection per model, so re-running with other weights never mixes embeddings.
    db, collection = output / "chroma", f"demo-{ef.fingerprint[:12]}"
    store = ChromaStore(chromadb.PersistentClient(str(db)), collection, ef)
    report = store.add_images(files, captions=[captions.get(Path(f).name) for f in files], on_error="skip")
    print(f"1. indexed {len(files)} photo(s) from {images} into Chroma at {db} (collection {collection!r})")
    for line in str(report).splitlines():
        print(f"   {line.strip()}")
    print()

    rows: list[QueryRow] = []
    table = []
    for query, expected in QUERIES:
        hits = store.query(query, k=TOP)
        rows.append(QueryRow(query, expected, [(h.source or "", h.score) for h in hits]))
        for rank, h in enumerate(hits, 1):
            name = Path(h.source or "").name
            table.append([query if rank == 1 else "", rank, h.score, name, "yes" if name == expected else ""])
    found = sum(1 for r in rows if r.hits and Path(r.hits[0][0]).name == r.expected)
    print(f"2. text -> image search: top-{TOP} for {len(QUERIES)} queries ({found}/{len(QUERIES)} found first)")
    print(format_table(["query", "rank", "score", "image", "expected"], table, align="lrrll"))
    print()

    labels = {name: Path(name).stem.replace("_", " ") for name in captions} or {
        Path(f).name: Path(f).stem for f in files}
    label_list = sorted(set(labels.values()))
    result = classify(files, label_list, ef=ef, top_k=2, on_error="skip")
    table, correct = [], 0
    for index, top_labels, top_scores in zip(result.indices, result.top_labels, result.top_scores, strict=True):
        name = Path(files[index]).name
        truth = labels.get(name, "")
        correct += top_labels[0] == truth
        second = f"{top_labels[1]} ({top_scores[1]:.2f})" if len(top_labels) > 1 else ""
        table.append([name, top_labels[0], top_scores[0], second, "yes" if top_labels[0] == truth else "no"])
    print(f"3. zero-shot classification over {len(label_list)} labels from captions.json "
          f"({correct}/{len(result.indices)} correct)")
    print(format_table(["image", "prediction", "probability", "runner-up", "correct"], table, align="llrll"))
    print()

    path = output / "contact_sheet.png"
    contact_sheet(rows, f"clip-embeddings: text -> image search ({Path(model).name})").save(path)
    print(f"4. contact sheet: {path}")
    print(f"\nnext: clip-embeddings search \"a sleeping cat\" --db chroma --location {db} --collection {collection} "
          f"--model {model}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; errors print one line unless ``--debug``."""
    parser = argparse.ArgumentParser(
        prog="python -m clip_embeddings.demo",
        description="Index the example photos into Chroma, search them by text, zero-shot classify them, and "
                    "save a contact sheet of the results.",
    )
    parser.add_argument("--model", default=default_model(), metavar="NAME_OR_PATH",
                        help="model name or local checkpoint (default: $CLIP_WEIGHTS, else ViT-B/32)")
    parser.add_argument("--output", type=Path, default=Path("demo_output"), metavar="DIR",
                        help="folder for the database and contact_sheet.png (default: ./demo_output)")
    parser.add_argument("--images", type=Path, default=EXAMPLES, metavar="DIR",
                        help="folder of photos, with an optional captions.json (default: examples/images)")
    parser.add_argument("--debug", action="store_true", help="print full tracebacks instead of one-line errors")
    args = parser.parse_args(argv)
    try:
        return run(args.model, args.output, args.images)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        from ..errors import DownloadError, ModelLoadError

        hint = (" To run the demo offline, set CLIP_WEIGHTS to a local checkpoint "
                "(e.g. CLIP_WEIGHTS=/path/to/ViT-B-32.pt make demo)."
                if isinstance(e, (DownloadError, ModelLoadError)) else "")
        report_error(e, args.debug, hint)
        return 1


if __name__ == "__main__":
    sys.exit(main())
