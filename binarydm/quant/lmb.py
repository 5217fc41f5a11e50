"""BinaryDM's Learnable Multi-basis Binarizer (LMB) for weights, with the EBB option.

Zheng, Qin et al., "BinaryDM: Towards Accurate Binarization of Diffusion Model" (arXiv 2404.05662),
Sec. 3.2; the Evolvable-Basis Binarizer (EBB) of the ICLR 2025 version.

    w_bi = s1 * sign(w) + s2 * sign(w - s1 * sign(w))

s1, s2 are learnable, one per output channel. Initialisation (explicit, from the pretrained weight):
s1 = mean|w|, s2 = mean|w - s1 sign(w)|, both over every dimension but the output channel.
Backward: the clipped STE on sign(w) and on sign(residual); s1 and s2 receive their gradients
through the products by autograd.

A single-basis LMB (``n_bases=1``) is s1 * sign(w): BinaryDM uses it on the low-resolution blocks,
and the paper's baseline is exactly this quantizer with LSQ activations.

EBB: the same dual-basis forward during stage 1, with the regulariser ``tau * mean(s2)`` added to the
loss (:meth:`LMB.ebb_penalty`); at the transition step :meth:`LMB.drop_second_basis_` makes the layer
single-basis for the rest of training (the flag is saved with the state dict).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Quantizer
from .ste import binary_sign, sign_ste


def _reduce_dims(w: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(1, w.dim()))


class LMB(Quantizer):
    """Learnable multi-basis binarizer of a weight of shape [C_out, ...] (one or two bases)."""

    flags = Quantizer.flags + ("n_bases",)

    def __init__(self, out_channels: int, weight_dim: int, n_bases: int = 2, surrogate="clipped"):
        super().__init__()
        if n_bases not in (1, 2):
            raise ValueError(f"LMB supports 1 or 2 bases, got n_bases={n_bases}")
        shape = (out_channels,) + (1,) * (weight_dim - 1)
        self.n_bases = n_bases
        self.surrogate = surrogate
        self.s1 = nn.Parameter(torch.zeros(shape))
        # s2 exists even for one basis so that every LMB has the same state-dict keys: a checkpoint
        # written after EBB's transition loads into a freshly converted (dual-basis) model.
        self.s2 = nn.Parameter(torch.zeros(shape), requires_grad=n_bases == 2)

    @property
    def bits(self) -> int:
        return self.n_bases

    def _initialize(self, w: torch.Tensor) -> None:
        dims = _reduce_dims(w)
        s1 = w.abs().mean(dim=dims, keepdim=True)
        self.s1.copy_(s1)
        if self.n_bases == 2:
            self.s2.copy_((w - s1 * binary_sign(w)).abs().mean(dim=dims, keepdim=True))
        else:
            self.s2.zero_()

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        first = self.s1 * sign_ste(w, self.surrogate)
        if self.n_bases == 1:
            return first
        return first + self.s2 * sign_ste(w - first, self.surrogate)

    def inference_numel(self) -> int:
        return self.s1.numel() * self.n_bases

    def ebb_penalty(self) -> torch.Tensor:
        """EBB's stage-1 regulariser term of this layer: mean(s2) over channels (times tau outside)."""
        return self.s2.mean() if self.n_bases == 2 else self.s2.new_zeros(())

    @torch.no_grad()
    def drop_second_basis_(self) -> None:
        """EBB transition: the layer becomes s1 * sign(w) (one basis, 1 bit) from now on."""
        self.n_bases = 1
        self.s2.zero_()
        self.s2.requires_grad_(False)

    def set_extra_state(self, state) -> None:
        super().set_extra_state(state)
        self.s2.requires_grad_(self.n_bases == 2)
