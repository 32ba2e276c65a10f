"""The CLIP architecture (Radford et al., 2021), built from a state dict's shapes alone.

Parameter names follow OpenAI's published checkpoints exactly, so their state dicts load as they
are. The computation is the original's, restated for speed where it cannot change a value:
attention runs through ``scaled_dot_product_attention`` on batch-first tensors; the ResNet's
attention pool, and the last block of each transformer, compute only the positions whose outputs
are read (the class token, each text's end-of-text token); the text tower stops at the last
end-of-text token in the batch (causal attention means later positions never reach the pooled one)
and computes a prefix that every text in the batch shares (a prompt template's head) once.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelLoadError
from .tokenizer import prefix_worth_sharing


class Bottleneck(nn.Module):
    """ResNet bottleneck; strided blocks downsample with an average pool first (anti-aliasing)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        # ReLUs are modules (as in the original) so inference can fold each into its convolution.
        self.relu1, self.relu2, self.relu3 = nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.downsample = None
        if stride > 1 or inplanes != planes * self.expansion:
            # "-1" keeps the published key names: downsample.0 is the conv, downsample.1 the norm.
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride)),
                ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, bias=False)),
                ("1", nn.BatchNorm2d(planes * self.expansion)),
            ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu3(out + identity)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, causal: bool = False,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head attention on batch-first [N, L, D] projections; returns [N, Lq, D].

    ``mask`` (boolean, True = may attend) replaces ``causal`` where queries and keys do not
    start at the same position.
    """
    n, lq, d = q.shape
    split = lambda t: t.reshape(n, t.shape[1], heads, d // heads).transpose(1, 2)  # noqa: E731
    out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask, is_causal=causal and mask is None)
    return out.transpose(1, 2).reshape(n, lq, d)


def self_attend(qkv: torch.Tensor, heads: int, causal: bool = False) -> torch.Tensor:
    """Multi-head self-attention from a fused ``[N, L, 3D]`` query/key/value projection."""
    q, k, v = qkv.chunk(3, dim=-1)
    return _attend(q, k, v, heads, causal)


class AttentionPool2d(nn.Module):
    """Replaces global average pooling: the mean feature queries every spatial position."""

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads: int, output_dim: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(spacial_dim**2 + 1, embed_dim) / embed_dim**0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.num_heads = num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).transpose(1, 2)  # NCHW -> N(HW)C
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)
        x = x + self.positional_embedding.to(x.dtype)
        # Only the mean token's output is used, so only its query is computed.
        pooled = _attend(self.q_proj(x[:, :1]), self.k_proj(x), self.v_proj(x), self.num_heads)
        return self.c_proj(pooled[:, 0])


class ModifiedResNet(nn.Module):
    """ResNet with a 3-conv stem, average-pool downsampling and an attention pool at the end."""

    def __init__(self, layers: tuple[int, int, int, int], output_dim: int, heads: int,
                 input_resolution: int = 224, width: int = 64):
        super().__init__()
        self.output_dim = output_dim
        self.input_resolution = input_resolution
        self.conv1 = nn.Conv2d(3, width // 2, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, kernel_size=3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu1, self.relu2, self.relu3 = nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.avgpool = nn.AvgPool2d(2)

        inplanes = width
        stages = []
        for i, blocks in enumerate(layers):
            planes = width * 2**i
            stage = [Bottleneck(inplanes, planes, stride=1 if i == 0 else 2)]
            inplanes = planes * Bottleneck.expansion
            stage += [Bottleneck(inplanes, planes) for _ in range(1, blocks)]
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.attnpool = AttentionPool2d(input_resolution // 32, width * 32, heads, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.type(self.conv1.weight.dtype)
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.avgpool(self.relu3(self.bn3(self.conv3(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the input dtype, as the original does for fp16."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


class QuickGELU(nn.Module):
    """The sigmoid approximation of GELU that OpenAI's checkpoints were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class MultiheadAttention(nn.Module):
    """Self-attention with nn.MultiheadAttention's parameter names and a fused QKV projection."""

    def __init__(self, d_model: int, n_head: int):
        super().__init__()
        self.num_heads = n_head
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The fused query/key/value projection, ``[N, L, 3D]``."""
        return F.linear(x, self.in_proj_weight, self.in_proj_bias)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        return self.out_proj(self_attend(self.project(x), self.num_heads, causal))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, d_model: int, n_head: int, quick_gelu: bool = True):
        super().__init__()
        self.attn = MultiheadAttention(d_model, n_head)
        self.ln_1 = LayerNorm(d_model)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(d_model, d_model * 4)),
            ("gelu", QuickGELU() if quick_gelu else nn.GELU()),
            ("c_proj", nn.Linear(d_model * 4, d_model)),
        ]))
        self.ln_2 = LayerNorm(d_model)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal)
        return x + self.mlp(self.ln_2(x))

    def step(self, x: torch.Tensor, prefix: torch.Tensor | None, causal: bool,
             pooled: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """One block on ``x`` [N, L, D] that follows ``prefix`` [1, P, D], positions every row shares.

        Returns ``(prefix, x)`` after the block. With ``pooled`` ([N] positions in ``x``) only those
        rows are computed past the attention's keys and values: ``x`` comes back [N, D], and the
        prefix, whose outputs no later block needs, comes back ``None``.
        """
        heads, (n, length, _) = self.attn.num_heads, x.shape
        q, k, v = self.attn.project(self.ln_1(x)).chunk(3, dim=-1)
        shared = 0 if prefix is None else prefix.shape[1]
        if prefix is not None:
            qp, kp, vp = self.attn.project(self.ln_1(prefix)).chunk(3, dim=-1)
            k, v = torch.cat([kp.expand(n, -1, -1), k], dim=1), torch.cat([vp.expand(n, -1, -1), v], dim=1)
        mask = None
        if pooled is not None:
            rows = torch.arange(n, device=x.device)
            q, x = q[rows, pooled][:, None], x[rows, pooled][:, None]
            if causal:  # each row's query sees its own position and everything before it
                keys = torch.arange(shared + length, device=x.device)
                mask = (keys <= (pooled + shared)[:, None])[:, None, None, :]
        elif causal and shared:
            mask = torch.ones(length, shared + length, dtype=torch.bool, device=x.device).tril(shared)
        x = x + self.attn.out_proj(_attend(q, k, v, heads, causal, mask))
        x = x + self.mlp(self.ln_2(x))
        if pooled is not None:
            return None, x[:, 0]
        if prefix is not None:
            prefix = prefix + self.attn.out_proj(_attend(qp, kp, vp, heads, causal))
            prefix = prefix + self.mlp(self.ln_2(prefix))
        return prefix, x

    def step_packed(self, head: torch.Tensor, x: torch.Tensor, shapes: Sequence[tuple[int, int]],
                    pooled: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One causal block on unpadded rows that all start with ``head`` [1, D] (the start token).

        ``x`` [T, D] packs the rows' other positions, in groups of ``shapes`` ``(rows, length)``.
        Only attention needs the rows apart; the head, which attends only to itself, is computed
        once. With ``pooled`` only each row's last position comes back ([rows, D]); it attends to
        every key, so no mask is needed. Returns ``(head, x)`` after the block.
        """
        qkv, head_qkv = self.attn.project(self.ln_1(x)), self.attn.project(self.ln_1(head))
        attended, kept, start = [], [], 0
        for rows, length in shapes:
            end = start + rows * length
            group = torch.cat([head_qkv.expand(rows, 1, -1), qkv[start:end].view(rows, length, -1)], dim=1)
            q, k, v = group.chunk(3, dim=-1)
            if pooled:
                attended.append(_attend(q[:, -1:], k, v, self.attn.num_heads).reshape(rows, -1))
                kept.append(x[start:end].view(rows, length, -1)[:, -1])
            else:  # the head's own query row is computed (is_causal needs a square) and dropped
                attended.append(_attend(q, k, v, self.attn.num_heads, causal=True)[:, 1:].reshape(rows * length, -1))
            start = end
        if pooled:
            x = torch.cat(kept)
        x = x + self.attn.out_proj(torch.cat(attended))
        head = head + self.attn.out_proj(head_qkv.chunk(3, dim=-1)[2])  # one key: attention returns its value
        return head + self.mlp(self.ln_2(head)), x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of residual attention blocks on batch-first [N, L, D] tensors."""

    def __init__(self, width: int, layers: int, heads: int, quick_gelu: bool = True):
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, quick_gelu) for _ in range(layers))

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, causal)
        return x

    def pooled(self, x: torch.Tensor, positions: torch.Tensor, causal: bool = False, shared: int = 0) -> torch.Tensor:
        """The outputs [N, D] at one position per row of ``x`` [N, L, D], computing no more than they need.

        The last block computes only those rows (the other positions' outputs are never read).
        With ``causal``, the first ``shared`` positions, equal in every row (the start token, a
        prompt's common head), are computed once, on one row, and every row attends to them: no
        later position can change them.
        """
        if shared and not causal:
            raise ValueError("a shared prefix is only independent of the rest under causal attention")
        prefix, x = (x[:1, :shared], x[:, shared:]) if shared else (None, x)
        last = len(self.resblocks) - 1
        blocks = cast(Iterable[ResidualAttentionBlock], self.resblocks)  # ModuleList yields plain Modules
        for i, block in enumerate(blocks):
            prefix, x = block.step(x, prefix, causal, positions - shared if i == last else None)
        return x


class VisionTransformer(nn.Module):
    def __init__(self, input_resolution: int, patch_size: int, width: int, layers: int, heads: int,
                 output_dim: int, quick_gelu: bool = True):
        super().__init__()
        self.input_resolution = input_resolution
        self.output_dim = output_dim
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((input_resolution // patch_size) ** 2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, quick_gelu)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x).flatten(2).transpose(1, 2)  # [N, grid**2, width]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        cls = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        return self.ln_post(self.transformer.pooled(self.ln_pre(x), cls)) @ self.proj


def _four(layers: tuple[int, ...] | list[int]) -> tuple[int, int, int, int]:
    """A ResNet's blocks per stage: CLIP's ResNets have four stages."""
    first, second, third, fourth = layers
    return first, second, third, fourth


class CLIP(nn.Module):
    """Image and text encoders projected into one embedding space, plus the learned temperature."""

    def __init__(self, embed_dim: int, image_resolution: int, vision_layers: int | tuple[int, ...],
                 vision_width: int, vision_patch_size: int | None, context_length: int, vocab_size: int,
                 transformer_width: int, transformer_heads: int, transformer_layers: int,
                 quick_gelu: bool = True):
        super().__init__()
        self.context_length = context_length
        # The image tower; runtime.onnx_backend may swap in a stand-in with the same call, input_resolution
        # and output_dim (OnnxImageTower), which is why CLIP.dtype asks it for an input_dtype first.
        self.visual: ModifiedResNet | VisionTransformer
        if isinstance(vision_layers, (tuple, list)):
            self.visual = ModifiedResNet(_four(vision_layers), embed_dim, vision_width * 32 // 64,
                                         image_resolution, vision_width)
        else:
            if vision_patch_size is None:
                raise TypeError("a vision transformer needs an int vision_patch_size")
            self.visual = VisionTransformer(image_resolution, vision_patch_size, vision_width, vision_layers,
                                            vision_width // 64, embed_dim, quick_gelu)
        self.transformer = Transformer(transformer_width, transformer_layers, transformer_heads, quick_gelu)
        self.vocab_size = vocab_size
        self.token_embedding = nn.Embedding(vocab_size, transformer_width)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(context_length, transformer_width))
        self.ln_final = LayerNorm(transformer_width)
        self.text_projection = nn.Parameter(transformer_width**-0.5 * torch.randn(transformer_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    @property
    def dtype(self) -> torch.dtype:
        """The image tower's input dtype (an image tower run by another runtime says its own)."""
        return getattr(self.visual, "input_dtype", None) or self.visual.conv1.weight.dtype

    @property
    def embed_dim(self) -> int:
        return self.text_projection.shape[1]

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Image features [N, embed_dim] (not normalised) for preprocessed images [N, 3, R, R]."""
        return self.visual(image.type(self.dtype))

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """Text features [N, embed_dim] (not normalised) for token ids [N, context_length]."""
        eot = text.argmax(dim=-1)  # the end-of-text id is the largest id in the vocabulary
        length = int(eot.max()) + 1 if text.shape[0] else 1
        text = text[:, :length]
        dtype = self.text_projection.dtype  # the text tower's own (it may differ from the image tower's)
        x = self.token_embedding(text).type(dtype)
        x = x + self.positional_embedding[:length].type(dtype)
        x = self.transformer.pooled(x, eot, causal=True, shared=prefix_worth_sharing(text, eot))
        return self.ln_final(x) @ self.text_projection

    def encode_text_packed(self, groups: Sequence[torch.Tensor]) -> torch.Tensor:
        """Text features [N, embed_dim] for groups of unpadded token ids, each [rows, length], EOT last.

        :meth:`encode_text`'s features, in the groups' row order, with no position padded: rows of
        different lengths share every op except attention, and the start token every row begins
        with is computed once (causal attention: nothing after it changes it).

        Example:
            >>> import clip_embeddings as ce
            >>> model, _ = ce.load(weights)  # e.g. "ViT-B/32"
            >>> t = ce.core.tokenizer.get_tokenizer()
            >>> rows = [[t.sot_token, *t.encode(text), t.eot_token] for text in ("a dog", "a cat", "a red bus")]
            >>> groups = [torch.tensor(rows[:2]), torch.tensor(rows[2:])]  # two rows of 4 ids, one of 5
            >>> model.encode_text_packed(groups).shape
            torch.Size([3, 512])
        """
        first = groups[0][:1, 0]
        if any(bool((g[:, 0] != first).any()) for g in groups):
            raise ValueError("encode_text_packed needs every row to start with the same id (the start token)")
        dtype, width = self.text_projection.dtype, self.transformer.width

        def embed(ids: torch.Tensor, start: int) -> torch.Tensor:  # ids [..., L] at positions start..start+L-1
            positions = self.positional_embedding[start: start + ids.shape[-1]]
            return (self.token_embedding(ids).type(dtype) + positions.type(dtype)).reshape(-1, width)

        head, x = embed(first, 0), torch.cat([embed(g[:, 1:], 1) for g in groups])
        shapes = [(int(g.shape[0]), int(g.shape[1]) - 1) for g in groups]
        last = len(self.transformer.resblocks) - 1
        for i, block in enumerate(cast(Iterable[ResidualAttentionBlock], self.transformer.resblocks)):
            head, x = block.step_packed(head, x, shapes, pooled=i == last)
        return self.ln_final(x) @ self.text_projection

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits_per_image, logits_per_text)``: scaled cosine similarities, as the original."""
        image_features = F.normalize(self.encode_image(image), dim=-1)
        text_features = F.normalize(self.encode_text(text), dim=-1)
        logits_per_image = self.logit_scale.exp() * image_features @ text_features.t()
        return logits_per_image, logits_per_image.t()


# Entries some checkpoints carry beside the weights; none of them is a parameter.
_NON_PARAMETERS = ("input_resolution", "context_length", "vocab_size")

_REQUIRED = ("text_projection", "positional_embedding", "token_embedding.weight", "ln_final.weight")


def _count(state_dict: dict, prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in state_dict if k.startswith(prefix)})


def input_resolution(state_dict: dict[str, torch.Tensor]) -> int:
    """The image side length the vision tower was trained at, from its positional embedding."""
    if "visual.proj" in state_dict:
        grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        return state_dict["visual.conv1.weight"].shape[-1] * grid
    grid = round((state_dict["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
    return grid * 32  # the ResNet downsamples by 32 before the attention pool


def build_model(state_dict: dict[str, torch.Tensor], *, quick_gelu: bool = True) -> CLIP:
    """Build a CLIP model whose every hyper-parameter is read off the state dict's shapes.

    Works for all nine OpenAI checkpoints (ResNet and ViT). The model is fp32 and in eval mode;
    casting to half precision is the caller's choice.

    Example:
        >>> from clip_embeddings.core.checkpoint import read_checkpoint
        >>> model = build_model(read_checkpoint(weights).state_dict)  # weights: e.g. "ViT-B-32.pt"
        >>> model.visual.input_resolution  # ViT-B/32's is 224; the tiny test model's 32
        32
    """
    missing = [k for k in _REQUIRED if k not in state_dict]
    vit = "visual.proj" in state_dict
    if not vit and "visual.attnpool.positional_embedding" not in state_dict:
        missing.append("visual.proj or visual.attnpool.positional_embedding")
    if missing:
        sample = ", ".join(list(state_dict)[:5]) or "nothing"
        raise ModelLoadError(
            f"not a CLIP state dict: missing {', '.join(missing)} (it has {len(state_dict)} entries, e.g. {sample}). "
            "Accepted: OpenAI CLIP checkpoints, open_clip checkpoints of OpenAI-style models, Hugging Face CLIP folders."
        )

    hyper = _hyper_parameters(state_dict, vit, quick_gelu)
    weights = {k: v for k, v in state_dict.items() if k not in _NON_PARAMETERS}
    _check_fits(hyper, weights)
    _check_values(weights)
    model = CLIP(**hyper)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise ModelLoadError(f"the state dict does not fit the CLIP architecture its shapes describe: {e}") from None
    return model.float().eval()


_DIMS = {  # the tensors hyper-parameters are read from, and how many dimensions each must have
    "text_projection": 2, "positional_embedding": 2, "token_embedding.weight": 2, "ln_final.weight": 1,
    "visual.conv1.weight": 4, "visual.positional_embedding": 2, "visual.proj": 2,
    "visual.attnpool.positional_embedding": 2, "visual.layer1.0.conv1.weight": 4,
}


def _hyper_parameters(state_dict: dict[str, torch.Tensor], vit: bool, quick_gelu: bool) -> dict[str, Any]:
    """CLIP's constructor arguments, read off the shapes, each checked for what the model needs."""
    def bad(message: str) -> ModelLoadError:
        return ModelLoadError(f"not a CLIP state dict: {message}")

    for name, dims in _DIMS.items():
        tensor = state_dict.get(name)
        if tensor is not None and (not isinstance(tensor, torch.Tensor) or tensor.dim() != dims):
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise bad(f"{name} has shape {shape}, expected {dims} dimensions")
    if not vit and "visual.layer1.0.conv1.weight" not in state_dict:
        raise bad("missing visual.layer1.0.conv1.weight (a ResNet vision tower without its first block)")
    pos_key = "visual.positional_embedding" if vit else "visual.attnpool.positional_embedding"
    if pos_key not in state_dict:
        raise bad(f"missing {pos_key}")
    tokens = state_dict[pos_key].shape[0] - 1
    grid = math.isqrt(max(tokens, 0))
    if tokens < 1 or grid * grid != tokens:
        raise bad(f"{pos_key} has {tokens + 1} rows: expected 1 + a square number of image positions")
    transformer_width = state_dict["ln_final.weight"].shape[0]
    if transformer_width < 64 or transformer_width % 64:
        raise bad(f"text width {transformer_width} (ln_final.weight) is not a positive multiple of 64, "
                  "CLIP's attention head size")
    layers = _count(state_dict, "transformer.resblocks.")
    if vit:
        vision_width, _, vision_patch_size, _ = state_dict["visual.conv1.weight"].shape
        vision_layers: int | tuple[int, ...] = _count(state_dict, "visual.transformer.resblocks.")
        if vision_width < 64 or vision_width % 64:
            raise bad(f"vision width {vision_width} (visual.conv1.weight) is not a positive multiple of 64")
        if vision_patch_size < 1:
            raise bad("visual.conv1.weight has a patch size of 0")
        resolution = vision_patch_size * grid
    else:
        vision_layers = tuple(_count(state_dict, f"visual.layer{i}.") for i in (1, 2, 3, 4))
        vision_width = state_dict["visual.layer1.0.conv1.weight"].shape[0]
        vision_patch_size = None
        if vision_width < 2 or vision_width % 2:
            raise bad(f"ResNet width {vision_width} (visual.layer1.0.conv1.weight) must be even")
        resolution = grid * 32  # the ResNet downsamples by 32 before the attention pool
    if layers < 1 or (min(vision_layers) if isinstance(vision_layers, tuple) else vision_layers) < 1:
        raise bad(f"no transformer blocks (text layers {layers}, vision layers {vision_layers})")
    if state_dict["positional_embedding"].shape[0] < 2 or state_dict["token_embedding.weight"].shape[0] < 1:
        raise bad("positional_embedding or token_embedding.weight is empty")
    return dict(
        embed_dim=state_dict["text_projection"].shape[1], image_resolution=resolution, vision_layers=vision_layers,
        vision_width=vision_width, vision_patch_size=vision_patch_size,
        context_length=state_dict["positional_embedding"].shape[0],
        vocab_size=state_dict["token_embedding.weight"].shape[0], transformer_width=transformer_width,
        transformer_heads=transformer_width // 64, transformer_layers=layers, quick_gelu=quick_gelu,
    )


VOCAB_SIZE = 49408  # ids the tokenizer emits (Tokenizer().vocab_size): one embedding row each
EMBEDDING_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
MAX_LOGIT_SCALE = math.log(100) + 0.01  # CLIP clamps exp(logit_scale) to 100 while training
_STEP_COUNTER = "num_batches_tracked"  # a BatchNorm's int64 step count (the ResNets'): never read to embed


def _check_values(weights: dict[str, torch.Tensor]) -> None:
    """What the shapes cannot tell: weights that would load, then embed garbage or fail later.

    * the token embedding has one row per tokenizer id (49408): fewer rows fail with a bare
      IndexError on the first rare word, more or fewer mean another vocabulary;
    * every weight is fp32, fp16, bf16 or fp64 (BatchNorm step counters aside): int8 (or another quantized type) would be copied
      into the float model as small integers, giving zero or meaningless vectors;
    * ``logit_scale`` lies in [0, ln 100 + 0.01]: CLIP clamps ``exp(logit_scale)`` to 100 while
      training; a huge value overflows to inf and makes zero-shot probabilities NaN.
    """
    rows = weights["token_embedding.weight"].shape[0]
    if rows != VOCAB_SIZE:
        raise ModelLoadError(f"token_embedding.weight has {rows} rows but the tokenizer has {VOCAB_SIZE} ids: "
                             "a checkpoint for another vocabulary, which this tokenizer cannot feed")
    odd = [f"{k} ({str(v.dtype).removeprefix('torch.')})" for k, v in weights.items()
           if v.dtype not in EMBEDDING_DTYPES and not k.endswith(_STEP_COUNTER)]
    if odd:
        raise ModelLoadError(f"weights of a type that cannot embed: {', '.join(odd[:3])}{' ...' if len(odd) > 3 else ''}; "
                             "expected float32, float16 or bfloat16 (dequantize an int8 checkpoint first)")
    scale = float(weights["logit_scale"].float())
    if not 0.0 <= scale <= MAX_LOGIT_SCALE:
        raise ModelLoadError(f"logit_scale is {scale:.6g}, outside [0, {MAX_LOGIT_SCALE:.4f}] (CLIP clamps "
                             f"exp(logit_scale) to 100; exp({scale:.4g}) would make zero-shot scores meaningless)")


def _check_fits(hyper: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
    """Compare the state dict with the architecture it implies, before a single weight is allocated.

    The model is built on the ``meta`` device (shapes only, no memory), so a 1 MB file whose
    ``ln_final.weight`` claims a 4096-wide text tower is refused without allocating gigabytes.
    Non-finite weights are refused too: they would make every embedding NaN.
    """
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in CLIP(**hyper).state_dict().items()}
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    wrong = [f"{k} {tuple(weights[k].shape)} (expected {expected[k]})" for k in expected
             if k in weights and tuple(weights[k].shape) != expected[k]]
    problems = [f"{label}: {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}"
                for label, items in (("wrong shapes", wrong), ("missing", missing), ("unexpected", unexpected)) if items]
    if problems:
        raise ModelLoadError("the state dict does not fit the CLIP architecture its shapes describe "
                             f"(text width {hyper['transformer_width']}, vision width {hyper['vision_width']}): "
                             + "; ".join(problems))
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelLoadError(f"the weights hold NaN or infinite values (first in {name}): a damaged or "
                                 "diverged checkpoint, whose every embedding would be NaN")


def cast_matrices(module: nn.Module, dtype: torch.dtype) -> None:
    """Cast every convolution, linear layer and attention projection under ``module`` to ``dtype``."""
    for child in module.modules():
        if isinstance(child, (nn.Conv2d, nn.Linear)):
            child.to(dtype)
        if isinstance(child, MultiheadAttention):
            child.in_proj_weight.data = child.in_proj_weight.data.to(dtype)
            child.in_proj_bias.data = child.in_proj_bias.data.to(dtype)


def cast_weights(model: CLIP, dtype: torch.dtype) -> CLIP:
    """Cast the matrix weights to ``dtype`` (fp16/bf16), keeping norms and embeddings in fp32.

    The original does the same for fp16: convolutions, linear layers, attention projections and
    the two output projections carry the arithmetic; everything else stays fp32 for stability.
    """
    cast_matrices(model, dtype)
    model.text_projection.data = model.text_projection.data.to(dtype)
    if isinstance(model.visual, VisionTransformer):
        model.visual.proj.data = model.visual.proj.data.to(dtype)
    return model
