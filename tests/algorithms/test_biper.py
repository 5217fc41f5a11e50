import pytest
import torch
from torch import nn

import binarydm
from binarydm.algorithms import preset
from binarydm.algorithms.biper import BiPerWeight, biper_penalty
from binarydm.algorithms.recu import ReCUAct
from binarydm.algorithms.schedule import biper_stage, set_progress_

from .helpers import TinyResNet, check_conv_arguments, check_round_trip, leaf, resnet_input, upstream, vjp

CONFIG = preset("biper")


def _quantizer(w, omega=20.0, stage=2):
    return BiPerWeight(w.shape[0], w.dim(), omega=omega, stage=stage).initialize_(w)


def test_alpha_init_and_square_wave_forward():
    w = leaf(5, 3, 3, 3, scale=0.3)  # |omega w| well beyond pi: the square wave differs from sign(w)
    q = _quantizer(w)
    alpha = w.detach().abs().mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(q.alpha.detach(), alpha, rtol=0, atol=0)
    y = q(w).detach()
    wave = torch.sin(20.0 * w.detach())
    torch.testing.assert_close(y, alpha * torch.where(wave >= 0, 1.0, -1.0), rtol=0, atol=0)
    assert not torch.equal(y > 0, w.detach() >= 0)


def test_stage_two_gradient_is_the_sine_derivative():
    w = leaf(4, 3, 3, 3, scale=0.2)
    q = _quantizer(w, omega=25.0)
    g = upstream(w.shape)
    dw, dalpha = vjp(q(w), (w, q.alpha), g)
    wd = w.detach()
    torch.testing.assert_close(dw, g * q.alpha.detach() * 25.0 * torch.cos(25.0 * wd), rtol=1e-5, atol=1e-7)
    sq = torch.where(torch.sin(25.0 * wd) >= 0, 1.0, -1.0)
    torch.testing.assert_close(dalpha, (g * sq).sum(dim=(1, 2, 3), keepdim=True), rtol=1e-5, atol=1e-6)


def test_stage_one_is_real_valued_sine():
    w = leaf(4, 3, 3, 3, scale=0.2)
    q = _quantizer(w, stage=1)
    torch.testing.assert_close(q(w).detach(), q.alpha.detach() * torch.sin(20.0 * w.detach()), rtol=0, atol=0)


def test_stage_schedule_and_flag():
    assert [biper_stage(s, 100) for s in (0, 49, 50, 99, 100)] == [1, 1, 2, 2, 2]
    assert biper_stage(10, 100, stage1_fraction=0.1) == 2
    with pytest.raises(ValueError, match="stage1_fraction"):
        biper_stage(0, 10, stage1_fraction=1.5)
    q = BiPerWeight(3, 4)
    q.set_progress(10, 100)
    assert q.stage == 1 and q.get_extra_state().tolist()[-1] == 1
    q.set_progress(80, 100)
    assert q.stage == 2


def test_penalty_formula():
    model = binarydm.binarize_(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 2, 1)), CONFIG)
    ws = [model[0].weight, model[1].weight]
    ref = 0.5 * sum(torch.sin(20.0 * w).pow(2).mean() for w in ws)
    torch.testing.assert_close(biper_penalty(model, 0.5), ref)
    with pytest.raises(ValueError, match="weight='biper'"):
        biper_penalty(nn.Linear(2, 2), 0.5)


def test_activations_are_recu():
    model = binarydm.binarize_(nn.Sequential(nn.Conv2d(3, 4, 3)), CONFIG)
    assert isinstance(model[0].act_quantizer, ReCUAct)


def test_conv_arguments_honoured():
    check_conv_arguments(CONFIG)


def test_state_dict_round_trip_keeps_the_stage():
    fresh = check_round_trip(CONFIG, TinyResNet, (resnet_input(),), prepare=lambda m, *i: set_progress_(m, 1, 10))
    assert {q.stage for q in fresh.modules() if isinstance(q, BiPerWeight)} == {1}
