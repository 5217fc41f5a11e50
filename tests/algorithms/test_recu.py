import math

import torch

from binarydm.algorithms import preset
from binarydm.algorithms.recu import ReCUAct, ReCUWeight, clamp_threshold, standardize
from binarydm.algorithms.schedule import recu_tau

from .helpers import TinyResNet, check_conv_arguments, check_round_trip, leaf, resnet_input, upstream, vjp

CONFIG = preset("recu")


def _weight_quantizer(w, tau=0.9, seed=0):
    q = ReCUWeight(w.shape[0], w.dim(), tau=tau)
    torch.manual_seed(seed)
    return q.initialize_(w)


def test_alpha_init_uniform_and_forward_values():
    w = leaf(8, 4, 3, 3)
    q = _weight_quantizer(w)
    assert ((q.alpha >= 0) & (q.alpha < 1)).all() and q.alpha.std() > 0
    y = q(w).detach()
    for c in range(8):
        assert set(y[c].abs().unique().tolist()) == {q.alpha[c].item()}
    # sign(clamp(w1, -Q, Q)) = sign(w1): the clamp changes only the gradient.
    assert torch.equal(y > 0, standardize(w.detach()) >= 0)


def test_standardisation_and_threshold_formulas():
    w = leaf(3, 5, 2, 2)
    w1 = standardize(w.detach())
    flat = w.detach().flatten(1)
    ref = (flat - flat.mean(1, keepdim=True)) * 2 * math.sqrt(2) / flat.std(1, keepdim=True)
    torch.testing.assert_close(w1.flatten(1), ref, rtol=1e-6, atol=1e-6)
    q = clamp_threshold(w1, 0.9)
    torch.testing.assert_close(q.flatten(), -ref.abs().mean(1) * math.log(2 - 1.8), rtol=1e-6, atol=1e-6)


def test_weight_gradient_through_clamp_and_standardisation():
    w = leaf(4, 6, 3, 3)
    q = _weight_quantizer(w, tau=0.85)
    g = upstream(w.shape)
    dw, dalpha = vjp(q(w), (w, q.alpha), g)
    wd = w.detach().flatten(1)
    n = wd.shape[1]
    mean, std = wd.mean(1, keepdim=True), wd.std(1, keepdim=True)
    w1 = (wd - mean) * 2 * math.sqrt(2) / std
    qt = -w1.abs().mean(1, keepdim=True) * math.log(2 - 2 * 0.85)
    alpha = q.alpha.detach().flatten(1)
    # d/dw1: alpha * 1{|w1| <= Q} (identity STE on sign, clamp's own mask, Q detached)
    gw1 = g.flatten(1) * alpha * (w1.abs() <= qt)
    # back through w1 = c (w - mean) / std, std with Bessel's correction:
    c, centered = 2 * math.sqrt(2), wd - mean
    ref = c / std * (gw1 - gw1.mean(1, keepdim=True)) - c * (gw1 * centered).sum(1, keepdim=True) * centered / (
        (n - 1) * std**3)
    torch.testing.assert_close(dw.flatten(1), ref, rtol=1e-4, atol=1e-6)
    sign = torch.where(w1 >= 0, 1.0, -1.0)
    torch.testing.assert_close(dalpha.flatten(), (g.flatten(1) * sign).sum(1), rtol=1e-5, atol=1e-5)


def test_activation_forward_and_gradient():
    a = leaf(3, 4, 5, 5, scale=0.3)
    g = upstream(a.shape)
    y = ReCUAct()(a)
    assert torch.equal(y > 0, a.detach() >= 0) and set(y.unique().tolist()) == {-1.0, 1.0}
    (da,) = vjp(y, a, g)
    ad = a.detach().flatten(1)
    n = ad.shape[1]
    s = torch.sqrt(ad.var(1, keepdim=True) + 1e-5)
    an = ad / s
    gn = g.flatten(1) * (2 - 2 * an.abs()).clamp_min(0)
    mu = ad.mean(1, keepdim=True)
    ref = gn / s - (gn * ad).sum(1, keepdim=True) * (ad - mu) / ((n - 1) * s**3)
    torch.testing.assert_close(da.flatten(1), ref, rtol=1e-4, atol=1e-6)


def test_tau_schedule():
    assert recu_tau(0, 100) == 0.85
    assert math.isclose(recu_tau(100, 100), 0.99, rel_tol=1e-12)
    a = 0.14 / (math.e - 1)
    assert math.isclose(recu_tau(50, 100), a * math.exp(0.5) + 0.85 - a, rel_tol=1e-12)
    assert recu_tau(200, 100) == recu_tau(100, 100)  # clipped past the end
    q = ReCUWeight(2, 4)
    q.set_progress(30, 60)
    assert math.isclose(q.tau.item(), recu_tau(30, 60), rel_tol=1e-6)


def test_conv_arguments_honoured():
    check_conv_arguments(CONFIG)


def test_state_dict_round_trip_keeps_random_alpha_and_tau():
    from binarydm.algorithms.schedule import set_progress_

    def advance(model, *inputs):
        assert set_progress_(model, 40, 100) == 7  # every binarized conv and the fc

    fresh = check_round_trip(CONFIG, TinyResNet, (resnet_input(),), prepare=advance)
    taus = [q.tau for q in fresh.modules() if isinstance(q, ReCUWeight)]
    assert taus and all(t == torch.tensor(recu_tau(40, 100)) for t in taus)
