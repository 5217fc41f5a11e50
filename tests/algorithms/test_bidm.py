import pytest
import torch
from torch import nn
from torch.nn import functional as F

import binarydm
from binarydm.algorithms import preset
from binarydm.algorithms.bidm import BiDMWeight, LocalScale
from binarydm.algorithms.reactnet import RSign
from binarydm.quant.layers import QuantConv2d, QuantLinear
from binarydm.quant.ste import binary_sign

from .helpers import TinyResNet, TinyTransformer, check_round_trip, resnet_input, transformer_input, upstream

CONFIG = preset("bidm")


def _layer(cin=4, cout=4, stride=1, seed=0, config=CONFIG, **kw):
    """A binarized conv with a random threshold, scale-map bias, shortcut scale and layer bias."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, **kw))
    x = torch.randn(2, cin, 8, 8)
    binarydm.binarize_(model, config)
    binarydm.calibrate_(model, x)
    layer = model[0]
    with torch.no_grad():
        layer.bias.normal_()
        layer.act_quantizer.beta.normal_(0, 0.3)
        q = layer.weight_quantizer
        if getattr(q, "local_scale", None) is not None:
            q.local_scale.bias.fill_(0.25)
        if getattr(q, "shortcut", None) is not None:
            q.shortcut.scale.fill_(0.7)
    return layer, x


def _box_map(x, k, stride, padding, weight, bias):
    """mean_c |x| averaged over each k x k window (zero padding), written with unfold: the scale map's reference."""
    energy = x.abs().mean(dim=1, keepdim=True)
    cols = F.unfold(energy, k, padding=padding, stride=stride)  # (B, k*k, L)
    h = (x.shape[-2] + 2 * padding - k) // stride + 1
    return ((weight.reshape(1, -1, 1) * cols).sum(1) + bias).view(x.shape[0], 1, h, -1)


@pytest.mark.parametrize("cin,cout,stride", [(4, 4, 1), (4, 4, 2), (4, 6, 1), (4, 6, 2)])
def test_layer_is_scale_map_times_binary_conv_plus_scaled_shortcut(cin, cout, stride):
    layer, x = _layer(cin, cout, stride)
    q = layer.weight_quantizer
    w = layer.weight.detach()
    alpha = w.abs().mean(dim=(1, 2, 3), keepdim=True)
    xb = binary_sign(x + layer.act_quantizer.beta.detach().view(1, -1, 1, 1))
    binary = F.conv2d(xb, alpha * binary_sign(w), None, stride, 1)
    k_map = _box_map(x, 3, stride, 1, torch.full((9,), 1 / 9), 0.25)
    skip = F.avg_pool2d(x, stride) if stride > 1 else x
    if cin != cout:
        skip = F.conv2d(skip, q.shortcut.projection.detach())
    expected = k_map * binary + 0.7 * skip + layer.bias.detach().view(1, -1, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_scale_map_filter_and_bias_start_as_a_box_filter_and_learn():
    layer, x = _layer()
    scale = layer.weight_quantizer.local_scale
    assert isinstance(scale, LocalScale)
    assert torch.equal(LocalScale(nn.Conv2d(1, 1, 3)).weight, torch.full((1, 1, 3, 3), 1 / 9))
    assert torch.equal(LocalScale(nn.Conv2d(1, 1, 3)).bias, torch.zeros(1))
    g = upstream((2, 4, 8, 8))
    (layer(x) * g).sum().backward()
    # d/d b_K of sum(g * (K * y)) = sum(g * y): the map multiplies the binary convolution's output.
    with torch.no_grad():
        xb = layer.quantized_input(x)
        y = F.conv2d(xb, layer.quantized_weight(), None, 1, 1)
    torch.testing.assert_close(scale.bias.grad, (g * y).sum().view(1), rtol=1e-4, atol=1e-4)
    assert scale.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("stride", [1, 2])
def test_valid_border_scale_map_is_the_mean_over_the_windows_inside_pixels(stride):
    layer, x = _layer(4, 4, stride, config=preset("bidm", scale_border="valid"))
    with torch.no_grad():
        layer.weight_quantizer.local_scale.weight.uniform_(0.05, 0.2)
        weight = layer.weight_quantizer.local_scale.weight.flatten()
        got = layer.weight_quantizer.local_scale(x)
        # The same filter over the inside pixels only: zero padding over the count of inside taps.
        inside = F.unfold(torch.ones(1, 1, 8, 8), 3, padding=1, stride=stride).sum(1).view(1, 1, 8 // stride, -1)
        expected = (_box_map(x, 3, stride, 1, weight, 0.0) * 9 / inside) + 0.25
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # Inside the image the two borders agree; at a corner 4 of 9 taps are inside.
    zeros = LocalScale(nn.Conv2d(4, 4, 3, stride, 1))
    zeros.load_state_dict(layer.weight_quantizer.local_scale.state_dict())
    with torch.no_grad():
        plain = zeros(x)
    torch.testing.assert_close(got[..., 1:-1, 1:-1], plain[..., 1:-1, 1:-1])
    if stride == 1:
        torch.testing.assert_close(got[..., 0, 0] - 0.25, (plain[..., 0, 0] - 0.25) * 9 / 4)


@pytest.mark.parametrize("init", ["fit", "unit"])
@pytest.mark.parametrize("border", ["zeros", "valid"])
def test_calibrated_scale_map_starts_at_mean_one_or_at_the_least_squares_gain(border, init):
    """scale_init="unit": after calibrate_, the map's mean over the calibration batch is 1; "fit": g = 1 is the
    gain that best maps K * binary onto the float conv. Two layers: the second is calibrated on the input its
    calibrated predecessor gives it. Each time from the box filter, whatever the filter was."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, 1, 1), nn.SiLU(), nn.Conv2d(8, 8, 3, 2, 1))
    x = torch.randn(4, 4, 8, 8)
    binarydm.binarize_(model, preset("bidm", scale_init=init, scale_border=border, shortcut=False))
    binarydm.calibrate_(model, x)
    with torch.no_grad():
        inputs = [x, F.silu(model[0](x))]
        for layer, inp in zip((model[0], model[2]), inputs):
            scale = layer.weight_quantizer.local_scale
            if init == "unit":
                torch.testing.assert_close(scale(inp).mean(), torch.tensor(1.0))
            else:
                y = layer(inp) - layer.bias.view(1, -1, 1, 1)
                target = F.conv2d(inp, layer.weight, None, layer.stride, 1)
                torch.testing.assert_close((target * y).sum() / (y * y).sum(), torch.tensor(1.0), rtol=1e-4, atol=0)
            assert torch.all(scale.weight == scale.weight.flatten()[0])  # still a box, rescaled
            assert not torch.allclose(scale.weight, torch.full_like(scale.weight, 1 / 9))
        fitted = model[2].weight_quantizer.local_scale.weight.clone()
        model[2].weight_quantizer.local_scale.weight.mul_(3.0)
        binarydm.calibrate_(model, x)
        torch.testing.assert_close(model[2].weight_quantizer.local_scale.weight, fitted)
    box = _layer(config=preset("bidm"))[0].weight_quantizer.local_scale.weight  # the default keeps the box
    assert torch.equal(box, torch.full((1, 1, 3, 3), 1 / 9))


def test_unknown_scale_border_is_refused():
    from binarydm.algorithms.bidm import BiDMOptions

    with pytest.raises(ValueError, match="scale_border must be one of"):
        BiDMOptions(scale_border="reflect")
    with pytest.raises(ValueError, match="scale_init must be one of"):
        BiDMOptions(scale_init="ones")


def test_shortcut_scale_gets_the_gradient_of_its_branch_and_starts_at_zero():
    fresh = binarydm.binarize_(nn.Sequential(nn.Conv2d(4, 4, 3, 1, 1)), CONFIG)
    assert fresh[0].weight_quantizer.shortcut.scale.item() == 0.0
    layer, x = _layer()
    g = upstream((2, 4, 8, 8))
    (layer(x) * g).sum().backward()
    torch.testing.assert_close(layer.weight_quantizer.shortcut.scale.grad, (g * x).sum(), rtol=1e-4, atol=1e-4)


def test_the_ldm_codes_shortcut_start_leaves_the_second_convolutions_at_zero():
    model = binarydm.binarize_(TinyResNet(), preset("bidm", shortcut_init=0.3, shortcut_zero_conv2=True))
    starts = {n: float(m.shortcut.scale.detach()) for n, m in model.named_modules() if isinstance(m, BiDMWeight)}
    second = [n for n in starts if n.endswith("conv2.weight_quantizer")]
    assert second and len(second) < len(starts)
    assert all(starts[n] == (0.0 if n in second else pytest.approx(0.3)) for n in starts)


def test_threshold_gets_approx_sign_gradient_through_the_layer():
    layer, x = _layer()
    x = x * 0.4
    assert isinstance(layer.act_quantizer, RSign)
    (layer(x) * upstream((2, 4, 8, 8))).sum().backward()
    assert layer.act_quantizer.beta.grad.abs().sum() > 0


@pytest.mark.parametrize("option", ["scale_map", "shortcut"])
def test_each_output_part_can_be_switched_off(option):
    config = preset("bidm", **{option: False})
    assert config.weight == f"bidm({option}=False)"
    layer, x = _layer(config=config)
    q = layer.weight_quantizer
    assert (q.local_scale is None) == (option == "scale_map") and (q.shortcut is None) == (option == "shortcut")
    both_off = _layer(config=preset("bidm", scale_map=False, shortcut=False))[0]
    assert not isinstance(both_off.weight_quantizer, BiDMWeight)  # plain XNOR weight, no output transform
    with torch.no_grad():
        expected = F.conv2d(both_off.quantized_input(x), both_off.quantized_weight(), both_off.bias, 1, 1)
        torch.testing.assert_close(both_off(x), expected, rtol=0, atol=1e-6)


def test_disabled_weight_quantizer_leaves_the_layer_full_precision():
    layer, x = _layer()
    layer.weight_quantizer.enabled = False
    layer.act_quantizer.enabled = False
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.conv2d(x, layer.weight, layer.bias, 1, 1), rtol=0, atol=0)


def test_unet_keeps_skip_convolutions_stem_head_and_embeddings_full_precision():
    from diffusers import UNet2DModel

    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                       layers_per_block=1, norm_num_groups=4, attention_head_dim=8)
    binarydm.binarize_(unet, CONFIG)
    layers = {n: m for n, m in unet.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))}
    skips = [n for n in layers if n.endswith("conv_shortcut")]
    assert skips and all(layers[n].weight_quantizer is None and layers[n].act_quantizer is None for n in skips)
    assert not any(n.startswith(("conv_in", "conv_out", "time_embedding")) for n in layers)
    binarized = [m for n, m in layers.items() if n not in skips]
    assert all(isinstance(m.act_quantizer, RSign) for m in binarized)
    convs = [m for m in binarized if isinstance(m, QuantConv2d)]
    assert convs and all(isinstance(m.weight_quantizer, BiDMWeight) for m in convs)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 500])
    binarydm.calibrate_(unet, x, t)
    out = unet(x, t).sample
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_state_dict_round_trip_keeps_learned_maps_and_shortcuts():
    fresh = check_round_trip(CONFIG, TinyResNet, (resnet_input(),))
    scales = [m.weight_quantizer.local_scale for m in fresh.modules()
              if isinstance(m, QuantConv2d) and isinstance(m.weight_quantizer, BiDMWeight)]
    # Trained for a step, then loaded into a fresh model: the filter is no longer the box filter it started as.
    assert scales and any(not torch.equal(s.weight, torch.full_like(s.weight, 1 / 9)) for s in scales)


def test_state_dict_round_trip_transformer():
    check_round_trip(CONFIG, TinyTransformer, (transformer_input(),))


def test_bidm_refuses_multi_bit_activations():
    with pytest.raises(ValueError, match="a_bits=1"):
        binarydm.binarize_(nn.Sequential(nn.Conv2d(2, 2, 3)), preset("bidm", a_bits=4))



def test_shortcut_without_projection_cuts_or_repeats_the_input_channels():
    config = preset("bidm", projection=False)
    for cin, cout in ((6, 4), (4, 6), (4, 8)):
        layer, x = _layer(cin, cout, config=config)
        assert layer.weight_quantizer.shortcut.projection is None
        skip = x.repeat(1, 2, 1, 1)[:, :cout] if cout > cin else x[:, :cout]
        with torch.no_grad():
            torch.testing.assert_close(layer.weight_quantizer.shortcut(x), 0.7 * skip)


def test_skip_convolutions_binarized_on_request(tiny_unet):
    binarydm.binarize_(tiny_unet, preset("bidm", fp_skip=False))
    skips = [m for n, m in tiny_unet.named_modules() if n.endswith("conv_shortcut")]
    assert skips and all(isinstance(m.weight_quantizer, BiDMWeight) and isinstance(m.act_quantizer, RSign)
                         for m in skips)


def test_strided_shortcut_follows_the_convolutions_output_size_on_odd_inputs():
    layer, _ = _layer(4, 4, stride=2)
    for side in (7, 8, 9):  # padding 1: the convolution rounds up on odd sides, the 2x2 pool would round down
        x = torch.randn(1, 4, side, side)
        with torch.no_grad():
            y = layer(x)
        assert y.shape[-1] == (side + 1) // 2 and torch.isfinite(y).all()
    # a convolution without padding (ddpm-cifar10-32's downsamplers pad by hand, then 3x3 stride 2): floor
    conv = nn.Sequential(nn.Conv2d(4, 4, 3, 2, 0))
    binarydm.binarize_(conv, preset("bidm"))
    x = torch.randn(1, 4, 33, 33)
    binarydm.calibrate_(conv, x)
    with torch.no_grad():
        conv[0].weight_quantizer.shortcut.scale.fill_(1.0)
        assert conv(x).shape[-1] == 16
        torch.testing.assert_close(conv[0].weight_quantizer.shortcut(x, (16, 16)), F.avg_pool2d(x, 2))
