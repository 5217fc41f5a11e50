import math

import pytest
import torch
from torch.nn import functional as F

import binarydm
from binarydm.algorithms import preset
from binarydm.algorithms.fda import FDAAct, FDAWeight, fourier_sign_grad
from binarydm.algorithms.schedule import fda_alpha, fda_terms, set_progress_

from .helpers import (
    TinyResNet, check_conv_arguments, check_round_trip, leaf, resnet_input, surrogate_ref, torch_sign_nonzero, upstream,
    vjp,
)

CONFIG = preset("fda")


def fourier_reference(x, n, omega=0.1):
    """(4 omega / pi) sum_{i=0..n} cos((2i+1) omega x) on |x| <= 1, else 0 -- term by term."""
    out = torch.zeros_like(x)
    for i in range(n + 1):
        out += torch.cos((2 * i + 1) * omega * x)
    return torch.where(x.abs() <= 1, 4 * omega / math.pi * out, torch.zeros_like(x))


def test_schedules_at_known_steps():
    assert math.isclose(fda_alpha(0, 100), 0.05 * (1 + math.cos(math.pi / 100)))
    assert math.isclose(fda_alpha(49, 100), 0.05)  # cos(pi / 2) = 0
    assert fda_alpha(99, 100) == 0.0  # binary at the end
    assert [fda_terms(s, 90) for s in (0, 9, 10, 45, 89, 90)] == [9, 9, 10, 13, 17, 18]


def test_weight_forward_is_scaled_sign_when_alpha_is_zero():
    w = leaf(6, 4, 3, 3)
    q = FDAWeight(6, 36)
    q.set_progress(99, 100)  # alpha_t = 0
    scale = w.detach().abs().mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(q(w).detach(), scale * torch.where(w.detach() >= 0, 1.0, -1.0), rtol=0, atol=0)
    # BiBench's NoiseAdaption(d=36, k=64): hidden width 36 // 64 = 0, so NA is 0.1 sin(W) alone.
    assert q.noise[0].weight.shape == (0, 36) and q.noise[0].bias is None


def _bibench_sign(x, n, omega=0.1):
    """FDA_BinaryQuantize: torch.sign forward, (4 w / pi) sum cos((2i+1) w x) * g, zeroed where |x| > 1."""
    return surrogate_ref(x, torch_sign_nonzero(x.detach()), fourier_reference(x.detach(), n, omega))


def bibench_fda_conv(w, a, fc1w, fc2w, fc1a, fc2a, alpha, n):
    """BiBench's FDAConv2d.forward, with its NoiseAdaption (weights) and NoiseAdaption_a (inputs)."""
    bw, ba = _bibench_sign(w, n), _bibench_sign(a, n)
    ew = F.linear(F.relu(F.linear(w.view(w.shape[0], -1), fc1w)), fc2w).reshape(w.shape) + 0.1 * torch.sin(w)
    x = a.view(a.shape[0], a.shape[1], -1).permute(0, 2, 1)
    ea = F.linear(F.relu(F.linear(x, fc1a)), fc2a).permute(0, 2, 1).reshape(a.shape) + 0.1 * torch.sin(a)
    bw, ba = bw + alpha * ew, ba + alpha * ea
    scale = w.abs().mean(dim=(1, 2, 3), keepdim=True).detach()
    return F.conv2d(ba, bw * scale, None, 1, 1)


def test_layer_forward_and_gradients_match_bibench():
    torch.manual_seed(0)
    model = binarydm.binarize_(torch.nn.Sequential(torch.nn.Conv2d(64, 4, 3, padding=1, bias=False)), CONFIG)
    a = leaf(2, 64, 4, 4, seed=2, scale=0.8)
    binarydm.calibrate_(model, a.detach())
    set_progress_(model, 10, 100)
    layer = model[0]
    wq, aq = layer.weight_quantizer, layer.act_quantizer
    # BiBench's shapes: d = 64 * 9 -> 9 -> d for the weights; C = 64 -> 1 -> 64 across the input channels.
    assert wq.noise[0].weight.shape == (9, 576) and wq.noise[2].weight.shape == (576, 9)
    assert aq.fc1.shape == (1, 64) and aq.fc2.shape == (64, 1)
    with torch.no_grad():
        aq.fc1.normal_()  # a ReLU unit that is on somewhere
    y = layer(a)
    params = (layer.weight, a, wq.noise[0].weight, wq.noise[2].weight, aq.fc1, aq.fc2)
    refs = [p.detach().clone().requires_grad_(True) for p in params]
    ref = bibench_fda_conv(*refs, fda_alpha(10, 100), fda_terms(10, 100))
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    g = upstream(y.shape)
    for got, want in zip(vjp(y, params, g), vjp(ref, refs, g)):
        assert want.abs().sum() > 0
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_weight_gradient_is_the_fourier_series():
    w = leaf(6, 4, 3, 3, scale=1.2)
    q = FDAWeight(6, 36)
    q.set_progress(99, 100)  # alpha_t = 0, n = 17: only the sign term carries gradient
    assert q.n_terms == 17
    g = upstream(w.shape)
    (dw,) = vjp(q(w), w, g)
    scale = w.detach().abs().mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(dw, g * scale * fourier_reference(w.detach(), 17), rtol=1e-5, atol=1e-7)


def test_surrogate_function_matches_reference():
    x = torch.linspace(-1.5, 1.5, 301)
    torch.testing.assert_close(fourier_sign_grad(x, 9), fourier_reference(x, 9), rtol=1e-6, atol=1e-7)


def test_uncalibrated_activation_noise_refuses_to_run_and_recalibration_keeps_it():
    q = FDAAct()
    with pytest.raises(RuntimeError, match="never initialised"):
        q(torch.randn(1, 8, 2, 2))
    q.initialize_(torch.randn(1, 128, 2, 2))
    assert q.fc1.shape == (2, 128)
    before = q.fc1.detach().clone()
    q.initialize_(torch.randn(3, 128, 4, 4))  # progressive initialisation recalibrates: the MLP stays
    assert torch.equal(q.fc1, before)


def test_options_reach_the_quantizers():
    config = preset("fda", terms=3, omega=0.2, reduction=4, alpha0=0.1)
    model = binarydm.binarize_(torch.nn.Sequential(torch.nn.Conv2d(8, 4, 3)), config)
    binarydm.calibrate_(model, torch.randn(1, 8, 5, 5))
    wq, aq = model[0].weight_quantizer, model[0].act_quantizer
    assert wq.n_terms == aq.n_terms == 3 and wq.noise[0].weight.shape == (18, 72) and aq.fc1.shape == (2, 8)
    set_progress_(model, 0, 10)
    assert aq.n_terms == 3 and math.isclose(aq._alpha, fda_alpha(0, 10, 0.1))
    x = torch.linspace(-0.9, 0.9, 7).requires_grad_(True)
    (dx,) = vjp(aq.fourier_sign(x), x, torch.ones(7))
    torch.testing.assert_close(dx, fourier_reference(x.detach(), 3, 0.2), rtol=1e-6, atol=1e-7)


def test_noise_modules_are_neither_binarized_nor_counted_as_layers():
    import binarydm
    from torch import nn

    model = binarydm.binarize_(nn.Sequential(nn.Conv2d(3, 4, 3)), CONFIG)
    binarydm.calibrate_(model, torch.randn(1, 3, 5, 5))
    rows = binarydm.summary(model, torch.randn(1, 3, 5, 5)).rows
    assert [r.name for r in rows] == ["0"]


def test_conv_arguments_honoured():
    check_conv_arguments(CONFIG)


def test_state_dict_round_trip_keeps_schedule_state():
    fresh = check_round_trip(CONFIG, TinyResNet, (resnet_input(),), prepare=lambda m, *i: set_progress_(m, 30, 90))
    qs = [q for q in fresh.modules() if isinstance(q, (FDAWeight, FDAAct))]
    assert qs and all(q.n_terms == 12 and q._alpha == q.alpha_t.item() != 0 for q in qs)
