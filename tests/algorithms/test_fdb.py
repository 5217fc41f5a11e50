import torch
from torch import nn

import binarydm
from binarydm.algorithms import preset
from binarydm.algorithms.fdb import FDBWeight, fdb_codes, heaviside
from binarydm.quant.lsq import LSQ

from .helpers import TinyResNet, check_conv_arguments, check_round_trip, leaf, resnet_input, upstream, vjp

CONFIG = preset("fdb")


def test_heaviside_of_zero_is_one():
    assert heaviside(torch.tensor([-1.0, 0.0, -0.0, 2.0])).tolist() == [0.0, 1.0, 1.0, 1.0]


def test_init_is_the_two_bit_uniform_grid():
    w = leaf(4, 3, 3, 3)
    q = FDBWeight(4, 4).initialize_(w)
    s = w.detach().abs().flatten(1).amax(1) / 2
    torch.testing.assert_close(q.a1.flatten(), 2 * s, rtol=0, atol=0)
    torch.testing.assert_close(q.a2.flatten(), -s, rtol=0, atol=0)
    y = q(w).detach().flatten(1)
    for c in range(4):
        levels = torch.tensor([-1.0, 0.0, 1.0, 2.0]) * s[c]
        assert set(y[c].unique().tolist()) <= set(levels.tolist())
        # b1, b2 pick the nearest level of {-s, 0, s, 2s} (ties excluded by the random draw)
        nearest = levels[(w.detach().flatten(1)[c, :, None] - levels).abs().argmin(1)]
        torch.testing.assert_close(y[c], nearest, rtol=0, atol=1e-7)
    assert q.bits == 2


def test_codes_follow_the_spec_formulas():
    w = leaf(3, 8)
    a1 = torch.tensor([[0.7], [1.0], [0.4]])
    a2 = torch.tensor([[-0.3], [-0.6], [-0.1]])
    b1, b2 = fdb_codes(w.detach(), a1, a2)
    wd = w.detach()
    ref1 = (wd - (a1 + a2) / 2 >= 0).float()
    ref2 = (-(wd - a1 * ref1 - a2 / 2) >= 0).float()
    assert torch.equal(b1, ref1) and torch.equal(b2, ref2)
    assert set(b1.unique().tolist()) <= {0.0, 1.0} and set(b2.unique().tolist()) <= {0.0, 1.0}


def test_gradients_straight_through_inside_the_level_range():
    w = leaf(5, 2, 3, 3, scale=0.5)
    q = FDBWeight(5, 4).initialize_(w)
    with torch.no_grad():  # move the scales off the grid so some weights lie outside the range
        q.a1.mul_(0.6)
        q.a2.mul_(0.8)
    g = upstream(w.shape)
    dw, da1, da2 = vjp(q(w), (w, q.a1, q.a2), g)
    wd, a1, a2 = w.detach(), q.a1.detach(), q.a2.detach()
    b1, b2 = fdb_codes(wd, a1, a2)
    lo = torch.minimum(torch.zeros_like(a1), a2)
    hi = torch.maximum(a1, a1 + a2)
    inside = (wd >= lo) & (wd <= hi)
    assert 0 < inside.float().mean() < 1
    torch.testing.assert_close(dw, g * inside, rtol=0, atol=0)
    torch.testing.assert_close(da1, (g * b1).sum(dim=(1, 2, 3), keepdim=True), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(da2, (g * b2).sum(dim=(1, 2, 3), keepdim=True), rtol=1e-5, atol=1e-6)


def test_preset_pairs_with_lsq_activations():
    model = binarydm.binarize_(nn.Sequential(nn.Conv2d(3, 4, 3)), CONFIG)
    assert isinstance(model[0].weight_quantizer, FDBWeight) and isinstance(model[0].act_quantizer, LSQ)


def test_conv_arguments_honoured():
    check_conv_arguments(CONFIG)


def test_state_dict_round_trip():
    check_round_trip(CONFIG, TinyResNet, (resnet_input(),))
