"""Linear layers in int8 on the CPU: the path where torch is left with fp32 (AVX2, no native bf16).

fp32 cannot make CLIP's text tower much faster there: the linears are 80% of a pass and oneDNN
already runs them near the cores' fp32 peak. Integer multiply-adds run at twice that rate on
AVX2 (``vpmaddubsw``) and about six times with VNNI. So each linear layer runs as

    y = (round(x / sx) @ round(W / sw).T) * sx * sw + b

with ``sw`` one scale per output channel (fixed when the model is built) and ``sx`` one scale per
row of activations (computed on each call: dynamic quantization, nothing to calibrate). The
integer product is exact (int32 accumulation); what is lost is the rounding of ``x`` and ``W`` to
int8, so the embeddings differ from fp32 by a few parts in a thousand in cosine. That is why
``dtype="auto"`` takes this path only where the probe, on the user's own weights, keeps every
canary row above :data:`~clip_embeddings.runtime.auto.INT8_COSINE_BAR`, and only where bf16 is
not native (bf16 reaches the speed there with about eight times less error).

Without VNNI, oneDNN's int8 kernels add pairs of ``u8 x s8`` products in saturating 16-bit
lanes: with 8-bit weights a large activation times a large weight overflows and the result is
wrong, not just rounded. :func:`weight_levels` finds out on the machine itself (one tiny product
whose exact value is known) and keeps weights to 7 bits (+-63) where it overflows.
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Int8Linear", "int8_available", "quantize_rows", "weight_levels"]

_TINY = 1e-12  # a scale for an all-zero row or channel: any value works, zero would divide by zero


@cache
def int8_available() -> bool:
    """Whether this torch multiplies int8 matrices on the CPU exactly (``torch._int_mm``).

    Example:
        >>> int8_available()  # torch 2.13 on x86: oneDNN's int8 GEMM
        True
    """
    try:
        a = torch.arange(-6, 6, dtype=torch.int8).reshape(3, 4)
        b = torch.arange(-4, 4, dtype=torch.int8).reshape(4, 2)
        return bool(torch.equal(torch._int_mm(a, b), (a.long() @ b.long()).int()))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


@cache
def weight_levels() -> int:
    """How many levels each side of zero a weight may use here: 127, or 63 where 8-bit products overflow.

    Measured, not guessed from CPU flags (a CPU can report VNNI that the kernels do not use, and
    ``ONEDNN_MAX_CPU_ISA`` can hold them back): ``127 x 127`` summed 64 times must come out exact.

    Example:
        >>> weight_levels() in (63, 127)
        True
    """
    ones = torch.full((1, 64), 127, dtype=torch.int8)
    return 127 if int(torch._int_mm(ones, ones.t().contiguous())[0, 0]) == 127 * 127 * 64 else 63


def quantize_rows(x: torch.Tensor, levels: int = 127) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scale)``: int8 ``q`` and fp32 ``scale`` [rows, 1] with ``q * scale ~= x``, one scale per row.

    Example:
        >>> q, scale = quantize_rows(torch.tensor([[0.5, -1.0], [2.0, 1.0]]))
        >>> q.tolist(), [round(s * 127, 4) for s in scale.flatten().tolist()]  # each row's largest magnitude
        ([[64, -127], [127, 64]], [1.0, 2.0])
    """
    scale = x.abs().amax(dim=-1, keepdim=True).clamp_(min=_TINY).div_(levels)
    return torch.round(x / scale).to(torch.int8), scale


class Int8Linear(nn.Module):
    """An ``nn.Linear`` for inference with int8 weights (per output channel) and int8 activations (per row).

    ``activation="swish"`` applies SiLU to the output (the MLP's QuickGELU, rewritten as in
    :mod:`~clip_embeddings.runtime.inference`, which puts these in place of a model's linears).

    Example:
        >>> linear = nn.Linear(512, 2048)
        >>> fast = Int8Linear(linear.weight, linear.bias)
        >>> x = torch.randn(4, 512)
        >>> bool(F.cosine_similarity(fast(x), linear(x)).min() > 0.999)
        True
    """

    weight_t: torch.Tensor  # buffers, registered in __init__
    weight_scale: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, activation: str = "none"):
        super().__init__()
        if activation not in ("none", "swish"):
            raise ValueError(f"activation must be 'none' or 'swish', not {activation!r}")
        q, scale = quantize_rows(weight.detach().float(), weight_levels())
        self.out_features, self.activation = weight.shape[0], activation
        self.register_buffer("weight_t", q.t())  # [in, out], a view of the [out, in] rows: oneDNN reads it as is
        self.register_buffer("weight_scale", scale.reshape(1, -1))
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, scale = quantize_rows(x.reshape(-1, x.shape[-1]).float())
        product = torch._int_mm(q, self.weight_t)
        y = product * (scale * self.weight_scale) if self.bias is None \
            else torch.addcmul(self.bias, product, scale * self.weight_scale)
        if self.activation == "swish":
            y = F.silu(y, inplace=True)
        return y.reshape(*x.shape[:-1], self.out_features)
