import torch

from binarydm.algorithms import preset
from binarydm.quant.registry import LayerSpec, act_factory, weight_factory

from .helpers import (
    TinyResNet, check_conv_arguments, check_round_trip, clamp_ste_ref, leaf, resnet_input, torch_sign_nonzero, upstream,
    vjp,
)

CONFIG = preset("bireal")


def approx_sign_reference(x):
    """Bi-Real's piecewise derivative, written out piece by piece."""
    out = torch.zeros_like(x)
    out = torch.where((x >= -1) & (x < 0), 2 + 2 * x, out)
    return torch.where((x >= 0) & (x < 1), 2 - 2 * x, out)


def test_forward_values():
    spec = LayerSpec("conv", CONFIG)
    aq = act_factory("bireal")(spec)
    x = leaf(2, 4, 5, 5)
    assert set(aq(x).unique().tolist()) == {-1.0, 1.0}
    w = leaf(6, 4, 3, 3, seed=1)
    wq = weight_factory("bireal")(torch.nn.Conv2d(4, 6, 3), spec)
    a = w.detach().abs().mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(wq(w).abs(), a.expand_as(w), rtol=0, atol=0)


def test_activation_gradient_is_approx_sign():
    aq = act_factory("bireal")(LayerSpec("conv", CONFIG))
    x = leaf(4, 4, 6, 6, scale=0.8)
    g = upstream(x.shape)
    (dx,) = vjp(aq(x), x, g)
    torch.testing.assert_close(dx, g * approx_sign_reference(x.detach()), rtol=1e-6, atol=1e-7)


def bibench_activation(x):
    """BiBench's BiRealConv2d input: sign(x) forward through the piecewise polynomial out3."""
    m1, m2, m3 = (x < -1).float(), (x < 0).float(), (x < 1).float()
    out1 = -1 * m1 + (x * x + 2 * x) * (1 - m1)
    out2 = out1 * m2 + (-x * x + 2 * x) * (1 - m2)
    out3 = out2 * m3 + 1 * (1 - m3)
    return torch_sign_nonzero(x.detach()) - out3.detach() + out3


def test_forward_and_gradients_match_bibench():
    spec = LayerSpec("conv", CONFIG)
    wq, aq = weight_factory("bireal")(torch.nn.Conv2d(4, 6, 3), spec), act_factory("bireal")(spec)
    w, x = leaf(6, 4, 3, 3, scale=1.5), leaf(2, 4, 5, 5, seed=1, scale=1.5)
    gw, gx = upstream(w.shape), upstream(x.shape, seed=2)
    a = w.detach().abs().mean(dim=(1, 2, 3), keepdim=True)
    ref_w = clamp_ste_ref(w, a * torch_sign_nonzero(w.detach()))  # no a in the gradient
    ref_x = bibench_activation(x)
    qw, qx = wq(w), aq(x)
    torch.testing.assert_close(qw, ref_w, rtol=1e-6, atol=1e-6)  # ref: v - c + c rounds
    torch.testing.assert_close(qx, ref_x, rtol=1e-6, atol=1e-6)  # ref: v - c + c rounds
    torch.testing.assert_close(vjp(qw, w, gw)[0], vjp(ref_w, w, gw)[0], rtol=0, atol=0)
    torch.testing.assert_close(vjp(qx, x, gx)[0], vjp(ref_x, x, gx)[0], rtol=1e-6, atol=1e-6)


def test_conv_arguments_honoured():
    check_conv_arguments(CONFIG)


def test_state_dict_round_trip():
    check_round_trip(CONFIG, TinyResNet, (resnet_input(),))
