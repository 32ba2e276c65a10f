"""The original openai/CLIP code, imported by file path as the reference for parity tests.

PyPI ``openai-clip`` ships ``clip/clip.py``, which imports torchvision (it does not import beside
our torch), so the package itself is never imported: only ``model.py`` and ``simple_tokenizer.py``,
which need torch, ftfy and regex alone.
"""

from __future__ import annotations

import importlib.util
import sys
from functools import lru_cache
from pathlib import Path
from types import ModuleType


@lru_cache(maxsize=None)
def reference_dir() -> Path:
    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the reference needs `pip install --no-deps openai-clip` (make test does it)")
    return Path(list(spec.submodule_search_locations)[0])


@lru_cache(maxsize=None)
def _load(name: str) -> ModuleType:
    path = reference_dir() / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"openai_clip_reference_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def model_module() -> ModuleType:
    """openai/CLIP's ``clip/model.py``: ``build_model``, ``CLIP`` and its parts."""
    return _load("model")


def tokenizer_module() -> ModuleType:
    """openai/CLIP's ``clip/simple_tokenizer.py``: ``SimpleTokenizer``."""
    return _load("simple_tokenizer")


def reference_tokenize(texts, context_length: int = 77, truncate: bool = False):
    """openai/CLIP's ``clip.tokenize``, restated from its definition (clip.py cannot be imported)."""
    import torch

    tok = tokenizer_module().SimpleTokenizer()
    if isinstance(texts, str):
        texts = [texts]
    sot, eot = tok.encoder["<|startoftext|>"], tok.encoder["<|endoftext|>"]
    all_tokens = [[sot] + tok.encode(text) + [eot] for text in texts]
    result = torch.zeros(len(all_tokens), context_length, dtype=torch.long)
    for i, tokens in enumerate(all_tokens):
        if len(tokens) > context_length:
            if truncate:
                tokens = tokens[:context_length]
                tokens[-1] = eot
            else:
                raise RuntimeError(f"Input {texts[i]} is too long for context length {context_length}")
        result[i, : len(tokens)] = torch.tensor(tokens)
    return result


def reference_embeddings(weights_path, images=(), texts=()):
    """Unit-norm embeddings from openai/CLIP's own model code with the given weights.

    Independent of ``ClipEF``: the reference architecture, the reference tokenizer, and our
    preprocessing (itself proven equal to torchvision's in test_preprocess). ``images`` are PIL
    images already in RGB.
    """
    import numpy as np
    import torch

    from clip_embeddings.core.preprocess import Preprocess

    state_dict = torch.load(weights_path, map_location="cpu", weights_only=True)
    model = model_module().build_model(dict(state_dict)).float().eval()
    model.load_state_dict(state_dict)  # build_model rounds weights through fp16; keep them exact
    out = {}
    with torch.no_grad():
        if images:
            preprocess = Preprocess(model.visual.input_resolution)
            features = model.encode_image(torch.stack([preprocess(im) for im in images]))
            out["images"] = torch.nn.functional.normalize(features, dim=-1).numpy()
        if texts:
            features = model.encode_text(reference_tokenize(list(texts), truncate=True))
            out["texts"] = torch.nn.functional.normalize(features, dim=-1).numpy()
    return out.get("images", np.zeros((0,))), out.get("texts", np.zeros((0,)))
