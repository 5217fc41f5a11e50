import torch

from binarydm.algorithms import preset
from binarydm.quant.registry import LayerSpec, act_factory, weight_factory

from .helpers import (
    TinyResNet, check_conv_arguments, check_round_trip, clamp_ste_ref, leaf, resnet_input, torch_sign_nonzero, upstream,
    vjp,
)

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


def test_forward_and_gradients_match_bibench():
    """BiBench's DoReFaConv2d: sign(x) and E|W| sign(W), both through clamp's straight-through form."""
    wq, aq = _quantizers()
    w, x = leaf(6, 4, 3, 3, scale=1.5), leaf(2, 4, 5, 5, seed=1, scale=1.5)
    gw, gx = upstream(w.shape), upstream(x.shape, seed=2)
    e = w.detach().abs().mean(dim=(1, 2, 3), keepdim=True)
    ref_w = clamp_ste_ref(w, e * torch_sign_nonzero(w.detach()))
    ref_x = clamp_ste_ref(x, torch_sign_nonzero(x.detach()))
    qw, qx = wq(w), aq(x)
    torch.testing.assert_close(qw, ref_w, rtol=1e-6, atol=1e-6)  # ref: v - c + c rounds
    torch.testing.assert_close(qx, ref_x, rtol=1e-6, atol=1e-6)  # ref: v - c + c rounds
    torch.testing.assert_close(vjp(qw, w, gw)[0], vjp(ref_w, w, gw)[0], rtol=0, atol=0)
    torch.testing.assert_close(vjp(qx, x, gx)[0], vjp(ref_x, x, gx)[0], rtol=0, atol=0)


def test_conv_arguments_honoured():
    check_conv_arguments(CONFIG)


def test_state_dict_round_trip():
    check_round_trip(CONFIG, TinyResNet, (resnet_input(),))
