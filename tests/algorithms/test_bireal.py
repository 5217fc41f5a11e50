import torch

from binarydm.algorithms import preset
from binarydm.quant.registry import LayerSpec, act_factory, weight_factory

from .helpers import TinyResNet, check_conv_arguments, check_round_trip, leaf, resnet_input, upstream, vjp

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


def test_weight_gradient_is_clipped_ste():
    wq = weight_factory("bireal")(torch.nn.Conv2d(4, 6, 3), LayerSpec("conv", CONFIG))
    w = leaf(6, 4, 3, 3, scale=1.5)
    g = upstream(w.shape)
    (dw,) = vjp(wq(w), w, g)
    a = w.detach().abs().mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(dw, g * a * (w.detach().abs() <= 1), rtol=1e-6, atol=0)


def test_conv_arguments_honoured():
    check_conv_arguments(CONFIG)


def test_state_dict_round_trip():
    check_round_trip(CONFIG, TinyResNet, (resnet_input(),))
