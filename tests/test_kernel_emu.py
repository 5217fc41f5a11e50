"""The CUDA kernels run on the CPU: cuda/w1a4_conv.cu and cuda/w1a4_bmma.cu compiled by g++ with
tools/kernel_emu/shim.h (threads as std::threads, __syncthreads as a barrier, mma.sync (s8 x s8 and
b1 AND POPC), ldmatrix and cp.async emulated from the PTX ISA, cp.async copies landing as late as
wait_group allows, or at once), under AddressSanitizer and UndefinedBehaviorSanitizer, bit for bit
against the PyTorch reference."""

import shutil

import pytest
import torch

from binarydm.kernels import reference
from binarydm.kernels.packing import (
    PackedActivation,
    bmma_chunks,
    bmma_planes_reference,
    byte_codes,
    pack_activation,
    pack_codes,
    pack_sign_input,
    pack_weight,
    planes_codes,
)
from kernel_emu import emu

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="no host C++ compiler")

# (C_in, C_out, kernel, stride, padding, n_bases, zero point, bias, N, H, W). The mma kernel's block is
# 128 pixels x 64 columns (2 columns per channel with two bases), K steps of 32 channels: pixel tails
# (M not a multiple of 128), channel tails (C_in, C_out not multiples of 32 / 64), several column
# blocks, stride 2, 1x1, 5x5, C_in = 1, one and two bases, zero points 0..15, with and without bias.
SHAPES = [
    (40, 24, 3, 1, 1, 2, 8, True, 2, 9, 11),
    (70, 33, 3, 2, 1, 1, 8, True, 2, 9, 11),
    (32, 16, 1, 1, 0, 2, 8, True, 2, 9, 11),
    (5, 7, 3, 2, 0, 2, 3, True, 2, 9, 11),
    (64, 8, 3, 1, 1, 1, 0, True, 2, 9, 11),
    (33, 65, 1, 2, 0, 2, 15, True, 2, 9, 11),
    (1, 9, 3, 1, 1, 1, 8, True, 3, 6, 7),
    (16, 12, 5, 1, 2, 2, 8, True, 1, 10, 9),
    (48, 40, 5, 2, 2, 1, 8, False, 2, 11, 8),
    (128, 72, 3, 1, 1, 2, 8, True, 1, 16, 16),
    (96, 100, 3, 1, 1, 2, 8, False, 1, 12, 10),
    (64, 130, 3, 1, 0, 1, 8, True, 2, 7, 9),
    (256, 32, 3, 2, 1, 1, 8, True, 3, 7, 5),
]


@pytest.fixture(scope="module")
def exe(tmp_path_factory):
    return emu.build(tmp_path_factory.mktemp("emu"))


# The mutant builds only have to disagree with the reference: no sanitizers (a third of the build time); the
# correct build above runs under ASan + UBSan.
@pytest.fixture(scope="module")
def mutant(tmp_path_factory):
    return emu.build(tmp_path_factory.mktemp("emu_mutant"), mutate=True, sanitize=False)


@pytest.fixture(scope="module")
def short_wait(tmp_path_factory):
    return emu.build(tmp_path_factory.mktemp("emu_wait"), mutate_wait=True, sanitize=False)


def _operands(shape, seed):
    cin, cout, k, s, p, nb, z, bias, n, h, w = shape
    gen = torch.Generator().manual_seed(seed)
    bits = torch.randint(0, 2, (nb, cout, cin, k, k), generator=gen, dtype=torch.uint8)
    alpha = torch.rand(nb, cout, generator=gen) + 0.05
    b = torch.randn(cout, generator=gen) if bias else None
    q = torch.randint(0, 16, (n, cin, h, w), generator=gen)
    step = torch.rand((), generator=gen) + 0.01
    return PackedActivation(pack_codes(q), step, z, cin), pack_weight(bits, alpha, b, s, p)


def _bits(y: torch.Tensor) -> torch.Tensor:
    return y.contiguous().view(torch.int16 if y.dtype == torch.float16 else torch.int32)


# The wgmma loops on every shape, one output dtype each (they share the mma.sync loop's epilogue, the dtype's
# only effect).
KERNEL_CASES = ([(shape, v, d) for shape in SHAPES for v, d in (("mma", torch.float16), ("mma", torch.float32),
                                                                 ("simt", torch.float16), ("bmma", torch.float16),
                                                                 ("bmma", torch.float32))]
                + [(shape, "bgmma", torch.float32) for shape in SHAPES]
                + [(shape, "bgmma_ws", torch.float16) for shape in SHAPES])


@pytest.mark.parametrize("shape, variant, out_dtype", KERNEL_CASES,
                         ids=[f"{s[0]}x{s[1]}k{s[2]}s{s[3]}nb{s[5]}-{v}-{str(d)[6:]}" for s, v, d in KERNEL_CASES])
def test_emulated_kernel_equals_reference_bit_for_bit(exe, shape, variant, out_dtype):
    x, w = _operands(shape, seed=sum(shape[:7]))
    y = emu.run_conv(exe, x, w, out_dtype, variant)
    expected = reference.w1a4_conv2d(x, w, out_dtype)
    assert not torch.isnan(y).any(), "outputs left unwritten (the emulator poisons them with NaN)"
    assert torch.equal(_bits(y), _bits(expected))


# A shape of one or two K chunks splits the same way both times: once is enough.
_SPLIT_LOOPS = [(shape, "bmma") for shape in SHAPES] + [(SHAPES[i], loop) for loop in ("bgmma", "bgmma_ws")
                                                         for i in (0, 3, 5, 9, 12)]
SPLIT_CASES = [(shape, v, per_split) for shape, v in _SPLIT_LOOPS for per_split in ("two", "one chunk each")
               if per_split == "two" or bmma_chunks(shape[0], shape[2] * shape[2]) > 2]


@pytest.mark.parametrize("shape, variant, per_split", SPLIT_CASES,
                         ids=[f"{s[0]}x{s[1]}k{s[2]}s{s[3]}nb{s[5]}-{v}-{p}" for s, v, p in SPLIT_CASES])
def test_emulated_split_k_equals_reference_bit_for_bit(exe, shape, variant, per_split):
    # Split-K (batch 1: a grid smaller than the card): the K chunks shared by gridDim.z blocks that add
    # their integer sums into a zeroed workspace, then the epilogue kernel; the same bits as one block per
    # tile, also with one chunk per block (the largest split the launcher makes). fp16 out on odd shapes.
    x, w = _operands(shape, seed=sum(shape[:7]) + 1)
    chunks = bmma_chunks(shape[0], shape[2] * shape[2])
    splits = min(2, chunks) if per_split == "two" else chunks
    out_dtype = torch.float16 if sum(shape) % 2 else torch.float32
    y = emu.run_conv(exe, x, w, out_dtype, variant, splits=splits)
    assert not torch.isnan(y).any(), "outputs left unwritten (the emulator poisons them with NaN)"
    assert torch.equal(_bits(y), _bits(reference.w1a4_conv2d(x, w, out_dtype)))


@pytest.mark.parametrize("loop", ["bmma", "bgmma", "bgmma_ws"])
def test_emulated_split_k_runs_w1a1_bit_for_bit(exe, loop):
    x, beta, w = _w1a1_operands(SHAPES[9], torch.float32, False, seed=11)
    y = emu.run_w1a1_conv(exe, x, beta, w, torch.float32, splits=3, loop=loop)
    assert torch.equal(_bits(y), _bits(reference.w1a4_conv2d(pack_sign_input(x, beta), w, torch.float32)))


@pytest.mark.parametrize("variant", ["mma", "simt", "bmma", "bgmma", "bgmma_ws"])
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[1], SHAPES[9]], ids=["40x24", "70x33s2", "128x72"])
def test_emulated_kernel_runs_w1a1_bit_for_bit(exe, shape, variant):
    """W1A1 (BiDM, ReActNet): sign(x + beta) as codes {0, 2} with zero point 1 on the same kernels."""
    _, w = _operands(shape, seed=3)
    cin, n, h, wd = shape[0], shape[8], shape[9], shape[10]
    gen = torch.Generator().manual_seed(4)
    x = pack_sign_input(torch.randn(n, cin, h, wd, generator=gen), 0.3 * torch.randn(cin, generator=gen))
    y = emu.run_conv(exe, x, w, torch.float32, variant)
    assert torch.equal(_bits(y), _bits(reference.w1a4_conv2d(x, w, torch.float32)))


def _w1a1_operands(shape, dtype, channels_last, seed):
    """Float input with exact zeros and -0.0 (sign(0) = +1 both ways), beta per channel, one weight basis."""
    cin, cout, k, s, p, _, _, bias, n, h, w = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, h, w, generator=gen)
    x[0, 0, 0, :2] = torch.tensor([0.0, -0.0])
    x = x.to(dtype)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    beta = 0.3 * torch.randn(cin, generator=gen)
    beta[0] = 0.0
    bits = torch.randint(0, 2, (1, cout, cin, k, k), generator=gen, dtype=torch.uint8)
    wt = pack_weight(bits, torch.rand(1, cout, generator=gen) + 0.05, torch.randn(cout, generator=gen) if bias
                     else None, s, p)
    return x, beta, wt


@pytest.mark.parametrize("shape, dtype, channels_last", [(SHAPES[0], torch.float32, False),
                                                         (SHAPES[1], torch.float16, True),
                                                         (SHAPES[6], torch.bfloat16, False),
                                                         (SHAPES[12], torch.float32, True)],
                         ids=["40x24-f32", "70x33s2-f16-cl", "cin1-bf16", "cin256-f32-cl"])
def test_emulated_w1a1_plane_pack_equals_the_torch_planes(exe, shape, dtype, channels_last):
    # Two planes (bit 0: inside the image, bit 1: x_b = +1) and the sums of x_b, from floats and beta.
    x, beta, _ = _w1a1_operands(shape, dtype, channels_last, seed=13)
    for b in (beta, None):
        planes, sums = emu.run_w1a1_planes(exe, x, b)
        expected_planes, expected_sums = bmma_planes_reference(pack_sign_input(x, b), n_planes=2)
        assert torch.equal(planes, expected_planes) and torch.equal(sums, expected_sums)


W1A1_CASES = [(shape, torch.float32) for shape in SHAPES] + [(SHAPES[i], torch.float16) for i in (0, 1, 9)]


W1A1_LOOP_CASES = [(s, d, "bmma") for s, d in W1A1_CASES] + [(W1A1_CASES[i] + (loop,)) for loop in ("bgmma", "bgmma_ws")
                                                             for i in (0, 1, 6, 9, 12, 14)]


@pytest.mark.parametrize("shape, out_dtype, loop", W1A1_LOOP_CASES,
                         ids=[f"{s[0]}x{s[1]}k{s[2]}s{s[3]}-{str(d)[6:]}-{v}" for s, d, v in W1A1_LOOP_CASES])
def test_emulated_w1a1_kernel_equals_reference_bit_for_bit(exe, shape, out_dtype, loop):
    # The 2-plane W1A1 path (w1a1_planes + w1a1_conv_bmma, or the warpgroup w1a1_conv_bgmma) on every shape
    # (fp16 output on three): the same output as the reference on the 4-bit operand pack_sign_input builds.
    x, beta, w = _w1a1_operands(shape, torch.float32, False, seed=sum(shape[:7]))
    y = emu.run_w1a1_conv(exe, x, beta, w, out_dtype, loop=loop)
    assert not torch.isnan(y).any(), "outputs left unwritten (the emulator poisons them with NaN)"
    assert torch.equal(_bits(y), _bits(reference.w1a4_conv2d(pack_sign_input(x, beta), w, out_dtype)))


@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[9]], ids=["40x24", "128x72"])
def test_a_wrong_fragment_mapping_is_caught_on_w1a1(mutant, shape):
    x, beta, w = _w1a1_operands(shape, torch.float32, False, seed=7)
    expected = reference.w1a4_conv2d(pack_sign_input(x, beta), w, torch.float32)
    assert not torch.equal(emu.run_w1a1_conv(mutant, x, beta, w, torch.float32), expected)


@pytest.mark.parametrize("variant, agrees", [("mma", False), ("bmma", False), ("bgmma", False), ("bgmma_ws", False),
                                             ("simt", True)])
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[9]])
def test_a_wrong_fragment_mapping_is_caught(mutant, shape, variant, agrees):
    # The mutant emulator swaps the roles of A registers 1 and 2 (row + 8 and the second K half) in both
    # mma.sync emulations, m16n8k32 s8 x s8 and m16n8k256 b1, and those of the leading and stride byte
    # offsets of wgmma's shared-memory descriptors: each tensor-core kernel must now disagree with the
    # reference, while the CUDA-core kernel, which uses no mma, still agrees.
    x, w = _operands(shape, seed=7)
    expected = reference.w1a4_conv2d(x, w, torch.float32)
    assert torch.equal(emu.run_conv(mutant, x, w, torch.float32, variant), expected) == agrees


@pytest.mark.parametrize("variant", ["mma", "bmma", "bgmma"])
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[11]])
def test_the_cp_async_pipeline_is_checked(exe, short_wait, monkeypatch, shape, variant):
    # Both tensor-core kernels keep MMA_STAGES / BM_STAGES K steps in flight with cp.async. The emulator
    # lands each copy as late as wait_group allows, so a kernel that waited for one group too few would
    # read a stage before its data arrives: the short_wait build (every wait one group short) must
    # disagree. With copies landing at once (W1A4_EMU_CP_ASYNC=early) the kernel must still agree: a
    # copy into a stage another warp still reads would show there; for the warpgroup kernel also a copy
    # into a stage whose wgmma products are not yet waited for (the emulator reads wgmma operands in the
    # wait: a prefetch one stage further ahead fails here).
    x, w = _operands(shape, seed=11)
    expected = reference.w1a4_conv2d(x, w, torch.float32)
    assert not torch.equal(emu.run_conv(short_wait, x, w, torch.float32, variant), expected)
    monkeypatch.setenv("W1A4_EMU_CP_ASYNC", "early")
    assert torch.equal(emu.run_conv(exe, x, w, torch.float32, variant), expected)


@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[3], SHAPES[5], SHAPES[6], SHAPES[12]],
                         ids=["cin70_z8", "cin5_z3", "cin33_z15", "cin1", "cin256"])
def test_emulated_byte_codes_equal_the_torch_bytes(exe, shape):
    # q - z per byte (no borrow between bytes, z = 0..15), padded channels 0 (not -z).
    x, _ = _operands(shape, seed=5)
    assert torch.equal(emu.run_bytes(exe, x), byte_codes(x))


@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[5], SHAPES[6], SHAPES[12]],
                         ids=["cin70_z8", "cin33_z15", "cin1", "cin256"])
def test_emulated_plane_pack_from_codes_equals_the_torch_planes(exe, shape):
    # q XOR z in 4 bit-planes (padded channels and groups 0) and the per-pixel sums of (q - z).
    x, _ = _operands(shape, seed=3)
    planes, sums = emu.run_planes(exe, x)
    expected_planes, expected_sums = bmma_planes_reference(x)
    assert torch.equal(planes, expected_planes) and torch.equal(sums, expected_sums)


@pytest.mark.parametrize("kernel, shape, seed", [("quantize_pack", (2, 45, 5, 7), 29),
                                                 ("planes", (2, 150, 4, 5), 31),
                                                 ("quantize_bytes", (2, 37, 4, 6), 37)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_emulated_quantize_kernels_equal_the_packer(exe, kernel, shape, seed, dtype, channels_last):
    # The kernels quantize with lsq_code (cuda/w1a4_common.cuh) from the input in its own dtype and
    # strides: the codes of pack_activation (LSQ rounding), as nibbles (quantize_pack), as s8 bytes q - z
    # (quantize_bytes) or as bit-planes with per-pixel sums (the fused quantize + bit-plane pack).
    gen = torch.Generator().manual_seed(seed)
    step = 0.375
    x = torch.randn(*shape, generator=gen) * 4
    x[0, :8, 0, 0] = step * torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 6.5, -7.5, 7.5])  # ties: half to even
    x[1, :4, 0, 0] = torch.tensor([100.0, -100.0, 0.0, -0.0])  # clamped, zeros
    x = x.to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    packed = pack_activation(x, step)
    if kernel == "quantize_pack":
        assert torch.equal(emu.run_pack(exe, x, step), packed.codes)
    elif kernel == "quantize_bytes":
        assert torch.equal(emu.run_bytes(exe, x, step), byte_codes(packed))
    else:
        planes, sums = emu.run_planes(exe, x, step, -8, 7)
        expected_planes, expected_sums = bmma_planes_reference(packed)
        assert torch.equal(planes, expected_planes) and torch.equal(sums, expected_sums)


def _groupnorm_case(shape, groups, dtype, channels_last, mean, seed):
    """x ~ N(mean, 3^2) in ``dtype`` and a GroupNorm with random affine parameters."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(*shape, generator=gen) * 3 + mean).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    norm = torch.nn.GroupNorm(groups, shape[1], eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(shape[1], generator=gen) + 0.5)
        norm.bias.copy_(torch.randn(shape[1], generator=gen) * 0.3)
    return x, norm


@pytest.mark.parametrize("shape, groups, dtype, channels_last, mean, slices",
                         [((2, 64, 5, 6), 8, torch.float32, False, 1.0, 1),
                          ((2, 96, 4, 4), 32, torch.float16, True, 1.0, 1),
                          ((1, 40, 3, 5), 8, torch.bfloat16, True, 1.0, 1),
                          # 65-channel groups across rounds of 42 channels (pixel lanes: NCHW)
                          ((3, 130, 2, 3), 2, torch.float16, False, 1.0, 1),
                          # several slices per sample, a group across two rounds (320 channels in rounds of
                          # 256), and a mean 13 stds from zero (the shifted float sums keep the variance)
                          ((2, 64, 16, 16), 32, torch.float16, True, 1.0, 4),
                          ((1, 32, 32, 32), 8, torch.float32, False, 40.0, 2),
                          ((2, 320, 8, 8), 32, torch.float32, True, 40.0, 4)])
def test_emulated_groupnorm_silu_quantize_equals_the_unfused_ops(exe, shape, groups, dtype, channels_last, mean,
                                                                slices):
    # w1a4_gn_partial + w1a4_gn_finish + w1a4_gn_silu_bytes against PyTorch's GroupNorm, SiLU and LSQ in
    # float32, then the byte codes. The statistics are summed in another order than PyTorch's, so a value
    # within float rounding of a step boundary may land one code away: allowed for at most 1 code in 1,000.
    from binarydm.kernels.cuda import groupnorm_geometry

    x, norm = _groupnorm_case(shape, groups, dtype, channels_last, mean, seed=sum(shape) + groups)
    with torch.no_grad():
        expected = byte_codes(pack_activation(torch.nn.functional.silu(norm(x.float())), 0.15))
    assert groupnorm_geometry(x).slices == slices
    got = emu.run_gn_silu_bytes(exe, x, norm, 0.15)
    diff = (got.to(torch.int32) - expected.to(torch.int32)).abs()
    assert diff.max() <= 1 and (diff > 0).sum() * 1000 <= diff.numel()
    assert got[..., shape[1]:].eq(0).all()  # padded channels
    # the codes span SiLU's range here (min -0.28 / 0.15 -> -2, clamped at 7): a wrong normalization
    # could not hide in the clamp
    assert expected.unique().tolist() == list(range(-2, 8))


@pytest.mark.parametrize("shape, groups, dtype, channels_last", [((2, 64, 5, 6), 8, torch.float32, False),
                                                                ((2, 96, 4, 4), 32, torch.float16, True),
                                                                ((1, 160, 3, 5), 32, torch.bfloat16, True),
                                                                ((2, 64, 16, 16), 32, torch.float16, True)])
def test_emulated_groupnorm_silu_into_planes_equals_the_unfused_ops(exe, shape, groups, dtype, channels_last):
    # w1a4_gn_planes (the bit-plane kernel's operand of SiLU(GroupNorm(x)), on the statistics of the bytes
    # path): the codes the planes hold are PyTorch's GroupNorm + SiLU + LSQ in float32 up to 1 code in 1,000
    # one step away, and the planes and sums are exactly those of the bit-plane packer for those codes
    # (layout, padding past the channels and the per-pixel sums).
    x, norm = _groupnorm_case(shape, groups, dtype, channels_last, 1.0, seed=sum(shape) + groups + 1)
    with torch.no_grad():
        expected = pack_activation(torch.nn.functional.silu(norm(x.float())), 0.15).unpack()
    planes, sums = emu.run_gn_planes(exe, x, norm, 0.15)
    got = planes_codes(planes, shape[1], 8)
    diff = (got - expected.to(torch.int64)).abs()
    assert diff.max() <= 1 and (diff > 0).sum() * 1000 <= diff.numel()
    assert expected.unique().tolist() == list(range(6, 16))  # SiLU's range: -2 .. 7 plus the zero point 8
    ref_planes, ref_sums = bmma_planes_reference(PackedActivation(pack_codes(got), torch.tensor(0.15), 8,
                                                                  shape[1]))
    assert torch.equal(planes, ref_planes) and torch.equal(sums, ref_sums)
