import pytest
import torch

import binarydm
from binarydm.algorithms import preset
from binarydm.algorithms.bnn import SignBinarizer
from binarydm.quant.registry import LayerSpec, act_factory, weight_factory

from .helpers import TinyResNet, check_conv_arguments, check_round_trip, leaf, resnet_input, upstream, vjp


def test_values_are_plus_minus_one_and_sign_zero_is_plus_one():
    q = weight_factory("bnn")(torch.nn.Conv2d(2, 3, 3), LayerSpec("conv", preset("bnn")))
    x = torch.tensor([-2.0, -0.0, 0.0, 1e-9, 3.0])
    assert q(x).tolist() == [-1.0, 1.0, 1.0, 1.0, 1.0]
    w = leaf(3, 2, 3, 3)
    assert set(q(w).unique().tolist()) <= {-1.0, 1.0}


def test_gradient_is_clipped_ste():
    w = leaf(64, 8, scale=1.5)  # about half the entries beyond |w| = 1
    g = upstream(w.shape)
    (dw,) = vjp(SignBinarizer()(w), w, g)
    torch.testing.assert_close(dw, g * (w.detach().abs() <= 1).float(), rtol=0, atol=0)


def test_activation_factory_needs_one_bit():
    from binarydm.quant.registry import LayerSpec

    with pytest.raises(ValueError, match="a_bits=1"):
        act_factory("bnn")(LayerSpec("x", binarydm.QuantConfig(weight="bnn", act="bnn", a_bits=4)))


def test_conv_arguments_honoured():
    check_conv_arguments(preset("bnn"))


def test_state_dict_round_trip():
    check_round_trip(preset("bnn"), TinyResNet, (resnet_input(),))
