"""The Python side of the W1A4 kernel path, on the CPU: device moves of a swapped layer, the quantize+pack
launcher's arguments, cubin staleness, and the benchmark's timing (issue 15, item 5)."""

import json
import time
import types
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from binarydm.kernels import cuda as kcuda
from binarydm.kernels.inference import W1A4Conv2d
from binarydm.quant.layers import QuantConv2d
from binarydm.quant.lmb import LMB
from binarydm.quant.lsq import LSQ


def _layer(seed=0, cin=40, cout=12):
    torch.manual_seed(seed)
    conv = nn.Conv2d(cin, cout, 3, padding=1)
    aq = LSQ(4)
    aq.initialize_(torch.randn(2, cin, 6, 6))
    return QuantConv2d.from_float(conv, LMB(cout, 4, n_bases=2).initialize_(conv.weight.detach()), aq)


def _operand_devices(m: W1A4Conv2d) -> set:
    p = m.packed
    return {t.device.type for t in (p.bits, p.alpha, p.row_sums, p.bias, m.step, getattr(m, "scale", m.step))}


def test_half_after_the_swap_keeps_the_packed_operands_where_they_are():
    m = W1A4Conv2d(_layer())
    # A device move moves them; a dtype-only conversion (.half()) must not move them back to the CPU,
    # which the old probe fn(torch.zeros(())) did, so that the next CUDA forward raised. The meta
    # device stands in for CUDA here.
    m.to("meta")
    assert _operand_devices(m) == {"meta"}
    m.half()
    assert _operand_devices(m) == {"meta"}
    # Integer bits and float32 scales keep their dtypes whatever the model's dtype.
    assert m.packed.bits.dtype == torch.int32 and m.packed.alpha.dtype == torch.float32
    assert getattr(m, "scale", m.step).dtype == torch.float32


def test_half_after_the_swap_runs_on_the_reference():
    layer = _layer(1)
    m32 = W1A4Conv2d(layer)
    m16 = W1A4Conv2d(layer).half()
    assert _operand_devices(m16) == {"cpu"}
    x = torch.randn(2, 40, 6, 6).half()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the one-time CPU fallback warning
        y16 = m16(x)
        y32 = m32(x.float())
    # fp16 output = the float32 epilogue rounded once to fp16 (the reference's and the kernel's rule).
    assert y16.dtype == torch.float16 and torch.equal(y16, y32.half())


def test_scale_is_the_epilogue_scale_of_the_reference():
    from binarydm.kernels import reference
    from binarydm.kernels.packing import PackedActivation

    m = W1A4Conv2d(_layer(2))
    x = PackedActivation(torch.zeros(1, 1, 1, 8, dtype=torch.int32), m.step, 8, 40)
    assert torch.equal(m.scale, reference.epilogue_scale(m.packed, x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_quantize_kernels_read_the_input_in_place_and_the_step_by_pointer(dtype):
    x = torch.randn(2, 45, 5, 7).to(dtype).contiguous(memory_format=torch.channels_last)
    codes = torch.empty(2, 5, 7, 8, dtype=torch.int32)
    step = torch.tensor(0.25)
    name, args = kcuda._quantize_args(x, codes, step, -8, 7, 8)
    assert name == kcuda.PACK_KERNELS[dtype]
    # The kernel reads x itself (no float32 copy) with its own strides, and the step from memory: no
    # .item(), which on a CUDA tensor is a host sync per layer.
    assert int(args[0]) == x.data_ptr() and int(args[1]) == codes.data_ptr()
    assert [int(a) for a in args[6:10]] == list(x.stride())
    assert int(args[11]) == step.data_ptr()
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        kcuda._quantize_args(x.double(), codes, step, -8, 7, 8)
    name, args = kcuda._quantize_args(x, codes, step, -8, 7, 3, kcuda.BYTES_KERNELS)  # s8 codes, 3 units a pixel
    assert name == kcuda.BYTES_KERNELS[dtype] and int(args[10]) == 3 and int(args[11]) == step.data_ptr()


@pytest.mark.parametrize("edited", ["w1a4_conv.cu", "w1a4_common.cuh"])
def test_cubin_of_an_edited_source_is_not_loaded(tmp_path, monkeypatch, edited):
    for name in ("w1a4_conv.cu", "w1a4_common.cuh"):
        (tmp_path / name).write_text((kcuda.SOURCE.parent / name).read_text())
    source = tmp_path / "w1a4_conv.cu"
    monkeypatch.setattr(kcuda, "SOURCE", source)
    monkeypatch.setattr(kcuda, "CUBIN_DIR", tmp_path / "build")
    monkeypatch.delenv("BINARYDM_W1A4_CUBIN", raising=False)

    def fake_nvcc(cmd, **kwargs):  # stands in for nvcc: writes the output it is asked for
        Path(cmd[cmd.index("-o") + 1]).write_bytes(b"cubin")
        return types.SimpleNamespace(returncode=0, stderr="")

    monkeypatch.setattr(kcuda, "subprocess", types.SimpleNamespace(run=fake_nvcc))
    monkeypatch.setattr(kcuda, "shutil", types.SimpleNamespace(which=lambda _: "/usr/bin/nvcc"))
    built = kcuda.build_cubin("sm_90a")
    assert kcuda._cubin_for(9, 0) == built
    (tmp_path / edited).write_text((tmp_path / edited).read_text() + "\n// edited\n")
    assert kcuda._cubin_for(9, 0) is None  # the old cubin is stale: compile the source instead


# ---- tools/bench_kernel.py ----------------------------------------------------------------------
def test_bench_times_many_calls_and_reports_per_call():
    import bench_kernel

    calls = []

    def fn(i):
        calls.append(i)
        time.sleep(0.002)

    us = bench_kernel.time_calls(fn, launches=20, repeats=3, device=torch.device("cpu"))
    assert len(calls) == 3 + 20 * 3  # warm-up, then 3 timings of 20 back-to-back calls
    assert calls[3:23] == list(range(20))  # each call gets its index: operand sets rotate
    assert 1800 < us < 20000  # per call, not per timing (a timing of 20 calls is >= 40,000 us)


@pytest.mark.slow
def test_bench_dry_run_writes_its_json(tmp_path):
    import bench_kernel

    path = tmp_path / "bench.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = bench_kernel.main(["--dry-run", "--no-unet", "--bases", "1", "--json", str(path)])
    data = json.loads(path.read_text())
    assert rc == 0 and data["complete"] and data["dry_run"] and not data["errors"]
    # two shapes, four variants (bmma, bgmma, bgmma_ws, mma: the reference on the CPU; bmma1 only where
    # split-K splits)
    assert len(data["layers"]) == 2 * 4
    assert {r["variant"] for r in data["layers"]} == {"bmma", "bgmma", "bgmma_ws", "mma"}
    row = data["layers"][0]
    assert row["fp16_us"] > 0 and row["w1a4_us"] > 0 and row["conv_us"] > 0 and row["fp16_graph_us"] is None


def test_bench_table_shows_the_fused_norm_timings_of_the_mma_rows():
    # The GPU run adds norm_unfused_graph_us / norm_fused_graph_us / copy_graph_us to mma rows of 3x3 convs
    # (no CPU run can time them): the report lists them in their own table, one line per shape and batch,
    # with the fused pass against the copy of its input (issue 29's yardstick).
    import bench_kernel

    row = dict(batch=256, cin=128, cout=128, k=3, stride=1, pad=1, h=32, w=32, bases=1, variant="mma",
               fp16_graph_us=200.0, w1a4_graph_us=150.0, conv_graph_us=120.0, fp16_us=210.0, w1a4_us=160.0,
               speedup=1.33, tops_w1a4=500.0, norm_unfused_graph_us=61.5, norm_fused_graph_us=23.25,
               copy_graph_us=15.5)
    text = bench_kernel.table(dict(variants=["mma"], device="H200", layers=[row, dict(row, bases=2)], unet=[]))
    lines = [line for line in text.splitlines() if line.startswith("| 256 | 128 | 32x32 |")]
    assert lines == ["| 256 | 128 | 32x32 | mma | 61.5 | 23.2 | 15.5 | 1.50x |"]
    old = dict(row, copy_graph_us=None)  # a run before the copy was timed
    text = bench_kernel.table(dict(variants=["mma"], device="H200", layers=[old], unet=[]))
    assert "| 256 | 128 | 32x32 | mma | 61.5 | 23.2 | - | - |" in text
