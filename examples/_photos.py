"""What the example scripts share: the ``--model`` argument, the sample photos with captions, and the
store quickstarts' arguments and searches."""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

IMAGES = Path(__file__).resolve().parent / "images"


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    # The library's rule (clip_embeddings.core.loading.default_model), without importing torch for --help.
    parser.add_argument("--model", default=os.environ.get("CLIP_WEIGHTS") or "ViT-B/32",
                        help="model name or local weights path (default: $CLIP_WEIGHTS or ViT-B/32)")
    parser.add_argument("--debug", action="store_true", help="print full tracebacks instead of one-line errors")


def run(main: Callable[[], None]) -> None:
    """Run an example as the command line runs a command: an error is one line on stderr, exit 1.

    Without weights (offline, no ``$CLIP_WEIGHTS``) a user reads the same line as from
    ``clip-embeddings``, with the same hint, instead of a traceback.
    """
    try:
        main()
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        from clip_embeddings.apps.console import report_error

        report_error(e, debug="--debug" in sys.argv[1:])
        sys.exit(1)


def scratch_dir(given: str | None, prefix: str) -> str:
    """``given``, or a temporary folder that is removed when the example exits."""
    if given:
        return given
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def photos_with_captions(folder: str | os.PathLike = IMAGES) -> tuple[list[Path], list[str | None]]:
    """The images directly in ``folder`` (sorted) and their captions from its captions.json, if any."""
    from clip_embeddings.inputs.folders import iter_image_files

    folder = Path(folder)
    files = list(iter_image_files(folder, recursive=False))
    captions_file = folder / "captions.json"
    captions = json.loads(captions_file.read_text()) if captions_file.exists() else {}
    return files, [captions.get(p.name) for p in files]


def quickstart_args(doc: str, location_default: str | None, location_help: str) -> argparse.Namespace:
    """The arguments of a store quickstart: --model, --images, --location, --query, -k."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    add_model_argument(parser)
    parser.add_argument("--images", default=str(IMAGES), help="folder of images to index")
    parser.add_argument("--location", default=location_default, help=location_help)
    parser.add_argument("--query", default="a rocket on the launch pad at night", help="text to search for")
    parser.add_argument("-k", type=int, default=3, help="results per query")
    return parser.parse_args()


def show_searches(store, query: str, probe: Path, k: int, *, image_to_text: bool = True) -> None:
    """Search ``store`` text -> image, image -> image (and image -> text), one hit a line."""
    print(f"\ntext -> image: {query!r}")
    for hit in store.query(query, k=k):
        print(f"  {hit.score:.3f}  {Path(hit.source).name}  ({hit.document or 'no caption'})")
    print(f"\nimage -> image: {probe.name}")
    for hit in store.query(image=probe, k=k):
        print(f"  {hit.score:.3f}  {Path(hit.source).name}")
    if image_to_text:
        print(f"\nimage -> text: {probe.name}")
        for hit in store.query(image=probe, k=k, modality="text"):
            print(f"  {hit.score:.3f}  {hit.document}")
