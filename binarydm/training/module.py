"""The LightningModule of BinaryDM's quantization-aware training (and of plain FP training).

Objective (BinaryDM, Zheng, Qin et al., arXiv 2404.05662, Sec. 3.3 and 4.1):

    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,   t ~ U{0..T-1}, eps ~ N(0, I)
    L   = MSE(eps_student(x_t, t), eps) + lambda * L_LRM  [+ tau * mean_l mean(s2_l)  (EBB stage 1)]
                                                       [+ mu * L_SPD  (BiDM's space patched distillation)]

The module receives its networks: the student (already converted by ``binarydm.binarize_``), the
frozen full-precision teacher (None for FP training) and a diffusers noise scheduler that defines
abar_t. The noise and timesteps of step k are drawn from a generator seeded by (seed, k, rank), so a
resumed run draws exactly what the uninterrupted run would have drawn.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Optional

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F

from ..algorithms.bidm import ScaledShortcut
from ..quant.attention import QuantAttnProcessor
from ..quant.base import Quantizer
from ..quant.connection import connection_of
from ..quant.lmb import LMB
from ..unets import condition_kwargs
from .config import LossConfig, OptimConfig
from .lrm import LRM, TAPS, FeatureTap, lrm_block_names
from .spd import spd_loss


def reads_due(module: L.LightningModule) -> bool:
    """Whether this training step reads values for the progress bar and logs the learning rate: every step on
    the CPU, only on the logger's steps (``trainer.log_every_n_steps``) elsewhere, since reading a device value,
    and turning a Python number into one, makes the host wait for the device. The bar shows
    ``module.bar_values`` (floats), not Lightning's ``prog_bar`` metrics, which it reads after every step."""
    if module.device.type == "cpu":
        return True
    every = int(module.trainer.log_every_n_steps)
    return every > 0 and (module.global_step + 1) % every == 0


def lr_factor(step: int, cfg: OptimConfig) -> float:
    """Multiplier of the base learning rate at ``step``.

    warm-up: (step + 1) / warmup_steps; then constant 1, or cosine
    m + (1 - m) * (1 + cos(pi * p)) / 2 with p the fraction of the post-warm-up steps done
    (of ``total_steps - warmup_steps``).
    """
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    if cfg.total_steps is None or cfg.total_steps < 1:
        raise ValueError(f"optim.total_steps={cfg.total_steps}: the cosine schedule needs its length (set it, or "
                         "the trainer's max_steps)")
    span = max(cfg.total_steps - cfg.warmup_steps, 1)
    p = min((step - cfg.warmup_steps) / span, 1.0)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))


def parameter_groups(model: nn.Module, weight_decay: float, shortcut_lr: Optional[float] = None) -> list[dict]:
    """AdamW groups: latent conv/linear weights decay; quantizer scales and steps, biases, norms and
    embeddings do not (decaying a scale would shrink the binarized weight itself). ``shortcut_lr``: BiDM's
    shortcut scales s get a group of their own with this learning rate (None: they stay with the scales,
    so the groups, and a checkpoint's optimizer state, are as without the option)."""
    quant_param_ids = {
        id(p) for m in model.modules() if isinstance(m, (Quantizer, QuantAttnProcessor)) for p in m.parameters()
    }
    shortcut_ids = set()
    if shortcut_lr is not None:
        shortcut_ids = {id(m.scale) for m in model.modules() if isinstance(m, ScaledShortcut)}
    decay, scales, shortcut, other = [], [], [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad and not isinstance(module, LMB):
                continue
            if id(p) in shortcut_ids:
                shortcut.append(p)
            elif id(p) in quant_param_ids:
                scales.append(p)
            elif isinstance(module, (nn.Conv2d, nn.Linear)) and name == "weight":
                decay.append(p)
            else:
                other.append(p)
    groups = [
        {"name": "latent_weights", "params": decay, "weight_decay": weight_decay},
        {"name": "quantizer_scales", "params": scales, "weight_decay": 0.0},
        {"name": "biases_norms", "params": other, "weight_decay": 0.0},
        {"name": "shortcut_scales", "params": shortcut, "weight_decay": 0.0, "lr": shortcut_lr},
    ]
    return [g for g in groups if g["params"]]


def two_basis_lmbs(model: nn.Module) -> list[LMB]:
    return [m for m in model.modules() if isinstance(m, LMB) and m.n_bases == 2]


def _conditional(config) -> bool:
    from ..unets import needs_text, num_classes

    return num_classes(config) is not None or needs_text(config)


def _missing_labels(config) -> dict:
    from ..unets import needs_text

    if needs_text(config):
        raise ValueError("the UNet is conditioned on text but the batch holds no prompt embeddings: train it with "
                         "its pipeline's text encoder (model.pretrained=<pipeline> or model.text_encoder=DIR)")
    raise ValueError("the UNet is conditional but the batch holds no labels: set data.labels=true (class labels), "
                     "or train an unconditional UNet")


class DiffusionQAT(L.LightningModule):
    """Noise-prediction training of ``student``; with a ``teacher``, plus LRM (BinaryDM QAT)."""

    def __init__(
        self,
        student: nn.Module,
        scheduler,
        teacher: Optional[nn.Module] = None,
        loss: LossConfig = LossConfig(),
        optim: OptimConfig = OptimConfig(),
        seed: int = 0,
        ebb_tau: float = 0.0,
    ):
        """``ebb_tau``: weight of EBB's penalty on the second bases (0: none); ``optim.total_steps`` None:
        the trainer's ``max_steps``."""
        super().__init__()
        if getattr(scheduler.config, "prediction_type", "epsilon") != "epsilon":
            raise ValueError(
                f"DiffusionQAT trains noise prediction; the scheduler predicts {scheduler.config.prediction_type!r}"
            )
        self.student = student
        self.noise_scheduler = scheduler
        self.loss_cfg = loss
        self.optim_cfg = optim
        self.seed = seed
        self.ebb_tau = ebb_tau
        # The teacher is frozen and rebuilt from model.pretrained: kept out of the module tree so that it
        # is neither saved in checkpoints nor wrapped by DDP (moved to the device in on_fit_start).
        object.__setattr__(self, "teacher", teacher)
        if teacher is not None:
            teacher.requires_grad_(False).eval()
        self.use_lrm = teacher is not None and loss.lrm_weight > 0
        self.blocks = lrm_block_names(student, loss.lrm_taps) if self.use_lrm else []
        self.lrm = LRM(self.blocks, loss.lrm_rank_divisor, loss.lrm_normalize) if self.use_lrm else None
        if loss.spd_taps not in TAPS:
            raise ValueError(f"loss.spd_taps must be one of {list(TAPS)}, got {loss.spd_taps!r}")
        self.use_spd = teacher is not None and loss.spd_weight > 0
        self.spd_blocks = lrm_block_names(student, loss.spd_taps) if self.use_spd else []
        self.taps = list(dict.fromkeys(self.blocks + self.spd_blocks))  # one tap per network serves both losses
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.clone().float(), persistent=False)

    # ---- noise -----------------------------------------------------------------------------
    def step_generator(self, step: int, salt: int = 0) -> torch.Generator:
        """A generator determined by (seed, step, rank, salt): a resumed run redraws the same noise. A CPU
        generator on every device, so that a run on a GPU draws the noise of the same run on the CPU (CUDA's
        generator gives other numbers for the same seed): the two repeat each other's steps."""
        g = torch.Generator()
        g.manual_seed((self.seed * 1_000_003 + step * 1009 + self.global_rank * 17 + salt) % (2**63 - 1))
        return g

    def noisy_inputs(self, x0: torch.Tensor, generator: torch.Generator):
        """(x_t, t, eps) with t uniform on {0..T-1} and x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps; t and eps
        drawn on the generator's device, then moved to x0's."""
        n = x0.shape[0]
        t = torch.randint(0, self.alphas_cumprod.numel(), (n,), generator=generator, device=generator.device)
        eps = torch.randn(x0.shape, generator=generator, device=generator.device, dtype=x0.dtype)
        if generator.device != x0.device:
            # From pinned host memory the copies are queued on the stream: the host does not wait for the GPU.
            pin = x0.device.type == "cuda"
            t, eps = ((v.pin_memory() if pin else v).to(x0.device, non_blocking=pin) for v in (t, eps))
        abar = self.alphas_cumprod.to(x0.device)[t].view(n, *([1] * (x0.dim() - 1))).to(x0.dtype)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * eps, t, eps

    def previous_inputs(self, x_t, t, eps):
        """(x_{t+1}, t + 1) with the same x_0 and noise as x_t (t + 1 capped at T - 1):
        x_{t+1} = r x_t + (sqrt(1 - abar_{t+1}) - r sqrt(1 - abar_t)) eps,  r = sqrt(abar_{t+1} / abar_t)."""
        t1 = (t + 1).clamp(max=self.alphas_cumprod.numel() - 1)
        shape = (-1, *([1] * (x_t.dim() - 1)))
        abar = self.alphas_cumprod.to(x_t.device)
        a0, a1 = abar[t].view(shape), abar[t1].view(shape)
        r = (a1 / a0).sqrt()
        return (r * x_t + ((1 - a1).sqrt() - r * (1 - a0).sqrt()) * eps).to(x_t.dtype), t1

    @contextlib.contextmanager
    def connected(self, x_t, t, eps, cond: dict):
        """Around the student's forward at (x_t, t): with BiDM's cross-timestep connection
        (``binarydm.quant.connection``), first a no-grad student pass at t + 1 whose stage outputs the
        forward inside then mixes in, as the authors' training does; without it, nothing."""
        connection = connection_of(self.student)
        if connection is None:
            yield
            return
        x1, t1 = self.previous_inputs(x_t, t, eps)
        with torch.no_grad(), connection.recording():
            self.student(x1, t1, **cond)
        with connection.replaying():
            yield

    def batch_inputs(self, batch, step: int):
        x0 = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.noisy_inputs(x0, self.step_generator(step))

    def condition(self, batch) -> dict:
        """The UNet's conditioning keyword arguments for this batch: {} for an unconditional UNet; the
        labels of an (images, labels) batch as ``class_labels`` or label tokens (``binarydm.unets``); the
        cached prompt embeddings of a (latents, embeddings) batch as ``encoder_hidden_states``."""
        extra = batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None
        config = self.student.config
        if extra is not None and extra.is_floating_point():  # (B, tokens, dim): a text-conditioned UNet
            return {"encoder_hidden_states": extra.to(self.device)}
        if extra is None:
            return condition_kwargs(config) if not _conditional(config) else _missing_labels(config)
        return condition_kwargs(config, extra.to(self.device), device=self.device)

    # ---- losses ----------------------------------------------------------------------------
    def _all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        trainer = self._trainer  # None outside Trainer.fit (the property raises there)
        if trainer is not None and trainer.world_size > 1:
            return trainer.strategy.reduce(tensor, reduce_op="sum")
        return tensor

    def compute_losses(self, x_t, t, eps, cond: Optional[dict] = None) -> dict[str, torch.Tensor]:
        losses: dict[str, torch.Tensor] = {}
        cond = cond or {}
        kd = self.loss_cfg.kd_weight if self.teacher is not None else 0.0
        teacher_eps = None
        if self.taps:
            # stop=True without KD: the teacher's output head is never used, only its block features.
            with torch.no_grad(), FeatureTap(self.teacher, self.taps, stop=not kd) as ttap:
                teacher_eps = self.teacher(x_t, t, **cond).sample  # not reached when stopped early
            with self.connected(x_t, t, eps, cond), FeatureTap(self.student, self.taps) as stap:
                pred = self.student(x_t, t, **cond).sample
            if self.use_lrm:
                if not self.lrm.is_fitted:
                    # Once, on the first training batch; then fixed (and saved with the checkpoint).
                    self.lrm.fit_(ttap.take(self.blocks), all_reduce_sum=self._all_reduce_sum)
                losses["lrm"] = self.lrm(ttap.take(self.blocks), stap.take(self.blocks))
            if self.use_spd:
                losses["spd"] = spd_loss(ttap.take(self.spd_blocks), stap.take(self.spd_blocks), self.loss_cfg.spd_grid)
        else:
            if kd:
                with torch.no_grad():
                    teacher_eps = self.teacher(x_t, t, **cond).sample
            with self.connected(x_t, t, eps, cond):
                pred = self.student(x_t, t, **cond).sample
        losses["simple"] = F.mse_loss(pred.float(), eps.float())
        total = losses["simple"]
        if kd:
            # The teacher's eps is its estimate of E[eps | x_t], the very minimiser of L_simple, without the
            # noise of one eps draw: a target of far lower variance (docs/training.md, "Output distillation").
            losses["kd"] = F.mse_loss(pred.float(), teacher_eps.float())
            total = (1.0 - kd) * losses["simple"] + kd * losses["kd"]
        if "lrm" in losses:
            total = total + self.loss_cfg.lrm_weight * losses["lrm"]
        if "spd" in losses:
            total = total + self.loss_cfg.spd_weight * losses["spd"]
        if self.ebb_tau > 0:
            lmbs = two_basis_lmbs(self.student)
            if lmbs:
                losses["ebb"] = torch.stack([m.ebb_penalty() for m in lmbs]).mean()
                total = total + self.ebb_tau * losses["ebb"]
        losses["loss"] = total
        return losses

    def training_step(self, batch, batch_idx):
        x_t, t, eps = self.batch_inputs(batch, self.global_step)
        losses = self.compute_losses(x_t, t, eps, self.condition(batch))
        for k, v in losses.items():
            self.log(f"train/{k}", v.detach(), on_step=True, on_epoch=False)
        if reads_due(self):
            self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
            self.bar_values = {f"train/{k}": float(losses[k].detach()) for k in ("loss", "lrm") if k in losses}
        return losses["loss"]

    def validation_step(self, batch, batch_idx):
        x0 = batch[0] if isinstance(batch, (tuple, list)) else batch
        # Fixed (x_0, t, noise) per validation batch: the curve compares like with like across
        # validations, and runs with the same seed and data are paired (docs/training.md).
        x_t, t, eps = self.noisy_inputs(x0, self.step_generator(batch_idx, salt=7919))
        cond = self.condition(batch)
        with torch.no_grad(), self.connected(x_t, t, eps, cond):
            pred = self.student(x_t, t, **cond).sample.float()
            loss = F.mse_loss(pred, eps.float())
            self.log("val/simple", loss, prog_bar=True, sync_dist=True)
            if self.teacher is not None:
                # Fidelity: how far the student's noise prediction is from its teacher's on the same input.
                self.log("val/mse_teacher", F.mse_loss(pred, self.teacher(x_t, t, **cond).sample.float()),
                         sync_dist=True)
        return loss

    # ---- optimisation ----------------------------------------------------------------------
    def configure_optimizers(self):
        cfg = self.optim_cfg
        if cfg.total_steps is None:
            cfg = dataclasses.replace(cfg, total_steps=self.trainer.max_steps)
        shortcut_lr = None if cfg.shortcut_lr_scale == 1.0 else cfg.lr * cfg.shortcut_lr_scale
        opt = torch.optim.AdamW(parameter_groups(self.student, cfg.weight_decay, shortcut_lr), lr=cfg.lr,
                                betas=cfg.betas, eps=cfg.eps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, cfg))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def on_fit_start(self) -> None:
        if self.teacher is not None:
            self.teacher.to(self.device)


__all__ = ["DiffusionQAT", "OptimConfig", "LossConfig", "lr_factor", "parameter_groups", "two_basis_lmbs"]
