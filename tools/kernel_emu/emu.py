"""Build and run the host emulation of cuda/w1a4_conv.cu and cuda/w1a4_bmma.cu (shim.h, emu_main.cpp).

    exe = build(tmp_dir)                                  # g++ -fsanitize=address,undefined
    y = run_conv(exe, x, w, torch.float16, "mma")         # same result as binarydm.kernels.reference
    codes = run_pack(exe, x_float, step, qn, qp)          # same codes as binarydm.kernels.pack_activation
    b = run_bytes(exe, x)                                 # the s8 codes of binarydm.kernels.packing.byte_codes
    b = run_bytes(exe, x_float, step, qn, qp)             # likewise, quantized from floats

The operands are those of binarydm.kernels (PackedActivation, PackedConvWeight); the epilogue scales
are computed by PyTorch, as the CUDA launcher does.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from binarydm.kernels import reference
from binarydm.kernels.packing import (
    PackedActivation,
    bmma_chunks,
    bmma_groups,
    bmma_weight_fragments,
    mma_weight_fragments,
    padded_channels,
)
from binarydm.resources import cuda_dir

HERE = Path(__file__).resolve().parent
CUDA_DIR = cuda_dir()
_IN_KINDS = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}  # IN_F32, IN_F16, IN_BF16 of w1a4_common.cuh


def build(out_dir: Path, mutate: bool = False, sanitize: bool = True, mutate_wait: bool = False) -> Path:
    """Compile the emulator; ``mutate`` builds it with a deliberately wrong mma fragment mapping,
    ``mutate_wait`` with a cp.async.wait_group that waits for one group fewer than asked.

    The built program lands cp.async copies as late as wait_group allows; with the environment variable
    ``W1A4_EMU_CP_ASYNC=early`` set when it runs, at once (shim.h)."""
    if shutil.which("g++") is None:
        raise RuntimeError("g++ is not on PATH")
    exe = Path(out_dir) / ("w1a4_emu" + ("_mutant" if mutate else "") + ("_wait" if mutate_wait else ""))
    cmd = ["g++", "-std=c++20", "-O1", "-g", "-ffp-contract=off", "-pthread", "-DW1A4_HOST_EMU",
           f"-DW1A4_EMU_MUTATE={int(mutate)}", f"-DW1A4_EMU_MUTATE_WAIT={int(mutate_wait)}", "-I", str(HERE),
           "-I", str(CUDA_DIR), "-x", "c++",
           str(HERE / "emu_main.cpp"), "-o", str(exe)]
    if sanitize:
        cmd[1:1] = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"building the emulator failed:\n{result.stderr}")
    return exe


def _write(path: Path, arrays) -> None:
    """Each array on a 16-byte boundary (emu_main.cpp's take())."""
    blob = bytearray()
    for a in arrays:
        blob += bytes(-len(blob) % 16)
        blob += np.ascontiguousarray(a).tobytes()
    path.write_bytes(bytes(blob))


def _run(exe: Path, arrays, out_bytes: int) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "in.bin", Path(tmp) / "out.bin"
        _write(inp, arrays)
        result = subprocess.run([str(exe), str(inp), str(out)], capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise RuntimeError(f"the emulator failed ({result.returncode}):\n{result.stderr[-4000:]}")
        data = out.read_bytes()
    if len(data) != out_bytes:
        raise RuntimeError(f"the emulator wrote {len(data)} bytes, expected {out_bytes}")
    return data


def _i32(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy().astype(np.int32)


def _f32(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy().astype(np.float32)


def _raw(x: torch.Tensor) -> np.ndarray:
    """The strided tensor's storage from its first element to its last, raw (fp16 / bf16 as their 16 bits):
    what a kernel reading ``x`` in place with ``x.stride()`` sees."""
    flat = x.detach().cpu()
    extent = sum((size - 1) * stride for size, stride in zip(flat.shape, flat.stride())) + 1
    raw = torch.as_strided(flat, (extent,), (1,), flat.storage_offset())
    return raw.view(torch.int16).numpy() if x.dtype != torch.float32 else raw.numpy()


def _conv(exe: Path, kind: int, header: list, operands: list, x, w, out_dtype: torch.dtype, oh: int,
          ow: int) -> torch.Tensor:
    """Run conv kind ``kind`` on its header and operands, then the epilogue scales (computed by PyTorch,
    as the launcher does) and the bias; the output as [N, C_out, OH, OW] (channels_last)."""

    n, f16 = x.shape[0], out_dtype == torch.float16
    arrays = [np.array([kind], np.int32), np.array(header, np.int32), *operands,
              _f32(reference.epilogue_scale(w, x))] + ([_f32(w.bias)] if w.bias is not None else [])
    data = _run(exe, arrays, n * oh * ow * w.out_channels * (2 if f16 else 4))
    y = torch.from_numpy(np.frombuffer(data, np.float16 if f16 else np.float32).copy())
    return y.reshape(n, oh, ow, w.out_channels).permute(0, 3, 1, 2)


def run_conv(exe: Path, x, w, out_dtype: torch.dtype = torch.float16, variant: str = "mma",
             splits: int = 1) -> torch.Tensor:
    """The kernel's output as [N, C_out, OH, OW] (channels_last), like reference.w1a4_conv2d.

    ``variant``: "mma" (tensor cores, s8 x s8: w1a4_bytes_codes turns the packed codes into its s8
    operand first, both emulated), "simt" (CUDA cores), or "bmma" (the bit-plane kernel of
    cuda/w1a4_bmma.cu: its pack kernel from the packed codes, then the conv; ``splits`` > 1: split-K and
    its epilogue kernel), "bgmma" (the same with the warpgroup main loop of sm_90a) or "bgmma_ws" (the
    warp-specialised one)."""
    if variant in LOOPS:
        return _run_bmma(exe, x, w, out_dtype, splits, loop=variant)
    if splits != 1:
        raise ValueError("split-K is the bit-plane kernel's")
    oh, ow = reference.check_operands(x, w, out_dtype)
    n, _, h, wd = x.shape
    header = [w.n_bases, int(out_dtype == torch.float16), int(w.bias is not None), n, h, wd,
              padded_channels(w.in_channels) // 32, w.out_channels, oh, ow, *w.kernel_size, *w.stride, *w.padding,
              int(x.zero_point)]
    if variant == "mma":
        operands = [run_bytes(exe, x).numpy(), _i32(mma_weight_fragments(w))]
    else:
        operands = [_i32(x.codes), _i32(w.bits), _i32(w.row_sums)]
    return _conv(exe, 0 if variant == "mma" else 1, header, operands, x, w, out_dtype, oh, ow)


def run_bytes(exe: Path, x, step: float = 1.0, qn: int = -8, qp: int = 7) -> torch.Tensor:
    """The s8 x s8 kernel's activation operand, int8 [N, H, W, C_pad] = q - z: from a PackedActivation
    (w1a4_bytes_codes, its zero point) or a float32 / float16 / bfloat16 tensor of any strides
    (w1a4_quantize_bytes_<dtype>, LSQ with ``step``, ``qn``, ``qp``)."""
    n, c, h, wd = x.shape
    units = padded_channels(c) // 16
    if isinstance(x, PackedActivation):
        arrays = [np.array([6], np.int32), np.array([n, h, wd, units // 2, c, int(x.zero_point)], np.int32),
                  _i32(x.codes)]
    else:
        header = [_IN_KINDS[x.dtype], n, c, h, wd, *x.stride(), units, qn, qp]
        arrays = [np.array([5], np.int32), np.array(header, np.int32), np.array([step], np.float32), _raw(x)]
    data = _run(exe, arrays, n * h * wd * units * 16)
    return torch.from_numpy(np.frombuffer(data, np.int8).copy()).reshape(n, h, wd, units * 16)


def _gn_arrays(x: torch.Tensor, norm: torch.nn.GroupNorm, step: float, qn: int, qp: int, units: int) -> tuple:
    """The header of kinds 7 and 10 (the launcher's statistics geometry; x with H and W one axis, as the
    launcher makes it) and the arrays after it."""
    from binarydm.kernels.cuda import groupnorm_geometry

    n, c, h, wd = x.shape
    if x.stride(2) != wd * x.stride(3):
        raise ValueError("the kernels take H and W as one axis (x.stride(2) == W * x.stride(3)), as the launcher "
                         "makes them")
    geo = groupnorm_geometry(x)
    header = [_IN_KINDS[x.dtype], n, c, h, wd, *x.stride(), norm.num_groups, units, qn, qp,
              geo.slices, geo.channels, geo.lanes, int(geo.chan_fast)]
    gamma = norm.weight if norm.affine else torch.ones(c)
    beta = norm.bias if norm.affine else torch.zeros(c)
    return header, [np.array([step, norm.eps], np.float32), _f32(gamma), _f32(beta), _raw(x)]


def run_gn_silu_bytes(exe: Path, x: torch.Tensor, norm: torch.nn.GroupNorm, step: float, qn: int = -8,
                      qp: int = 7) -> torch.Tensor:
    """w1a4_gn_partial + w1a4_gn_finish + w1a4_gn_silu_bytes: the s8 codes of SiLU(norm(x)), int8
    [N, H, W, C_pad]."""
    n, c, h, wd = x.shape
    units = padded_channels(c) // 16
    header, arrays = _gn_arrays(x, norm, step, qn, qp, units)
    data = _run(exe, [np.array([7], np.int32), np.array(header, np.int32), *arrays], n * h * wd * units * 16)
    return torch.from_numpy(np.frombuffer(data, np.int8).copy()).reshape(n, h, wd, units * 16)


def run_gn_planes(exe: Path, x: torch.Tensor, norm: torch.nn.GroupNorm, step: float, qn: int = -8, qp: int = 7):
    """w1a4_gn_partial + w1a4_gn_finish + w1a4_gn_planes: the bit-plane kernel's (planes int32
    [N, H, W, G/4, 4, 4], sums int32 [N, H, W]) of SiLU(norm(x))."""
    n, c, h, wd = x.shape
    g = bmma_groups(c)
    header, arrays = _gn_arrays(x, norm, step, qn, qp, padded_channels(c) // 16)
    p = n * h * wd
    data = _run(exe, [np.array([10], np.int32), np.array(header + [g], np.int32), *arrays], p * g * 16 + p * 4)
    planes = torch.from_numpy(np.frombuffer(data[: p * g * 16], np.int32).copy()).reshape(n, h, wd, g // 4, 4, 4)
    sums = torch.from_numpy(np.frombuffer(data[p * g * 16:], np.int32).copy()).reshape(n, h, wd)
    return planes, sums


def run_pack(exe: Path, x: torch.Tensor, step: float, qn: int = -8, qp: int = 7) -> torch.Tensor:
    """The quantize+pack kernel's codes, int32 [N, H, W, C_pad/8], for x of float32, float16 or bfloat16."""
    n, c, h, wd = x.shape
    words = padded_channels(c) // 8
    header = [_IN_KINDS[x.dtype], n, c, h, wd, *x.stride(), words, qn, qp]
    data = _run(exe, [np.array([2], np.int32), np.array(header, np.int32), np.array([step], np.float32), _raw(x)],
                n * h * wd * words * 4)
    return torch.from_numpy(np.frombuffer(data, np.int32).copy()).reshape(n, h, wd, words)


# The bit-plane conv's main loops and their header code (emu_main.cpp, kinds 3 and 9).
LOOPS = {"bmma": 0, "bgmma": 1, "bgmma_ws": 2}


def _run_bmma(exe: Path, x, w, out_dtype: torch.dtype, splits: int = 1, loop: str = "bmma") -> torch.Tensor:
    oh, ow = reference.check_operands(x, w, out_dtype)
    n, c, h, wd = x.shape
    kh, kw = w.kernel_size
    header = [w.n_bases, int(out_dtype == torch.float16), int(w.bias is not None), n, h, wd, bmma_groups(c),
              w.out_channels, oh, ow, kh, kw, *w.stride, *w.padding, int(x.zero_point), bmma_chunks(c, kh * kw), c,
              padded_channels(c) // 32, splits, LOOPS[loop]]
    operands = [_i32(x.codes), _i32(bmma_weight_fragments(w, wgmma=loop != "bmma"))]
    return _conv(exe, 3, header, operands, x, w, out_dtype, oh, ow)


def run_planes(exe: Path, x, step: float = 1.0, qn: int = -8, qp: int = 7):
    """The bit-plane pack kernel's (planes int32 [N, H, W, G/4, 4, 4], sums int32 [N, H, W]).

    ``x``: a PackedActivation (w1a4_planes_codes, its zero point) or a float32 / float16 / bfloat16
    tensor (w1a4_planes_<dtype>, LSQ with ``step``, ``qn``, ``qp``, zero point -qn)."""
    n, c, h, wd = x.shape
    if isinstance(x, PackedActivation):
        z, kind, strides, raw = int(x.zero_point), 3, (0, 0, 0, 0), _i32(x.codes)
    else:
        z, kind, strides, raw = -qn, _IN_KINDS[x.dtype], x.stride(), _raw(x)
    g = bmma_groups(c)
    header = [kind, n, c, h, wd, *strides, g, qn, qp, z, padded_channels(c) // 32]
    p = n * h * wd
    data = _run(exe, [np.array([4], np.int32), np.array(header, np.int32), np.array([step], np.float32), raw],
                p * g * 16 + p * 4)
    planes = torch.from_numpy(np.frombuffer(data[: p * g * 16], np.int32).copy()).reshape(n, h, wd, g // 4, 4, 4)
    sums = torch.from_numpy(np.frombuffer(data[p * g * 16:], np.int32).copy()).reshape(n, h, wd)
    return planes, sums


def _w1a1_header(x: torch.Tensor, beta) -> tuple[list, list]:
    n, c, h, wd = x.shape
    header = [_IN_KINDS[x.dtype], n, c, h, wd, *x.stride(), bmma_groups(c), int(beta is not None)]
    return header, ([_f32(beta)] if beta is not None else []) + [_raw(x)]


def run_w1a1_planes(exe: Path, x: torch.Tensor, beta=None):
    """w1a1_planes_<dtype>: the 2-plane W1A1 operand of sign(x + beta) (planes int32 [N, H, W, G/4, 2, 4],
    sums int32 [N, H, W]) for x float32 / float16 / bfloat16 of any strides."""
    n, c, h, wd = x.shape
    g, p = bmma_groups(c), n * h * wd
    header, arrays = _w1a1_header(x, beta)
    data = _run(exe, [np.array([8], np.int32), np.array(header, np.int32), *arrays], p * g * 8 + p * 4)
    planes = torch.from_numpy(np.frombuffer(data[: p * g * 8], np.int32).copy()).reshape(n, h, wd, g // 4, 2, 4)
    sums = torch.from_numpy(np.frombuffer(data[p * g * 8:], np.int32).copy()).reshape(n, h, wd)
    return planes, sums


def run_w1a1_conv(exe: Path, x: torch.Tensor, beta, w, out_dtype: torch.dtype = torch.float32,
                  splits: int = 1, loop: str = "bmma") -> torch.Tensor:
    """The W1A1 path of the bit-plane kernel: w1a1_planes_<dtype> from float ``x`` and ``beta``, then
    w1a1_conv_<loop> (2 planes, one basis; ``loop`` as :data:`LOOPS`); [N, C_out, OH, OW] like
    reference.w1a4_conv2d of pack_sign_input(x, beta)."""
    n, c, h, wd = x.shape
    # The operand's shape, step 1 and zero point 1, for the shape checks and the epilogue scales.
    probe = PackedActivation(torch.zeros((n, h, wd, padded_channels(c) // 8), dtype=torch.int32), torch.ones(()), 1,
                             c)
    oh, ow = reference.check_operands(probe, w, out_dtype)
    if w.n_bases != 1:
        raise ValueError("the W1A1 kernel takes one weight basis")
    kh, kw = w.kernel_size
    header, arrays = _w1a1_header(x, beta)
    header += [int(out_dtype == torch.float16), int(w.bias is not None), w.out_channels, oh, ow, kh, kw, *w.stride,
               *w.padding, bmma_chunks(c, kh * kw), splits, LOOPS[loop]]
    operands = [*arrays, _i32(bmma_weight_fragments(w, wgmma=loop != "bmma"))]
    return _conv(exe, 9, header, operands, probe, w, out_dtype, oh, ow)
