"""Bit planes, and latent weights that reproduce a quantized weight exactly (the packed file's arithmetic)."""

from __future__ import annotations

from typing import Optional

import torch


# ---- bit planes ----------------------------------------------------------------------------------
def pack_bits(positive: torch.Tensor) -> torch.Tensor:
    """Pack a boolean tensor (True = +1) into uint8, 8 per byte, row-major, least significant bit first."""
    flat = positive.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    weights = (1 << torch.arange(8, dtype=torch.uint8)).to(flat.device)
    return (flat.view(-1, 8) * weights).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``numel`` bits as a flat bool tensor."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = (packed.reshape(-1, 1) >> shifts) & 1
    return bits.reshape(-1)[:numel].bool()


# ---- latent weights that reproduce a quantized weight exactly -------------------------------------
def lmb_latent(b1: torch.Tensor, b2: Optional[torch.Tensor], s1: torch.Tensor) -> torch.Tensor:
    """A latent weight ``w'`` with ``sign(w') = b1`` and, for two bases, ``sign(w' - s1 sign(w')) = b2``.

    ``b1``, ``b2`` are boolean (True = +1) and shaped like the weight; ``s1`` broadcasts against them.
    With sign(0) = +1 the feasible values of ``w'`` are (the signs of float sums and differences are
    exact, so these intervals hold in floating point):

        b1=+1, b2=+1:  w' >= max(0, s1)        ->  w' = max(0, s1)
        b1=+1, b2=-1:  0 <= w' < s1             ->  w' = 0            (needs s1 > 0)
        b1=-1, b2=+1:  -s1 <= w' < 0            ->  w' = -s1          (needs s1 > 0)
        b1=-1, b2=-1:  w' < min(0, -s1)         ->  w' = the float just below min(0, -s1)

    The cases marked "needs s1 > 0" are exactly those the original weight could only produce with
    s1 > 0, so a pair of planes written by :func:`export_packed` always has a solution.
    """
    zero = torch.zeros_like(s1)
    if b2 is None:
        return torch.where(b1, 0.0, -1.0).to(s1.dtype)
    below = torch.nextafter(torch.minimum(zero, -s1), torch.full_like(s1, -float("inf")))
    pos = torch.where(b2, torch.maximum(zero, s1), zero)
    neg = torch.where(b2, -s1, below)
    return torch.where(b1, pos, neg)


def lsq_latent(codes: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """``w' = q * a``: LSQ maps it back to ``round(clamp(w'/a)) = q`` (the rounding error of
    ``(q a) / a`` is a few ulps of ``q``, far from the 0.5 that would change the rounding)."""
    return codes.to(step.dtype) * step


__all__ = ["lmb_latent", "lsq_latent", "pack_bits", "unpack_bits"]
