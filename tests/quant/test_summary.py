import pytest
import torch
from torch import nn

import binarydm
from binarydm.quant import QuantConfig


def test_totals_of_a_hand_built_network_equal_hand_computed_numbers():
    net = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1, bias=False), nn.GroupNorm(2, 8))
    binarydm.binarize_(net, QuantConfig(keep=(), dual_levels=0, a_bits=4))
    x = torch.randn(2, 4, 6, 6)
    binarydm.calibrate_(net, x)
    s = binarydm.summary(net, x)

    macs1 = 6 * 6 * 8 * (4 * 3 * 3)  # output positions x channels x (C_in x k x k)
    macs2 = 6 * 6 * 8 * 8
    assert [r.macs for r in s.rows] == [macs1, macs2]
    assert s.ops == pytest.approx((macs1 + macs2) * 1 * 4 / 64)
    assert s.fp_ops == macs1 + macs2
    # conv1: 288 one-bit weights, 8 fp32 biases, 8 fp32 scales s1, one fp32 step;
    # conv2: 64 one-bit weights, 8 scales, one step; GroupNorm: 16 fp32 parameters.
    bits = (288 + 8 * 32 + 8 * 32 + 32) + (64 + 8 * 32 + 32) + 16 * 32
    assert s.storage_bits == bits
    assert s.fp_storage_bits == (288 + 8 + 64 + 16) * 32
    assert s.storage_ratio == pytest.approx((288 + 8 + 64 + 16) * 32 / bits)
    assert s.ops_ratio == pytest.approx(64 / 4)
    assert s.params == 288 + 8 + 64 + 16
    assert "total:" in str(s)


def test_dual_basis_and_disabled_layers_are_counted_as_they_run(tiny_unet, unet_batch):
    binarydm.binarize_(tiny_unet, "w1a4")
    binarydm.calibrate_(tiny_unet, *unet_batch)
    s = binarydm.summary(tiny_unet, *unet_batch)
    rows = {r.name: r for r in s.rows}
    assert rows["down_blocks.0.resnets.0.conv1"].w_bits == 2
    assert rows["mid_block.resnets.0.conv1"].w_bits == 1
    assert rows["conv_in"].w_bits == 8 and rows["conv_in"].a_bits == 8
    assert rows["mid_block.attentions.0.matmul"].w_bits == 4
    # Attention at 4x4 (the inner level of an 8x8 UNet) with 16 channels: 2 * 16 * 16 * 16 MACs.
    assert rows["mid_block.attentions.0.matmul"].macs == 2 * 16 * 16 * 16
    assert s.storage_ratio > 5 and s.ops_ratio > 5
    binarydm.set_quant_state_(tiny_unet, weights=False, activations=False)
    fp = binarydm.summary(tiny_unet, *unet_batch)
    assert fp.ops == pytest.approx(fp.fp_ops)
    assert fp.storage_ratio == pytest.approx(1.0)
