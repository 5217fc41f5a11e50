import inspect

import pytest
import torch

import binarydm
from binarydm.algorithms import preset
from binarydm.algorithms.xnor import XnorAct, XnorWeight
from binarydm.quant.attention import QuantAttnProcessor
from binarydm.quant.layers import QuantConv2d, QuantLinear

from .helpers import (
    TinyResNet, TinyTransformer, check_conv_arguments, check_round_trip, leaf, resnet_input, train_step,
    transformer_input, upstream, vjp,
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


def test_gradients_are_scaled_clipped_ste():
    w, x = leaf(6, 4, 3, 3, scale=1.5), leaf(3, 4, 5, 5, seed=2, scale=1.5)
    gw, gx = upstream(w.shape), upstream(x.shape, seed=3)
    (dw,) = vjp(XnorWeight()(w), w, gw)
    (dx,) = vjp(XnorAct()(x), x, gx)
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


# Until QuantAttnProcessor accepts 1-bit operand quantizers (docs/algorithms.md, "Core changes"), its
# signed LSQ has no 1-bit code and binarize_ refuses; the marker lifts itself once the core has it.
_ONE_BIT_ATTENTION = "operand_quantizer" in inspect.signature(QuantAttnProcessor.__init__).parameters


@pytest.mark.xfail(not _ONE_BIT_ATTENTION, raises=ValueError, strict=True,
                   reason="the core's QuantAttnProcessor has no 1-bit code (signed LSQ); see docs/algorithms.md")
def test_one_bit_with_attention_on_a_diffusers_unet(tiny_unet, unet_batch):
    model = binarydm.binarize_(tiny_unet, binarydm.QuantConfig(**ONE_BIT))
    binarydm.calibrate_(model, *unet_batch)
    assert torch.isfinite(model(*unet_batch).sample).all()


def test_state_dict_round_trip():
    check_round_trip(preset("xnor"), TinyTransformer, (transformer_input(),))
