import torch
from torch import nn

import binarydm
from binarydm.algorithms import preset
from binarydm.algorithms.db_sigmoid import db_sigmoid_grad
from binarydm.quant.ste import sign_ste

from .helpers import TinyResNet, check_conv_arguments, check_round_trip, leaf, resnet_input, upstream, vjp


def test_forward_is_exact_sign():
    x = torch.tensor([-0.3, 0.0, 1e-6, 2.0])
    assert sign_ste(x, "db_sigmoid").tolist() == [-1.0, 1.0, 1.0, 1.0]


def test_gradient_is_the_rescaled_dbnet_sigmoid_derivative():
    x = leaf(200, scale=0.05)
    g = upstream(x.shape)
    (dx,) = vjp(sign_ste(x, "db_sigmoid"), x, g)
    k = 50.0
    e = torch.exp(-k * x.detach().double())
    ref = 2 * k * e / (1 + e) ** 2  # d/dx of 2 / (1 + exp(-k x)) - 1, in float64
    torch.testing.assert_close(dx.double(), g.double() * ref, rtol=1e-5, atol=1e-6)


def test_surrogate_integrates_to_the_jump_of_sign():
    x = torch.linspace(-2, 2, 40001)
    area = torch.trapezoid(db_sigmoid_grad(x), x)
    assert abs(area.item() - 2.0) < 1e-4


def test_preset_uses_the_surrogate_inside_lmb():
    config = preset("db-sigmoid")
    assert config.surrogate == "db_sigmoid" and preset("db_sigmoid") == config
    model = binarydm.binarize_(nn.Sequential(nn.Conv2d(3, 4, 3)), config)
    q, w = model[0].weight_quantizer, model[0].weight
    g = upstream(w.shape)
    (dw,) = vjp(q(w), w, g)
    # LMB's first basis only (one basis outside a UNet): s1 * d(w)
    torch.testing.assert_close(dw, g * q.s1.detach() * db_sigmoid_grad(w.detach()), rtol=1e-5, atol=1e-7)


def test_conv_arguments_honoured():
    check_conv_arguments(preset("db-sigmoid"))


def test_state_dict_round_trip():
    check_round_trip(preset("db-sigmoid"), TinyResNet, (resnet_input(),))
