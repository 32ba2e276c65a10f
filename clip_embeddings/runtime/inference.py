"""Inference-only rewrites of a CLIP model for the CPU: same outputs to float rounding, faster.

``ClipEF`` applies them to its shared CPU model; ``load`` never does, so the model it returns
stays the original, trainable one. Three rewrites, each measured in ``benchmarks/bench_encode.py``
and, under ``dtype="auto"``, kept only where ``clip_embeddings.runtime.auto``'s probe shows it pays on
the CPU at hand:

* ``fold`` (ResNets): every batch norm is folded into the convolution before it (inference uses
  fixed statistics, so ``bn(conv(x))`` is one convolution with a bias) and the ReLU after it runs
  in place on the convolution's output.
* ``channels_last`` (ResNets, with ``fold``): activations flow in channels-last layout, which
  oneDNN's convolutions prefer. On a 2-core AVX2 EPYC, RN50 image encode with both: 1.25-1.27x
  the plain model.
* ``onednn`` (every linear layer: attention projections, MLPs, the attention pool): weights are
  re-laid out once for oneDNN's matrix multiply. torch's default fp32 CPU path calls MKL's sgemm,
  which on AMD processors runs well below oneDNN's kernels for these shapes. ViT-B/32 image
  encode on that CPU: 1.15-1.28x the plain model.

``torch.int8`` as the dtype (:func:`prepare_for_inference`) keeps fp32 activations and runs every
linear layer in int8 (:mod:`clip_embeddings.runtime.int8`): not the same outputs to float
rounding, so ``auto`` takes it only where its probe says the user's weights keep their accuracy.

The same rewrites apply in bf16 (:func:`prepare_for_inference`): batch norms are folded in fp32
first and only the folded weights are rounded to bf16; layer norms then run on the bf16
activations directly (fp32 weights and accumulation, no fp32 copy of the input). Each uses only what the installed torch
offers; oneDNN's linear is checked once per dtype against ``F.linear`` and skipped where it is
missing or disagrees.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import cache
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ..core.model import (
    CLIP,
    Bottleneck,
    ModifiedResNet,
    MultiheadAttention,
    QuickGELU,
    ResidualAttentionBlock,
    VisionTransformer,
    cast_matrices,
    self_attend,
)
from .int8 import Int8Linear

__all__ = ["REWRITES", "applicable_rewrites", "optimize_for_inference", "prepare_for_inference"]

REWRITES = ("fold", "channels_last", "onednn")  # in the order they are applied and named


def applicable_rewrites(model: CLIP, dtype: torch.dtype = torch.float32) -> tuple[str, ...]:
    """The rewrites that apply to this architecture with this torch, in ``REWRITES`` order.

    Example:
        >>> import clip_embeddings as ce
        >>> model, _ = ce.load(weights)  # a ViT
        >>> set(applicable_rewrites(model)) <= {"onednn"}  # ('onednn',) where this torch packs linears
        True
    """
    out = ["fold", "channels_last"] if isinstance(model.visual, ModifiedResNet) else []
    if _packed_linear_works(dtype):
        out.append("onednn")
    return tuple(out)


def optimize_for_inference(model: CLIP) -> CLIP:
    """Rewrite an fp32 CPU model in place for faster inference; returns it, in eval mode.

    Applies every rewrite that fits (:func:`applicable_rewrites`). The rewritten model computes
    the same embeddings (to ~1e-6) but can no longer be trained or saved as a checkpoint: keep the
    original for that. Other devices and dtypes are left as is.

    Example:
        >>> import clip_embeddings as ce
        >>> model, preprocess = ce.load(weights)  # weights: e.g. "ViT-B/32"
        >>> model = ce.optimize_for_inference(model)
    """
    weight = model.text_projection
    if weight.device.type != "cpu" or weight.dtype != torch.float32:
        return model
    return prepare_for_inference(model, torch.float32, applicable_rewrites(model))


def prepare_for_inference(model: CLIP, dtype: torch.dtype, rewrites: Iterable[str], *,
                          text: tuple[torch.dtype, Iterable[str]] | None = None) -> CLIP:
    """Turn an fp32 CPU model, in place, into the inference model for ``dtype`` with ``rewrites``.

    Batch norms are folded while the weights are still fp32, then matrix weights are cast to
    ``dtype`` (as :func:`~clip_embeddings.core.model.cast_weights` does), then linear weights are packed.
    ``torch.int8`` keeps fp32 weights and activations outside the linear layers, which run in int8
    (``onednn`` is then moot: every linear is an int8 one).
    A rewrite that does not apply (``fold`` on a ViT) is ignored; an unknown name is an error.
    ``text=(dtype, rewrites)`` gives the text tower a path of its own (``dtype="auto"`` decides
    each tower separately: the fastest path for a ResNet is not always the text tower's).

    Example:
        >>> import clip_embeddings as ce
        >>> model = prepare_for_inference(ce.build_model(sd), torch.bfloat16, ("fold", "onednn"))
    """
    text_dtype, text_rewrites = text if text is not None else (dtype, rewrites)
    plans = {"image": (dtype, set(rewrites)), "text": (text_dtype, set(text_rewrites))}
    unknown = set().union(*(r for _, r in plans.values())) - set(REWRITES)
    if unknown:
        raise ValueError(f"unknown inference rewrite(s) {sorted(unknown)}; known: {', '.join(REWRITES)}")
    if model.text_projection.dtype != torch.float32:
        raise ValueError(f"prepare_for_inference needs the fp32 model, got {model.text_projection.dtype}")
    model.eval()
    with torch.no_grad():
        for tower, (tower_dtype, tower_rewrites) in plans.items():
            _prepare_tower(model, tower, tower_dtype, tower_rewrites)
    return model


def _prepare_tower(model: CLIP, tower: str, dtype: torch.dtype, rewrites: set[str]) -> None:
    roots = [model.visual] if tower == "image" else [model.transformer, model.ln_final]
    for root in roots:
        _quick_gelu_as_silu(root)
    if tower == "image" and "fold" in rewrites and isinstance(model.visual, ModifiedResNet):
        _fold_resnet(model.visual, channels_last="channels_last" in rewrites)
    if dtype not in (torch.float32, torch.int8):
        for root in roots:
            cast_matrices(root, dtype)
            for module in root.modules():
                if isinstance(module, FoldedConv):
                    module.to(dtype)
            _native_layer_norms(root)
        if tower == "text":
            model.text_projection.data = model.text_projection.data.to(dtype)
        elif isinstance(model.visual, VisionTransformer):
            model.visual.proj.data = model.visual.proj.data.to(dtype)
    if dtype == torch.int8:
        for root in roots:
            _replace_linears(root, Int8Linear, swish=True)
    elif "onednn" in rewrites and _packed_linear_works(dtype):
        for root in roots:
            _replace_linears(root, PackedLinear, swish=_packed_linear_works(dtype, "swish"))


# --- ResNet: batch norm folded into convolutions ---------------------------------------------

class FoldedConv(nn.Module):
    """``relu?(bn(conv(x)))`` as one convolution with a bias, optionally in channels-last layout."""

    weight: torch.Tensor  # buffers, registered in __init__
    bias: torch.Tensor

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, relu: bool, channels_last: bool = True):
        super().__init__()
        if bn.running_var is None or bn.running_mean is None or isinstance(conv.padding, str):
            raise ValueError("folding needs a batch norm with running statistics after a numerically padded convolution")
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        weight = conv.weight * scale[:, None, None, None]
        conv_bias = 0 if conv.bias is None else conv.bias  # CLIP's convolutions have none
        self.layout = torch.channels_last if channels_last else torch.contiguous_format
        self.register_buffer("weight", weight.contiguous(memory_format=self.layout))
        self.register_buffer("bias", bn.bias + (conv_bias - bn.running_mean) * scale)
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=self.layout)  # a no-op after the first layer
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return F.relu_(y) if self.relu else y


def _fold(owner: nn.Module, conv: str, bn: str, relu: str | None, channels_last: bool) -> None:
    if isinstance(getattr(owner, conv), FoldedConv):  # already rewritten: a second call is a no-op
        return
    setattr(owner, conv, FoldedConv(getattr(owner, conv), getattr(owner, bn), relu is not None, channels_last))
    setattr(owner, bn, nn.Identity())
    if relu is not None:
        setattr(owner, relu, nn.Identity())


def _fold_resnet(resnet: ModifiedResNet, channels_last: bool) -> None:
    for i in (1, 2, 3):
        _fold(resnet, f"conv{i}", f"bn{i}", f"relu{i}", channels_last)
    for block in resnet.modules():
        if isinstance(block, Bottleneck):
            _fold(block, "conv1", "bn1", "relu1", channels_last)
            _fold(block, "conv2", "bn2", "relu2", channels_last)
            _fold(block, "conv3", "bn3", None, channels_last)  # its ReLU comes after the residual sum
            if block.downsample is not None:
                _fold(block.downsample, "0", "1", None, channels_last)


# --- QuickGELU as one SiLU --------------------------------------------------------------------

QUICK_GELU_SCALE = 1.702


def _quick_gelu_as_silu(model: nn.Module) -> None:
    """``y * sigmoid(1.702 y)`` is ``silu(1.702 y) / 1.702``: the two scales go into the linears around it.

    One SiLU kernel (or a post-op fused into oneDNN's linear) instead of a multiply, a sigmoid and
    a multiply over the MLP's widest activation. The scaling happens in fp32, before any cast.
    """
    for block in model.modules():
        if isinstance(block, ResidualAttentionBlock) and isinstance(block.mlp.gelu, QuickGELU):
            # Still CLIP's own nn.Linear pair here: the packed linears replace them only after the SiLU.
            c_fc, c_proj = cast(nn.Linear, block.mlp.c_fc), cast(nn.Linear, block.mlp.c_proj)
            c_fc.weight.mul_(QUICK_GELU_SCALE)
            c_fc.bias.mul_(QUICK_GELU_SCALE)
            c_proj.weight.div_(QUICK_GELU_SCALE)
            block.mlp.gelu = nn.SiLU()


# --- layer norms: computed on the reduced-precision input, no fp32 round trip -------------------

class MixedLayerNorm(nn.Module):
    """``LayerNorm`` on a bf16/fp16 input with fp32 weights: torch's CPU kernel accumulates in fp32.

    The model's own ``LayerNorm`` copies its input to fp32 and its output back (what the original
    does for fp16 on GPUs); on the CPU that is two extra passes over every activation, about 10% of
    a bf16 ViT-B/32 forward pass, for the same statistics.
    """

    def __init__(self, norm: nn.LayerNorm):
        super().__init__()
        self.normalized_shape, self.eps = norm.normalized_shape, norm.eps
        self.weight, self.bias = norm.weight, norm.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


def _native_layer_norms(model: nn.Module) -> None:
    for owner in list(model.modules()):
        for name, child in list(owner.named_children()):
            if isinstance(child, nn.LayerNorm):
                setattr(owner, name, MixedLayerNorm(child))


# --- linear layers: weights packed once for oneDNN -------------------------------------------

class PackedLinear(nn.Module):
    """An ``nn.Linear`` for inference whose weight is pre-packed for oneDNN's matrix multiply.

    ``activation="swish"`` applies SiLU inside the same kernel (a oneDNN post-op).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, activation: str = "none"):
        super().__init__()
        self.out_features = weight.shape[0]
        self.activation = activation
        # The batch-size hint only picks a blocking; any number of rows works.
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), 64)
        self.bias = None if bias is None else bias.detach().contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1]).contiguous()
        y = torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, self.activation, [], "")
        return y.reshape(*x.shape[:-1], self.out_features)


class ProjectedSelfAttention(nn.Module):
    """``MultiheadAttention`` with both projections replaced by ``linear(weight, bias)`` (packed or int8)."""

    def __init__(self, attn: MultiheadAttention, linear: Callable[[torch.Tensor, torch.Tensor], nn.Module]):
        super().__init__()
        self.num_heads = attn.num_heads
        self.in_proj = linear(attn.in_proj_weight, attn.in_proj_bias)
        self.out_proj = linear(attn.out_proj.weight, attn.out_proj.bias)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.in_proj(x)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        return self.out_proj(self_attend(self.in_proj(x), self.num_heads, causal))


def _replace_linears(model: nn.Module, linear: Callable[..., nn.Module], swish: bool) -> None:
    """Every linear layer under ``model`` rebuilt as ``linear(weight, bias[, activation])``.

    With ``swish`` an MLP's SiLU (after ``_quick_gelu_as_silu``) moves into the linear before it.
    """
    for block in model.modules():
        if swish and isinstance(block, ResidualAttentionBlock) and isinstance(block.mlp.gelu, nn.SiLU):
            c_fc = cast(nn.Linear, block.mlp.c_fc)  # still the model's own: nothing has replaced it yet
            block.mlp.c_fc = linear(c_fc.weight, c_fc.bias, "swish")
            block.mlp.gelu = nn.Identity()
    for owner in list(model.modules()):
        for name, child in list(owner.named_children()):
            if isinstance(child, nn.Linear):
                setattr(owner, name, linear(child.weight, child.bias))
            elif isinstance(child, MultiheadAttention):
                setattr(owner, name, ProjectedSelfAttention(child, linear))


@cache
def _packed_linear_works(dtype: torch.dtype = torch.float32, activation: str = "none") -> bool:
    """Whether this torch has oneDNN's packed linear for ``dtype`` (and post-op) and it agrees with torch's."""
    expected = {"none": lambda y: y, "swish": F.silu}[activation]
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        generator = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(shape, generator=generator).to(dtype) for shape in ((5, 3, 48), (40, 48), (40,)))
        tol = 1e-5 if dtype == torch.float32 else 5e-2  # bf16 keeps 8 bits of mantissa
        with torch.no_grad():
            ours = PackedLinear(w, b, activation)(x).float()
            ok = torch.allclose(ours, expected(F.linear(x.float(), w.float(), b.float())), rtol=tol * 10, atol=tol)
        return bool(ok)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
