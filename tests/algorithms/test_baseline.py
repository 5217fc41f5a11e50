import torch
from torch import nn

import binarydm
from binarydm.algorithms import preset
from binarydm.quant.lmb import LMB

from .helpers import TinyResNet, check_conv_arguments, check_round_trip, leaf, resnet_input, upstream, vjp


def test_baseline_weight_is_single_basis_lmb_everywhere():
    config = binarydm.QuantConfig(weight="baseline", dual_levels=3)  # dual_levels is ignored by 'baseline'
    model = binarydm.binarize_(nn.Sequential(nn.Conv2d(3, 4, 3)), config)
    q = model[0].weight_quantizer
    assert isinstance(q, LMB) and q.n_bases == 1
    w = model[0].weight
    s1 = w.detach().abs().mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(q.s1.detach(), s1, rtol=0, atol=0)
    torch.testing.assert_close(q(w).detach(), s1 * torch.where(w.detach() >= 0, 1.0, -1.0), rtol=0, atol=0)


def test_gradient_clipped_ste_and_learnable_scale():
    q = LMB(4, 4, n_bases=1)
    w = leaf(4, 3, 3, 3, scale=1.5)
    q.initialize_(w)
    g = upstream(w.shape)
    dw, ds1 = vjp(q(w), (w, q.s1), g)
    sign = torch.where(w.detach() >= 0, 1.0, -1.0)
    torch.testing.assert_close(dw, g * q.s1.detach() * (w.detach().abs() <= 1), rtol=1e-6, atol=0)
    torch.testing.assert_close(ds1, (g * sign).sum(dim=(1, 2, 3), keepdim=True), rtol=1e-5, atol=1e-6)


def test_presets_lmb_ebb_baseline():
    assert preset("baseline").dual_levels == 0 and preset("baseline").weight == "lmb"
    assert preset("lmb") == binarydm.QuantConfig.preset("w1a4")
    model = binarydm.binarize_(nn.Sequential(nn.Conv2d(3, 4, 3)), preset("ebb", dual_levels=0))
    assert isinstance(model[0].weight_quantizer, LMB)


def test_conv_arguments_honoured():
    check_conv_arguments(binarydm.QuantConfig(weight="baseline"))


def test_state_dict_round_trip():
    check_round_trip(binarydm.QuantConfig(weight="baseline"), TinyResNet, (resnet_input(),))
