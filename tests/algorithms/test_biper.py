import pytest
import torch
from torch import nn

import binarydm
from binarydm.algorithms import preset
from binarydm.algorithms.biper import BiPerWeight, biper_penalty
from binarydm.algorithms.recu import ReCUAct
from binarydm.algorithms.schedule import biper_stage, set_progress_

from .helpers import (
    TinyResNet, check_conv_arguments, check_round_trip, leaf, resnet_input, surrogate_ref, torch_sign_nonzero, upstream,
    vjp,
)

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


def bibench_biper_conv(w, a, alpha, omega, training):
    """The authors' BinarizeConv2d (stage 2), bias-free, from its lines."""
    a0 = a / torch.sqrt(a.var([1, 2, 3], keepdim=True) + 1e-5) if training else a
    wave = torch.sin(omega * w)
    bw = surrogate_ref(wave, torch_sign_nonzero(wave.detach()), torch.ones_like(wave))  # BinaryQuantize
    ba = surrogate_ref(a0, torch_sign_nonzero(a0.detach()), (2 - torch.abs(2 * a0)).clamp(min=0))
    return nn.functional.conv2d(ba, bw, None, 1, 1) * alpha


@pytest.mark.parametrize("training", [True, False])
def test_layer_forward_and_gradients_match_the_authors_code(training):
    """Stage 2, omega from the options; in eval the input is not normalised (the authors' code)."""
    model = binarydm.binarize_(nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, bias=False)),
                               preset("biper", omega=10, alpha_init="uniform"))
    layer = model[0].train(training)
    assert layer.weight_quantizer.omega == 10.0
    a = leaf(2, 4, 5, 5, seed=3, scale=0.3)
    alpha = layer.weight_quantizer.alpha
    refs = [layer.weight.detach().clone().requires_grad_(True), a.detach().clone().requires_grad_(True),
            alpha.detach().view(1, -1, 1, 1).clone().requires_grad_(True)]
    y, ref = layer(a), bibench_biper_conv(*refs, 10.0, training)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    g = upstream(y.shape)
    for got, want in zip(vjp(y, (layer.weight, a, alpha), g), vjp(ref, refs, g)):
        torch.testing.assert_close(got.flatten(), want.flatten(), rtol=1e-4, atol=1e-5)
