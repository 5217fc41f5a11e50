import pytest
import torch
from torch import nn
from torch.nn import functional as F

import binarydm
from binarydm.algorithms import preset
from binarydm.algorithms.xnorpp import XnorPPWeight

from .helpers import CONV_KW, TinyResNet, check_round_trip, leaf, resnet_input, train_step, upstream, vjp

CONFIG = preset("xnorpp")


def _binarized_conv(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(**CONV_KW))
    with torch.no_grad():
        model[0].bias.normal_()
    binarydm.binarize_(model, CONFIG)
    x = torch.randn(2, 4, 9, 9)
    binarydm.calibrate_(model, x)  # sizes Gamma's h and w from the layer output
    return model[0], x


def test_gamma_is_sized_from_the_output_and_initialised_to_one():
    layer, x = _binarized_conv()
    q = layer.weight_quantizer.output_quantizer
    assert q.o.shape == (6,) and q.h.shape == (5,) and q.w.shape == (5,)  # (9 + 4 - 4 - 1) // 2 + 1 = 5
    assert all(p.eq(1).all() for p in (q.o, q.h, q.w))


def test_output_is_gamma_times_binary_conv_plus_bias_with_every_conv_argument():
    layer, x = _binarized_conv()
    q = layer.weight_quantizer.output_quantizer
    with torch.no_grad():
        for p in (q.o, q.h, q.w):
            p.uniform_(0.5, 1.5)
        sign_w = torch.where(layer.weight >= 0, 1.0, -1.0)
        sign_x = torch.where(x >= 0, 1.0, -1.0)
        gamma = q.o.view(1, -1, 1, 1) * q.h.view(1, 1, -1, 1) * q.w.view(1, 1, 1, -1)
        expected = gamma * F.conv2d(sign_x, sign_w, None, 2, 2, 2, 2) + layer.bias.view(1, -1, 1, 1)
        torch.testing.assert_close(layer(x), expected, rtol=1e-6, atol=1e-6)
    assert set(layer.quantized_weight().unique().tolist()) == {-1.0, 1.0}


def test_gradients_clipped_ste_and_gamma():
    layer, x = _binarized_conv()
    q = layer.weight_quantizer.output_quantizer
    with torch.no_grad():
        layer.weight.mul_(6)  # some |w| > 1
        for p in (q.o, q.h, q.w):
            p.uniform_(0.5, 1.5)
    y = layer(x)
    g = upstream(y.shape)
    dw, do, dh, dww = vjp(y, (layer.weight, q.o, q.h, q.w), g)
    with torch.no_grad():
        sw, sx = torch.where(layer.weight >= 0, 1.0, -1.0), torch.where(x >= 0, 1.0, -1.0)
        core = F.conv2d(sx, sw, None, 2, 2, 2, 2)
        o, h, w = q.o.view(1, -1, 1, 1), q.h.view(1, 1, -1, 1), q.w.view(1, 1, 1, -1)
        torch.testing.assert_close(do, (g * core * h * w).sum(dim=(0, 2, 3)), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(dh, (g * core * o * w).sum(dim=(0, 1, 3)), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(dww, (g * core * o * h).sum(dim=(0, 1, 2)), rtol=1e-5, atol=1e-5)
        # dL/dW_b = conv2d weight-gradient of (g * Gamma); then the clipped STE mask
        dwb = torch.nn.grad.conv2d_weight(sx, sw.shape, g * o * h * w, 2, 2, 2, 2)
        torch.testing.assert_close(dw, dwb * (layer.weight.abs() <= 1), rtol=1e-5, atol=1e-5)


def test_linear_gamma_is_per_output_feature():
    q = XnorPPWeight(3, spatial=False).initialize_(torch.zeros(3, 4)).output_quantizer
    assert q.initialized  # nothing to size for a linear layer
    with torch.no_grad():
        q.o.copy_(torch.tensor([1.0, 2.0, 3.0]))
    y = leaf(2, 5, 3)
    torch.testing.assert_close(q(y), y * torch.tensor([1.0, 2.0, 3.0]))


def test_unsized_or_wrong_resolution_raises():
    q = XnorPPWeight(2).initialize_(torch.zeros(2, 1, 3, 3))
    with pytest.raises(RuntimeError, match="never initialised"):
        q.transform_output(torch.zeros(1, 2, 4, 4))
    q.output_quantizer.initialize_(torch.zeros(1, 2, 4, 4))
    with pytest.raises(RuntimeError, match="4x4 output, got 8x8"):
        q.transform_output(torch.zeros(1, 2, 8, 8))


def test_state_dict_round_trip_restores_gamma_shapes():
    x = resnet_input()
    model = binarydm.binarize_(TinyResNet(), CONFIG)
    binarydm.calibrate_(model, x)
    train_step(model, (x,))
    gammas = [m.output_quantizer.h for m in model.modules() if isinstance(m, XnorPPWeight)]
    assert len(gammas) == 7 and any((h != 1).any() for h in gammas)  # trained for a step
    model.eval()
    fresh = binarydm.binarize_(TinyResNet(), CONFIG).eval()  # not calibrated
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


def test_calibrate_sizes_gamma_even_before_the_weights_switch_on_and_round_trip():
    model = binarydm.binarize_(TinyResNet(), CONFIG)
    binarydm.set_quant_state_(model, weights=False)  # progressive initialisation calibrates in FP
    binarydm.calibrate_(model, resnet_input())
    gammas = [m.output_quantizer for m in model.modules() if isinstance(m, XnorPPWeight)]
    assert all(g.h.numel() > 0 for g in gammas if g.spatial) and sum(g.spatial for g in gammas) == 6
    check_round_trip(CONFIG, TinyResNet, (resnet_input(),))
