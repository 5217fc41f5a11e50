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
    # Attention at 4x4 (the inner level of an 8x8 UNet) with 16 channels: Q K^T and P V, 16 * 16 * 16 MACs each,
    # both at 4 x 4 bits: 16/64 OPs per MAC.
    for product in ("qk", "pv"):
        row = rows[f"mid_block.attentions.0.{product}"]
        assert (row.w_bits, row.a_bits, row.macs, row.ops) == (4, 4, 16**3, 16**3 / 4)
    assert s.storage_ratio > 5 and s.ops_ratio > 5
    binarydm.set_quant_state_(tiny_unet, weights=False, activations=False)
    fp = binarydm.summary(tiny_unet, *unet_batch)
    assert fp.ops == pytest.approx(fp.fp_ops)
    assert fp.storage_ratio == pytest.approx(1.0)


def test_ops_per_mac_is_bibench_convention():
    from binarydm.quant.summary import ops_per_mac

    assert [ops_per_mac(*b) for b in ((1, 1), (1, 4), (2, 4), (4, 4), (8, 8), (1, 32), (32, 32))] == [
        1 / 64, 4 / 64, 8 / 64, 16 / 64, 1.0, 0.5, 1.0]


def test_each_attention_product_counts_at_its_own_operand_widths(tiny_unet, unet_batch):
    binarydm.binarize_(tiny_unet, "w1a4")
    binarydm.calibrate_(tiny_unet, *unet_batch)
    tiny_unet.mid_block.attentions[0].processor.p_quantizer.enabled = False  # P in full precision
    rows = {r.name: r for r in binarydm.summary(tiny_unet, *unet_batch).rows}
    qk, pv = rows["mid_block.attentions.0.qk"], rows["mid_block.attentions.0.pv"]
    assert (qk.w_bits, qk.a_bits, qk.ops) == (4, 4, qk.macs / 4)
    assert (pv.w_bits, pv.a_bits, pv.ops) == (32, 4, pv.macs)  # 32 x 4 / 64 > 1: a full-precision MAC


def test_bipft_attention_products_are_counted():
    from binarydm.algorithms import bipft, preset

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = bipft.BiPFTSelfAttention(8, 2)

        def forward(self, x):
            return self.attn(x)

    model = binarydm.binarize_(Block(), preset("bipft"))
    x = torch.randn(3, 5, 8)
    bipft.calibrate_(model, x)
    s = binarydm.summary(model, x)
    rows = {r.name: r for r in s.rows}
    L, hidden, heads = 5, 8, 2
    expected = {  # name: (MACs per sample, bits, bits)
        "attn.qk": (L * L * hidden, 1, 1), "attn.pv": (L * L * hidden, 1, 1),
        "attn.estimators": (5 * L * hidden * heads, 32, 32), "attn.qk_rank1": (3 * L * L * heads, 32, 32),
        "attn.pv_rank1": (L * L * heads, 1, 32),
    }
    for name, (macs, bx, by) in expected.items():
        assert (rows[name].macs, rows[name].w_bits, rows[name].a_bits) == (macs, bx, by), name
    assert rows["attn.qk"].ops == L * L * hidden / 64 and rows["attn.pv_rank1"].ops == L * L * heads / 2
    linear = 4 * L * hidden * hidden  # to_q, to_k, to_v, to_out at W1A1
    assert s.fp_ops == linear + sum(m for m, _, _ in expected.values())
    assert s.ops == pytest.approx(linear / 64 + sum(m * min(1, a * b / 64) for m, a, b in expected.values()))


def test_breakdown_groups_the_rows_by_operand_widths(tiny_unet, unet_batch):
    binarydm.binarize_(tiny_unet, "w1a4")
    binarydm.calibrate_(tiny_unet, *unet_batch)
    s = binarydm.summary(tiny_unet, *unet_batch)
    b = s.breakdown()
    assert set(b) == {"W1A4", "W2A4", "W8A8", "matmul 4x4"}
    assert sum(m for m, _ in b.values()) == sum(r.macs for r in s.rows)
    assert sum(o for _, o in b.values()) == pytest.approx(s.ops)
    assert b["W2A4"][1] == pytest.approx(b["W2A4"][0] / 8) and b["W8A8"][1] == b["W8A8"][0]
    assert "OPs by operand widths: " in str(s)
