import pytest
import torch
from torch import nn
from torch.nn import functional as F

from binarydm.quant.layers import QuantConv2d, QuantLinear
from binarydm.quant.lmb import LMB
from binarydm.quant.lsq import LSQ


def _quantizers(weight, n_bases=2):
    wq = LMB(weight.shape[0], weight.dim(), n_bases=n_bases).double().initialize_(weight)
    aq = LSQ(4).double()
    with torch.no_grad():
        aq.step.fill_(0.25)
    aq.initialized = True
    return wq, aq


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(in_channels=4, out_channels=6, kernel_size=3, padding=1),
        dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, bias=False),
        dict(in_channels=6, out_channels=6, kernel_size=3, padding=2, dilation=2, groups=3),
        dict(in_channels=4, out_channels=8, kernel_size=(1, 3), padding=(0, 1), groups=2),
        dict(in_channels=4, out_channels=4, kernel_size=3, padding=1, padding_mode="reflect"),
    ],
)
def test_conv_arguments_are_honoured(kwargs):
    torch.manual_seed(0)
    conv = nn.Conv2d(**kwargs).double()
    x = torch.randn(2, kwargs["in_channels"], 9, 9, dtype=torch.float64)
    # With both quantizers off, from_float is the float layer exactly.
    plain = QuantConv2d.from_float(conv)
    assert torch.equal(plain(x), conv(x))
    wq, aq = _quantizers(conv.weight.detach())
    q = QuantConv2d.from_float(conv, wq, aq)
    w_bin = wq(conv.weight).detach()
    x_q = torch.round(torch.clamp(x / 0.25, -8, 7)) * 0.25
    if conv.padding_mode != "zeros":
        pad = F.pad(x_q, (1, 1, 1, 1), mode=conv.padding_mode)
        expected = F.conv2d(pad, w_bin, conv.bias, conv.stride, 0, conv.dilation, conv.groups)
    else:
        expected = F.conv2d(x_q, w_bin, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    torch.testing.assert_close(q(x), expected)


def test_from_float_copies_exactly_and_keeps_hyper_parameters():
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1, dilation=1, groups=1)
    q = QuantConv2d.from_float(conv)
    assert torch.equal(q.weight, conv.weight) and torch.equal(q.bias, conv.bias)
    assert q.weight.data_ptr() != conv.weight.data_ptr()
    for attr in ("stride", "padding", "dilation", "groups", "padding_mode", "kernel_size"):
        assert getattr(q, attr) == getattr(conv, attr)
    lin = nn.Linear(7, 3, bias=False)
    ql = QuantLinear.from_float(lin)
    assert ql.bias is None and torch.equal(ql.weight, lin.weight)


def test_linear_quantized_forward():
    lin = nn.Linear(6, 4).double()
    wq, aq = _quantizers(lin.weight.detach(), n_bases=1)
    q = QuantLinear.from_float(lin, wq, aq)
    x = torch.randn(3, 6, dtype=torch.float64)
    x_q = torch.round(torch.clamp(x / 0.25, -8, 7)) * 0.25
    w_bin = wq.s1.detach() * torch.where(lin.weight >= 0, 1.0, -1.0).double()
    torch.testing.assert_close(q(x), F.linear(x_q, w_bin, lin.bias))


def test_each_quantizer_can_be_switched_off():
    conv = nn.Conv2d(2, 3, 3, padding=1).double()
    wq, aq = _quantizers(conv.weight.detach())
    q = QuantConv2d.from_float(conv, wq, aq)
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    wq.enabled, aq.enabled = False, False
    assert torch.equal(q(x), conv(x))
    aq.enabled = True
    x_q = torch.round(torch.clamp(x / 0.25, -8, 7)) * 0.25
    torch.testing.assert_close(q(x), conv(x_q))


def test_half_keeps_a_quantized_layers_latent_weight_and_scales_float32_and_the_parameter_order():
    import torch
    from torch import nn

    import binarydm
    from binarydm.quant.layers import QuantConv2d

    model = binarydm.binarize_(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.GroupNorm(2, 4)), "w1a4")
    x = torch.randn(2, 4, 5, 5)
    binarydm.calibrate_(model, x)
    layer = model[0]
    assert isinstance(layer, QuantConv2d)
    names = [n for n, _ in model.named_parameters()]
    model.half()
    assert [n for n, _ in model.named_parameters()] == names
    assert layer.weight.dtype == torch.float32 and layer.weight_quantizer.s1.dtype == torch.float32
    assert layer.act_quantizer.step.dtype == torch.float32
    assert layer.bias.dtype == torch.float16 and model[1].weight.dtype == torch.float16
    y = model(x.half())
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    model.double()  # widening casts still apply
    assert layer.weight.dtype == torch.float64 and layer.weight_quantizer.s1.dtype == torch.float64


def test_a_quantized_layer_moves_to_the_meta_device():
    from torch import nn

    import binarydm

    model = binarydm.binarize_(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1)), "w1a4")
    names = [n for n, _ in model.named_parameters()]
    model.to("meta")
    assert model[0].weight.is_meta and [n for n, _ in model.named_parameters()] == names
