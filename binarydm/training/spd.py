"""Space Patched Distillation (SPD), BiDM Sec. 3.3 (Zheng et al., NeurIPS 2024, Eq. 13-16).

Each tapped block feature F (B, C, H, W) of teacher and student is cut into a P x P grid of patches
(P = 4). For a patch A (B, C, h, w) the "attention map" is the Gram matrix of its rows, per sample and
channel, normalised by one Frobenius norm over the whole batch tensor:

    M(A) = A A^T / ||A A^T||_F                       (B, C, h, h)
    L_SPD = mean over features and patches of ||M(A_s) - M(A_t)||_F

The norm is not squared, and there is no softmax; both as in the authors' code (its CIFAR trainer),
whose patch grid starts at multiples of W / P and takes W // P rows and columns from each start (the
same grid here). A feature narrower than P pixels is cut into as many patches as it has pixels per side
(the code would cut empty patches and divide by zero). The loss is added to the noise loss with weight
``loss.spd_weight``: the code's 1e-2 is on a noise loss summed over the pixels (CIFAR; the LDM code's is a
mean), so binarydm, whose noise loss is a mean, defaults to the LDM code's scale.
"""

from __future__ import annotations

from typing import Sequence

import torch


def patch_gram(a: torch.Tensor) -> torch.Tensor:
    """A A^T over the last two axes, divided by its Frobenius norm over the whole tensor."""
    gram = a @ a.transpose(-1, -2)
    return gram / gram.norm().clamp_min(1e-12)


def patches(feature: torch.Tensor, grid: int) -> list[torch.Tensor]:
    """The ``grid`` x ``grid`` patches of a (B, C, H, W) feature (fewer per side where H or W < grid)."""
    height, width = feature.shape[-2:]
    rows, cols = min(grid, height), min(grid, width)
    ph, pw = height // rows, width // cols
    return [feature[..., i * height // rows: i * height // rows + ph, j * width // cols: j * width // cols + pw]
            for i in range(rows) for j in range(cols)]


def spd_loss(teacher_features: Sequence[torch.Tensor], student_features: Sequence[torch.Tensor],
             grid: int = 4) -> torch.Tensor:
    """Mean over features and patches of ||M(student patch) - M(teacher patch)||_F (M: :func:`patch_gram`)."""
    if len(teacher_features) != len(student_features) or not student_features:
        raise ValueError(f"spd_loss: {len(teacher_features)} teacher and {len(student_features)} student features")
    terms = []
    for ft, fs in zip(teacher_features, student_features):
        if fs.dim() != 4:
            raise ValueError(f"spd_loss needs (B, C, H, W) features, got shape {tuple(fs.shape)}")
        ft = ft.detach().to(torch.float32)
        fs = fs.to(torch.float32)
        for pt, ps in zip(patches(ft, grid), patches(fs, grid)):
            terms.append((patch_gram(ps) - patch_gram(pt)).norm())
    return torch.stack(terms).mean()


__all__ = ["spd_loss", "patch_gram", "patches"]
