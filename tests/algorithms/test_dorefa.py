import torch

from binarydm.algorithms import preset
from binarydm.quant.registry import LayerSpec, act_factory, weight_factory

from .helpers import TinyResNet, check_conv_arguments, check_round_trip, leaf, resnet_input, upstream, vjp

CONFIG = preset("dorefa")


def _quantizers():
    conv = torch.nn.Conv2d(4, 6, 3)
    spec = LayerSpec("conv", CONFIG)
    return weight_factory("dorefa")(conv, spec), act_factory("dorefa")(spec)


def test_forward_values():
    wq, aq = _quantizers()
    w, x = leaf(6, 4, 3, 3), leaf(2, 4, 5, 5, seed=1)
    e = w.detach().abs().mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(wq(w), e * torch.where(w >= 0, 1.0, -1.0), rtol=0, atol=0)
    assert set(aq(x).unique().tolist()) == {-1.0, 1.0}
    assert aq(torch.zeros(1, 4, 1, 1)).eq(1).all()


def test_gradients_are_clipped_ste():
    wq, aq = _quantizers()
    w, x = leaf(6, 4, 3, 3, scale=1.5), leaf(2, 4, 5, 5, seed=1, scale=1.5)
    gw, gx = upstream(w.shape), upstream(x.shape, seed=2)
    (dw,) = vjp(wq(w), w, gw)
    (dx,) = vjp(aq(x), x, gx)
    e = w.detach().abs().mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(dw, gw * e * (w.detach().abs() <= 1), rtol=1e-6, atol=0)
    torch.testing.assert_close(dx, gx * (x.detach().abs() <= 1), rtol=0, atol=0)


def test_conv_arguments_honoured():
    check_conv_arguments(CONFIG)


def test_state_dict_round_trip():
    check_round_trip(CONFIG, TinyResNet, (resnet_input(),))
