"""The schedule protocol and the Lightning callback that drives it, in iteration-based training."""

import math

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

import binarydm
from binarydm.algorithms import preset
from binarydm.algorithms.fda import FDAWeight
from binarydm.algorithms.recu import ReCUWeight
from binarydm.algorithms.schedule import Scheduled, fda_alpha, progress, recu_tau, scheduled_modules
from binarydm.training.schedules import QuantScheduleCallback


def test_progress_is_clipped_and_checks_its_total():
    assert progress(5, 10) == 0.5 and progress(-3, 10) == 0.0 and progress(30, 10) == 1.0
    with pytest.raises(ValueError, match="positive"):
        progress(1, 0)


def test_scheduled_modules_are_found_by_protocol():
    model = binarydm.binarize_(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)), preset("recu"))
    found = dict(scheduled_modules(model))
    assert set(found) == {"0.weight_quantizer", "1.weight_quantizer"}
    assert all(isinstance(m, Scheduled) for m in found.values())


class _Recorder(pl.LightningModule):
    """A tiny LightningModule that records the scheduled values seen by each training step."""

    def __init__(self, config):
        super().__init__()
        self.net = binarydm.binarize_(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(16, 2)), config)
        binarydm.calibrate_(self.net, torch.randn(2, 3, 4, 4))
        self.seen = []

    def training_step(self, batch, batch_idx):
        q = self.net[0].weight_quantizer
        self.seen.append((self.global_step, q.tau.item() if isinstance(q, ReCUWeight) else q.alpha_t.item()))
        return self.net(batch[0]).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def _fit(module, **trainer_kwargs):
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 3, 4, 4)), batch_size=2)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[QuantScheduleCallback(**trainer_kwargs.pop("cb", {}))],
                         **trainer_kwargs)
    trainer.fit(module, data)
    return trainer


def test_callback_drives_recu_tau_from_global_step_in_iteration_based_training():
    module = _Recorder(preset("recu"))
    _fit(module, max_steps=10)  # 4 batches per epoch: the schedule crosses epoch boundaries
    assert [s for s, _ in module.seen] == list(range(10))
    for step, tau in module.seen:
        assert math.isclose(tau, recu_tau(step, 10), rel_tol=1e-6)


def test_callback_step_unit_in_epoch_bounded_training_counts_all_steps():
    module = _Recorder(preset("recu"))
    _fit(module, max_epochs=2)  # max_steps = -1: the total is 2 epochs x 4 batches = 8 steps
    assert [s for s, _ in module.seen] == list(range(8))
    assert all(math.isclose(tau, recu_tau(step, 8), rel_tol=1e-6) for step, tau in module.seen)


def test_callback_epoch_unit_drives_fda_alpha_per_epoch():
    module = _Recorder(preset("fda"))
    trainer = _fit(module, max_epochs=3, cb={"unit": "epoch"})
    assert isinstance(module.net[0].weight_quantizer, FDAWeight)
    per_epoch = [alpha for _, alpha in module.seen]
    expected = [fda_alpha(e, 3) for e in range(3) for _ in range(4)]
    assert per_epoch == pytest.approx(expected, rel=1e-6)
    assert trainer.callbacks[0].position == (2, 3)


def test_callback_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unit"):
        QuantScheduleCallback(unit="batch")
    with pytest.raises(ValueError, match="positive"):
        QuantScheduleCallback(total=0)
