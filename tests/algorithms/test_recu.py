import math

import pytest
import torch
from torch.nn import functional as F

import binarydm
from binarydm.algorithms import preset
from binarydm.algorithms.recu import ReCUAct, ReCUWeight, clamp_threshold, standardize
from binarydm.algorithms.schedule import recu_tau

from .helpers import (
    TinyResNet, check_conv_arguments, check_round_trip, leaf, resnet_input, surrogate_ref, torch_sign_nonzero, upstream,
    vjp,
)

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


def bibench_recu(w, a, alpha, tau, training=True):
    """BiBench's ReCUConv2d (= the authors' BinarizeConv2d), bias-free, written from its lines."""
    w0 = w - w.mean([1, 2, 3], keepdim=True)
    w1 = w0 / (torch.sqrt(w0.var([1, 2, 3], keepdim=True) + 1e-5) / 2 / math.sqrt(2))
    ew = torch.mean(torch.abs(w1))
    q_tau = (-ew * torch.log(2 - 2 * torch.tensor(tau))).detach().cpu().item()
    w2 = torch.clamp(w1, -q_tau, q_tau)
    a0 = a / torch.sqrt(a.var([1, 2, 3], keepdim=True) + 1e-5) if training else a
    bw = surrogate_ref(w2, torch_sign_nonzero(w2.detach()), torch.ones_like(w2))  # BinaryQuantize: identity
    ba = surrogate_ref(a0, torch_sign_nonzero(a0.detach()), (2 - torch.abs(2 * a0)).clamp(min=0))
    return F.conv2d(ba, bw, None, 1, 1) * alpha


def _recu_conv(w, tau):
    layer = binarydm.binarize_(torch.nn.Sequential(torch.nn.Conv2d(w.shape[1], w.shape[0], 3, padding=1, bias=False)),
                               preset("recu", tau_start=tau))[0]
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.weight_quantizer.alpha.uniform_(0.2, 1.0)
    return layer


@pytest.mark.parametrize("training", [True, False])
def test_layer_forward_and_gradients_match_bibench(training):
    w, a = leaf(6, 4, 3, 3, scale=0.1), leaf(2, 4, 5, 5, seed=3, scale=0.3)
    layer = _recu_conv(w.detach(), 0.9)
    layer.train(training)
    alpha = layer.weight_quantizer.alpha
    ref = bibench_recu(w, a, alpha.detach().view(1, -1, 1, 1).clone().requires_grad_(True), 0.9, training)
    y = layer(a)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)  # alpha folded into W: other rounding
    g = upstream(y.shape)
    alpha_ref = alpha.detach().view(1, -1, 1, 1).clone().requires_grad_(True)
    ref = bibench_recu(w, a, alpha_ref, 0.9, training)
    dw, da, dalpha = vjp(y, (layer.weight, a, alpha), g)
    dw_ref, da_ref, dalpha_ref = vjp(ref, (w, a, alpha_ref), g)
    torch.testing.assert_close(dw, dw_ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(da, da_ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(dalpha.flatten(), dalpha_ref.flatten(), rtol=1e-5, atol=1e-5)
    w1 = standardize(w.detach())
    assert ((w1.abs() > clamp_threshold(w1, 0.9)).any()  # the clamp's mask is exercised, and the
            and (clamp_threshold(w1, 0.9).dim() == 0))    # threshold is one value for the whole tensor


def test_all_zero_filter_stays_finite_through_a_training_step():
    w = leaf(4, 3, 3, 3, scale=0.1).detach()
    w[1] = 0.0  # a dead filter: var = 0, the 1e-5 keeps w1 = 0 instead of 0/0
    layer = _recu_conv(w, 0.85)
    x = leaf(2, 3, 5, 5, seed=4)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(x).square().mean().backward()
    assert torch.isfinite(layer.weight.grad).all() and torch.isfinite(layer.weight_quantizer.alpha.grad).all()
    opt.step()
    assert torch.isfinite(layer.weight).all() and torch.isfinite(layer(x)).all()


def test_token_inputs_normalise_per_token_as_recu_linear():
    """BiBench's ReCULinear: a.view(-1, C), variance over C per token."""
    a = leaf(2, 5, 6, scale=0.5)
    g = upstream(a.shape)
    (da,) = vjp(ReCUAct()(a), a, g)
    a2 = a.detach().clone().requires_grad_(True)
    flat = a2.view(-1, 6)
    a0 = flat / torch.sqrt(flat.var([1], keepdim=True) + 1e-5)
    ref = surrogate_ref(a0, torch_sign_nonzero(a0.detach()), (2 - torch.abs(2 * a0)).clamp(min=0)).view(2, 5, 6)
    torch.testing.assert_close(da, vjp(ref, a2, g)[0], rtol=1e-5, atol=1e-6)


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
