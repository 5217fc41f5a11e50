"""Training schedules as Lightning callbacks: progressive initialisation, EBB's transition, sample grids, EMA.

Every schedule is driven by ``trainer.global_step`` only (no rank-0-only branches, no module-name
parsing at run time), so it does the same thing on every DDP rank, and its small state is saved in
the checkpoint through ``state_dict`` so a resumed run continues where it stopped.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Optional

import lightning as L
import torch
from torch import nn

from ..quant.attention import QuantAttnProcessor
from ..quant.convert import (activation_quantizers, calibrate_, calibrate_quantizers_, progressive_groups, quant_layers,
                             weight_quantizers)
from ..quant.layers import QUANT_LAYERS
from ..sampling import sample_images, save_grid
from .config import ProgressiveSchedule
from .module import two_basis_lmbs


def _broadcast_from_rank0(tensors) -> None:
    """Make every rank hold rank 0's values (a no-op outside torch.distributed)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        for t in tensors:
            torch.distributed.broadcast(t.data, src=0)


def all_quantizers_off_(model: nn.Module) -> None:
    """Full precision everywhere: the state progressive initialisation starts from."""
    for m in model.modules():
        if isinstance(m, QUANT_LAYERS):
            for q in (m.weight_quantizer, m.act_quantizer):
                if q is not None:
                    q.enabled = False
        elif isinstance(m, QuantAttnProcessor):
            for q in m.quantizers():
                q.enabled = False


@torch.no_grad()
def calibrate_once(pl_module, batch) -> None:
    """Initialise the activation steps still uninitialised from this batch (x_t, t of the current step).

    Each rank sees its own shard of the batch, so rank 0's steps are broadcast to every rank. After a
    load the steps are initialised already and nothing happens.
    """
    student = pl_module.student
    if all(q.initialized for q in activation_quantizers(student)):
        return
    x_t, t, _ = pl_module.batch_inputs(batch, pl_module.global_step)
    calibrate_(student, x_t, t, **pl_module.condition(batch))
    # calibrate_ may set weight quantizers' output scales too (BiDM's scale_init)
    fitted = [p for q in weight_quantizers(student) if hasattr(q, "fit_output_") for p in q.parameters()]
    _broadcast_from_rank0([p for q in activation_quantizers(student) for p in q.parameters()] + fitted)


# ---- progressive initialisation -------------------------------------------------------------
def reset_optimizer_state_(optimizers, params) -> int:
    """Forget the optimizer state of ``params`` (AdamW: exp_avg, exp_avg_sq, step); returns how many.

    Why: while a group is still full precision its latent-weight gradients are ~10x larger than once
    it is binarized (the STE gradient carries the scale s1), and AdamW's second moment (beta2 = 0.999)
    would remember them for ~1,000 steps, shrinking that group's updates long after its switch. With
    the state gone, the next step initialises it afresh (torch's AdamW does so for a parameter whose
    state is empty), exactly as for a parameter seen for the first time.
    """
    ids = {id(p) for p in params}
    dropped = 0
    for opt in optimizers:
        for p in [p for p in opt.state if id(p) in ids]:
            del opt.state[p]
            dropped += 1
    return dropped


class ProgressiveInit(L.Callback):
    """Switch quantizer groups on from the middle of the UNet outwards (BinaryDM Sec. 4.1).

    Before the first switch, all activation steps are calibrated once (``binarydm.calibrate_``) on
    the first training batch with every quantizer off, i.e. from full-precision statistics, and
    rank 0's steps are broadcast. At each switch, every layer of the group gets its weight scales
    initialised from its current weight, and its weight and input quantizers are enabled; with
    ``recalibrate`` its input steps are re-initialised on the current batch (its weights binary,
    the inner groups binary), with ``reset_optimizer`` its optimizer state is dropped. The
    counter of events done is the callback's state; the on/off flags and initialised scales are
    in the model's state dict (the quantizers' extra state), the optimizer state in Lightning's.
    Every rank does the same at the same step, so DDP replicas stay identical.
    """

    def __init__(self, schedule: ProgressiveSchedule = ProgressiveSchedule()):
        self.schedule = schedule
        self.events_done = 0
        self.history: list[tuple[int, str]] = []  # (step, group name) of each switch done

    def groups(self, student: nn.Module) -> list[tuple[str, list[str]]]:
        return progressive_groups(student)

    def num_events(self, student: nn.Module) -> int:
        has_attn = any(isinstance(m, QuantAttnProcessor) for m in student.modules())
        return len(self.groups(student)) + int(self.schedule.attention and has_attn)

    def last_event_step(self, student: nn.Module) -> int:
        return self.schedule.event_step(self.num_events(student) - 1)

    @torch.no_grad()
    def switch_group(self, student: nn.Module, name: str, prefixes: list[str]) -> list[nn.Module]:
        layers = [layer for _, layer in quant_layers(student, prefixes)]
        for layer in layers:
            wq, aq = layer.weight_quantizer, layer.act_quantizer
            if wq is not None:
                wq.initialize_(layer.weight)  # scales from the current weight, at switch time
                wq.enabled = True
            if aq is not None:
                aq.enabled = True
        return layers

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self.schedule.enabled:
            return
        student = pl_module.student
        step = trainer.global_step
        groups = self.groups(student)
        n_events = self.num_events(student)
        if self.events_done < n_events and self.schedule.event_step(self.events_done) <= step:
            calibrate_once(pl_module, batch)
        while self.events_done < n_events and self.schedule.event_step(self.events_done) <= step:
            k = self.events_done
            if k < len(groups):
                name, prefixes = groups[k]
                modules = self.switch_group(student, name, prefixes)
                act = [m.act_quantizer for m in modules if m.act_quantizer is not None]
            else:
                name = "attention"
                modules = [m for m in student.modules() if isinstance(m, QuantAttnProcessor)]
                act = [q for m in modules for q in m.quantizers()]
                for q in act:
                    q.enabled = True
            if self.schedule.recalibrate and act:
                recalibrate_(pl_module, batch, act)
            if self.schedule.reset_optimizer:
                params = [p for m in modules for p in m.parameters()]
                reset_optimizer_state_(trainer.optimizers, params)
            self.history.append((step, name))
            self.events_done += 1
            pl_module.log("progressive/events_done", float(self.events_done), on_step=True, on_epoch=False)

    def state_dict(self) -> dict:
        return {"events_done": self.events_done, "history": [list(h) for h in self.history]}

    def load_state_dict(self, state_dict: dict) -> None:
        self.events_done = int(state_dict["events_done"])
        self.history = [(int(s), str(n)) for s, n in state_dict.get("history", [])]


@torch.no_grad()
def recalibrate_(pl_module, batch, act_quantizers) -> None:
    """Re-initialise ``act_quantizers`` from the student's forward on this step's (x_t, t).

    The steps calibrated at step 0 saw full-precision inputs; once the inner groups are binary the
    inputs of a switched group have other statistics. Rank 0's steps are broadcast.
    """
    x_t, t, _ = pl_module.batch_inputs(batch, pl_module.global_step)
    calibrate_quantizers_(pl_module.student, act_quantizers, x_t, t, **pl_module.condition(batch))
    _broadcast_from_rank0([p for q in act_quantizers for p in q.parameters()])


class Calibrate(L.Callback):
    """Without progressive initialisation: calibrate the activation steps once, on the first batch."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        calibrate_once(pl_module, batch)


# ---- EBB ------------------------------------------------------------------------------------
class EBBTransition(L.Callback):
    """EBB stage 2: at ``transition_step`` every 2-basis LMB drops s2 and becomes s1 * sign(w).

    The number of bases is saved in each LMB's extra state, so a run resumed after the transition
    stays single-basis; the callback only records that it has fired.
    """

    def __init__(self, transition_step: int):
        self.transition_step = transition_step
        self.done = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self.done and trainer.global_step >= self.transition_step:
            for lmb in two_basis_lmbs(pl_module.student):
                lmb.drop_second_basis_()
            self.done = True

    def state_dict(self) -> dict:
        return {"done": self.done}

    def load_state_dict(self, state_dict: dict) -> None:
        self.done = bool(state_dict["done"])


# ---- EMA ------------------------------------------------------------------------------------
class EMA(L.Callback):
    """Exponential moving average of the student's floating-point parameters and buffers.

    shadow <- d_n * shadow + (1 - d_n) * param after the n-th averaged step, with the warm-up
    d_n = min(decay, (1 + n) / (10 + n)) (as in TensorFlow's and diffusers' EMA). Without it a
    fixed 0.999 keeps 0.999^n of the random initial weights: 22 % after 1,500 steps, which is
    what the first shipped teacher suffered from. Until ``start_step`` (and until progressive
    initialisation is over, when its scales are still being set) the shadow simply copies the
    parameters. Saved in the checkpoint; used for sample grids and the exported student.
    """

    def __init__(self, decay: float = 0.999, start_step: int = 0):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema.decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.start_step = start_step
        self.shadow: dict[str, torch.Tensor] = {}
        self.num_updates = 0

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    def _tracked(self, student: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v for k, v in student.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        current = self._tracked(pl_module.student)
        if not self.shadow or trainer.global_step <= self.start_step:
            self.shadow = {k: v.detach().clone() for k, v in current.items()}
            self.num_updates = 0
            return
        decay = self.current_decay()
        self.num_updates += 1
        for k, v in current.items():
            s = self.shadow[k]
            if s.device != v.device:
                s = self.shadow[k] = s.to(v.device)
            s.lerp_(v, 1.0 - decay)

    @contextlib.contextmanager
    def applied(self, student: nn.Module) -> Iterator[None]:
        """Inside the block ``student`` holds the averaged weights."""
        if not self.shadow:
            yield
            return
        backup = {k: v.detach().clone() for k, v in self._tracked(student).items()}
        student.load_state_dict(self.shadow, strict=False)
        try:
            yield
        finally:
            student.load_state_dict(backup, strict=False)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates,
                "shadow": {k: v.cpu() for k, v in self.shadow.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        self.shadow = dict(state_dict["shadow"])
        # Checkpoints from before the warm-up existed: treat the average as fully warmed up.
        self.num_updates = int(state_dict.get("num_updates", 10**9))


# ---- samples --------------------------------------------------------------------------------
class SampleGrid(L.Callback):
    """A PNG grid of DDIM samples of the student after each validation (rank 0 only: it changes no state)."""

    def __init__(self, out_dir, num_images: int = 16, num_inference_steps: int = 50, seed: int = 0,
                 components=None, prompts=None, guidance_scale: float = 1.0):
        """``components``: a latent pipeline's frozen parts (samples are decoded; a text-conditioned UNet is
        prompted with ``prompts``, cycled, or the validation captions, at ``guidance_scale``)."""
        self.out_dir = Path(out_dir)
        self.num_images = num_images
        self.num_inference_steps = num_inference_steps
        self.seed = seed
        self.components = components
        self.prompts = list(prompts) if prompts else None
        self.guidance_scale = guidance_scale
        self.written: list[Path] = []

    def resolve_prompts(self, datamodule) -> Optional[list[str]]:
        """The prompts of a text-conditioned UNet: the given ones, else the first validation captions."""
        if self.components is None or not self.components.text:
            return None
        if self.prompts:
            return self.prompts
        cache = datamodule.val_set.cache
        return [cache.caption(i) for i in range(min(max(self.num_images, 1), cache.count))]

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or self.num_images <= 0:
            return
        student = pl_module.student
        ema = next((c for c in trainer.callbacks if isinstance(c, EMA)), None)
        prompts = self.resolve_prompts(trainer.datamodule)
        was_training = student.training
        try:
            with ema.applied(student) if ema is not None else contextlib.nullcontext():
                # One batch of DDIM (eta = 0) seeded with ``seed``; a class-conditional UNet draws labels
                # 0, 1, 2, ... (mod its classes): one row per class in the grid.
                images = sample_images(student, self.num_images, self.num_inference_steps, "ddim",
                                       batch=self.num_images, seed=self.seed,
                                       scheduler_config=dict(pl_module.noise_scheduler.config), progress=False,
                                       components=self.components, prompts=prompts,
                                       guidance_scale=self.guidance_scale)
        finally:
            student.train(was_training)
        # Prompts cycled over the images: one column per prompt when they fill whole rows.
        columns = len(prompts) if prompts and self.num_images % len(prompts) == 0 else None
        path = save_grid(images, self.out_dir / f"step_{trainer.global_step:07d}.png", columns)
        self.written.append(path)


class StopAtStep(L.Callback):
    """Stop training after ``step`` optimiser steps (tests: simulate a run killed at a checkpoint)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


__all__ = ["ProgressiveSchedule", "ProgressiveInit", "Calibrate", "EBBTransition", "EMA", "SampleGrid",
           "StopAtStep", "all_quantizers_off_"]
