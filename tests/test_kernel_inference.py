"""The W1A4 inference mode of a whole UNet (the kernel path; on the CPU, its exact reference)."""

import warnings

import pytest
import torch

import binarydm
from binarydm.algorithms import preset
from binarydm.kernels.inference import (
    GraphedForward,
    W1A1Conv2d,
    W1A4Conv2d,
    eligible,
    eligible_w1a1,
    fuse_norm_silu_,
    w1a4_inference_,
)
from binarydm.quant import QuantConv2d
from conftest import make_tiny_unet


def _w1a4_unet(**overrides):
    model = make_tiny_unet(**{"block_out_channels": (32, 32), "norm_num_groups": 8, **overrides})
    binarydm.binarize_(model, "w1a4")
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 3, 8, 8, generator=g), torch.tensor([3, 700])
    binarydm.calibrate_(model, x, t)
    return model.eval(), x, t


def test_every_binarized_conv_is_swapped_and_the_rest_is_left_alone():
    model, x, t = _w1a4_unet()
    report = w1a4_inference_(model)
    swapped = {n for n, why in report.items() if why == "w1a4"}
    assert swapped and all(isinstance(model.get_submodule(n), W1A4Conv2d) for n in swapped)
    # conv_in / conv_out are kept 8-bit layers: not binary, so they stay fake-quantized, with the reason
    for name in ("conv_in", "conv_out"):
        assert isinstance(model.get_submodule(name), QuantConv2d) and "LMB" in report[name]
    assert not any(isinstance(m, QuantConv2d) and eligible(m) is None for m in model.modules())


def test_w1a4_mode_matches_the_fake_quantized_unet():
    model, x, t = _w1a4_unet()
    with torch.no_grad():
        expected = model(x, t).sample
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the CPU fallback warns once
            w1a4_inference_(model)
            got = model(x, t).sample
    # Same integer arithmetic, different float summation order: agreement to float rounding.
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert not torch.equal(got, torch.zeros_like(got))


def test_cuda_graph_option_wraps_the_forward_and_leaves_cpu_calls_alone():
    # cuda_graph=True: the forward replays CUDA graphs on the GPU; on the CPU (and with other arguments)
    # it is the plain forward, return_dict included; asking twice wraps once.
    model, x, t = _w1a4_unet()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the CPU fallback warns once
        w1a4_inference_(model)
        expected = model(x, t).sample
        w1a4_inference_(model, cuda_graph=True)
        w1a4_inference_(model, cuda_graph=True)
        assert isinstance(model.forward, GraphedForward) and not isinstance(model.forward.forward, GraphedForward)
        assert torch.equal(model(x, t).sample, expected)
        assert torch.equal(model(x, t, return_dict=False)[0], expected)
    assert model.forward.graphs == {}  # nothing captured off the GPU


@pytest.mark.gpu
def test_cuda_graph_replays_what_the_eager_forward_computes():
    from binarydm.kernels import cuda as kcuda

    if not kcuda.is_available():
        pytest.skip("CuPy cannot load the kernel here")
    model, x, t = _w1a4_unet()
    model = model.cuda().half()
    with torch.no_grad():
        w1a4_inference_(model)
        xs = [torch.randn(2, 3, 8, 8, device="cuda", dtype=torch.half) for _ in range(2)]
        expected = [model(xi, ti).sample for xi, ti in zip(xs, (torch.tensor(5), torch.tensor(900)))]
        w1a4_inference_(model, cuda_graph=True)
        got = [model(xi, ti).sample for xi, ti in zip(xs, (torch.tensor(5), torch.tensor(900)))]
    assert len(model.forward.graphs) == 1  # one signature, captured once, replayed with new inputs
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-3, atol=1e-3)


def test_one_layer_equals_its_fake_quantized_conv_including_two_bases_and_stride():
    model, x, t = _w1a4_unet()
    layers = [m for m in model.modules() if isinstance(m, QuantConv2d) and eligible(m) is None]
    assert any(m.weight_quantizer.n_bases == 2 for m in layers) and any(m.stride == (2, 2) for m in layers)
    for layer in layers:
        inp = torch.randn(2, layer.in_channels, 8, 8, generator=torch.Generator().manual_seed(1))
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.testing.assert_close(W1A4Conv2d(layer, torch.float32)(inp), layer(inp), rtol=1e-5, atol=1e-5)


def test_layers_the_kernel_cannot_run_say_why():
    model, _, _ = _w1a4_unet()
    layer = next(m for m in model.modules() if isinstance(m, QuantConv2d) and eligible(m) is None)
    layer.act_quantizer.enabled = False
    assert "LSQ" in eligible(layer)
    with pytest.raises(TypeError, match="QuantConv2d"):
        W1A4Conv2d(torch.nn.Conv2d(3, 3, 3))


def _unfused_then_fused(model, x, t):
    """(the output with the convs swapped, the names fuse_norm_silu_ then fused, the output after it)."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the CPU fallback warns once
        w1a4_inference_(model, fuse=False)
        unfused = model(x, t).sample
        fused = fuse_norm_silu_(model)
        return unfused, fused, model(x, t).sample


def test_fused_norm_silu_blocks_compute_what_the_unfused_blocks_do():
    # fuse_norm_silu_ replaces diffusers' ResnetBlock2D.forward for blocks whose convs were swapped; on the
    # CPU each conv then runs on F.silu(norm(x)) as before, so the model's output must not change at all.
    model, x, t = _w1a4_unet()
    unfused, fused, got = _unfused_then_fused(model, x, t)
    kinds = {n: model.get_submodule(n).forward.__func__.__name__ for n in fused}
    assert sorted(n for n, k in kinds.items() if k == "_fused_resnet_forward") == sorted(
        n for n, m in model.named_modules() if type(m).__name__ == "ResnetBlock2D")
    assert sorted(n for n, k in kinds.items() if k == "_fused_upsample_forward") == sorted(
        n for n, m in model.named_modules() if type(m).__name__ == "Upsample2D")
    assert torch.equal(got, unfused)
    # A wrong fused forward (here: the norm skipped) would change the output: the comparison can fail.
    block = model.get_submodule(fused[0])
    norm = block.norm1
    block.norm1 = torch.nn.Identity()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert not torch.equal(model(x, t).sample, unfused)
    finally:
        block.norm1 = norm


def test_resampling_blocks_are_fused_and_compute_what_the_unfused_blocks_do():
    # ResNet blocks that upsample (nearest 2x) or downsample (average pool) inside: conv2 always takes its
    # norm, conv1 of the upsampling block its norm and the upsampling (the codes of the block's input are
    # upsampled, :func:`packing.upsample_nearest`), conv1 of the downsampling block runs on the pooled
    # SiLU(norm(x)). On the CPU the upsampled codes go through the reference conv, so the output is the
    # unfused model's exactly, and dropping the upsampling changes it.
    model, x, t = _w1a4_unet(down_block_types=("ResnetDownsampleBlock2D", "DownBlock2D"),
                             up_block_types=("ResnetUpsampleBlock2D", "UpBlock2D"))
    unfused, fused, got = _unfused_then_fused(model, x, t)
    resampling = [n for n, m in model.named_modules()
                  if type(m).__name__ == "ResnetBlock2D" and (m.upsample is not None or m.downsample is not None)]
    assert {"down_blocks.0.downsamplers.0", "up_blocks.0.upsamplers.0"} <= set(resampling)
    assert set(resampling) <= set(fused)
    assert torch.equal(got, unfused)
    with torch.no_grad():
        up = model.get_submodule("up_blocks.0.upsamplers.0")
        calls = []
        normed = up.conv1.normed
        up.conv1.normed = lambda h, norm, upsample=False: calls.append(upsample) or normed(h, norm)
        try:
            with pytest.raises(RuntimeError):  # conv1 without the upsampling: the residual sum cannot add up
                model(x, t)
        finally:
            del up.conv1.normed
    assert calls == [True]


def _w1a1_unet(name="bidm", **options):
    model = make_tiny_unet(block_out_channels=(32, 32), norm_num_groups=8)
    binarydm.binarize_(model, preset(name, **options))
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 3, 8, 8, generator=g), torch.tensor([3, 700])
    binarydm.calibrate_(model, x, t)
    with torch.no_grad():  # thresholds, scale-map biases and shortcut scales away from their initial values
        for m in model.modules():
            if isinstance(m, QuantConv2d) and eligible_w1a1(m) is None:
                m.act_quantizer.beta.normal_(0, 0.2) if hasattr(m.act_quantizer, "beta") else None
                for p in m.weight_quantizer.parameters():
                    p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval(), x, t


@pytest.mark.parametrize("name, options", [("bidm", {}), ("bidm", {"projection": False, "fp_skip": False}),
                                           ("reactnet", {}), ("bireal", {})])
def test_w1a1_layers_equal_their_fake_quantized_convs_and_the_unet_follows(name, options):
    model, x, t = _w1a1_unet(name, **options)
    layers = [m for m in model.modules() if isinstance(m, QuantConv2d) and eligible_w1a1(m) is None]
    assert layers and any(m.stride == (2, 2) for m in layers)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the CPU fallback warns once
        for layer in layers:
            inp = torch.randn(2, layer.in_channels, 8, 8, generator=torch.Generator().manual_seed(1))
            torch.testing.assert_close(W1A1Conv2d(layer, torch.float32)(inp), layer(inp), rtol=1e-5, atol=1e-5)
        expected = model(x, t).sample
        if hasattr(model, "timestep_connection"):
            model.timestep_connection.reset()
        report = w1a4_inference_(model)
        assert {n for n, why in report.items() if why == "w1a1"} and "w1a4" not in report.values()
        got = model(x, t).sample
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_w1a1_operand_is_the_sign_as_codes_with_zero_point_one():
    from binarydm.kernels.packing import pack_sign_input

    x = torch.tensor([[[[-0.5, 0.0], [-0.0, 2.0]]], [[[0.1, -3.0], [0.3, -0.2]]]]).reshape(1, 2, 2, 2)
    packed = pack_sign_input(x, torch.tensor([0.0, 0.2]))
    assert packed.zero_point == 1 and float(packed.step) == 1.0
    # sign(0) = sign(-0.0) = +1; the second channel is shifted by 0.2 before the sign
    expected = torch.tensor([[[[-1, 1], [1, 1]], [[1, -1], [1, 1]]]], dtype=torch.float64)
    assert torch.equal(packed.dequantize(), expected)
