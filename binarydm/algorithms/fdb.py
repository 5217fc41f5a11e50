"""FDB, DB-LLM's Flexible Dual Binarization (Chen et al., "DB-LLM: Accurate Dual-Binarization for
Efficient LLMs", arXiv 2402.11960, 2024).

A 2-bit weight written as the sum of two binary {0, 1} codes with their own scales:

    W_q = a1 * b1 + a2 * b2,   b1 = H(W - (a1 + a2) / 2),   b2 = H(-(W - a1 b1 - a2 / 2))

H is the Heaviside step with H(0) = 1 (from ``binary_sign``: H(u) = (sign(u) + 1) / 2). With a1 > 0 > a2
and a1 + a2 > 0 the four values {a2, 0, a1 + a2, a1} are the levels and b1, b2 pick the nearest one.

Initialisation from the 2-bit uniform quantizer: s = max|W| / 2 per output channel, a1 = 2 s, a2 = -s,
so the levels are {-s, 0, s, 2 s}, exactly the uniform grid of step s.

Backward ("STE through H"): the codes b1, b2 are treated as constants for the scales and the
quantizer as the identity for W inside the level range, the straight-through estimator of any
uniform rounding (LSQ's):

    dW_q/dW = 1{min level <= W <= max level},   dW_q/da1 = b1,   dW_q/da2 = b2.

Passing the STE through each H separately would make dW_q/dW = 1 - a2 (1 - a1) mix a weight-sized
scale with a dimensionless 1; the composite STE above is the consistent reading. The paper is
weight-only: pair it with LSQ activations (the ``fdb`` preset). No public code exists.
"""

from __future__ import annotations

import torch
from torch import nn

from binarydm.quant.base import Quantizer
from binarydm.quant.registry import LayerSpec, register_weight
from binarydm.quant.ste import binary_sign

from ._common import out_channel_dims


def heaviside(u: torch.Tensor) -> torch.Tensor:
    """H(u) in {0, 1} with H(0) = 1, from the project's one sign function."""
    return (binary_sign(u) + 1) / 2


def fdb_codes(w: torch.Tensor, a1: torch.Tensor, a2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two binary codes (b1, b2) of W for the scales a1, a2 (no gradient)."""
    b1 = heaviside(w - (a1 + a2) / 2)
    b2 = heaviside(-(w - a1 * b1 - a2 / 2))
    return b1, b2


class FDBWeight(Quantizer):
    """a1 * b1 + a2 * b2 with learnable a1, a2 per output channel (2 bits per weight)."""

    def __init__(self, out_channels: int, weight_dim: int) -> None:
        super().__init__()
        shape = (out_channels,) + (1,) * (weight_dim - 1)
        self.a1 = nn.Parameter(torch.zeros(shape))
        self.a2 = nn.Parameter(torch.zeros(shape))

    @property
    def bits(self) -> int:
        return 2

    def _initialize(self, w: torch.Tensor) -> None:
        s = w.abs().amax(dim=out_channel_dims(w), keepdim=True) / 2
        self.a1.copy_(2 * s)
        self.a2.copy_(-s)

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        a1, a2 = self.a1.to(w.dtype), self.a2.to(w.dtype)
        with torch.no_grad():
            b1, b2 = fdb_codes(w, a1, a2)
            levels = torch.stack([torch.zeros_like(a1), a1, a2, a1 + a2])
            inside = (w >= levels.amin(0)) & (w <= levels.amax(0))
        # Forward a1 b1 + a2 b2; backward identity for W inside the level range, codes for a1, a2.
        straight = torch.where(inside, w - w.detach(), torch.zeros_like(w))
        return a1 * b1 + a2 * b2 + straight


@register_weight("fdb")
def _weight(layer, spec: LayerSpec) -> FDBWeight:
    return FDBWeight(layer.weight.shape[0], layer.weight.dim())
