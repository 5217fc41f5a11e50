import copy

import pytest
import torch
from torch import nn

import binarydm
from binarydm.quant import (
    LMB,
    LSQ,
    QuantAttnProcessor,
    QuantConfig,
    QuantConv2d,
    QuantLinear,
    activation_quantizers,
    progressive_groups,
    quantizers,
    set_quant_state_,
)


def _convert(unet, batch, config="w1a4"):
    binarydm.binarize_(unet, config)
    binarydm.calibrate_(unet, *batch)
    return unet


def test_all_quantizers_off_reproduces_the_float_model_exactly(tiny_unet, unet_batch):
    tiny_unet.eval()
    with torch.no_grad():
        expected = tiny_unet(*unet_batch).sample
    student = _convert(copy.deepcopy(tiny_unet), unet_batch)
    set_quant_state_(student, weights=False, activations=False)
    with torch.no_grad():
        assert torch.equal(student(*unet_batch).sample, expected)
    set_quant_state_(student, weights=True, activations=True)
    with torch.no_grad():
        assert not torch.allclose(student(*unet_batch).sample, expected)


def test_which_layers_are_kept_binarized_and_dual(tiny_unet, unet_batch):
    _convert(tiny_unet, unet_batch)
    # Kept layers are 8-bit (keep_bits=8 in the w1a4 preset), matched by name.
    assert isinstance(tiny_unet.conv_in.weight_quantizer, LSQ) and tiny_unet.conv_in.weight_quantizer.bits == 8
    assert isinstance(tiny_unet.time_embedding.linear_1.weight_quantizer, LSQ)
    convs = [(n, m) for n, m in tiny_unet.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))]
    assert not any(type(m) in (nn.Conv2d, nn.Linear) for m in tiny_unet.modules())
    for name, m in convs:
        if name.startswith(("conv_in", "conv_out", "time_embedding")):
            continue
        assert isinstance(m.weight_quantizer, LMB), name
        outer = name.startswith(("down_blocks.0.", "up_blocks.1."))  # 2 levels: outer = level 0
        assert m.weight_quantizer.n_bases == (2 if outer else 1), name
        assert m.act_quantizer.bits == 4
    procs = [m for m in tiny_unet.modules() if isinstance(m, QuantAttnProcessor)]
    assert len(procs) == 4  # down level 1 (1), mid block (1), up level 1 (layers_per_block + 1 = 2)


def test_keep_full_precision_and_filter_fn(tiny_unet, unet_batch):
    binarydm.binarize_(tiny_unet, QuantConfig(keep_bits=32), filter_fn=lambda m, name: "attentions" not in name)
    assert type(tiny_unet.conv_in) is nn.Conv2d and type(tiny_unet.time_embedding.linear_2) is nn.Linear
    assert type(tiny_unet.down_blocks[1].attentions[0].to_q) is nn.Linear
    assert not isinstance(tiny_unet.down_blocks[1].attentions[0].processor, QuantAttnProcessor)
    assert isinstance(tiny_unet.down_blocks[1].resnets[0].conv1, QuantConv2d)


def test_w1a32_leaves_activations_and_attention_in_full_precision(tiny_unet):
    binarydm.binarize_(tiny_unet, "w1a32")
    assert not activation_quantizers(tiny_unet)
    assert isinstance(tiny_unet.mid_block.resnets[0].conv1.weight_quantizer, LMB)


def test_config_errors_name_the_valid_choices(tiny_unet):
    # One table of names: the core's presets and every algorithm of binarydm.algorithms.
    with pytest.raises(ValueError, match=r"valid presets: \['baseline', .*'w1a32', 'w1a4', 'w1a8', 'xnor', 'xnorpp'\]"):
        binarydm.binarize_(tiny_unet, "w1a3")
    with pytest.raises(ValueError, match="valid fields"):
        QuantConfig.from_dict({"a_bit": 4})
    with pytest.raises(ValueError, match="valid names"):
        binarydm.binarize_(tiny_unet, QuantConfig(weight="nope"))
    with pytest.raises(ValueError, match="a_bits"):
        QuantConfig(a_bits=0)
    assert QuantConfig.preset("w1a4", a_bits=8) == QuantConfig(a_bits=8)
    assert QuantConfig.from_dict(QuantConfig(dual_levels=2).to_dict()) == QuantConfig(dual_levels=2)


def test_double_conversion_is_refused(tiny_unet):
    binarydm.binarize_(tiny_unet)
    with pytest.raises(ValueError, match="already quantized"):
        binarydm.binarize_(tiny_unet)


def test_uncalibrated_activation_quantizer_raises(tiny_unet, unet_batch):
    binarydm.binarize_(tiny_unet)
    with pytest.raises(RuntimeError, match="calibrate_"):
        tiny_unet(*unet_batch)


def test_calibrate_sets_the_lsq_formula(tiny_unet, unet_batch):
    binarydm.binarize_(tiny_unet)
    seen = {}
    conv = tiny_unet.mid_block.resnets[0].conv1
    conv.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0].detach().clone()))
    binarydm.calibrate_(tiny_unet, *unet_batch)
    expected = 2 * seen["x"].abs().mean() / (7 ** 0.5)
    torch.testing.assert_close(conv.act_quantizer.step.data, expected)
    assert all(q.initialized for q in activation_quantizers(tiny_unet))


def test_state_dict_round_trip_after_training_keeps_every_scale(tiny_unet, unet_batch):
    student = _convert(tiny_unet, unet_batch)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        student(*unet_batch).sample.square().mean().backward()
        opt.step()
    state = copy.deepcopy(student.state_dict())
    # A fresh conversion initialises scales from its own (different) weights; loading must overwrite
    # all of them and must not re-initialise anything afterwards.
    from conftest import make_tiny_unet

    fresh = binarydm.binarize_(make_tiny_unet(seed=5), "w1a4")
    fresh.load_state_dict(state)
    for (name, q), (_, q2) in zip(quantizers(student), quantizers(fresh)):
        assert q2.initialized and q2.enabled == q.enabled, name
        for (pn, p), (_, p2) in zip(q.named_parameters(), q2.named_parameters()):
            assert torch.equal(p, p2), f"{name}.{pn}"
    with torch.no_grad():
        assert torch.equal(fresh(*unet_batch).sample, student(*unet_batch).sample)
        # A second forward must still use the loaded steps (no lazy re-initialisation).
        assert torch.equal(fresh(*unet_batch).sample, student(*unet_batch).sample)


def test_quantizer_switches_survive_the_state_dict(tiny_unet, unet_batch):
    student = _convert(tiny_unet, unet_batch)
    set_quant_state_(student, weights=False, prefixes=["down_blocks.0"])
    from conftest import make_tiny_unet

    fresh = binarydm.binarize_(make_tiny_unet(), "w1a4")
    fresh.load_state_dict(student.state_dict())
    assert not fresh.down_blocks[0].resnets[0].conv1.weight_quantizer.enabled
    assert fresh.down_blocks[1].resnets[0].conv1.weight_quantizer.enabled


def test_progressive_groups_go_from_the_middle_outwards(tiny_unet):
    groups = progressive_groups(tiny_unet)
    assert [g for g, _ in groups] == ["mid_block", "level_1", "level_0"]
    assert groups[1][1] == ["down_blocks.1", "up_blocks.0"]
    assert groups[2][1] == ["down_blocks.0", "up_blocks.1"]
    assert progressive_groups(nn.Sequential(nn.Linear(2, 2))) == [("all", [""])]


def test_attention_operands_are_quantized(tiny_unet, unet_batch):
    student = _convert(tiny_unet, unet_batch)
    proc = student.mid_block.attentions[0].processor
    seen = {}
    proc.p_quantizer.register_forward_hook(lambda m, i, o: seen.setdefault("p", o.detach()))
    proc.v_quantizer.register_forward_hook(lambda m, i, o: seen.setdefault("v", o.detach()))
    student(*unet_batch)
    p_codes = seen["p"] / proc.p_quantizer.step.detach()
    torch.testing.assert_close(p_codes, p_codes.round(), rtol=0, atol=1e-4)
    assert p_codes.min() >= 0 and p_codes.max() <= 15
    v_codes = seen["v"] / proc.v_quantizer.step.detach()
    assert v_codes.min() >= -8 and v_codes.max() <= 7


def test_conditional_unet_is_converted(unet_batch):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn", cross_attention_dim=12, norm_num_groups=4, attention_head_dim=4,
    )
    x, t = unet_batch
    cond = torch.randn(4, 5, 12)
    unet.eval()
    with torch.no_grad():
        expected = unet(x, t, cond).sample
    binarydm.binarize_(unet, "w1a4")
    binarydm.calibrate_(unet, x, t, cond)
    assert isinstance(unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2.processor, QuantAttnProcessor)
    assert isinstance(unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2.to_k, QuantLinear)
    assert type(unet.time_embedding.linear_1) is QuantLinear and unet.time_embedding.linear_1.weight_quantizer.bits == 8
    with torch.no_grad():
        out = unet(x, t, cond).sample
        assert out.shape == expected.shape and torch.isfinite(out).all()
        set_quant_state_(unet, weights=False, activations=False)
        assert torch.equal(unet(x, t, cond).sample, expected)
