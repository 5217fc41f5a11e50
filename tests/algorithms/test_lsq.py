import math

import pytest
import torch

import binarydm
from binarydm.algorithms import preset
from binarydm.algorithms.lsq import lsq_config
from binarydm.quant.lsq import LSQ

from .helpers import TinyResNet, check_conv_arguments, check_round_trip, leaf, resnet_input, upstream, vjp


@pytest.mark.parametrize("w_bits", [2, 4])
def test_weight_levels_are_the_b_bit_signed_grid(w_bits):
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    binarydm.binarize_(conv, preset("lsq", w_bits=w_bits))
    q = conv[0].weight_quantizer
    assert isinstance(q, LSQ) and q.bits == w_bits
    codes = conv[0].quantized_weight().detach() / q.step.detach()
    assert torch.allclose(codes, codes.round(), atol=1e-5)
    assert codes.min() >= -(2 ** (w_bits - 1)) and codes.max() <= 2 ** (w_bits - 1) - 1


def test_gradients_are_lsq():
    q = LSQ(2, signed=True, channels=3, dim=2)
    x = leaf(3, 40)
    q.initialize_(x)
    g = upstream(x.shape)
    dx, dstep = vjp(q(x), (x, q.step), g)
    a = q.step.detach()
    v = x.detach() / a
    inside = (v >= -2) & (v <= 1)
    torch.testing.assert_close(dx, g * inside, rtol=0, atol=0)
    local = torch.where(inside, v.clamp(-2, 1).round() - v, v.clamp(-2, 1))
    ref = (g * local).sum(1, keepdim=True) / math.sqrt(40 * 1)
    torch.testing.assert_close(dstep, ref, rtol=1e-5, atol=1e-6)


def test_one_bit_lsq_weights_are_refused():
    with pytest.raises(ValueError, match="w_bits >= 2"):
        lsq_config(1)


def test_conv_arguments_honoured():
    check_conv_arguments(preset("lsq", w_bits=2))


def test_state_dict_round_trip():
    check_round_trip(preset("lsq", w_bits=2), TinyResNet, (resnet_input(),))
