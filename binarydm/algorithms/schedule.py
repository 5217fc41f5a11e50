"""Training-progress schedules of the binarization algorithms, as pure functions of (step, total).

The protocol: a quantizer that follows a schedule defines ``set_progress(step, total_steps)`` and
recomputes its scheduled values from them (persisting what the forward pass needs in its state
dict). :class:`binarydm.training.schedules.QuantScheduleCallback` calls it on every module of the
model before each training batch, from ``trainer.global_step`` and ``trainer.max_steps`` (or from
the epoch), so iteration-based and epoch-based training drive the same code. The papers state
their schedules per epoch ``e`` of ``E``; here ``e / E`` is the fraction of training done.
EBB's transition (BinaryDM) is a one-off event, handled by ``binarydm.training.callbacks.EBBTransition``.
"""

from __future__ import annotations

import math
from typing import Iterator, Protocol, runtime_checkable

from torch import nn


@runtime_checkable
class Scheduled(Protocol):
    """Anything whose behaviour depends on the fraction of training done."""

    def set_progress(self, step: int, total_steps: int) -> None: ...


def progress(step: int, total_steps: int) -> float:
    """The fraction of training done, ``step / total_steps`` clipped to [0, 1]."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    return min(max(step / total_steps, 0.0), 1.0)


def recu_tau(step: int, total_steps: int, start: float = 0.85, end: float = 0.99) -> float:
    """ReCU's tau (Xu et al., ICCV 2021): tau = A exp(e / E) + B, rising from ``start`` to ``end``.

    A and B solve tau(0) = start, tau(E) = end: A = (end - start) / (e - 1), B = start - A.
    """
    a = (end - start) / (math.e - 1.0)
    return a * math.exp(progress(step, total_steps)) + (start - a)


def fda_alpha(step: int, total_steps: int, alpha0: float = 0.05) -> float:
    """FDA's noise-adaptation weight (Xu et al., NeurIPS 2021): alpha_t = alpha0 (1 + cos(pi (e + 1) / E)).

    It decays from about 2 alpha0 to exactly 0 at the last step, so the trained network is binary.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    e = min(max(step, 0), total_steps - 1)
    return alpha0 * (1.0 + math.cos(math.pi * (e + 1) / total_steps))


def fda_terms(step: int, total_steps: int, start: int = 9) -> int:
    """FDA's index of the last Fourier term: n = start + floor(start * e / E) (9 -> 18)."""
    return start + math.floor(start * progress(step, total_steps))


def biper_stage(step: int, total_steps: int, stage1_fraction: float = 0.5) -> int:
    """BiPer's training stage (Vargas et al., CVPR 2024): 1 (real-valued sin(omega W)) then 2 (binary)."""
    if not 0.0 <= stage1_fraction <= 1.0:
        raise ValueError(f"stage1_fraction must lie in [0, 1], got {stage1_fraction}")
    return 1 if progress(step, total_steps) < stage1_fraction else 2


def scheduled_modules(model: nn.Module) -> Iterator[tuple[str, Scheduled]]:
    """The modules of ``model`` that follow a schedule."""
    for name, module in model.named_modules():
        if isinstance(module, Scheduled):
            yield name, module


def set_progress_(model: nn.Module, step: int, total_steps: int) -> int:
    """Drive every scheduled module of ``model``; returns how many there are."""
    count = 0
    for _, module in scheduled_modules(model):
        module.set_progress(step, total_steps)
        count += 1
    return count
