import math

import torch

from binarydm.algorithms import preset
from binarydm.algorithms.fda import FDAAct, FDAWeight, fourier_sign_grad
from binarydm.algorithms.schedule import fda_alpha, fda_terms, set_progress_

from .helpers import TinyResNet, check_conv_arguments, check_round_trip, leaf, resnet_input, upstream, vjp

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


def test_weight_forward_is_scaled_sign_when_alpha_is_zero_and_adds_noise_otherwise():
    w = leaf(6, 4, 3, 3)
    q = FDAWeight(6, 36)
    scale = w.detach().abs().mean(dim=(1, 2, 3), keepdim=True)
    q.set_progress(99, 100)  # alpha_t = 0
    torch.testing.assert_close(q(w).detach(), scale * torch.where(w.detach() >= 0, 1.0, -1.0), rtol=0, atol=0)
    q.set_progress(10, 100)
    alpha = fda_alpha(10, 100)
    with torch.no_grad():
        na = q.noise(w.flatten(1)).view_as(w) + 0.1 * torch.sin(w)
        expected = scale * (torch.where(w >= 0, 1.0, -1.0) + alpha * na)
    torch.testing.assert_close(q(w).detach(), expected, rtol=1e-6, atol=1e-7)
    assert q.noise[0].weight.shape == (1, 36)  # d = 36 -> max(1, 36 // 64) -> 36


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


def test_activation_gradient_and_noise_parameters_train():
    q = FDAAct()
    q.set_progress(0, 100)
    a = leaf(2, 3, 4, 4, scale=0.8)
    g = upstream(a.shape)
    y = q(a)
    grads = vjp(y, (a, *q.noise.parameters()), g)
    (da, *dnoise) = grads
    assert all(d.abs().sum() > 0 for d in dnoise)  # the noise module is trained (BiBench's is not)
    alpha = fda_alpha(0, 100)
    a2 = a.detach().clone().requires_grad_(True)
    (dna,) = vjp(q.noise_adaptation(a2), a2, g)
    torch.testing.assert_close(da, g * fourier_reference(a.detach(), 9) + alpha * dna, rtol=1e-5, atol=1e-6)
    q.set_progress(99, 100)
    assert set(q(a).unique().tolist()) == {-1.0, 1.0}


def test_noise_modules_are_neither_binarized_nor_counted_as_layers():
    import binarydm
    from torch import nn

    model = binarydm.binarize_(nn.Sequential(nn.Conv2d(3, 4, 3)), CONFIG)
    rows = binarydm.summary(model, torch.randn(1, 3, 5, 5)).rows
    assert [r.name for r in rows] == ["0"]


def test_conv_arguments_honoured():
    check_conv_arguments(CONFIG)


def test_state_dict_round_trip_keeps_schedule_state():
    fresh = check_round_trip(CONFIG, TinyResNet, (resnet_input(),), prepare=lambda m, *i: set_progress_(m, 30, 90))
    qs = [q for q in fresh.modules() if isinstance(q, (FDAWeight, FDAAct))]
    assert qs and all(q.n_terms == 12 and q._alpha == q.alpha_t.item() != 0 for q in qs)
