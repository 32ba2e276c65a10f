"""Every code block in the README runs, so the docs cannot drift from the code.

The blocks run in document order, as a reader following the README top to bottom would, in one
working folder that holds the files they name (the bundled photos as ``examples/images``, and as
``cat.jpg``, ``kitten.jpg``, ``photos/``; an ``imagenet_val/`` folder, ``labels.txt``,
``pairs.csv``). Python blocks share one namespace, seeded with the placeholders the README uses
for "your data" (``pil_image``, ``paths``, ``pairs``...). What changes from the text as written:

- model names: ``$CLIP_WEIGHTS`` is the tiny random model, and the literal ``"ViT-B/32"`` in a
  Python block is replaced by its path (no download, no real weights in the test suite);
- the README's placeholder URL ``https://…/dog.png`` points at a local HTTP server.

``bash`` blocks run their ``clip-embeddings`` lines through the command line's ``main``; a line
or block that needs a server, a cluster or minutes of benchmarking is skipped with its reason:
blocks by an HTML comment ``<!-- no-test: reason -->`` right before them, and at most
``MAX_SKIPPED_BLOCKS`` of them. Blocks without a language are sample output, not code.
"""

from __future__ import annotations

import functools
import glob
import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.servers import serving

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PHOTOS = ROOT / "examples" / "images"
MAX_SKIPPED_BLOCKS = 4
PLACEHOLDER_URL = "https://…/dog.png"
# `clip-embeddings` lines not run here, and why (each is covered by its own test).
SKIPPED_COMMANDS = {"bench": "runs the benchmark suite for minutes (tests/test_benchmarks_smoke.py covers it)"}


@dataclass
class Block:
    line: int
    language: str
    code: str
    skip: str | None  # the reason given in <!-- no-test: ... -->


def readme_blocks(text: str) -> list[Block]:
    """The fenced code blocks of ``text``, with the line they start on and any no-test reason."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        fence = re.match(r"^```(\S*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        start, body = i, []
        i += 1
        while not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        previous = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        skip = re.match(r"^<!--\s*no-test:\s*(.+?)\s*-->$", previous.strip())
        blocks.append(Block(start + 1, fence.group(1), "\n".join(body) + "\n", skip.group(1) if skip else None))
        i += 1
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))


def test_readme_blocks_are_code_or_marked():
    code = [b for b in BLOCKS if b.language in ("python", "bash")]
    skipped = [b for b in code if b.skip]
    assert len(code) >= 10, "the README lost its examples?"
    assert len(skipped) <= MAX_SKIPPED_BLOCKS, [f"line {b.line}: {b.skip}" for b in skipped]
    assert {b.language for b in BLOCKS} <= {"python", "bash", ""}, "a block in another language needs a runner here"


# --- the working folder a reader has -----------------------------------------------------------

def make_workdir(root: Path) -> Path:
    shutil.copytree(PHOTOS, root / "examples" / "images")
    shutil.copytree(PHOTOS, root / "photos", ignore=shutil.ignore_patterns("*.md", "*.json"))
    for name in ("cat.jpg", "rocket.jpg"):
        shutil.copy(PHOTOS / name, root / name)
    shutil.copy(PHOTOS / "cat.jpg", root / "kitten.jpg")
    from clip_embeddings.tasks.zeroshot import IMAGENET_CLASSES

    # An ImageFolder with ImageNet's 1000 classes in order; a few hold a photo, the rest are empty.
    for index in range(len(IMAGENET_CLASSES)):
        (root / "imagenet_val" / f"n{index:04d}").mkdir(parents=True)
    for index, photo in zip((281, 1, 504), ("cat.jpg", "galaxies.jpg", "coffee.jpg")):
        shutil.copy(PHOTOS / photo, root / "imagenet_val" / f"n{index:04d}" / photo)
    (root / "labels.txt").write_text("\n".join(IMAGENET_CLASSES) + "\n", encoding="utf-8")
    captions = json.loads((PHOTOS / "captions.json").read_text())
    (root / "pairs.csv").write_text("image,caption\n" + "".join(
        f"photos/{name},{caption.replace(',', ' ')}\n" for name, caption in sorted(captions.items())))
    return root


def placeholders(root: Path) -> dict:
    """What the README's Python blocks assume the reader has: images, labels, features, pairs."""
    photos = sorted(str(p) for p in (root / "photos").glob("*.jpg"))
    rng = np.random.default_rng(0)
    captions = json.loads((PHOTOS / "captions.json").read_text())
    return {
        "pil_image": Image.open(photos[0]),
        "numpy_array": np.asarray(Image.open(photos[1]).convert("RGB")),
        "numpy_image": np.asarray(Image.open(photos[2]).convert("RGB")),
        "raw_bytes": Path(photos[3]).read_bytes(),
        "paths": photos + [str(root / "missing.jpg")],
        "images": photos[:3],
        "texts": ["a cat", "a rocket", "a cup of coffee"],
        "imagenet_labels": ["tabby cat", "space shuttle", "coffee mug"],
        "pairs": [(p, captions[Path(p).name]) for p in photos],
        "train_features": rng.normal(size=(20, 8)), "train_labels": np.arange(20) % 2,
        "test_features": rng.normal(size=(6, 8)), "test_labels": np.arange(6) % 2,
    }


@pytest.fixture
def reader(tmp_path, monkeypatch, tiny_model_path, no_proxy):
    """The working folder, cwd set to it and $CLIP_WEIGHTS to the tiny model; yields the photo server URL."""
    root = make_workdir(tmp_path / "work")
    monkeypatch.chdir(root)
    monkeypatch.setenv("CLIP_WEIGHTS", str(tiny_model_path))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(PHOTOS))
    with serving(handler) as server:
        yield root, server.url


def as_run(code: str, weights: Path, url: str) -> str:
    return code.replace('"ViT-B/32"', repr(str(weights))).replace(PLACEHOLDER_URL, f"{url}/coffee.jpg")


def run_bash(block: Block) -> list[str]:
    """Run a bash block's ``clip-embeddings`` lines; returns the lines it ran."""
    from clip_embeddings.apps import cli

    ran = []
    for line in block.code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        assert words[0] == "clip-embeddings", f"README line {block.line}: cannot run {line!r} here; mark the block no-test"
        if words[1] in SKIPPED_COMMANDS:
            continue
        args = [match for w in words[1:] for match in (sorted(glob.glob(w)) if "*" in w else [w])]
        assert cli.main(args) == 0, f"README line {block.line}: {line}"
        ran.append(line)
    return ran


def release(namespace: dict) -> None:
    """Close what a block left open: a local Qdrant folder stays locked while its client lives."""
    for value in list(namespace.values()):
        client = getattr(value, "client", None)
        if client is not None and type(client).__module__.startswith("qdrant_client"):
            client.close()


@pytest.mark.slow  # ImageNet's 1000 class names are encoded twice (evaluate and the CLI's eval)
def test_every_readme_block_runs_in_order(reader, tiny_model_path, capsys):
    root, url = reader
    namespace: dict = {"__name__": "__readme__", **placeholders(root)}
    ran = 0
    for block in BLOCKS:
        if block.skip or block.language not in ("python", "bash"):
            continue
        if block.language == "python":
            code = compile(as_run(block.code, tiny_model_path, url), f"README.md:{block.line}", "exec")
            exec(code, namespace)  # noqa: S102  (the README, as written, is the code under test)
        else:
            release(namespace)
            assert run_bash(block), f"README line {block.line}: no command ran"
        ran += 1
    release(namespace)
    assert ran == sum(1 for b in BLOCKS if b.language in ("python", "bash") and not b.skip)
    out = capsys.readouterr().out
    assert "indexed photos" in out and "zero-shot classification" in out and "top-1 accuracy" in out
    assert (root / "tuned.pt").is_file()


def test_first_snippet_runs_as_written_twice_in_a_row(tmp_path, tiny_model_path):
    """The first Python block, saved as a script and run twice in fresh processes on the bundled photos."""
    first = next(b for b in BLOCKS if b.language == "python")
    assert not first.skip and '"ViT-B/32"' not in first.code  # as written: the model comes from $CLIP_WEIGHTS
    root = tmp_path / "checkout"
    shutil.copytree(PHOTOS, root / "examples" / "images")
    (root / "first.py").write_text(first.code)
    env = {**os.environ, "CLIP_WEIGHTS": str(tiny_model_path), "PYTHONPATH": str(ROOT)}
    import chromadb

    runs, counts = [], []
    for _ in range(2):
        runs.append(subprocess.run([sys.executable, "first.py"], cwd=root, env=env, capture_output=True, text=True,
                                   timeout=300))
        assert runs[-1].returncode == 0, runs[-1].stderr[-3000:]
        counts.append(chromadb.PersistentClient(str(root / "db")).get_collection("photos").count())
    first_out, second_out = (r.stdout.splitlines() for r in runs)
    assert len(first_out) == 3 and first_out == second_out
    sources = {line.split(maxsplit=1)[1] for line in first_out}
    assert sources <= {str(p.resolve()) for p in (root / "examples" / "images").glob("*.jpg")}
    # The second run stored nothing new: the photos (and their captions) once, as after the first.
    assert counts[0] == counts[1] >= len(list(PHOTOS.glob("*.jpg")))
