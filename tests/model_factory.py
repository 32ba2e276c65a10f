"""Reference CLIP models with random weights in the real architectures, for parity tests.

The shapes are those of OpenAI's nine checkpoints (as read off the published state dicts).
``scaled`` keeps what distinguishes each architecture (resolution, patch size, widths and so the
head counts) and cuts layer counts so a CPU runs it in seconds.
"""

from __future__ import annotations

import torch

from tests.reference import model_module

# name: (embed_dim, image_resolution, vision_layers, vision_width, patch, text_width, text_layers)
ARCHITECTURES = {
    "RN50": (1024, 224, (3, 4, 6, 3), 64, None, 512, 12),
    "RN101": (512, 224, (3, 4, 23, 3), 64, None, 512, 12),
    "RN50x4": (640, 288, (4, 6, 10, 6), 80, None, 640, 12),
    "RN50x16": (768, 384, (6, 8, 18, 8), 96, None, 768, 12),
    "RN50x64": (1024, 448, (3, 15, 36, 10), 128, None, 1024, 12),
    "ViT-B/32": (512, 224, 12, 768, 32, 512, 12),
    "ViT-B/16": (512, 224, 12, 768, 16, 512, 12),
    "ViT-L/14": (768, 224, 24, 1024, 14, 768, 12),
    "ViT-L/14@336px": (768, 336, 24, 1024, 14, 768, 12),
}


def reference_clip(name: str, scaled: bool = True, seed: int = 0, vocab_size: int = 49408) -> torch.nn.Module:
    """openai/CLIP's ``CLIP`` for architecture ``name``, random weights, fp32, eval mode.

    Batch-norm statistics and affine parameters are randomised too: left at their defaults they
    would make every norm an identity and hide a wrong key mapping.
    """
    embed_dim, resolution, vision_layers, vision_width, patch, text_width, text_layers = ARCHITECTURES[name]
    if scaled:
        vision_layers = (1, 1, 1, 1) if isinstance(vision_layers, tuple) else 2
        text_layers = 2
    torch.manual_seed(seed)
    model = model_module().CLIP(
        embed_dim, resolution, vision_layers, vision_width, patch, 77, vocab_size, text_width,
        text_width // 64, text_layers,
    )
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.normal_(1, 0.1)
                module.bias.normal_(0, 0.1)
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.normal_(1, 0.1)
                module.bias.normal_(0, 0.1)
    return model.float().eval()


def tiny_reference_clip(kind: str = "vit", seed: int = 0, embed_dim: int = 64) -> torch.nn.Module:
    """A very small CLIP (32 px, 2+2 layers) for tests that need a model, not an architecture."""
    torch.manual_seed(seed)
    m = model_module()
    if kind == "vit":
        model = m.CLIP(embed_dim, 32, 2, 64, 8, 77, 49408, 64, 1, 2)
    else:
        model = m.CLIP(embed_dim, 64, (1, 1, 1, 1), 64, None, 77, 49408, 64, 1, 2)
    return model.float().eval()


def save_state_dict(model: torch.nn.Module, path) -> None:
    torch.save(model.state_dict(), path)


def save_torchscript(model: torch.nn.Module, path, resolution: int) -> None:
    """Trace the reference into a TorchScript archive, the format OpenAI published."""
    image = torch.randn(1, 3, resolution, resolution)
    text = torch.zeros(1, 77, dtype=torch.long)
    text[0, :3] = torch.tensor([49406, 320, 49407])
    with torch.no_grad():
        traced = torch.jit.trace_module(
            model, {"encode_image": image, "encode_text": text, "forward": (image, text)}, check_trace=False
        )
    traced.save(str(path))
