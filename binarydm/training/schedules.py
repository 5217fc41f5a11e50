"""The one Lightning callback that drives every scheduled quantizer from the trainer's position.

Schedules of the binarization algorithms (ReCU's tau, FDA's alpha_t and n, BiPer's stages) are pure
functions of the fraction of training done (:mod:`binarydm.algorithms.schedule`); each scheduled
quantizer has ``set_progress(step, total_steps)``. This callback calls it on every module of the
LightningModule before each training batch:

* ``unit="step"`` (iteration-based training, the default): ``trainer.global_step`` of
  ``trainer.max_steps`` (or, when training is epoch-bounded, ``trainer.estimated_stepping_batches``);
* ``unit="epoch"``: ``trainer.current_epoch`` of ``trainer.max_epochs``, as the papers state them.

Resuming from a checkpoint restores ``global_step``, so the schedule continues where it stopped
(the scheduled values are also saved in the quantizers' state). EBB's one-off transition is
``binarydm.training.callbacks.EBBTransition``.
"""

from __future__ import annotations

from typing import Optional

import lightning.pytorch as pl

from binarydm.algorithms.schedule import set_progress_

UNITS = ("step", "epoch")


class QuantScheduleCallback(pl.Callback):
    """Calls ``set_progress(position, total)`` on every scheduled module before each training batch."""

    def __init__(self, unit: str = "step", total: Optional[int] = None) -> None:
        if unit not in UNITS:
            raise ValueError(f"QuantScheduleCallback: unit must be one of {list(UNITS)}, got {unit!r}")
        if total is not None and total <= 0:
            raise ValueError(f"QuantScheduleCallback: total must be positive, got {total}")
        self.unit, self.total = unit, total
        self.position: Optional[tuple[int, int]] = None  # the last (position, total) applied
        self.scheduled = 0  # how many modules were driven at the last call

    def _total(self, trainer: "pl.Trainer") -> int:
        if self.total is not None:
            return self.total
        if self.unit == "epoch":
            total = trainer.max_epochs
        else:
            # max_steps is -1 when training is bounded by epochs: count the optimiser steps instead.
            total = trainer.max_steps if trainer.max_steps > 0 else trainer.estimated_stepping_batches
        if total is None or total <= 0 or total == float("inf"):
            raise ValueError(
                "QuantScheduleCallback: the trainer has no finite length (max_steps / max_epochs); "
                "set one, or pass total= to the callback"
            )
        return int(total)

    def _apply(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        position = trainer.global_step if self.unit == "step" else trainer.current_epoch
        total = self._total(trainer)
        self.scheduled = set_progress_(pl_module, position, total)
        self.position = (position, total)

    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._apply(trainer, pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._apply(trainer, pl_module)
