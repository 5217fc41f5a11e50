"""Pieces shared by the suite's plain-PyTorch tasks (classification, language modelling).

The diffusion task trains through binarydm's Lightning runner; these two tasks are small enough
for a plain loop, which keeps a smoke run in seconds. Everything that touches quantization goes
through binarydm's public API (``algorithms.preset``, ``binarize_``, ``calibrate_``, ``summary``).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Iterable

import torch
from torch import nn

from binarydm import algorithms, binarize_, calibrate_, summary
from binarydm.algorithms import bipft
from binarydm.algorithms.schedule import set_progress_
from binarydm.training.module import parameter_groups

from .base import FP, RunSpec

OPTIMIZERS = ("adamw", "sgd")


def quantize(model: nn.Module, spec: RunSpec, keep: Iterable[str], example: Any) -> nn.Module:
    """A quantized copy of the full-precision ``model`` for ``spec`` (``model`` itself is left alone).

    ``keep``: layer-name prefixes kept in full precision (BiBench keeps the first and last layer).
    ``example``: one input batch (a tensor or a tuple of positional inputs) for the activation
    calibration (LSQ steps, BiPFT's shifts).
    """
    student = copy.deepcopy(model)
    if spec.algorithm == FP:
        return student
    config = algorithms.preset(spec.algorithm, **spec.quant_dict).replace(keep=tuple(keep), keep_bits=32)
    binarize_(student, config)
    args = example if isinstance(example, tuple) else (example,)
    # bipft's calibrate_ also initialises the Q/K/V binarizers of BiPFTSelfAttention modules.
    (bipft.calibrate_ if spec.algorithm == "bipft" else calibrate_)(student, *args)
    return student


def make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float = 1e-4) -> torch.optim.Optimizer:
    """AdamW or SGD (momentum 0.9, Nesterov) over binarydm's parameter groups (no decay on scales and norms)."""
    groups = parameter_groups(model, weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    raise ValueError(f"unknown optimizer {name!r}; valid: {list(OPTIMIZERS)}")


def cosine_lr(optimizer: torch.optim.Optimizer, base: float, step: int, total: int, warmup: int = 0) -> None:
    """Linear warm-up then cosine decay to 0 over ``total`` steps."""
    if step < warmup:
        f = (step + 1) / warmup
    else:
        f = 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
    for g in optimizer.param_groups:
        g["lr"] = base * f


def train_steps(model: nn.Module, loss_fn: Callable[[int], torch.Tensor], spec: RunSpec, *,
                clip: float = 1.0, warmup: int = 0, progress: bool = True, desc: str = "") -> list[float]:
    """``spec.steps`` optimiser steps of ``loss_fn(step)``; drives the algorithms' schedules (ReCU, FDA, BiPer).

    Returns the loss of every step.
    """
    from tqdm.auto import tqdm

    opt = make_optimizer(model, spec.optimizer, spec.lr)
    model.train()
    losses = []
    for step in tqdm(range(spec.steps), desc=desc or f"{spec.task}/{spec.method}", disable=not progress,
                     leave=False):
        set_progress_(model, step, spec.steps)
        cosine_lr(opt, spec.lr, step, spec.steps, warmup)
        loss = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def complexity(model: nn.Module, *example: Any) -> dict[str, float]:
    """Storage and OPs of ``model`` (per sample) and of its full-precision self, from ``binarydm.summary``."""
    was = model.training
    model.eval()
    try:
        s = summary(model, *example)
    finally:
        model.train(was)
    return {"storage_bytes": s.storage_bytes, "fp_storage_bytes": s.fp_storage_bytes,
            "ops": s.ops, "fp_ops": s.fp_ops}


def seeded(seed: int, salt: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + salt)


__all__ = ["OPTIMIZERS", "complexity", "cosine_lr", "make_optimizer", "quantize", "seeded", "train_steps"]
