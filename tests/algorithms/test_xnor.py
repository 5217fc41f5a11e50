import pytest
import torch

import binarydm
from binarydm.algorithms import preset
from binarydm.algorithms.xnor import XnorAct, XnorWeight
from binarydm.quant.attention import QuantAttnProcessor
from binarydm.quant.layers import QuantConv2d, QuantLinear
from binarydm.quant.registry import LayerSpec, weight_factory

from .helpers import (
    TinyResNet, TinyTransformer, check_conv_arguments, check_round_trip, clamp_ste_ref, leaf, resnet_input,
    torch_sign_nonzero, train_step, transformer_input, upstream, vjp,
)

ONE_BIT = dict(weight="xnor", act="xnor", a_bits=1)


def test_weight_values_are_plus_minus_mean_abs_per_out_channel():
    w = leaf(5, 3, 3, 3)
    q = XnorWeight()(w)
    a = w.detach().abs().mean(dim=(1, 2, 3))
    for c in range(5):
        assert set(q[c].unique().tolist()) <= {a[c].item(), -a[c].item()}
    assert torch.equal(q.detach() > 0, w.detach() >= 0)


def test_activation_values_are_plus_minus_mean_abs_per_sample():
    x = leaf(4, 3, 5, 5)
    q = XnorAct()(x)
    b = x.detach().abs().mean(dim=(1, 2, 3))
    for i in range(4):
        assert set(q[i].unique().tolist()) <= {b[i].item(), -b[i].item()}


def test_scaled_grad_option_multiplies_the_gradients_by_the_detached_scales():
    w, x = leaf(6, 4, 3, 3, scale=1.5), leaf(3, 4, 5, 5, seed=2, scale=1.5)
    gw, gx = upstream(w.shape), upstream(x.shape, seed=3)
    (dw,) = vjp(XnorWeight(scaled_grad=True)(w), w, gw)
    (dx,) = vjp(XnorAct(scaled_grad=True)(x), x, gx)
    a = w.detach().abs().mean(dim=(1, 2, 3), keepdim=True)
    b = x.detach().abs().mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(dw, gw * a * (w.detach().abs() <= 1), rtol=1e-6, atol=0)
    torch.testing.assert_close(dx, gx * b * (x.detach().abs() <= 1), rtol=1e-6, atol=0)


def test_conv_arguments_honoured():
    check_conv_arguments(preset("xnor"))


def test_one_bit_on_a_resnet():
    model = binarydm.binarize_(TinyResNet(), binarydm.QuantConfig(**ONE_BIT))
    convs = [m for m in model.modules() if isinstance(m, (QuantConv2d, QuantLinear))]
    assert len(convs) == 7 and all(isinstance(m.act_quantizer, XnorAct) for m in convs)
    x = resnet_input()
    assert torch.isfinite(model(x)).all()
    train_step(model, (x,))


def test_one_bit_on_a_transformer_encoder_layer():
    model = binarydm.binarize_(TinyTransformer(), binarydm.QuantConfig(**ONE_BIT))
    layer = model.encoder.layers[0]
    # The feed-forward Linears are binarized; nn.MultiheadAttention keeps its packed in_proj weight and
    # its NonDynamicallyQuantizableLinear out_proj (not an nn.Linear swap target).
    assert isinstance(layer.linear1, QuantLinear) and isinstance(layer.linear2, QuantLinear)
    assert isinstance(layer.linear1.act_quantizer, XnorAct)
    x = transformer_input()
    y = model(x)
    assert y.shape == (2, 5, 5) and torch.isfinite(y).all()
    train_step(model, (x,))


def test_one_bit_preset_on_a_diffusers_unet(tiny_unet, unet_batch):
    model = binarydm.binarize_(tiny_unet, preset("xnor"))
    binarydm.calibrate_(model, *unet_batch)
    assert torch.isfinite(model(*unet_batch).sample).all()


def test_one_bit_with_attention_on_a_diffusers_unet(tiny_unet, unet_batch):
    """attention=True at a_bits=1: q, k, v get XNOR's binarizer, P unsigned 1-bit LSQ."""
    model = binarydm.binarize_(tiny_unet, binarydm.QuantConfig(**ONE_BIT))
    procs = [m for m in model.modules() if isinstance(m, QuantAttnProcessor)]
    assert procs and all(isinstance(p.q_quantizer, XnorAct) and p.p_quantizer.bits == 1 for p in procs)
    binarydm.calibrate_(model, *unet_batch)
    assert torch.isfinite(model(*unet_batch).sample).all()


def test_state_dict_round_trip():
    check_round_trip(preset("xnor"), TinyTransformer, (transformer_input(),))


# ---- faithful to BiBench: XNORConv2d (and DoReFa/Bi-Real/ReAct's weights) ------------------------
def test_gradients_match_bibench_without_the_scale():
    """BiBench: x_b = (b sign x).detach() - clamp(x).detach() + clamp(x), the same for W with a_w."""
    w, x = leaf(6, 4, 3, 3, scale=1.5), leaf(3, 4, 5, 5, seed=2, scale=1.5)
    gw, gx = upstream(w.shape), upstream(x.shape, seed=3)
    a = w.detach().abs().mean(dim=(1, 2, 3), keepdim=True)
    b = x.detach().abs().mean(dim=(1, 2, 3), keepdim=True)
    ref_w = clamp_ste_ref(w, a * torch_sign_nonzero(w.detach()))
    ref_x = clamp_ste_ref(x, b * torch_sign_nonzero(x.detach()))
    qw, qx = XnorWeight()(w), XnorAct()(x)
    torch.testing.assert_close(qw, ref_w, rtol=1e-6, atol=1e-6)  # ref: v - c + c rounds
    torch.testing.assert_close(qx, ref_x, rtol=1e-6, atol=1e-6)  # ref: v - c + c rounds
    torch.testing.assert_close(vjp(qw, w, gw)[0], vjp(ref_w, w, gw)[0], rtol=0, atol=0)
    torch.testing.assert_close(vjp(qx, x, gx)[0], vjp(ref_x, x, gx)[0], rtol=0, atol=0)
    assert (w.detach().abs() > 1).any() and (x.detach().abs() > 1).any()  # the mask is exercised


@pytest.mark.parametrize("name", ["xnor", "dorefa", "bireal", "reactnet"])
def test_weight_gradient_is_scale_free_by_default_and_scaled_on_request(name):
    conv = torch.nn.Conv2d(4, 6, 3)
    w = leaf(6, 4, 3, 3, scale=1.5)
    g = upstream(w.shape)
    a = w.detach().abs().mean(dim=(1, 2, 3), keepdim=True)
    mask = (w.detach().abs() <= 1).float()
    for config, expected in ((preset(name), g * mask), (preset(name, scaled_grad=True), g * a * mask)):
        wq = weight_factory(config.weight)(conv, LayerSpec("conv", config))
        torch.testing.assert_close(vjp(wq(w), w, g)[0], expected, rtol=1e-6, atol=0)
