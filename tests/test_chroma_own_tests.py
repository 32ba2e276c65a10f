"""Chroma's own multimodal embedding-function tests, from the installed chromadb, run against ClipEF.

``chromadb/test/ef/test_multimodal_ef.py`` ships inside the chromadb wheel. Its tests and its
``multimodal_collection`` fixture take the embedding function as a ``default_ef`` argument (a
hashing function by default); here the same functions are called, unchanged, with a ``ClipEF`` on
the tiny random model instead. Their inputs stay as Chroma wrote them: ``int64`` random images,
documents made of printed arrays, and nearest neighbours computed by Chroma's own
``_exact_distances`` from the function's outputs. Chroma's own marks (its ``xfail``) are kept.
"""

from __future__ import annotations

import inspect

import pytest

# Imported, not importorskip'd: its dependencies are in the test extra, and a skip would hide them.
from chromadb.test.ef import test_multimodal_ef as chroma_tests

import clip_embeddings as ce

CHROMA_TESTS = sorted(name for name, fn in vars(chroma_tests).items()
                      if name.startswith("test_") and inspect.isfunction(fn))


def _with_chroma_marks(name: str):
    """``name``'s own pytest marks (Chroma xfails one test), applied to the parameter."""
    return pytest.param(name, marks=list(getattr(vars(chroma_tests)[name], "pytestmark", [])), id=name)


@pytest.fixture
def clip_ef(tiny_model_path):
    return ce.ClipEF(str(tiny_model_path), cache=False)


@pytest.fixture
def multimodal_collection(clip_ef):
    """Chroma's own fixture, with ClipEF where it takes its ``default_ef``."""
    fixture = chroma_tests.multimodal_collection._get_wrapped_function()
    yield from fixture(default_ef=clip_ef)


def test_chroma_file_has_the_tests_we_expect():
    # If a chromadb release renames or drops them, say so instead of silently running nothing.
    assert {"test_multimodal", "test_multimodal_update_with_image"} <= set(CHROMA_TESTS)
    for name in CHROMA_TESTS:
        assert "default_ef" in inspect.signature(vars(chroma_tests)[name]).parameters \
            or "multimodal_collection" in inspect.signature(vars(chroma_tests)[name]).parameters


@pytest.mark.parametrize("name", [_with_chroma_marks(n) for n in CHROMA_TESTS])
def test_chroma_multimodal_ef_test_passes_with_clip_ef(name, multimodal_collection, clip_ef):
    test = vars(chroma_tests)[name]
    arguments = {"multimodal_collection": multimodal_collection}
    if "default_ef" in inspect.signature(test).parameters:
        arguments["default_ef"] = clip_ef
    test(**arguments)
