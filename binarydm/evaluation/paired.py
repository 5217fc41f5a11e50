"""A fast paired fidelity metric: noise-prediction MSE on one fixed set of (x_0, t, noise).

FID needs thousands of samples to rank models 10-30 FID apart; this metric needs one forward pass
per image. Every model scored with the same ``x0`` and ``seed`` sees exactly the same noisy inputs,
so differences between models are paired (not drowned in the noise of drawing t and eps):

    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,   t ~ U{0..T-1}, eps ~ N(0, I)  (drawn from ``seed``)
    mse_noise   = mean (eps_model(x_t, t) - eps)^2          (the training objective, held out)
    mse_teacher = mean (eps_model(x_t, t) - eps_teacher(x_t, t))^2   (fidelity to the FP model)
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn


@torch.no_grad()
def paired_mse(model: nn.Module, alphas_cumprod: torch.Tensor, x0: torch.Tensor, teacher: Optional[nn.Module] = None,
               seed: int = 0, batch_size: int = 64) -> dict[str, float]:
    """{"mse_noise": ..., "mse_teacher": ... (with a teacher)} of ``model`` on ``x0`` (N, C, H, W) in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    n = x0.shape[0]
    t = torch.randint(0, alphas_cumprod.numel(), (n,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    abar = alphas_cumprod.float()[t].view(n, *([1] * (x0.dim() - 1)))
    x_t = abar.sqrt() * x0.float() + (1 - abar).sqrt() * eps
    device = next(model.parameters()).device
    sums = {"mse_noise": 0.0, "mse_teacher": 0.0}
    for i in range(0, n, batch_size):
        xb, tb = x_t[i:i + batch_size].to(device), t[i:i + batch_size].to(device)
        pred = model(xb, tb).sample.float().cpu()
        sums["mse_noise"] += (pred - eps[i:i + batch_size]).pow(2).sum().item()
        if teacher is not None:
            sums["mse_teacher"] += (pred - teacher(xb, tb).sample.float().cpu()).pow(2).sum().item()
    out = {"mse_noise": sums["mse_noise"] / eps.numel()}
    if teacher is not None:
        out["mse_teacher"] = sums["mse_teacher"] / eps.numel()
    return out


__all__ = ["paired_mse"]
