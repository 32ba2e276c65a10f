"""Every docstring example in the library runs, and prints what its docstring says it prints.

The examples are documentation first: they show what a user writes (``ClipEF()``, ``"cat.jpg"``,
``open_store("chroma", "photos.db", "photos")``). So each module's examples run as a user would run
them, in a fresh working folder that holds a few real photos (``cat.jpg``, ``rocket.jpg``, ...)
a folder ``photos/`` (a copy of ``examples/images``: seven photos and their captions) and an
ImageFolder dataset ``data/val/<class>/``, with
``$CLIP_WEIGHTS`` naming a tiny random CLIP that has ViT-B/32's 512-d embeddings: ``ClipEF()``
loads it in milliseconds and shapes print as they do with the real weights. A few names that
examples use without defining (``ef``, ``store``, ...) come from :data:`NAMESPACE`, built only
for a module whose examples mention them.

An example that truly needs the network, a running server, a GPU or the real pretrained weights
stays marked ``# doctest: +SKIP``.
"""

from __future__ import annotations
import __future__

import doctest
import importlib
import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.conftest import EXAMPLES
from tests.model_factory import tiny_reference_clip

PACKAGE = Path(__file__).resolve().parent.parent / "clip_embeddings"
# `python -m` entry points run their command on import; their code is reached through other modules.
ENTRY_POINTS = {"__main__.py"}
MODULES = sorted(
    ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
    for p in PACKAGE.rglob("*.py") if p.name not in ENTRY_POINTS and ">>>" in p.read_text(encoding="utf-8")
)
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
PHOTOS = ("cat.jpg", "rocket.jpg", "coffee.jpg", "astronaut.jpg")


@pytest.fixture(scope="session")
def doc_weights(tmp_path_factory) -> Path:
    """The tiny random CLIP the examples load, with ViT-B/32's embedding width (512)."""
    path = tmp_path_factory.mktemp("doc-weights") / "tiny-vit-512.pt"
    torch.save(tiny_reference_clip("vit", seed=0, embed_dim=512).state_dict(), path)
    return path


def _ef():
    import clip_embeddings as ce

    return ce.ClipEF()


def _store():
    from clip_embeddings.adapters import open_store

    # An absolute path: Chroma keeps one client per path string, and each docstring has its own folder.
    store = open_store("chroma", str(Path("photos.db").resolve()), "photos", _ef())
    store.index_folder("photos")
    return store


# name -> how to make it, in the example's working folder with $CLIP_WEIGHTS set.
NAMESPACE: dict[str, Callable[[], object]] = {
    "ef": _ef,
    "store": _store,
    "weights": lambda: os.environ["CLIP_WEIGHTS"],  # a checkpoint path, where an example names one
    "sd": lambda: torch.load(os.environ["CLIP_WEIGHTS"]),  # its state dict, where an example builds a model
}


def _working_folder(path: Path) -> Path:
    shutil.copytree(EXAMPLES, path / "photos")
    for photo in PHOTOS:
        shutil.copy(EXAMPLES / photo, path / photo)
    for label in ("cat", "coffee", "rocket"):  # an ImageFolder dataset: one subfolder per class
        (path / "data" / "val" / label).mkdir(parents=True)
        shutil.copy(EXAMPLES / f"{label}.jpg", path / "data" / "val" / label)
    return path


def _examples(module) -> list[doctest.DocTest]:
    return [t for t in doctest.DocTestFinder(exclude_empty=True).find(module) if t.examples]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, doc_weights, tmp_path, monkeypatch):
    module = importlib.import_module(name)
    tests = _examples(module)
    assert tests, f"{name} has '>>>' in its source but no example doctest finds"
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    failures = []
    for n, test in enumerate(tests):
        # Each docstring starts afresh: its own folder and store, as a reader trying it would.
        monkeypatch.chdir(_working_folder(tmp_path / str(n)))
        monkeypatch.setenv("CLIP_WEIGHTS", str(doc_weights))  # again: an example may change it
        monkeypatch.setenv("CLIP_AUTO_PROBE", "0")  # the table's decision; no background probe threads
        source = "\n".join(e.source for e in test.examples if not e.options.get(doctest.SKIP))
        test.globs.update({k: make() for k, make in NAMESPACE.items() if k not in test.globs
                           and re.search(rf"\b{k}\b", source) and not re.search(rf"^{k} = ", source, re.M)})
        if test.globs.get("annotations") is __future__.annotations:
            del test.globs["annotations"]  # an example runs as typed at a prompt, without the module's future import
        out: list[str] = []
        result = runner.run(test, out=out.append, clear_globs=True)
        if result.failed:
            failures.append("".join(out))
        if "chromadb" in sys.modules:  # Chroma caches a client per path; the next docstring's "db" is another
            sys.modules["chromadb"].api.client.SharedSystemClient.clear_system_cache()
    assert not failures, "\n".join(failures)
