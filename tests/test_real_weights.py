"""Checks that only mean something with OpenAI's real weights.

Set ``CLIP_TEST_WEIGHTS`` to a downloaded checkpoint (e.g. ``~/.cache/clip/ViT-B-32.pt``) to run
them; without it they skip. No real weights exist on the CI machine and no model hub is reachable.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import clip_embeddings as ce
from clip_embeddings.core.checkpoint import read_checkpoint
from tests.reference import model_module, reference_tokenize

WEIGHTS = os.environ.get("CLIP_TEST_WEIGHTS")
pytestmark = pytest.mark.skipif(
    not WEIGHTS, reason="set CLIP_TEST_WEIGHTS=/path/to/ViT-B-32.pt (an OpenAI checkpoint) to run real-weight tests"
)


@pytest.fixture(scope="module")
def photos(sample_images):
    captions = json.loads((sample_images[0].parent / "captions.json").read_text())
    return [Image.open(p).convert("RGB") for p in sample_images], [captions[p.name] for p in sample_images]


def test_real_weights_match_the_reference(photos):
    images, captions = photos
    state_dict = read_checkpoint(Path(WEIGHTS).expanduser()).state_dict
    reference = model_module().build_model(dict(state_dict)).float().eval()
    model, preprocess = ce.load(Path(WEIGHTS).expanduser())
    batch = torch.stack([preprocess(im) for im in images])
    tokens = reference_tokenize(captions)
    with torch.no_grad():
        assert float((model.encode_image(batch) - reference.encode_image(batch)).abs().max()) < 1e-4
        assert float((model.encode_text(tokens) - reference.encode_text(tokens)).abs().max()) < 1e-4


def test_each_photo_finds_its_own_caption(photos):
    images, captions = photos
    ef = ce.ClipEF(WEIGHTS)
    similarity = ef.embed_images(images) @ ef.embed_texts(captions).T
    assert list(similarity.argmax(axis=1)) == list(range(len(images)))
    assert np.all(similarity.argmax(axis=0) == np.arange(len(images)))


def test_int8_keeps_real_weights_above_its_bar_and_their_matches(photos):
    # Random weights have no outlier activations; real ones may. What auto's probe would see here
    # (every row's cosine to fp32 against INT8_COSINE_BAR), and whether retrieval keeps its answers.
    from clip_embeddings.runtime.auto import INT8_COSINE_BAR

    images, captions = photos
    exact, int8 = ce.ClipEF(WEIGHTS, dtype="fp32", cache=False), ce.ClipEF(WEIGHTS, dtype="int8", cache=False)
    for embed in ("embed_images", "embed_texts"):
        items = images if embed == "embed_images" else captions
        cosines = (getattr(exact, embed)(items) * getattr(int8, embed)(items)).sum(axis=1)
        assert cosines.min() >= INT8_COSINE_BAR, (embed, cosines.round(5).tolist())
    similarity = int8.embed_images(images) @ int8.embed_texts(captions).T
    assert list(similarity.argmax(axis=1)) == list(range(len(images)))
