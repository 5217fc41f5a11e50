"""CuPy loader and launcher of the W1A4 CUDA kernels (cuda/w1a4_conv.cu).

:func:`w1a4_conv2d` has the signature of :func:`binarydm.kernels.reference.w1a4_conv2d` and returns
the same numbers bit for bit. The module is compiled with NVRTC (``cupy.RawModule``) at first use and
cached for the process; where a cubin built by nvcc for the device's architecture is present (see
:func:`build_cubin`, or the ``BINARYDM_W1A4_CUBIN`` environment variable) it is loaded instead. A
built cubin's name carries a hash of the source it was built from, so an edited source never runs an
old cubin.
Where CUDA or CuPy is missing, or the operands live on the CPU, the call falls back to the PyTorch
reference and warns once per process.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Optional

import torch

from . import reference
from .packing import PackedActivation, PackedConvWeight, padded_channels

SOURCE = Path(__file__).resolve().parents[2] / "cuda" / "w1a4_conv.cu"
CUBIN_DIR = SOURCE.parent / "build"
MMA_KERNELS = tuple(f"w1a4_conv_mma_nb{nb}_{t}" for nb in (1, 2) for t in ("f16", "f32"))
SIMT_KERNELS = ("w1a4_conv_simt_f16", "w1a4_conv_simt_f32")
PACK_KERNELS = {torch.float32: "w1a4_quantize_pack_f32", torch.float16: "w1a4_quantize_pack_f16",
                torch.bfloat16: "w1a4_quantize_pack_bf16"}
MMA_BM, MMA_BN, MMA_THREADS = 128, 64, 256  # must match cuda/w1a4_conv.cu
SIMT_THREADS = 256

_state: dict = {"module": None, "error": None, "warned": False}


class KernelUnavailable(RuntimeError):
    """The CUDA path cannot run here (no CuPy, no CUDA device, or the module did not build)."""


def cuda_source() -> str:
    return SOURCE.read_text()


def nvcc_command(arch: str, output: Path, kind: str = "cubin") -> list[str]:
    """nvcc arguments that build ``cuda/w1a4_conv.cu`` for ``arch`` (sm_80, sm_90, sm_90a, ...)."""
    if kind not in ("cubin", "ptx"):
        raise ValueError(f"kind must be 'cubin' or 'ptx', got {kind!r}")
    number = arch.removeprefix("sm_")
    # The -gencode form for arch-specific targets: -arch=sm_90a also runs a plain sm_90 pass (HOPPER.md).
    target = f"-gencode=arch=compute_{number},code={'sm_' + number if kind == 'cubin' else 'compute_' + number}"
    return ["nvcc", f"-{kind}", "-O3", "-std=c++17", target, "-o", str(output), str(SOURCE)]


def source_hash() -> str:
    """The first 12 hex digits of the source's SHA-256: part of every built cubin's name."""
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]


def cubin_name(arch: str, kind: str = "cubin") -> str:
    return f"w1a4_conv.{arch}.{source_hash()}.{kind}"


def build_cubin(arch: str = "sm_90a", out_dir: Optional[Path] = None, kind: str = "cubin") -> Path:
    """Compile the kernels with nvcc into ``out_dir/w1a4_conv.<arch>.<source hash>.<kind>`` (default: cuda/build)."""
    if shutil.which("nvcc") is None:
        raise KernelUnavailable("nvcc is not on PATH: install the CUDA toolkit or use the NVRTC path")
    out_dir = Path(out_dir) if out_dir is not None else CUBIN_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / cubin_name(arch, kind)
    result = subprocess.run(nvcc_command(arch, output, kind), capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"nvcc failed to build {SOURCE.name} for {arch}:\n{result.stderr}")
    return output


def _cubin_for(major: int, minor: int) -> Optional[Path]:
    env = os.environ.get("BINARYDM_W1A4_CUBIN")
    if env:
        return Path(env)
    # Only a cubin of this very source: one built before an edit has another hash in its name.
    for arch in ((f"sm_{major}{minor}a",) if major >= 9 else ()) + (f"sm_{major}{minor}",):
        path = CUBIN_DIR / cubin_name(arch)
        if path.exists():
            return path
    return None


def load_module():
    """The compiled ``cupy.RawModule`` (built once per process); raises :class:`KernelUnavailable`."""
    if _state["module"] is not None:
        return _state["module"]
    if _state["error"] is not None:
        raise KernelUnavailable(_state["error"])
    try:
        try:
            import cupy
        except ImportError:
            raise KernelUnavailable("CuPy is not installed (pip install cupy-cuda13x)") from None
        if not torch.cuda.is_available():
            raise KernelUnavailable("PyTorch sees no CUDA device")
        try:
            if cupy.cuda.runtime.getDeviceCount() < 1:
                raise KernelUnavailable("CuPy sees no CUDA device")
        except cupy.cuda.runtime.CUDARuntimeError as err:
            raise KernelUnavailable(f"CuPy cannot reach the CUDA runtime: {err}") from None
        major, minor = torch.cuda.get_device_capability()
        cubin = _cubin_for(major, minor)
        if cubin is not None:
            module = cupy.RawModule(path=str(cubin))
        else:
            module = cupy.RawModule(code=cuda_source(), options=("--std=c++17",))
        module.get_function(SIMT_KERNELS[0])  # compiles now, so that a build error surfaces here
        _state["module"] = module
        return module
    except KernelUnavailable as err:
        _state["error"] = str(err)
        raise


def is_available() -> bool:
    try:
        load_module()
        return True
    except KernelUnavailable:
        return False


def _reset_state() -> None:
    """Forget the module, the load error and the warning (for tests)."""
    _state.update(module=None, error=None, warned=False)


def _warn_fallback(reason: str) -> None:
    if not _state["warned"]:
        _state["warned"] = True
        warnings.warn(
            f"W1A4 CUDA kernel unavailable ({reason}); using the PyTorch reference, which is exact but slow",
            RuntimeWarning, stacklevel=3,
        )


def _check_device_operands(x: PackedActivation, w: PackedConvWeight) -> None:
    tensors = {"codes": x.codes, "bits": w.bits, "row_sums": w.row_sums, "alpha": w.alpha}
    if w.bias is not None:
        tensors["bias"] = w.bias
    for name, t in tensors.items():
        if t.device != x.codes.device:
            raise ValueError(f"{name} is on {t.device}, the activation codes on {x.codes.device}: move the "
                             "packed weight with .to(device)")
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous")
    if x.codes.data_ptr() % 16:
        raise ValueError("the activation codes must be 16-byte aligned (the kernel loads 16-byte vectors)")


def _shape_args(x: PackedActivation, w: PackedConvWeight, oh: int, ow: int) -> tuple:
    """CONV_SHAPE_PARAMS of the .cu file: N, H, W, Cw, C_out, OH, OW, KH, KW, SH, SW, PH, PW, z (int32)."""
    import numpy as np

    n, _, h, wd = x.shape
    fields = (n, h, wd, padded_channels(w.in_channels) // 32, w.out_channels, oh, ow,
              *w.kernel_size, *w.stride, *w.padding, int(x.zero_point))
    return tuple(np.int32(f) for f in fields)


def launch(x: PackedActivation, w: PackedConvWeight, out_dtype: torch.dtype = torch.float16,
           variant: str = "mma", out: Optional[torch.Tensor] = None,
           scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Run one kernel variant (``"mma"``: tensor cores, sm_80+; ``"simt"``: CUDA cores) on CUDA tensors.

    ``out``, if given, is an NHWC-contiguous [N, OH, OW, C_out] tensor of ``out_dtype`` to write into
    (the GPU tests poison it first). ``scale``, if given, is :func:`reference.epilogue_scale` of the
    pair, computed once by the caller (a layer whose step never changes) instead of by one more small
    kernel per call. Returns y [N, C_out, OH, OW] (channels_last), as the reference.
    """
    import cupy
    import numpy as np

    oh, ow = reference.check_operands(x, w, out_dtype)
    _check_device_operands(x, w)
    if torch.cuda.get_device_capability(x.codes.device)[0] < 8 and variant == "mma":
        raise KernelUnavailable("the mma kernel needs sm_80 or newer; use variant='simt'")
    module = load_module()
    n = x.codes.shape[0]
    if out is None:
        out = torch.empty(n, oh, ow, w.out_channels, dtype=out_dtype, device=x.codes.device)
    elif out.shape != (n, oh, ow, w.out_channels) or out.dtype != out_dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {out_dtype} tensor of shape {(n, oh, ow, w.out_channels)}")
    if scale is None:
        scale = reference.epilogue_scale(w, x)
    scale = scale.to(x.codes.device)
    bias_ptr = w.bias.data_ptr() if w.bias is not None else 0
    suffix = "f16" if out_dtype == torch.float16 else "f32"
    ptr = lambda t: np.uint64(t.data_ptr())  # noqa: E731
    args = (ptr(x.codes), ptr(w.bits), ptr(w.row_sums), ptr(scale), np.uint64(bias_ptr), ptr(out),
            *_shape_args(x, w, oh, ow))
    stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(x.codes.device).cuda_stream)
    with cupy.cuda.Device(x.codes.device.index or 0), stream:
        if variant == "mma":
            kernel = module.get_function(f"w1a4_conv_mma_nb{w.n_bases}_{suffix}")
            m = n * oh * ow
            grid = (-(-m // MMA_BM), -(-(w.n_bases * w.out_channels) // MMA_BN))
            kernel(grid, (MMA_THREADS,), args)
        elif variant == "simt":
            kernel = module.get_function(f"w1a4_conv_simt_{suffix}")
            total = n * oh * ow * w.out_channels
            kernel((-(-total // SIMT_THREADS),), (SIMT_THREADS,), args + (np.int32(w.n_bases),))
        else:
            raise ValueError(f"variant must be 'mma' or 'simt', got {variant!r}")
    return out.permute(0, 3, 1, 2)


def _quantize_pack_args(x: torch.Tensor, codes: torch.Tensor, step: torch.Tensor, qn: int, qp: int):
    """(kernel name, kernel arguments) of the quantize+pack kernel: ``x`` read in place in its own dtype
    and strides (no float32 copy), ``step`` passed by pointer (no ``.item()``, so no device sync)."""
    import numpy as np

    if x.dtype not in PACK_KERNELS:
        raise ValueError(f"quantize_pack takes float32, float16 or bfloat16 input, got {x.dtype}")
    if step.dtype != torch.float32 or step.numel() != 1 or step.device != x.device:
        raise ValueError("step must be a one-element float32 tensor on the input's device")
    n, c, h, wd = x.shape
    args = (np.uint64(x.data_ptr()), np.uint64(codes.data_ptr()), np.int32(n), np.int32(c), np.int32(h),
            np.int32(wd), *(np.int64(s) for s in x.stride()), np.int32(codes.shape[-1]),
            np.uint64(step.data_ptr()), np.int32(qn), np.int32(qp))
    return PACK_KERNELS[x.dtype], args


def quantize_pack(x: torch.Tensor, step, qn: int = -8, qp: int = 7,
                  out: Optional[torch.Tensor] = None) -> PackedActivation:
    """:func:`binarydm.kernels.packing.pack_activation` on the GPU (one kernel, any input strides).

    ``step``: a float32 one-element tensor on the input's device (no copy, no sync) or a number.
    ``out``, if given, is the int32 [N, H, W, C_pad/8] codes tensor to write into.
    """
    import cupy

    if qp - qn > 15:
        raise ValueError(f"the code range [{qn}, {qp}] needs more than 4 bits")
    module = load_module()
    n, c, h, wd = x.shape
    shape = (n, h, wd, padded_channels(c) // 8)
    codes = out if out is not None else torch.empty(shape, dtype=torch.int32, device=x.device)
    if codes.shape != shape or codes.dtype != torch.int32 or not codes.is_contiguous():
        raise ValueError(f"out must be a contiguous int32 tensor of shape {shape}")
    step_t = torch.as_tensor(step, dtype=torch.float32, device=x.device).reshape(())
    name, args = _quantize_pack_args(x, codes, step_t, qn, qp)
    total = codes.numel()
    stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(x.device).cuda_stream)
    with cupy.cuda.Device(x.device.index or 0), stream:
        module.get_function(name)((-(-total // 256),), (256,), args)
    return PackedActivation(codes, step_t, -qn, c)


def w1a4_conv2d(x: PackedActivation, w: PackedConvWeight, out_dtype: torch.dtype = torch.float16,
                scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """W1A4 convolution on the GPU (tensor-core kernel), or the reference with one warning where it cannot run.

    ``scale``: the pair's epilogue scales if the caller keeps them (see :func:`launch`)."""
    if x.codes.device.type != "cuda":
        _warn_fallback("the operands are on the CPU")
        return reference.w1a4_conv2d(x, w, out_dtype)
    try:
        variant = "mma" if torch.cuda.get_device_capability(x.codes.device)[0] >= 8 else "simt"
        return launch(x, w, out_dtype, variant, scale=scale)
    except KernelUnavailable as err:
        _warn_fallback(str(err))
        return reference.w1a4_conv2d(x, w, out_dtype)
