"""W1A4 convolution: packing, the exact reference, the CUDA source, the loader, and (on a GPU) the kernels.

The reference is checked against float64 F.conv2d of the dequantized operands and against a direct
int64 sum written here; the kernels are checked against the reference bit for bit.
"""

import shutil
import subprocess
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from binarydm.kernels import cuda as kcuda
from binarydm.kernels import packing
from binarydm.kernels import reference
from binarydm.kernels.packing import (
    PackedActivation,
    bmma_chunks,
    bmma_groups,
    bmma_planes_reference,
    bmma_weight_fragments,
    pack_activation,
    pack_codes,
    pack_quant_conv,
    pack_quant_conv_input,
    pack_sign_input,
    pack_weight,
    pack_weight_bits,
    padded_channels,
    unpack_codes,
    unpack_weight_bits,
)
from binarydm.quant.layers import QuantConv2d
from binarydm.quant.lmb import LMB
from binarydm.quant.lsq import LSQ

# (C_in, C_out, kernel, stride, padding, n_bases, zero point): C_in below, at and above multiples of 32,
# stride 2, 1x1, padding with a non-zero zero point (the border correction), one and two bases.
SHAPES = [
    (40, 24, 3, 1, 1, 2, 8),
    (70, 33, 3, 2, 1, 1, 8),
    (32, 16, 1, 1, 0, 2, 8),
    (5, 7, 3, 2, 0, 2, 3),
    (64, 8, 3, 1, 1, 1, 0),
    (33, 65, 1, 2, 0, 2, 15),
]


def _random_operands(cin, cout, k, s, p, nb, z, gen, n=2, h=9, w=11, bias=True, device="cpu"):
    bits = torch.randint(0, 2, (nb, cout, cin, k, k), generator=gen, dtype=torch.uint8)
    alpha = torch.rand(nb, cout, generator=gen) + 0.05
    b = torch.randn(cout, generator=gen) if bias else None
    wp = pack_weight(bits, alpha, b, s, p).to(device)
    q = torch.randint(0, 16, (n, cin, h, w), generator=gen)
    step = torch.rand((), generator=gen) + 0.01
    return PackedActivation(pack_codes(q).to(device), step.to(device), z, cin), wp, bits, q


# ---- packing ------------------------------------------------------------------------------------
def test_padded_channels():
    assert [padded_channels(c) for c in (1, 31, 32, 33, 64, 70)] == [32, 32, 32, 64, 64, 96]


@pytest.mark.parametrize("cin", [5, 32, 70])
def test_weight_bits_round_trip(cin):
    gen = torch.Generator().manual_seed(cin)
    bits = torch.randint(0, 2, (2, 6, cin, 3, 3), generator=gen, dtype=torch.uint8)
    words = pack_weight_bits(bits)
    assert words.dtype == torch.int32 and words.shape == (2, 6, 9, padded_channels(cin) // 32)
    assert torch.equal(unpack_weight_bits(words, cin, 3), bits)


def test_weight_bit_positions():
    # Channel 32k + j of tap t = ky*KW + kx is bit j of word k; bit 31 reads as the int32 sign bit.
    bits = torch.zeros(1, 1, 64, 3, 3, dtype=torch.uint8)
    bits[0, 0, 37, 1, 2] = 1
    bits[0, 0, 31, 0, 0] = 1
    words = pack_weight_bits(bits)
    assert words[0, 0, 5, 1].item() == 1 << 5
    assert words[0, 0, 0, 0].item() == -(2**31)
    assert words.ne(0).sum().item() == 2


@pytest.mark.parametrize("cin", [3, 8, 40])
def test_codes_round_trip_and_positions(cin):
    gen = torch.Generator().manual_seed(cin)
    q = torch.randint(0, 16, (2, cin, 5, 4), generator=gen)
    words = pack_codes(q)
    assert words.shape == (2, 5, 4, padded_channels(cin) // 8)
    assert torch.equal(unpack_codes(words, cin), q.to(torch.int32))
    one = torch.zeros(1, cin, 1, 1, dtype=torch.int64)
    one[0, cin - 1] = 15
    # Channel 8k + j is nibble j of word k; padded channels hold code 0.
    k, j = divmod(cin - 1, 8)
    expected = torch.zeros(padded_channels(cin) // 8, dtype=torch.int64)
    expected[k] = 15 << (4 * j)
    assert torch.equal(pack_codes(one)[0, 0, 0].to(torch.int64) & 0xFFFFFFFF, expected)


def test_pack_rejects_out_of_range():
    with pytest.raises(ValueError, match="0..15"):
        pack_codes(torch.full((1, 2, 2, 2), 16))
    with pytest.raises(ValueError, match="0 \\(for -1\\) or 1"):
        pack_weight(torch.full((1, 2, 3, 1, 1), 2, dtype=torch.int64), torch.ones(1, 2))


def test_row_sums_are_signed_channel_sums():
    gen = torch.Generator().manual_seed(3)
    bits = torch.randint(0, 2, (2, 4, 45, 3, 3), generator=gen, dtype=torch.uint8)
    wp = pack_weight(bits, torch.ones(2, 4))
    signs = bits.to(torch.int64) * 2 - 1
    assert torch.equal(wp.row_sums.to(torch.int64), signs.sum(2).reshape(2, 4, 9))


def test_pack_activation_is_lsq_code_plus_zero_point():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 10, 4, 4, generator=gen) * 2
    lsq = LSQ(4)
    lsq.initialize_(x)
    packed = pack_activation(x, lsq.step.detach(), lsq.qn, lsq.qp)
    assert packed.zero_point == 8
    assert torch.equal(packed.unpack() - 8, lsq.codes(x))
    assert torch.allclose(packed.dequantize().float(), lsq(x).detach(), rtol=0, atol=1e-6)


def test_upsampled_operands_are_the_operands_of_the_upsampled_tensor():
    # Nearest 2x upsampling of each operand layout (nibbles, s8 bytes, bit-planes and sums) gives exactly the
    # operand quantized from the interpolated tensor; H != W and random values, so a repeat along the wrong
    # axis or in the wrong order fails.
    gen = torch.Generator().manual_seed(47)
    x = torch.randn(2, 70, 3, 5, generator=gen) * 2
    step = torch.tensor(0.3)
    small, big = pack_activation(x, step), pack_activation(F.interpolate(x, scale_factor=2.0, mode="nearest"), step)
    up = packing.upsample_nearest(small)
    assert up.shape == big.shape == (2, 70, 6, 10) and torch.equal(up.codes, big.codes)
    assert torch.equal(packing.upsample_nearest(packing.ByteActivation(packing.byte_codes(small), step, 8, 70)).codes,
                       packing.byte_codes(big))
    planar = packing.PlanarActivation(*bmma_planes_reference(small), step, 8, 70)
    up_planar = packing.upsample_nearest(planar)
    planes, sums = bmma_planes_reference(big)
    assert torch.equal(up_planar.planes, planes) and torch.equal(up_planar.sums, sums)
    assert up_planar.planes.is_contiguous() and up_planar.sums.is_contiguous()


# ---- the reference ------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
def test_reference_equals_float64_conv(shape):
    cin, cout, k, s, p, nb, z = shape
    gen = torch.Generator().manual_seed(sum(shape))
    x, w, _, _ = _random_operands(cin, cout, k, s, p, nb, z, gen)
    expected = F.conv2d(x.dequantize(), w.dequantize(), w.bias.double(), s, p)
    y32 = reference.w1a4_conv2d(x, w, torch.float32)
    assert y32.shape == expected.shape and y32.is_contiguous(memory_format=torch.channels_last)
    # Integer sums are exact; only the float32 epilogue rounds (a few ulp of the largest term).
    bound = 4 * torch.finfo(torch.float32).eps * (expected.abs() + w.alpha.sum(0).double().max() * x.step * 15
                                                  * cin * k * k)
    assert ((y32.double() - expected).abs() <= bound).all()
    y16 = reference.w1a4_conv2d(x, w, torch.float16)
    assert torch.equal(y16, y32.to(torch.float16))


def test_border_correction_is_what_makes_padding_exact():
    # With z != 0, code 0 outside the image means x = -z d there; only the correction over the valid
    # taps turns it into the 0 of zero padding. Removing the correction changes exactly the border.
    gen = torch.Generator().manual_seed(5)
    x, w, _, _ = _random_operands(8, 4, 3, 1, 1, 1, 8, gen, bias=False)
    v = reference.integer_accumulators(x, w)
    x0 = PackedActivation(x.codes, x.step, 0, x.channels)
    uncorrected = reference.integer_accumulators(x0, w)
    diff = (v - uncorrected).reshape(1, 2, 4, 9, 11)[0]
    total = w.row_sums.sum(-1).to(torch.int64)[0]  # interior pixels: every tap valid
    assert torch.equal(diff[:, :, 1:-1, 1:-1], (-8 * total)[None, :, None, None].expand(2, 4, 7, 9))
    assert not torch.equal(diff[:, :, 0, 0], (-8 * total)[None].expand(2, 4))


@pytest.mark.parametrize("shape", SHAPES[:4])
def test_integer_accumulators_equal_direct_int64_sum(shape):
    # The bit-plane popcount form against sum_{t,c} w q - z sum_{valid t} R, computed directly in int64.
    cin, cout, k, s, p, nb, z = shape
    gen = torch.Generator().manual_seed(7 + sum(shape))
    x, w, bits, q = _random_operands(cin, cout, k, s, p, nb, z, gen)
    signs = bits.to(torch.int64) * 2 - 1  # [nb, C_out, C_in, k, k]
    n, _, h, wd = q.shape
    # Shifting the codes by z makes padding real zero: sum w (q - z) over valid taps, directly.
    xs = F.pad(q.to(torch.int64) - z, (p, p, p, p))
    oh, ow = (h + 2 * p - k) // s + 1, (wd + 2 * p - k) // s + 1
    expected = torch.zeros(nb, n, cout, oh, ow, dtype=torch.int64)
    for ky in range(k):
        for kx in range(k):
            patch = xs[:, :, ky: ky + s * (oh - 1) + 1: s, kx: kx + s * (ow - 1) + 1: s]
            expected += torch.einsum("boc,xchw->bxohw", signs[..., ky, kx], patch)
    assert torch.equal(reference.integer_accumulators(x, w), expected.reshape(nb, n, cout, oh * ow))


@pytest.mark.parametrize("n_bases, stride", [(2, 1), (1, 2)])
def test_reference_reproduces_quant_conv(n_bases, stride):
    torch.manual_seed(11)
    conv = nn.Conv2d(40, 12, 3, stride=stride, padding=1)
    wq = LMB(12, 4, n_bases=n_bases).initialize_(conv.weight.detach())
    aq = LSQ(4)
    x = torch.randn(2, 40, 8, 8)
    aq.initialize_(x)
    layer = QuantConv2d.from_float(conv, wq, aq)
    expected = layer(x).detach().double()
    y = reference.w1a4_conv2d(pack_quant_conv_input(layer, x), pack_quant_conv(layer), torch.float32)
    err = (y.double() - expected).norm() / expected.norm()
    assert err < 1e-6, err
    # Each packed weight equals the binarized weight the layer uses.
    assert torch.allclose(pack_quant_conv(layer).dequantize().float(), layer.quantized_weight().detach(),
                          rtol=0, atol=1e-6)


def test_pack_quant_conv_rejects_what_the_kernel_cannot_run():
    conv = nn.Conv2d(4, 4, 3, padding=1, groups=2)
    layer = QuantConv2d.from_float(conv, LMB(4, 4).initialize_(conv.weight.detach()), None)
    with pytest.raises(ValueError, match="groups=2"):
        pack_quant_conv(layer)
    plain = QuantConv2d.from_float(nn.Conv2d(4, 4, 3), LSQ(4), None)
    with pytest.raises(TypeError, match="LMB"):
        pack_quant_conv(plain)


# ---- the CUDA source ----------------------------------------------------------------------------
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")


# Per source: the kernels its cubin must hold, and the PTX instructions (with their least count) that
# show which tensor cores it uses.
SOURCE_KERNELS = {
    "w1a4_conv.cu": (kcuda.MMA_KERNELS + kcuda.SIMT_KERNELS + tuple(kcuda.PACK_KERNELS.values())
                     + tuple(kcuda.BYTES_KERNELS.values()) + (kcuda.BYTES_CODES_KERNEL,)
                     + tuple(k for pair in kcuda.GN_KERNELS.values() for k in pair),
                     {"mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32": 4, "cp.async.cg.shared.global": 1,
                      "ldmatrix.sync.aligned.m8n8.x4.shared.b16": 1}),
    "w1a4_bmma.cu": (kcuda.BMMA_KERNELS + tuple(kcuda.PLANES_KERNELS.values()) + (kcuda.PLANES_CODES_KERNEL,)
                     + kcuda.W1A1_KERNELS + tuple(kcuda.SIGN_PLANES_KERNELS.values()),
                     {"mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc": 4, "cp.async.cg.shared.global": 1,
                      "ldmatrix.sync.aligned.m8n8.x4.shared.b16": 1}),
}


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90", "sm_90a"])
@pytest.mark.parametrize("source", list(SOURCE_KERNELS))
def test_cuda_source_compiles_with_nvcc(source, arch, tmp_path):
    cubin = kcuda.build_cubin(arch, tmp_path, source=kcuda.SOURCE.parent / source)
    assert cubin.name.startswith(source.removesuffix(".cu") + ".") and cubin.stat().st_size > 0
    names = cubin.read_bytes()
    for kernel in SOURCE_KERNELS[source][0]:
        assert kernel.encode() in names


@needs_nvcc
@pytest.mark.parametrize("source", list(SOURCE_KERNELS))
def test_ptx_uses_the_tensor_cores(source, tmp_path):
    ptx = kcuda.build_cubin("sm_80", tmp_path, kind="ptx", source=kcuda.SOURCE.parent / source).read_text()
    for instruction, least in SOURCE_KERNELS[source][1].items():
        assert ptx.count(instruction) >= least, instruction


def test_mma_constants_match_the_source():
    src = kcuda.SOURCE.read_text()
    for name, value in (("MMA_BM", kcuda.MMA_BM), ("MMA_BN", kcuda.MMA_BN), ("MMA_THREADS", kcuda.MMA_THREADS),
                        ("MMA_MAX_STEPS", kcuda.MMA_MAX_STEPS), ("MMA_MAX_TAPS", kcuda.MMA_MAX_TAPS),
                        ("MMA_B_UNITS", packing.MMA_STEP_UNITS), ("MMA_STAGES", packing.MMA_STAGES),
                        ("BYTES_THREADS", kcuda.BYTES_THREADS), ("GN_THREADS", kcuda.GN_THREADS),
                        ("GN_MAX_GROUPS", kcuda.GN_MAX_GROUPS)):
        assert f"#define {name} {value} " in src, name
    assert packing.MMA_BN == kcuda.MMA_BN


def test_bit_plane_split_k_fills_the_card_only_where_the_tiles_do_not():
    # one block per SM (the kernel's registers): 16 tiles of a 32 x 32 x 128 layer at batch 1 on an H100's
    # 132 SMs split the 5 K chunks one per block; batch 64 fills the card (1,024 tiles) and does not split
    assert kcuda.bmma_splits(16, 5, 132) == 5
    assert kcuda.bmma_splits(16, 45, 132) == 8  # 8 splits x 16 tiles = 128 blocks: about one wave
    assert kcuda.bmma_splits(1024, 5, 132) == 1 and kcuda.bmma_splits(132, 5, 132) == 1
    assert kcuda.bmma_splits(100, 5, 132) == 1  # a second split would make two waves of 100


def test_groupnorm_statistics_geometry_reads_along_the_contiguous_axis():
    # w1a4_gn_partial's threads lie along the channels of channels_last input (a warp reads 32 adjacent
    # channels of a pixel) and along the pixels of NCHW input; about 1,024 blocks, at least 16 pixels a lane.
    x = torch.empty(256, 128, 32, 32, device="meta")
    last = kcuda.groupnorm_geometry(x.contiguous(memory_format=torch.channels_last))
    assert (last.chan_fast, last.channels, last.lanes, last.slices, last.pixel_stride) == (True, 128, 2, 4, 128)
    first = kcuda.groupnorm_geometry(x)
    assert (first.chan_fast, first.channels, first.lanes, first.slices, first.pixel_stride) == (False, 8, 32, 2, 1)
    one = kcuda.groupnorm_geometry(torch.empty(1, 512, 8, 8, device="meta").contiguous(
        memory_format=torch.channels_last))
    assert (one.channels, one.lanes, one.slices) == (256, 1, 4)  # batch 1: more slices, 16 pixels each
    for geo in (last, first, one):
        assert geo.channels * geo.lanes <= kcuda.GN_THREADS
    with pytest.raises(ValueError, match="at most 512 groups"):
        kcuda.groupnorm_silu_bytes(torch.randn(1, 1024, 2, 2), torch.nn.GroupNorm(1024, 1024), 0.1)


def test_mma_refuses_what_its_tables_cannot_hold():
    gen = torch.Generator().manual_seed(5)
    small = pack_weight(torch.randint(0, 2, (1, 4, 64, 5, 5), generator=gen), torch.ones(1, 4), None, 1, 2)
    assert kcuda.mma_shape_error(small) is None  # 25 taps, 50 steps
    wide = pack_weight(torch.randint(0, 2, (1, 4, 8, 7, 7), generator=gen), torch.ones(1, 4), None, 1, 3)
    assert "49 and 49" in kcuda.mma_shape_error(wide)  # 7x7: more taps than the mask holds
    deep = pack_weight(torch.randint(0, 2, (1, 4, 3700, 3, 3), generator=gen), torch.ones(1, 4), None, 1, 1)
    assert "variant='bmma' or 'simt'" in kcuda.mma_shape_error(deep)  # 9 x 116 = 1,044 steps


def test_bit_plane_constants_match_the_source():
    src = kcuda.BMMA_SOURCE.read_text()
    for name, value in (("BM_BM", kcuda.BMMA_BM), ("BM_BN", kcuda.BMMA_BN), ("BM_THREADS", kcuda.BMMA_THREADS),
                        ("BM_PACK_THREADS", kcuda.BMMA_PACK_THREADS), ("BM_WS_THREADS", kcuda.BMMA_WS_THREADS)):
        assert f"#define {name} {value} " in src or f"#define {name} {value}\n" in src, name
    stages = int(src.split("#define BM_STAGES ")[1].split()[0])
    ys_stride = int(src.split("#define BM_YS_STRIDE ")[1].split()[0])
    assert kcuda.BMMA_SMEM_BYTES == stages * (kcuda.BMMA_BM * 8 + 128) * 16
    # the persistent kernel stages its output tile beside the pipeline (BM_WS_SMEM_BYTES)
    assert kcuda.BMMA_WS_SMEM_BYTES == kcuda.BMMA_SMEM_BYTES + kcuda.BMMA_BM * ys_stride * 4


@pytest.mark.parametrize("source", list(SOURCE_KERNELS))
def test_cuda_source_compiles_with_nvrtc(source):
    # CuPy's path: NVRTC on the loader's text (the header spliced in), no include directories (CuPy
    # adds -arch itself).
    nvrtc = pytest.importorskip("cuda.bindings.nvrtc")
    path = kcuda.SOURCE.parent / source
    text = kcuda.cuda_source(path)
    assert not [line for line in text.splitlines() if line.lstrip().startswith("#include")]
    assert text.count("#define W1A4_COMMON_CUH") == 1
    for arch in (b"compute_80", b"compute_90", b"compute_90a"):  # 90a: the warpgroup kernels' wgmma
        _, prog = nvrtc.nvrtcCreateProgram(text.encode(), source.encode(), 0, [], [])
        opts = [b"--gpu-architecture=" + arch, b"--std=c++17"]
        (result,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        if result != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            # nvrtcGetProgramLog writes into the buffer it is given: a fresh, never-shared object of at
            # least 2 bytes (writing into b" " * 1, Python's cached one-byte object, corrupts the
            # interpreter: later torch.load calls in the same process failed).
            _, size = nvrtc.nvrtcGetProgramLogSize(prog)
            log = bytes(bytearray(max(size, 2)))
            nvrtc.nvrtcGetProgramLog(prog, log)
            pytest.fail(log.decode(errors="replace"))
        nvrtc.nvrtcDestroyProgram(prog)


HOST_CHECK = r"""
#include <cstdio>
#include "w1a4_conv.cu"
int main() {
    for (u32 x = 0; x < 65536; ++x) {
        u32 lo, hi;
        nibbles_to_byte_pair(x * 40503u + (x << 16), lo, hi);
        printf("%u\n%u\n", lo, hi);
    }
    for (u32 b = 0; b < 256; ++b) printf("%u\n", bits_to_nibble_mask(b));
    for (u32 x = 0; x < 65536; ++x) printf("%d\n", nibble_sum(x * 40503u + (x << 16)));
    for (u32 z = 0; z < 16; ++z)  // four codes 0..15, one per byte, every combination
        for (u32 v = 0; v < 65536; ++v) {
            const u32 q = (v & 0xF) | ((v >> 4) & 0xF) << 8 | ((v >> 8) & 0xF) << 16 | (v >> 12) << 24;
            printf("%u\n", bytes_minus(q, z * 0x01010101u));
        }
    return 0;
}
"""


@needs_nvcc
@pytest.mark.skipif(shutil.which("g++") is None, reason="no host C++ compiler")
def test_kernel_bit_helpers_on_the_host(tmp_path):
    # The helpers that expand nibbles to bytes and subtract the zero point per byte (the s8 byte codes)
    # and weight bits to nibble masks (CUDA-core kernel) are host functions too: check them exhaustively
    # (and the nibble sum on 65,536 words).
    src = tmp_path / "check.cu"
    src.write_text(HOST_CHECK)
    exe = tmp_path / "check"
    subprocess.run(["nvcc", "-O1", "-I", str(kcuda.SOURCE.parent), "-o", str(exe), str(src)], check=True,
                   capture_output=True)
    out = [int(v) for v in subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()]
    bytes_of = lambda v: [(v >> (8 * i)) & 0xFF for i in range(4)]  # noqa: E731
    it = iter(out)
    for x in range(65536):
        v = (x * 40503 + (x << 16)) & 0xFFFFFFFF
        assert bytes_of(next(it)) + bytes_of(next(it)) == [(v >> (4 * i)) & 0xF for i in range(8)]
    for b in range(256):
        assert next(it) == sum(0xF << (4 * j) for j in range(8) if (b >> j) & 1)
    for x in range(65536):
        v = (x * 40503 + (x << 16)) & 0xFFFFFFFF
        assert next(it) == sum((v >> (4 * j)) & 0xF for j in range(8))
    for z in range(16):
        for v in range(65536):
            assert bytes_of(next(it)) == [((v >> (4 * i)) & 0xF) - z & 0xFF for i in range(4)], (z, v)


# ---- the bit-plane kernel's operands (CPU) --------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
def test_bit_planes_of_q_xor_z_give_the_reference_accumulators(shape):
    # sum_k c_k (2 popc(B_k & S) - popc(B_k)), B_k the planes of q XOR z and c_k = -2^k where bit k of z is
    # set, +2^k where not, over all taps (padding = planes 0): the reference's v_b, with no border term.
    cin, cout, k, s, p, nb, z = shape
    gen = torch.Generator().manual_seed(41 + sum(shape))
    x, w, bits, q = _random_operands(cin, cout, k, s, p, nb, z, gen)
    planes, sums = bmma_planes_reference(x)
    n, _, h, wd = q.shape
    g = bmma_groups(cin)
    # planes [N, H, W, G/4, 4, 4] -> 0/1 [4, N, 32 G, H, W]
    words = planes.transpose(-1, -2).reshape(n, h, wd, g, 4).to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(32)
    b = ((words.permute(4, 0, 1, 2, 3)[..., None] >> shifts) & 1).reshape(4, n, h, wd, 32 * g).permute(0, 1, 4, 2, 3)
    assert torch.equal(b[:, :, cin:].sum(), torch.tensor(0))  # padded channels are 0
    coef = [(-1 if (z >> kk) & 1 else 1) << kk for kk in range(4)]
    assert torch.equal(sum(c * b[kk, :, :cin] for kk, c in enumerate(coef)).to(torch.int64), q.to(torch.int64) - z)
    assert torch.equal(sums.to(torch.int64), (q.to(torch.int64) - z).sum(1))
    signs = (bits.to(torch.float64) * 2 - 1)
    acc = 0
    for kk, c in enumerate(coef):
        cols = F.conv2d(b[kk, :, :cin].to(torch.float64), signs.reshape(nb * cout, cin, k, k), stride=s, padding=p)
        acc = acc + c * cols
    v = reference.integer_accumulators(x, w)  # [nb, N, C_out, L]
    got = acc.reshape(n, nb * cout, -1)  # channel b * C_out + o
    for base in range(nb):
        assert torch.equal(got[:, base * cout:(base + 1) * cout].round().to(torch.int64), v[base])


@pytest.mark.parametrize("cin, cout, k, nb", [(40, 24, 3, 2), (130, 70, 1, 1), (256, 200, 3, 2), (1, 9, 5, 1)])
def test_warpgroup_weight_is_in_core_matrices(cin, cout, k, nb):
    # The warpgroup kernel's B operand: a chunk's 128 units are 16 core matrices of 8 columns x 16 bytes,
    # (8-column group, K half) in that order; unit u's words are K words 4 half .. + 3 of its column.
    gen = torch.Generator().manual_seed(cin + cout + 1)
    bits = torch.randint(0, 2, (nb, cout, cin, k, k), generator=gen, dtype=torch.uint8)
    w = pack_weight(bits, torch.ones(nb, cout))
    frag, plain = bmma_weight_fragments(w, wgmma=True), bmma_weight_fragments(w)
    assert frag.shape == plain.shape and frag.dtype == torch.int32
    g, nch, ncb = bmma_groups(cin), bmma_chunks(cin, k * k), -(-nb * cout // 64)
    gc = w.bits.shape[-1]
    for cb in range(ncb):
        for c in range(nch):
            for group in range(8):
                for half in range(2):
                    for row in range(8):
                        col, unit = cb * 64 + group * 8 + row, (group * 2 + half) * 8 + row
                        for i in range(4):
                            kk = 8 * c + 4 * half + i
                            tap, grp = divmod(kk, g)
                            inside = col < nb * cout and kk < k * k * g and grp < gc
                            want = int(w.bits[col % nb, col // nb, tap, grp]) if inside else 0
                            assert int(frag[cb, c, unit, i]) == want, (cb, c, unit, i)


@pytest.mark.parametrize("cin, cout, k, nb", [(40, 24, 3, 2), (130, 70, 1, 1), (256, 200, 3, 2), (1, 9, 5, 1)])
def test_bmma_weight_fragments_follow_the_ptx_b_layout(cin, cout, k, nb):
    # Independently of the packer's index arithmetic: for every unit, lane and word, the word must be the
    # weight word (K word t or t + 4 of the chunk) of the column the PTX B fragment puts there.
    gen = torch.Generator().manual_seed(cin + cout)
    bits = torch.randint(0, 2, (nb, cout, cin, k, k), generator=gen, dtype=torch.uint8)
    w = pack_weight(bits, torch.ones(nb, cout))
    frag = bmma_weight_fragments(w)
    g, nch = bmma_groups(cin), bmma_chunks(cin, k * k)
    ncb = -(-nb * cout // 64)
    assert frag.shape == (ncb, nch, 128, 4) and frag.dtype == torch.int32
    gc = w.bits.shape[-1]

    def word(col, kk):
        if col >= nb * cout or kk >= k * k * g:
            return 0
        tap, grp = divmod(kk, g)
        return 0 if grp >= gc else int(w.bits[col % nb, col // nb, tap, grp])

    for cb in range(ncb):
        for c in range(nch):
            for unit in range(128):
                warp_n, pair, lane = unit // 64, (unit // 32) % 2, unit % 32
                for i in range(4):
                    tile = 2 * pair + i // 2
                    col = cb * 64 + warp_n * 32 + tile * 8 + lane // 4
                    kk = 8 * c + lane % 4 + 4 * (i % 2)
                    assert int(frag[cb, c, unit, i]) == word(col, kk), (cb, c, unit, i)


@pytest.mark.parametrize("cin, cout, k, nb", [(40, 24, 3, 2), (70, 130, 1, 1), (1, 9, 5, 1)])
def test_mma_weight_fragments_follow_the_ptx_b_layout(cin, cout, k, nb):
    # Independently of the packer's reshapes: every byte of every unit must be the s8 weight (+-1, or 0 in
    # padded channels and columns) of the column and k that the PTX B fragment of m16n8k32 puts there.
    gen = torch.Generator().manual_seed(cin + cout)
    bits = torch.randint(0, 2, (nb, cout, cin, k, k), generator=gen, dtype=torch.uint8)
    w = pack_weight(bits, torch.ones(nb, cout))
    frag = kcuda.mma_weight(w)
    assert kcuda.mma_weight(w) is frag  # made once, kept on the weight
    cw = padded_channels(cin) // 32
    ksteps, ncb = k * k * cw, -(-nb * cout // 128)
    extra = packing.MMA_STAGES - 1  # the zero steps the last block's prefetches read
    assert frag.shape == (ncb * ksteps + extra, 256, 4) and frag.dtype == torch.int32
    data = frag.contiguous().view(torch.int8).reshape(ncb * ksteps + extra, 256, 16)
    assert not data[-extra:].any()
    signs = bits.to(torch.int64) * 2 - 1  # [nb, C_out, C_in, KH, KW]
    for row in range(ncb * ksteps):
        cb, ks = divmod(row, ksteps)
        tap, c32 = divmod(ks, cw)
        ky, kx = divmod(tap, k)
        expected = torch.zeros(256, 16, dtype=torch.int64)
        for unit in range(256):
            warp_n, pair, lane = unit // 128, (unit // 32) % 4, unit % 32
            for byte in range(16):
                tile, reg, j = 2 * pair + byte // 8, (byte // 4) % 2, byte % 4
                col = cb * 128 + warp_n * 64 + tile * 8 + lane // 4
                channel = 32 * c32 + 16 * reg + 4 * (lane % 4) + j
                if col < nb * cout and channel < cin:
                    expected[unit, byte] = signs[col % nb, col // nb, channel, ky, kx]
        assert torch.equal(data[row].to(torch.int64), expected), row


def test_default_variant_can_be_forced(monkeypatch):
    kcuda._reset_state()
    try:
        monkeypatch.setenv(kcuda.VARIANT_ENV, "mma")
        assert kcuda.default_variant("cpu") == "mma"
        kcuda.set_variant("simt")
        assert kcuda.default_variant("cpu") == "simt"
        with pytest.raises(ValueError):
            kcuda.set_variant("int4")
    finally:
        kcuda.set_variant(None)
        kcuda._reset_state()


# ---- the loader ---------------------------------------------------------------------------------
def test_loader_falls_back_with_exactly_one_warning():
    kcuda._reset_state()
    gen = torch.Generator().manual_seed(13)
    x, w, _, _ = _random_operands(36, 8, 3, 1, 1, 2, 8, gen)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            first = kcuda.w1a4_conv2d(x, w)
            second = kcuda.w1a4_conv2d(x, w, torch.float32)
        fallback = [c for c in caught if issubclass(c.category, RuntimeWarning) and "W1A4" in str(c.message)]
        assert len(fallback) == 1
        assert torch.equal(first, reference.w1a4_conv2d(x, w))
        assert torch.equal(second, reference.w1a4_conv2d(x, w, torch.float32))
    finally:
        kcuda._reset_state()


def test_load_module_names_the_missing_piece():
    kcuda._reset_state()
    try:
        if kcuda.is_available():
            pytest.skip("CuPy and CUDA are present: the kernel loads")
        with pytest.raises(kcuda.KernelUnavailable, match="CuPy|CUDA"):
            kcuda.load_module()
    finally:
        kcuda._reset_state()


# ---- on a GPU -----------------------------------------------------------------------------------
GPU_SHAPES = SHAPES + [(128, 128, 3, 1, 1, 2, 8), (256, 256, 3, 2, 1, 1, 8), (96, 200, 3, 1, 1, 2, 8)]


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["mma", "simt"])
@pytest.mark.parametrize("out_dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("shape", GPU_SHAPES)
def test_kernel_equals_reference_bit_for_bit(shape, out_dtype, variant):
    if not kcuda.is_available():
        pytest.skip("CuPy cannot load the kernel here")
    cin, cout, k, s, p, nb, z = shape
    gen = torch.Generator().manual_seed(101 + sum(shape))
    x, w, _, _ = _random_operands(cin, cout, k, s, p, nb, z, gen, n=3, h=13, w=10, device="cuda")
    expected = reference.w1a4_conv2d(x, w, out_dtype)
    oh, ow = expected.shape[-2:]
    out = torch.full((3, oh, ow, cout), float("nan"), dtype=out_dtype, device="cuda")  # poison
    y = kcuda.launch(x, w, out_dtype, variant, out=out)
    torch.cuda.synchronize()
    assert not torch.isnan(out).any(), "some outputs were never written"
    int_view = torch.int16 if out_dtype == torch.float16 else torch.int32
    assert torch.equal(y.contiguous().view(int_view), expected.contiguous().view(int_view))


BMMA_GPU_SHAPES = GPU_SHAPES + [(1, 9, 3, 1, 1, 1, 8), (48, 40, 5, 2, 2, 1, 8), (512, 256, 3, 1, 1, 2, 8),
                                 (384, 128, 1, 1, 0, 1, 8)]


@pytest.mark.gpu
@pytest.mark.parametrize("loop", ["bmma", "bgmma", "bgmma_ws"])
@pytest.mark.parametrize("out_dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("shape", BMMA_GPU_SHAPES)
def test_bit_plane_kernel_equals_reference_bit_for_bit(shape, out_dtype, loop):
    if not kcuda.is_available():
        pytest.skip("CuPy cannot load the kernel here")
    if loop != "bmma" and not kcuda.wgmma_built():
        pytest.skip("the bit-plane module was not built for sm_90a (tools/device_check.sh builds it on a Hopper)")
    cin, cout, k, s, p, nb, z = shape
    gen = torch.Generator().manual_seed(211 + sum(shape))
    # 3 x 13 x 10 pixels: several 128-pixel blocks and a tail; bias on and off
    x, w, _, _ = _random_operands(cin, cout, k, s, p, nb, z, gen, n=3, h=13, w=10, bias=cin % 2 == 0,
                                  device="cuda")
    expected = reference.w1a4_conv2d(x, w, out_dtype)
    oh, ow = expected.shape[-2:]
    int_view = torch.int16 if out_dtype == torch.float16 else torch.int32
    # The launcher's choice (split-K on these small grids), and one block per tile.
    for splits in (None, 1):
        out = torch.full((3, oh, ow, cout), float("nan"), dtype=out_dtype, device="cuda")  # poison
        if loop == "bmma" and splits is None:
            y = kcuda.launch(x, w, out_dtype, "bmma", out=out)
        else:
            y = kcuda.launch_bmma(x, w, out_dtype, out=out, splits=splits, loop=loop)
        torch.cuda.synchronize()
        assert not torch.isnan(out).any(), "some outputs were never written"
        assert torch.equal(y.contiguous().view(int_view), expected.contiguous().view(int_view)), splits


@pytest.mark.gpu
def test_bit_plane_kernel_is_the_default_where_it_checks_out():
    if not kcuda.is_available():
        pytest.skip("CuPy cannot load the kernel here")
    assert kcuda.bmma_self_check("cuda"), kcuda._bmma_state.get("check_error")
    assert kcuda.default_variant("cuda") == "bmma"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_w1a1_path_equals_the_reference_bit_for_bit(dtype):
    # sign_planes: 2 planes of sign(x + beta) from any strides; w1a1_conv2d: the 2-plane bit-plane kernel,
    # equal to reference.w1a1_conv2d (pack_sign_input's codes on the W1A4 reference); tails, stride 2.
    if not kcuda.is_available():
        pytest.skip("CuPy cannot load the kernel here")
    gen = torch.Generator().manual_seed(47)
    x = torch.randn(3, 150, 13, 10, generator=gen).to(dtype).cuda().contiguous(memory_format=torch.channels_last)
    beta = 0.3 * torch.randn(150, generator=gen)
    planar = kcuda.sign_planes(x, beta.cuda())
    planes, sums = bmma_planes_reference(pack_sign_input(x.cpu(), beta), n_planes=2)
    assert torch.equal(planar.planes.cpu(), planes) and torch.equal(planar.sums.cpu(), sums)
    for k, s, p in ((3, 1, 1), (3, 2, 1), (1, 1, 0)):
        bits = torch.randint(0, 2, (1, 72, 150, k, k), generator=gen, dtype=torch.uint8)
        w = pack_weight(bits, torch.rand(1, 72, generator=gen) + 0.05, torch.randn(72, generator=gen), s, p)
        for out_dtype in (torch.float16, torch.float32):
            expected = reference.w1a1_conv2d(x.cpu(), beta, w, out_dtype)
            got = kcuda.w1a1_conv2d(x, beta.cuda(), w.to("cuda"), out_dtype).cpu()
            int_view = torch.int16 if out_dtype == torch.float16 else torch.int32
            assert torch.equal(got.contiguous().view(int_view), expected.contiguous().view(int_view)), (k, s)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_quantize_planes_kernel_equals_the_torch_planes(dtype):
    if not kcuda.is_available():
        pytest.skip("CuPy cannot load the kernel here")
    gen = torch.Generator().manual_seed(43)
    x = (torch.randn(3, 300, 7, 9, generator=gen) * 3).to(dtype).cuda().contiguous(memory_format=torch.channels_last)
    step = torch.tensor(0.41, device="cuda")
    planar = kcuda.quantize_planes(x, step)
    from_codes = kcuda.to_planes(pack_activation(x, step))
    torch.cuda.synchronize()
    planes, sums = bmma_planes_reference(pack_activation(x.cpu(), step.cpu()))
    assert torch.equal(planar.planes.cpu(), planes) and torch.equal(planar.sums.cpu(), sums)
    assert torch.equal(from_codes.planes.cpu(), planes) and torch.equal(from_codes.sums.cpu(), sums)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_quantize_pack_kernel_equals_packer(dtype, channels_last):
    # Any strides; fp16/bf16 are read as they are (no float32 copy; converting them to float32 is
    # exact), so the codes equal the packer's on the same values; written into the given buffer. The
    # step as a number (float32) or as a device tensor (read by pointer).
    if not kcuda.is_available():
        pytest.skip("CuPy cannot load the kernel here")
    gen = torch.Generator().manual_seed(19)
    x = (torch.randn(3, 70, 5, 6, generator=gen) * 3).to(dtype).cuda()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    step = 0.37 if dtype == torch.float32 else torch.tensor(0.37, device="cuda")
    codes = torch.full((3, 5, 6, 12), -1, dtype=torch.int32, device="cuda")  # poisoned
    packed = kcuda.quantize_pack(x, step, out=codes)
    torch.cuda.synchronize()
    assert packed.codes.data_ptr() == codes.data_ptr()
    assert torch.equal(codes, pack_activation(x, step).codes)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_byte_code_kernels_equal_the_torch_bytes(dtype, channels_last):
    # quantize_bytes from floats in their own dtype and strides, to_bytes from packed codes: both the
    # s8 codes q - z of byte_codes, padded channels 0, written into the given buffer.
    if not kcuda.is_available():
        pytest.skip("CuPy cannot load the kernel here")
    gen = torch.Generator().manual_seed(29)
    x = (torch.randn(3, 70, 5, 6, generator=gen) * 3).to(dtype).cuda()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    step = torch.tensor(0.37, device="cuda")
    buf = torch.full((3, 5, 6, 96), 77, dtype=torch.int8, device="cuda")  # poisoned
    got = kcuda.quantize_bytes(x, step, out=buf)
    from_codes = kcuda.to_bytes(pack_activation(x, step))
    torch.cuda.synchronize()
    expected = packing.byte_codes(pack_activation(x.cpu(), step.cpu()))
    assert got.codes.data_ptr() == buf.data_ptr() and got.zero_point == 8
    assert torch.equal(buf.cpu(), expected) and torch.equal(from_codes.codes.cpu(), expected)


def _groupnorm_case(shape, dtype, seed):
    """x ~ N(1, 3^2) in ``dtype``, channels_last on the GPU, and a 32-group GroupNorm with random affine."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(*shape, generator=gen) * 3 + 1).to(dtype).cuda().contiguous(memory_format=torch.channels_last)
    norm = torch.nn.GroupNorm(32, shape[1], eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(shape[1], generator=gen) + 0.5)
        norm.bias.copy_(torch.randn(shape[1], generator=gen) * 0.3)
    return x, norm


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_groupnorm_silu_bytes_kernel_equals_the_unfused_ops(dtype):
    # The fused GroupNorm + SiLU + quantize against PyTorch's ops in float32: at most 1 code in 1,000 one
    # step away (the statistics are summed in another order).
    if not kcuda.is_available():
        pytest.skip("CuPy cannot load the kernel here")
    x, norm = _groupnorm_case((4, 128, 16, 16), dtype, seed=31)
    with torch.no_grad():
        expected = packing.byte_codes(pack_activation(F.silu(norm(x.float().cpu())), 0.15))
    got = kcuda.groupnorm_silu_bytes(x, norm.cuda(), 0.15).codes.cpu()
    diff = (got.to(torch.int32) - expected.to(torch.int32)).abs()
    assert diff.max() <= 1 and (diff > 0).sum() * 1000 <= diff.numel()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_groupnorm_silu_planes_kernel_equals_the_unfused_ops(dtype):
    # The bit-plane kernel's operand of SiLU(GroupNorm(x)): the codes its planes hold against PyTorch's ops
    # in float32 (at most 1 code in 1,000 one step away), planes and sums those of the packer for them.
    if not kcuda.is_available():
        pytest.skip("CuPy cannot load the kernel here")
    try:
        kcuda.load_module(kcuda.BMMA_SOURCE)
    except kcuda.KernelUnavailable as err:
        pytest.skip(str(err))
    x, norm = _groupnorm_case((2, 160, 8, 8), dtype, seed=37)
    with torch.no_grad():
        expected = pack_activation(F.silu(norm(x.float().cpu())), 0.15).unpack().to(torch.int64)
    planar = kcuda.groupnorm_silu_planes(x, norm.cuda(), 0.15)
    got = packing.planes_codes(planar.planes.cpu(), 160, planar.zero_point)
    diff = (got - expected).abs()
    assert diff.max() <= 1 and (diff > 0).sum() * 1000 <= diff.numel()
    ref = packing.bmma_planes_reference(packing.PackedActivation(packing.pack_codes(got), planar.step.cpu(), 8, 160))
    assert torch.equal(planar.planes.cpu(), ref[0]) and torch.equal(planar.sums.cpu(), ref[1])


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["mma", "bmma"])
def test_upsampled_and_normed_convs_equal_the_unfused_ops_on_the_kernels(variant, monkeypatch):
    # W1A4Conv2d.upsampled / normed(upsample=True) quantize before the nearest 2x upsampling on the GPU: the
    # same codes as conv(interpolate(x)), so bit for bit for the plain quantization, and within the fused
    # norm's tolerance (a code one step away in 1,000) for the GroupNorm + SiLU.
    if not kcuda.is_available():
        pytest.skip("CuPy cannot load the kernel here")
    monkeypatch.setenv(kcuda.VARIANT_ENV, variant)
    from binarydm.kernels.inference import W1A4Conv2d

    torch.manual_seed(53)
    conv = nn.Conv2d(64, 96, 3, padding=1)
    x = torch.randn(2, 64, 6, 7)
    aq = LSQ(4)
    aq.initialize_(x)
    layer = QuantConv2d.from_float(conv, LMB(96, 4, n_bases=2).initialize_(conv.weight.detach()), aq)
    conv = W1A4Conv2d(layer).cuda()
    xc = x.cuda().half()
    with torch.no_grad():
        got = conv.upsampled(xc)
        expected = conv(F.interpolate(xc, scale_factor=2.0, mode="nearest"))
        assert torch.equal(got, expected)
        norm = torch.nn.GroupNorm(32, 64).cuda().half()
        got = conv.normed(xc, norm, upsample=True)
        expected = conv(F.interpolate(F.silu(norm(xc)), scale_factor=2.0, mode="nearest"))
    assert got.shape == (2, 96, 12, 14)
    torch.testing.assert_close(got.float(), expected.float(), rtol=0.05, atol=0.05)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["mma", "bmma"])
def test_quantize_and_launch_replay_in_a_cuda_graph(variant):
    # No host sync in the quantizer or the launcher (a .item() would make the capture fail), so a graph
    # can hold them: quantize_bytes + launch (mma), quantize_planes + launch_bmma (bit planes).
    if not kcuda.is_available():
        pytest.skip("CuPy cannot load the kernel here")
    gen = torch.Generator().manual_seed(23)
    cin, cout = 128, 96
    _, w, _, _ = _random_operands(cin, cout, 3, 1, 1, 2, 8, gen, device="cuda")
    x = torch.randn(2, cin, 9, 11, generator=gen).cuda().half()
    step = torch.tensor(0.2, device="cuda")
    out = torch.empty(2, 9, 11, cout, dtype=torch.float16, device="cuda")
    if variant == "mma":
        codes = torch.empty(2, 9, 11, cin, dtype=torch.int8, device="cuda")
        scale = reference.epilogue_scale(w, packing.ByteActivation(codes, step, 8, cin))

        def run():
            kcuda.launch(kcuda.quantize_bytes(x, step, out=codes), w, torch.float16, out=out, scale=scale)
    else:
        planes = (torch.empty(2, 9, 11, 1, 4, 4, dtype=torch.int32, device="cuda"),
                  torch.empty(2, 9, 11, dtype=torch.int32, device="cuda"))

        def run():
            kcuda.launch_bmma(kcuda.quantize_planes(x, step, out=planes), w, torch.float16, out=out)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    x.copy_(torch.randn(2, cin, 9, 11, generator=gen).half())  # new input, same buffer
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    expected = reference.w1a4_conv2d(pack_activation(x, step), w)
    assert torch.equal(out.permute(0, 3, 1, 2), expected)


def test_choose_variant_takes_the_s8_kernel_for_large_convolutions(monkeypatch):
    kcuda._reset_state()
    monkeypatch.delenv(kcuda.VARIANT_ENV, raising=False)
    monkeypatch.setattr(kcuda, "default_variant", lambda device=None: kcuda._state["variant"] or "bmma")
    shape_error = {"w": None}
    monkeypatch.setattr(kcuda, "mma_shape_error", lambda w: shape_error["w"])
    big, small = kcuda.MMA_MIN_PIXELS, kcuda.MMA_MIN_PIXELS - 1
    try:
        assert kcuda.choose_variant("cuda", "w", small) == "bmma"
        assert kcuda.choose_variant("cuda", "w", big) == "mma"
        shape_error["w"] = "too many steps"  # the s8 kernel's tables cannot hold it: stay on bit-planes
        assert kcuda.choose_variant("cuda", "w", big) == "bmma"
        kcuda.set_variant("mma")  # forced, but the shape does not fit: the CUDA-core kernel
        assert kcuda.choose_variant("cuda", "w", small) == "simt"
        shape_error["w"] = None
        kcuda.set_variant("bmma")  # forced stays forced, whatever the size
        assert kcuda.choose_variant("cuda", "w", big) == "bmma"
    finally:
        kcuda.set_variant(None)
        kcuda._reset_state()
