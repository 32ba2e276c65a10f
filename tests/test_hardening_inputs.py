"""Issue 15, round two: image and text inputs that used to slip past a limit or be refused wrongly."""

from __future__ import annotations

import numpy as np
import pytest

import clip_embeddings as ce
from clip_embeddings.embedding import MAX_TEXT_WINDOWS
from clip_embeddings.tokenizer import get_tokenizer, token_windows


def test_chunked_text_is_capped_at_max_windows(tiny_model_path):
    # 1 MB of words took 66 s with long_text="chunk" (one forward pass per 75 tokens): windows
    # past MAX_TEXT_WINDOWS are now ignored, so a text's vector is that of its first 64 windows.
    head = " ".join(f"cat{i % 10}" for i in range(MAX_TEXT_WINDOWS * 75 // 2))  # "cat3" = 2 ids
    assert len(get_tokenizer().encode(head)) == MAX_TEXT_WINDOWS * 75
    tail = " the quick brown fox" * 20_000
    ef = ce.ClipEF(str(tiny_model_path), long_text="chunk", cache=False)
    capped, exact = ef.embed_texts([head + tail, head])
    assert np.abs(capped - exact).max() < 1e-6
    assert len(token_windows(head + tail, max_windows=MAX_TEXT_WINDOWS)) == MAX_TEXT_WINDOWS
    assert token_windows(head + tail, max_windows=2) == token_windows(head)[:2]
    with pytest.raises(ValueError, match="max_windows"):
        token_windows("x", max_windows=0)
