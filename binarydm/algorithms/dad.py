"""DB-LLM's Deviation-Aware Distillation (DAD) (Chen et al., "DB-LLM", arXiv 2402.11960, 2024, Sec. 3.3).

Distillation from the full-precision teacher in which each sample's term is re-weighted by its
ambiguity, measured by the teacher's predictive entropy. The paper gives no public code; the
weighting chosen here:

    p_t = softmax(z_t / T),  log p_s = log_softmax(z_s / T)          (along ``dim``)
    KL_i = sum_k p_t,ik (log p_t,ik - log p_s,ik)                    (one term per sample/token i)
    H_i  = -sum_k p_t,ik log p_t,ik                                  (the teacher's entropy)
    w_i  = H_i / mean_j H_j   (detached; mean 1 over the batch, so the loss keeps the scale of plain KD)
    L    = T^2 * mean_i (w_i * KL_i)

Why this choice: the paper's motivation is that a binarized student deviates most on ambiguous
inputs (where the teacher spreads its probability), so those terms are up-weighted in proportion to
the entropy; normalising to mean 1 keeps learning rates tuned for plain KD usable, and makes
``weighting='uniform'`` (w_i = 1, plain KD) a drop-in comparison. A batch whose teacher is certain
everywhere (all H_i = 0) falls back to uniform weights instead of dividing by zero.

DAD needs a categorical output (classification or language-model logits, e.g. BiBench's GLUE
track). A noise-prediction UNet has no predictive distribution, so the diffusion trainer's own
output distillation does not use it.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

WEIGHTINGS = ("entropy", "uniform")


def teacher_entropy(teacher_logits: torch.Tensor, temperature: float = 1.0, dim: int = -1) -> torch.Tensor:
    """H_i of softmax(z_t / T) along ``dim`` (that dimension removed)."""
    log_p = F.log_softmax(teacher_logits / temperature, dim=dim)
    return -(log_p.exp() * log_p).sum(dim=dim)


def deviation_aware_distillation(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    dim: int = -1,
    weighting: str = "entropy",
) -> torch.Tensor:
    """The DAD loss (a scalar) of student logits against detached teacher logits; see the module docstring."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown DAD weighting {weighting!r}; valid: {list(WEIGHTINGS)}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} must have the same shape")
    teacher_logits = teacher_logits.detach()
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=dim)
    log_p_s = F.log_softmax(student_logits / temperature, dim=dim)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=dim)
    if weighting == "uniform":
        weights = torch.ones_like(kl)
    else:
        entropy = -(log_p_t.exp() * log_p_t).sum(dim=dim)
        mean = entropy.mean()
        weights = entropy / mean if mean > 0 else torch.ones_like(entropy)
    return temperature**2 * (weights * kl).mean()
