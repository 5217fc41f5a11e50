"""CuPy loader and launcher of the W1A4 CUDA kernels (cuda/w1a4_conv.cu and cuda/w1a4_bmma.cu).

:func:`w1a4_conv2d` has the signature of :func:`binarydm.kernels.reference.w1a4_conv2d` and returns
the same numbers bit for bit. It runs the bit-plane kernel (``"bmma"``: 1-bit tensor cores, sm_80+)
where that kernel passed a bit-exactness self-check on the device and the convolution has fewer than
``MMA_MIN_PIXELS`` output pixels (batch x height x width; :func:`choose_variant`), else the s8 x s8 tensor-core
kernel (``"mma"``, whose activation operand is one s8 byte q - z per channel: :func:`quantize_bytes`
from a float tensor, :func:`to_bytes` from packed codes), else the CUDA-core one (``"simt"``);
``BINARYDM_W1A4_VARIANT`` forces one. Each
source is compiled with NVRTC (``cupy.RawModule``) at first use and cached for the process
(:func:`load_module`); where a cubin built by nvcc for the device's architecture is present (see
:func:`build_cubin`, or the ``BINARYDM_W1A4_CUBIN`` / ``BINARYDM_W1A4_BMMA_CUBIN`` environment
variables) it is loaded instead. NVRTC gets the source with its include (cuda/w1a4_common.cuh) spliced
in (:func:`cuda_source`), and a built cubin's name carries a hash of that text, so an edited source or
header never runs an old cubin.
Where CUDA or CuPy is missing, or the operands live on the CPU, the call falls back to the PyTorch
reference and warns once per process.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..resources import cuda_dir
from . import reference
from .packing import (
    MMA_BN,
    ByteActivation,
    PackedActivation,
    PackedConvWeight,
    PlanarActivation,
    bmma_chunks,
    bmma_groups,
    bmma_weight_fragments,
    mma_weight_fragments,
    pack_sign_input,
    padded_channels,
)

SOURCE = cuda_dir() / "w1a4_conv.cu"
BMMA_SOURCE = SOURCE.parent / "w1a4_bmma.cu"
CUBIN_DIR = SOURCE.parent / "build"
MMA_KERNELS = tuple(f"w1a4_conv_mma_nb{nb}_{t}" for nb in (1, 2) for t in ("f16", "f32"))
SIMT_KERNELS = ("w1a4_conv_simt_f16", "w1a4_conv_simt_f32")
PACK_KERNELS = {torch.float32: "w1a4_quantize_pack_f32", torch.float16: "w1a4_quantize_pack_f16",
                torch.bfloat16: "w1a4_quantize_pack_bf16"}
BYTES_KERNELS = {torch.float32: "w1a4_quantize_bytes_f32", torch.float16: "w1a4_quantize_bytes_f16",
                 torch.bfloat16: "w1a4_quantize_bytes_bf16"}
BYTES_CODES_KERNEL = "w1a4_bytes_codes"
GN_KERNELS = {dtype: (f"w1a4_gn_partial_{t}", f"w1a4_gn_silu_bytes_{t}")
              for dtype, t in ((torch.float32, "f32"), (torch.float16, "f16"), (torch.bfloat16, "bf16"))}
GN_FINISH_KERNEL = "w1a4_gn_finish"
GN_PLANES_KERNELS = {torch.float32: "w1a4_gn_planes_f32", torch.float16: "w1a4_gn_planes_f16",
                     torch.bfloat16: "w1a4_gn_planes_bf16"}
# must match cuda/w1a4_conv.cu (MMA_BN and MMA_STAGES: packing's, which shape the weight fragments)
MMA_BM, MMA_THREADS, BYTES_THREADS, GN_THREADS = 128, 128, 256, 256
GN_MAX_GROUPS = 512
MMA_MAX_STEPS, MMA_MAX_TAPS = 1023, 31  # likewise: the mma kernel's step table and tap mask
SIMT_THREADS = 256
BMMA_KERNELS = tuple(f"w1a4_conv_bmma_nb{nb}_{t}" for nb in (1, 2) for t in ("f16", "f32"))
PLANES_KERNELS = {torch.float32: "w1a4_planes_f32", torch.float16: "w1a4_planes_f16",
                  torch.bfloat16: "w1a4_planes_bf16"}
PLANES_CODES_KERNEL = "w1a4_planes_codes"
W1A1_KERNELS = ("w1a1_conv_bmma_f16", "w1a1_conv_bmma_f32")  # the bit-plane conv on 2 planes, one basis
# The bit-plane conv's main loops: mma.sync (sm_80+), and on sm_90a wgmma ("bgmma") and wgmma with a loading
# warpgroup ("bgmma_ws"), which exist only where the module was built for sm_90a (:func:`wgmma_built`).
LOOPS = ("bmma", "bgmma", "bgmma_ws")
LOOP_ENV = "BINARYDM_W1A4_LOOP"  # bgmma or bgmma_ws: launch_bmma's default where built and self-checked
# must match cuda/w1a4_bmma.cu: BM_WS_THREADS, BM_WS_SMEM_BYTES (the stages and an output tile of 128 x 65 floats)
BMMA_WS_THREADS, BMMA_WS_SMEM_BYTES = 384, 4 * (128 * 8 + 128) * 16 + 128 * 65 * 4
SIGN_PLANES_KERNELS = {torch.float32: "w1a1_planes_f32", torch.float16: "w1a1_planes_f16",
                       torch.bfloat16: "w1a1_planes_bf16"}
# must match cuda/w1a4_bmma.cu: BM_BM, BM_BN, BM_THREADS, BM_SMEM_BYTES, BM_PACK_THREADS
BMMA_BM, BMMA_BN, BMMA_THREADS, BMMA_SMEM_BYTES, BMMA_PACK_THREADS = 128, 64, 256, 4 * (128 * 8 + 128) * 16, 256
VARIANTS = ("bmma", "mma", "simt")
VARIANT_ENV = "BINARYDM_W1A4_VARIANT"
# From this many output pixels (batch x H_out x W_out) on, the s8 x s8 kernel beats the bit-plane one:
# on the H200 (docs/kernels.md, fourth call) it was faster on 33 of 36 layer shapes at >= 16,384 pixels
# and slower on 55 of 58 below (the bit-plane kernel's 128 x 64 blocks fill the SMs sooner).
MMA_MIN_PIXELS = 16384

# The compiled modules and the load errors, by source file name; the fallback warning; a forced variant.
_state: dict = {"modules": {}, "errors": {}, "warned": False, "variant": None}
# Which bit-plane functions got their dynamic shared memory limit, and each device's self-check result
# (True: bit for bit against the reference; "check_error" says why not).
_bmma_state: dict = {"smem_set": set(), "checked": {}, "loops_checked": {}}
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.MULTILINE)


class KernelUnavailable(RuntimeError):
    """The CUDA path cannot run here (no CuPy, no CUDA device, or the module did not build)."""


def cuda_source(source: Optional[Path] = None) -> str:
    """The text NVRTC compiles: ``source`` (default cuda/w1a4_conv.cu) with each ``#include "file"`` of
    a file beside it replaced by that file's text (once; the header guards stay). NVRTC is given no
    include path, and CuPy's kernel cache is keyed by this text, so an edited header is a new key."""
    source = Path(source or SOURCE)
    seen: set = set()

    def expand(path: Path) -> str:
        def splice(match: re.Match) -> str:
            included = path.parent / match.group(1)
            if not included.is_file():
                return match.group(0)
            if included.name in seen:
                return ""
            seen.add(included.name)
            return f"// ---- {included.name} ----\n{expand(included)}// ---- end of {included.name} ----"

        return _INCLUDE.sub(splice, path.read_text())

    return expand(source)


def nvcc_command(arch: str, output: Path, kind: str = "cubin", source: Optional[Path] = None) -> list[str]:
    """nvcc arguments that build ``source`` (default ``cuda/w1a4_conv.cu``) for ``arch`` (sm_80, sm_90a, ...)."""
    if kind not in ("cubin", "ptx"):
        raise ValueError(f"kind must be 'cubin' or 'ptx', got {kind!r}")
    number = arch.removeprefix("sm_")
    # The -gencode form for arch-specific targets: -arch=sm_90a also runs a plain sm_90 pass (HOPPER.md).
    target = f"-gencode=arch=compute_{number},code={'sm_' + number if kind == 'cubin' else 'compute_' + number}"
    return ["nvcc", f"-{kind}", "-O3", "-std=c++17", target, "-o", str(output), str(source or SOURCE)]


def source_hash(source: Optional[Path] = None) -> str:
    """The first 12 hex digits of the SHA-256 of :func:`cuda_source` (the source with its includes): part
    of every built cubin's name."""
    return hashlib.sha256(cuda_source(source).encode()).hexdigest()[:12]


def cubin_name(arch: str, kind: str = "cubin", source: Optional[Path] = None) -> str:
    source = Path(source or SOURCE)
    return f"{source.stem}.{arch}.{source_hash(source)}.{kind}"


def build_cubin(arch: str = "sm_90a", out_dir: Optional[Path] = None, kind: str = "cubin",
                source: Optional[Path] = None) -> Path:
    """Compile ``source`` (default cuda/w1a4_conv.cu) with nvcc into ``out_dir/<stem>.<arch>.<source hash>.<kind>``
    (default: cuda/build)."""
    if shutil.which("nvcc") is None:
        raise KernelUnavailable("nvcc is not on PATH: install the CUDA toolkit or use the NVRTC path")
    out_dir = Path(out_dir) if out_dir is not None else CUBIN_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / cubin_name(arch, kind, source)
    result = subprocess.run(nvcc_command(arch, output, kind, source), capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"nvcc failed to build {Path(source or SOURCE).name} for {arch}:\n{result.stderr}")
    return output


def _cubin_for(major: int, minor: int, source: Optional[Path] = None) -> Optional[Path]:
    bmma = source is not None and Path(source).name == BMMA_SOURCE.name
    env = os.environ.get("BINARYDM_W1A4_BMMA_CUBIN" if bmma else "BINARYDM_W1A4_CUBIN")
    if env:
        return Path(env)
    # Only a cubin of this very source: one built before an edit has another hash in its name.
    for arch in ((f"sm_{major}{minor}a",) if major >= 9 else ()) + (f"sm_{major}{minor}",):
        path = CUBIN_DIR / cubin_name(arch, source=source)
        if path.exists():
            return path
    return None


# Per source: the kernel the module is probed with at load (compiling it now, so that a build error
# surfaces here), the smallest compute capability it runs on, and whether a build error is kept as a
# load error (the bit-plane module: the other kernels still run) or raised as it is (the main module:
# a broken source fails loudly, and the GPU tests fail instead of skipping).
_MODULES = {SOURCE.name: (SIMT_KERNELS[0], 0, False), BMMA_SOURCE.name: (BMMA_KERNELS[0], 8, True)}


def _cupy():
    """CuPy, where it is installed and sees a CUDA device that PyTorch sees too."""
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
    return cupy


def load_module(source: Optional[Path] = None):
    """The compiled ``cupy.RawModule`` of ``source`` (default cuda/w1a4_conv.cu; :data:`BMMA_SOURCE`: the
    bit-plane kernels, sm_80+), built once per process: from a matching cubin where there is one
    (:func:`_cubin_for`), else with NVRTC. Raises :class:`KernelUnavailable`, also on a build error,
    which for the bit-plane module is kept: the next call raises it again without another compile."""
    path = Path(source or SOURCE)
    name = path.name
    if name in _state["modules"]:
        return _state["modules"][name]
    if name in _state["errors"]:
        raise KernelUnavailable(_state["errors"][name])
    probe, min_major, keep_build_error = _MODULES[name]
    try:
        cupy = _cupy()
        major, minor = torch.cuda.get_device_capability()
        if major < min_major:
            raise KernelUnavailable(f"{name} needs sm_{min_major}0 or newer")
        cubin = _cubin_for(major, minor, path)
        if cubin is not None:
            module = cupy.RawModule(path=str(cubin))
            _state.setdefault("sm90a", set()).update({name} if ".sm_90a." in cubin.name else set())
        else:
            module = cupy.RawModule(code=cuda_source(path), options=("--std=c++17",))
        module.get_function(probe)
    except KernelUnavailable as err:
        _state["errors"][name] = str(err)
        raise
    except Exception as err:  # noqa: BLE001 -- a compile or load error
        if not keep_build_error:
            raise
        _state["errors"][name] = f"{name}: {type(err).__name__}: {err}"
        raise KernelUnavailable(_state["errors"][name]) from err
    _state["modules"][name] = module
    return module


def wgmma_built() -> bool:
    """Whether the bit-plane module of this process came from a cubin built for sm_90a (:func:`build_cubin`
    with ``source=BMMA_SOURCE``): only then do its warpgroup kernels hold wgmma; NVRTC builds plain sm_90,
    where they trap."""
    try:
        load_module(BMMA_SOURCE)
    except KernelUnavailable:
        return False
    return BMMA_SOURCE.name in _state.get("sm90a", set())


def load_error(source: Optional[Path] = None) -> Optional[str]:
    """Why :func:`load_module` of ``source`` failed in this process (None: it loaded, or was not tried)."""
    return _state["errors"].get(Path(source or SOURCE).name)


def _bmma_function(name: str, smem: int = 0):
    """A bit-plane conv kernel with its dynamic shared memory limit raised to ``smem`` (default
    BMMA_SMEM_BYTES), once."""
    smem = smem or BMMA_SMEM_BYTES
    fn = load_module(BMMA_SOURCE).get_function(name)
    if name not in _bmma_state["smem_set"]:
        try:
            fn.max_dynamic_shared_size_bytes = smem
        except Exception:  # noqa: BLE001 -- an older CuPy: the driver call itself
            from cupy.cuda import driver

            attr = getattr(driver, "CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES", 8)
            handle = getattr(fn, "ptr", None) or fn.kernel.ptr
            driver.funcSetAttribute(handle, attr, smem)
        _bmma_state["smem_set"].add(name)
    return fn


def is_available() -> bool:
    try:
        load_module()
        return True
    except KernelUnavailable:
        return False


def _reset_state() -> None:
    """Forget the modules, the load errors, the self-checks and the warnings (for tests)."""
    _state.update(modules={}, errors={}, warned=False, variant=None, sm90a=set())
    _bmma_state.clear()
    _bmma_state.update(smem_set=set(), checked={}, loops_checked={})


def _warn_fallback(reason: str) -> None:
    if not _state["warned"]:
        _state["warned"] = True
        warnings.warn(
            f"W1A4 CUDA kernel unavailable ({reason}); using the PyTorch reference, which is exact but slow",
            RuntimeWarning, stacklevel=3,
        )


def _launch_on(device, kernel, grid: tuple, block: tuple, args: tuple) -> None:
    """Launch a CuPy kernel on PyTorch's current stream of ``device`` (stream-ordered with the tensors)."""
    import cupy

    stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream)
    with cupy.cuda.Device(device.index or 0), stream:
        kernel(grid, block, args)


def _check_device_operands(x, w: PackedConvWeight) -> None:
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


def _shape_args(x, w: PackedConvWeight, oh: int, ow: int) -> tuple:
    """CONV_SHAPE_PARAMS of the .cu file: N, H, W, Cw, C_out, OH, OW, KH, KW, SH, SW, PH, PW, z (int32)."""
    import numpy as np

    n, _, h, wd = x.shape
    fields = (n, h, wd, padded_channels(w.in_channels) // 32, w.out_channels, oh, ow,
              *w.kernel_size, *w.stride, *w.padding, int(x.zero_point))
    return tuple(np.int32(f) for f in fields)


def launch(x, w: PackedConvWeight, out_dtype: torch.dtype = torch.float16,
           variant: str = "mma", out: Optional[torch.Tensor] = None,
           scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Run one kernel variant (``"mma"``: tensor cores, sm_80+; ``"simt"``: CUDA cores; ``"bmma"``: the
    bit-plane kernel, its pack kernel first) on CUDA tensors.

    ``x``: a PackedActivation (any variant; "mma" turns it into s8 bytes first with :func:`to_bytes`),
    a ByteActivation ("mma", from :func:`quantize_bytes`) or a PlanarActivation ("bmma").
    ``out``, if given, is an NHWC-contiguous [N, OH, OW, C_out] tensor of ``out_dtype`` to write into
    (the GPU tests poison it first). ``scale``, if given, is :func:`reference.epilogue_scale` of the
    pair, computed once by the caller (a layer whose step never changes) instead of by one more small
    kernel per call. Returns y [N, C_out, OH, OW] (channels_last), as the reference.
    """
    import cupy
    import numpy as np

    if variant == "bmma":
        if isinstance(x, ByteActivation):
            raise ValueError("the bit-plane kernel takes packed codes or planes, not s8 bytes: use variant='mma'")
        if isinstance(x, PackedActivation):
            _check_device_operands(x, w)
        return launch_bmma(x, w, out_dtype, out=out, scale=scale)
    if variant not in ("mma", "simt"):
        raise ValueError(f"variant must be 'bmma', 'mma' or 'simt', got {variant!r}")
    if isinstance(x, ByteActivation) and variant != "mma":
        raise ValueError("s8 byte codes are the mma kernel's operand: use variant='mma', or pack the input "
                         "with quantize_pack for 'simt'")
    oh, ow = reference.check_operands(x, w, out_dtype)
    _check_device_operands(x, w)
    if variant == "mma":
        why = mma_shape_error(w)
        if why:
            raise ValueError(why)
        if torch.cuda.get_device_capability(x.codes.device)[0] < 8:
            raise KernelUnavailable("the mma kernel needs sm_80 or newer; use variant='simt'")
    module = load_module()
    if variant == "mma" and isinstance(x, PackedActivation):
        x = to_bytes(x)
    n = x.codes.shape[0]
    if out is None:
        out = torch.empty(n, oh, ow, w.out_channels, dtype=out_dtype, device=x.codes.device)
    elif out.shape != (n, oh, ow, w.out_channels) or out.dtype != out_dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {out_dtype} tensor of shape {(n, oh, ow, w.out_channels)}")
    if scale is None:
        scale = reference.epilogue_scale(w, x)
    scale = scale.to(x.codes.device)
    bias_ptr = np.uint64(w.bias.data_ptr() if w.bias is not None else 0)
    suffix = "f16" if out_dtype == torch.float16 else "f32"
    ptr = lambda t: np.uint64(t.data_ptr())  # noqa: E731
    shape = _shape_args(x, w, oh, ow)
    stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(x.codes.device).cuda_stream)
    with cupy.cuda.Device(x.codes.device.index or 0), stream:
        if variant == "mma":
            # s8 codes (taps outside the image are zero-filled: no border correction), s8 weight fragments
            kernel = module.get_function(f"w1a4_conv_mma_nb{w.n_bases}_{suffix}")
            m = n * oh * ow
            grid = (-(-m // MMA_BM), -(-(w.n_bases * w.out_channels) // MMA_BN))
            kernel(grid, (MMA_THREADS,), (ptr(x.codes), ptr(mma_weight(w)), ptr(scale), bias_ptr, ptr(out), *shape))
        else:
            kernel = module.get_function(f"w1a4_conv_simt_{suffix}")
            total = n * oh * ow * w.out_channels
            kernel((-(-total // SIMT_THREADS),), (SIMT_THREADS,),
                   (ptr(x.codes), ptr(w.bits), ptr(w.row_sums), ptr(scale), bias_ptr, ptr(out), *shape,
                    np.int32(w.n_bases)))
    return out.permute(0, 3, 1, 2)


def mma_shape_error(w: PackedConvWeight) -> Optional[str]:
    """Why the s8 x s8 kernel cannot take ``w`` (None: it can). It tables its K steps (at most
    MMA_MAX_STEPS) and keeps one bit per tap (at most MMA_MAX_TAPS)."""
    steps = w.taps * padded_channels(w.in_channels) // 32
    if w.taps > MMA_MAX_TAPS or steps > MMA_MAX_STEPS:
        return (f"the mma kernel takes at most {MMA_MAX_TAPS} taps and {MMA_MAX_STEPS} K steps (KH*KW*C_pad/32); "
                f"this convolution has {w.taps} and {steps}: use variant='bmma' or 'simt'")
    return None


def _fragments(w: PackedConvWeight, attr: str, make) -> torch.Tensor:
    """A tensor-core kernel's weight operand: made once by ``make`` and kept on ``w`` as ``attr`` (its device)."""
    frag = getattr(w, attr)
    if frag is None or frag.device != w.bits.device:
        frag = make(w)
        setattr(w, attr, frag)
    return frag


def mma_weight(w: PackedConvWeight) -> torch.Tensor:
    """The weight in the s8 x s8 kernel's fragment order (:func:`packing.mma_weight_fragments`)."""
    return _fragments(w, "mma_frag", mma_weight_fragments)


# ---- the bit-plane kernel ------------------------------------------------------------------------
def _planes_out(n: int, c: int, h: int, wd: int, device, out: Optional[tuple], n_planes: int = 4):
    g = bmma_groups(c)
    if g > BMMA_PACK_THREADS:
        raise ValueError(f"the bit-plane pack kernel takes at most {32 * BMMA_PACK_THREADS} channels, got {c}")
    shape = (n, h, wd, g // 4, n_planes, 4)
    if out is None:
        return (torch.empty(shape, dtype=torch.int32, device=device),
                torch.empty((n, h, wd), dtype=torch.int32, device=device))
    planes, sums = out
    if planes.shape != shape or sums.shape != (n, h, wd) or not (planes.is_contiguous() and sums.is_contiguous()):
        raise ValueError(f"out must be contiguous int32 tensors of shapes {shape} and {(n, h, wd)}")
    return planes, sums


def _launch_planes(name: str, x_ptr: int, planes, sums, n, c, h, wd, strides, gc, step, qn, qp, z, device):
    import numpy as np

    g = bmma_groups(c)
    per_block = BMMA_PACK_THREADS // g
    args = (np.uint64(x_ptr), np.uint64(planes.data_ptr()), np.uint64(sums.data_ptr()), np.int32(n), np.int32(c),
            np.int32(h), np.int32(wd), *(np.int64(v) for v in strides), np.int32(g), np.int32(gc),
            np.uint64(step.data_ptr()), np.int32(qn), np.int32(qp), np.int32(z))
    _launch_on(device, load_module(BMMA_SOURCE).get_function(name), (-(-(n * h * wd) // per_block),),
               (BMMA_PACK_THREADS,), args)


def to_planes(x: PackedActivation, out: Optional[tuple] = None) -> PlanarActivation:
    """Packed nibble codes -> the bit-plane kernel's planes and per-pixel sums (one kernel, no sync)."""
    n, c, h, wd = x.shape
    planes, sums = _planes_out(n, c, h, wd, x.codes.device, out)
    step = torch.as_tensor(x.step, dtype=torch.float32, device=x.codes.device).reshape(())
    if not x.codes.is_contiguous() or x.codes.data_ptr() % 16:
        raise ValueError("the activation codes must be contiguous and 16-byte aligned")
    _launch_planes(PLANES_CODES_KERNEL, x.codes.data_ptr(), planes, sums, n, c, h, wd, (0, 0, 0, 0),
                   x.codes.shape[-1] // 4, step, 0, 0, int(x.zero_point), x.codes.device)
    return PlanarActivation(planes, sums, step, int(x.zero_point), c)


def quantize_planes(x: torch.Tensor, step, qn: int = -8, qp: int = 7, out: Optional[tuple] = None) -> PlanarActivation:
    """LSQ quantization of ``x`` (float32/fp16/bf16, any strides, read in place) straight into the
    bit-plane layout: the codes of :func:`binarydm.kernels.packing.pack_activation`, one kernel, the
    step read by pointer (no sync). Zero point -qn."""
    if qp - qn > 15:
        raise ValueError(f"the code range [{qn}, {qp}] needs more than 4 bits")
    if x.dtype not in PLANES_KERNELS:
        raise ValueError(f"quantize_planes takes float32, float16 or bfloat16 input, got {x.dtype}")
    n, c, h, wd = x.shape
    planes, sums = _planes_out(n, c, h, wd, x.device, out)
    step_t = torch.as_tensor(step, dtype=torch.float32, device=x.device).reshape(())
    _launch_planes(PLANES_KERNELS[x.dtype], x.data_ptr(), planes, sums, n, c, h, wd, x.stride(), 0, step_t, qn, qp,
                   -qn, x.device)
    return PlanarActivation(planes, sums, step_t, -qn, c)


def sign_planes(x: torch.Tensor, beta: Optional[torch.Tensor] = None, out: Optional[tuple] = None) -> PlanarActivation:
    """W1A1's operand: x_b = sign(x + beta_c) (sign(0) = +1) of ``x`` (float32/fp16/bf16, any strides, read
    in place; ``beta`` float32 [C] or None) as the two bit-planes of the codes x_b + 1, zero point 1 (the
    codes of :func:`binarydm.kernels.packing.pack_sign_input`). One kernel, no sync."""
    import numpy as np

    if x.dtype not in SIGN_PLANES_KERNELS:
        raise ValueError(f"sign_planes takes float32, float16 or bfloat16 input, got {x.dtype}")
    n, c, h, wd = x.shape
    planes, sums = _planes_out(n, c, h, wd, x.device, out, n_planes=2)
    if beta is not None:
        beta = beta.detach().to(device=x.device, dtype=torch.float32).contiguous()
        if beta.numel() != c:
            raise ValueError(f"beta has {beta.numel()} values, the input {c} channels")
    g = bmma_groups(c)
    per_block = BMMA_PACK_THREADS // g
    args = (np.uint64(x.data_ptr()), np.uint64(beta.data_ptr() if beta is not None else 0),  # null: no shift
            np.uint64(planes.data_ptr()), np.uint64(sums.data_ptr()), np.int32(n), np.int32(c), np.int32(h),
            np.int32(wd), *(np.int64(v) for v in x.stride()), np.int32(g))
    _launch_on(x.device, load_module(BMMA_SOURCE).get_function(SIGN_PLANES_KERNELS[x.dtype]),
               (-(-(n * h * wd) // per_block),), (BMMA_PACK_THREADS,), args)
    return PlanarActivation(planes, sums, torch.ones((), device=x.device), 1, c, n_planes=2)


def bmma_weight(w: PackedConvWeight, wgmma: bool = False) -> torch.Tensor:
    """The weight in the bit-plane kernel's fragment order (:func:`packing.bmma_weight_fragments`), or in
    the warpgroup loops' canonical layout (``wgmma``)."""
    if wgmma:
        return _fragments(w, "bgmma_frag", lambda v: bmma_weight_fragments(v, wgmma=True))
    return _fragments(w, "bmma_frag", bmma_weight_fragments)


def bmma_splits(blocks: int, chunks: int, sms: int) -> int:
    """Split-K factor of a bit-plane launch of ``blocks`` tiles and ``chunks`` K chunks on a card with ``sms``
    multiprocessors: 1 where the tiles fill the card (the kernel runs one block per SM: its registers), else
    as many splits as make about one wave, at most one per chunk (batch 1: 16 tiles of a 32 x 32 x 128
    layer on 132 SMs -> 5 splits, one per chunk)."""
    if blocks >= sms:
        return 1
    return max(1, min(chunks, sms // blocks))


def bmma_grid(pixels: int, columns: int) -> tuple[int, int]:
    """The bit-plane kernel's tiles: (pixel blocks, column blocks) of ``pixels`` output pixels and ``columns``
    GEMM columns (n_bases x C_out)."""
    return -(-pixels // BMMA_BM), -(-columns // BMMA_BN)


def bmma_auto_splits(device, pixels: int, columns: int, chunks: int) -> int:
    """The split-K factor :func:`launch_bmma` chooses on ``device`` (:func:`bmma_splits` of its tiles)."""
    rows, cols = bmma_grid(pixels, columns)
    return bmma_splits(rows * cols, chunks, torch.cuda.get_device_properties(device).multi_processor_count)


def launch_bmma(x, w: PackedConvWeight, out_dtype: torch.dtype = torch.float16,
                out: Optional[torch.Tensor] = None, scale: Optional[torch.Tensor] = None,
                splits: Optional[int] = None, loop: Optional[str] = None) -> torch.Tensor:
    """The bit-plane kernel (cuda/w1a4_bmma.cu) on CUDA tensors; ``x`` a PlanarActivation (from
    :func:`quantize_planes` or :func:`to_planes`; 2 planes from :func:`sign_planes`: the W1A1 kernel, one
    weight basis) or a PackedActivation (converted with :func:`to_planes` first). ``out`` and ``scale`` as
    for :func:`launch`. ``splits``: split-K factor (None: :func:`bmma_splits`; > 1 adds a zeroed int32
    workspace and the epilogue kernel, the same bits). ``loop``: the main loop, one of :data:`LOOPS`
    ("bgmma", "bgmma_ws": sm_90a, KernelUnavailable where the module was not built for it); None:
    :func:`default_loop`."""
    import cupy
    import numpy as np

    if isinstance(x, PackedActivation):
        x = to_planes(x)
    n, c, h, wd = x.shape
    probe = PackedActivation(torch.empty((n, h, wd, padded_channels(c) // 8), dtype=torch.int32, device="meta"),
                             x.step, x.zero_point, c)
    oh, ow = reference.check_operands(probe, w, out_dtype)
    device = x.planes.device
    for name, t in (("bits", w.bits), ("alpha", w.alpha), ("sums", x.sums)) + ((("bias", w.bias),) if w.bias
                                                                               is not None else ()):
        if t.device != device:
            raise ValueError(f"{name} is on {t.device}, the activation planes on {device}")
    if tuple(x.planes.shape) != (n, h, wd, bmma_groups(c) // 4, x.n_planes, 4):
        raise ValueError(f"planes of shape {tuple(x.planes.shape)} do not hold {x.n_planes} planes of {c} channels")
    m = n * oh * ow
    if n * h * wd * bmma_groups(c) * 4 >= 2**31 or m >= 2**31:
        raise ValueError("the bit-plane kernel indexes with 32-bit integers: the problem is too large")
    if out is None:
        out = torch.empty(n, oh, ow, w.out_channels, dtype=out_dtype, device=device)
    elif out.shape != (n, oh, ow, w.out_channels) or out.dtype != out_dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {out_dtype} tensor of shape {(n, oh, ow, w.out_channels)}")
    if scale is None:
        scale = reference.epilogue_scale(w, probe)
    scale = scale.to(device)
    if loop is None:
        loop = default_loop(device)
    elif loop not in LOOPS:
        raise ValueError(f"loop must be one of {LOOPS}, got {loop!r}")
    elif loop != "bmma" and not wgmma_built():
        raise KernelUnavailable(f"the {loop} loop needs the bit-plane module built for sm_90a: "
                                "binarydm.kernels.cuda.build_cubin('sm_90a', source=binarydm.kernels.cuda.BMMA_SOURCE)")
    frag = bmma_weight(w, wgmma=loop != "bmma")
    kh, kw = w.kernel_size
    nch = bmma_chunks(c, kh * kw)
    fields = (n, h, wd, bmma_groups(c), w.out_channels, oh, ow, kh, kw, *w.stride, *w.padding, int(x.zero_point),
              nch)
    ptr = lambda t: np.uint64(t.data_ptr())  # noqa: E731
    grid = bmma_grid(m, w.n_bases * w.out_channels)
    if splits is None:
        splits = bmma_auto_splits(device, m, w.n_bases * w.out_channels, nch)
    splits = max(1, min(int(splits), nch))
    work = torch.zeros(m, grid[1] * BMMA_BN, dtype=torch.int32, device=device) if splits > 1 else None
    bias = np.uint64(w.bias.data_ptr() if w.bias is not None else 0)
    args = (ptr(x.planes), ptr(x.sums), ptr(frag), ptr(scale), bias, ptr(out), *(np.int32(f) for f in fields),
            np.uint64(work.data_ptr() if work is not None else 0))
    suffix = "f16" if out_dtype == torch.float16 else "f32"
    if x.n_planes == 2:
        # planes 2 and 3 of q XOR z are dropped: right only for codes and zero point below 4 (sign_planes: 1)
        if w.n_bases != 1 or not 0 <= int(x.zero_point) < 4:
            raise ValueError("the 2-plane (W1A1) kernel takes one weight basis and a zero point below 4")
        name = f"w1a1_conv_{loop}_{suffix}"
    else:
        name = f"w1a4_conv_{loop}_nb{w.n_bases}_{suffix}"
    ws = loop == "bgmma_ws"
    kernel = _bmma_function(name, BMMA_WS_SMEM_BYTES if ws else BMMA_SMEM_BYTES)
    stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream)
    with cupy.cuda.Device(device.index or 0), stream:
        if ws:  # persistent: about one block per SM walks the grid's tiles
            tiles = grid[0] * grid[1] * splits
            blocks = min(tiles, torch.cuda.get_device_properties(device).multi_processor_count)
            kernel((blocks,), (BMMA_WS_THREADS,), args + (np.int32(grid[0]), np.int32(grid[1]), np.int32(splits)),
                   shared_mem=BMMA_WS_SMEM_BYTES)
        else:
            kernel((*grid, splits), (BMMA_THREADS,), args, shared_mem=BMMA_SMEM_BYTES)
        if work is not None:
            epilogue = _bmma_function(f"w1a4_bmma_splitk_epilogue_nb{w.n_bases}_{suffix}")
            epilogue((-(-m * w.out_channels // BMMA_PACK_THREADS),), (BMMA_PACK_THREADS,),
                     (ptr(work), ptr(scale), bias, ptr(out), np.int32(m), np.int32(w.out_channels),
                      np.int32(grid[1] * BMMA_BN)))
    return out.permute(0, 3, 1, 2)


# Shapes of the self-check: channel and pixel tails, stride 2, 1x1, zero points 8, 3 and 0, both bases.
SELF_CHECK_SHAPES = ((40, 24, 3, 1, 1, 2, 8, 2, 9, 11), (70, 33, 3, 2, 1, 1, 3, 2, 13, 10),
                     (130, 72, 1, 1, 0, 2, 0, 1, 12, 12), (256, 64, 3, 1, 1, 1, 8, 1, 16, 16))


def default_loop(device) -> str:
    """The main loop :func:`launch_bmma` runs by default on ``device``: ``BINARYDM_W1A4_LOOP`` (bgmma or
    bgmma_ws; unset until the device script has timed the wgmma loops against mma.sync) where the module was
    built for sm_90a (:func:`wgmma_built`) and that loop equals the reference on the self-check's problems;
    else "bmma" (mma.sync)."""
    loop = os.environ.get(LOOP_ENV) or "bmma"
    if loop not in LOOPS:
        raise ValueError(f"{LOOP_ENV} must be one of {LOOPS}, got {loop!r}")
    if loop == "bmma" or not wgmma_built():
        return "bmma"
    device = torch.device(device if device is not None else "cuda")
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _bmma_state["loops_checked"].get(loop, {}) and torch.cuda.is_current_stream_capturing():
        return "bmma"  # the self-check syncs: never inside a graph capture (a later call makes it)
    return loop if bmma_self_check(device, loop=loop) else "bmma"


def bmma_self_check(device=None, loop: str = "bmma") -> bool:
    """Whether the bit-plane kernel (with main loop ``loop``) equals the reference bit for bit on this device
    (run once per device and loop, small problems, one sync): the condition for :func:`default_variant` to
    choose it ("bmma") or for :func:`default_loop` to run a wgmma loop."""
    device = torch.device(device if device is not None else "cuda")
    index = device.index if device.index is not None else torch.cuda.current_device()
    checked = _bmma_state["checked"] if loop == "bmma" else _bmma_state["loops_checked"].setdefault(loop, {})
    if index in checked:
        return checked[index]
    from .packing import pack_codes, pack_weight

    ok, why = True, ""
    try:
        gen = torch.Generator().manual_seed(1234)
        for cin, cout, k, s, p, nb, z, n, h, wd in SELF_CHECK_SHAPES:
            bits = torch.randint(0, 2, (nb, cout, cin, k, k), generator=gen, dtype=torch.uint8)
            w = pack_weight(bits, torch.rand(nb, cout, generator=gen) + 0.05, torch.randn(cout, generator=gen), s, p)
            q = torch.randint(0, 16, (n, cin, h, wd), generator=gen)
            x = PackedActivation(pack_codes(q), torch.tensor(0.37), z, cin)
            for dtype, splits in ((torch.float16, 1), (torch.float32, 1), (torch.float16, None)):
                # splits None: these small grids take split-K (bmma_splits), so both paths are checked
                expected = reference.w1a4_conv2d(x, w, dtype)
                xd = PackedActivation(x.codes.to(device), x.step.to(device), z, cin)
                got = launch_bmma(xd, w.to(device), dtype, splits=splits, loop=loop).cpu()
                view = torch.int16 if dtype == torch.float16 else torch.int32
                if not torch.equal(got.contiguous().view(view), expected.contiguous().view(view)):
                    ok, why = False, f"differs from the reference on {(cin, cout, k, s, p, nb, z)} {dtype} " \
                                     f"splits={splits}"
                    break
            if not ok:
                break
        # The W1A1 instance (2 planes, one basis), from float input: the tails and stride 2 of two shapes.
        for cin, cout, k, s, p, _, _, n, h, wd in SELF_CHECK_SHAPES[:2] if ok else ():
            bits = torch.randint(0, 2, (1, cout, cin, k, k), generator=gen, dtype=torch.uint8)
            w = pack_weight(bits, torch.rand(1, cout, generator=gen) + 0.05, torch.randn(cout, generator=gen), s, p)
            xf, beta = torch.randn(n, cin, h, wd, generator=gen), 0.3 * torch.randn(cin, generator=gen)
            expected = reference.w1a1_conv2d(xf, beta, w, torch.float32)
            got = launch_bmma(sign_planes(xf.to(device), beta.to(device)), w.to(device), torch.float32,
                              loop=loop).cpu()
            if not torch.equal(got.contiguous().view(torch.int32), expected.contiguous().view(torch.int32)):
                ok, why = False, f"the W1A1 kernel differs from the reference on {(cin, cout, k, s, p)}"
                break
    except Exception as err:  # noqa: BLE001 -- any failure means: do not use it
        ok, why = False, f"{type(err).__name__}: {err}"
    checked[index] = ok
    if not ok:
        _bmma_state["check_error" if loop == "bmma" else f"{loop}_check_error"] = why
        fallback = "the s8 x s8 kernel" if loop == "bmma" else "the mma.sync loop"
        which = "" if loop == "bmma" else f" ({loop} loop)"
        warnings.warn(f"W1A4 bit-plane kernel{which} not used on {device}: {why}; using {fallback}", RuntimeWarning,
                      stacklevel=2)
    return ok


def default_variant(device=None) -> str:
    """The kernel :func:`w1a4_conv2d` runs on ``device``: ``BINARYDM_W1A4_VARIANT`` if set, else "bmma"
    where the bit-plane kernel passed :func:`bmma_self_check`, else "mma" (sm_80+) or "simt"."""
    forced = _forced_variant()
    if forced:
        if forced not in VARIANTS:
            raise ValueError(f"{VARIANT_ENV} must be one of {VARIANTS}, got {forced!r}")
        return forced
    device = torch.device(device if device is not None else "cuda")
    if torch.cuda.get_device_capability(device)[0] < 8:
        return "simt"
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _bmma_state["checked"] and torch.cuda.is_current_stream_capturing():
        return "mma"  # the self-check syncs: never inside a graph capture (a later call makes it)
    return "bmma" if bmma_self_check(device) else "mma"


def _forced_variant() -> Optional[str]:
    """The variant :func:`set_variant` or ``BINARYDM_W1A4_VARIANT`` forces, None if none is."""
    return _state.get("variant") or os.environ.get(VARIANT_ENV)


def output_pixels(w: PackedConvWeight, n: int, h: int, wd: int) -> int:
    """Output pixels (batch x H_out x W_out) of convolving an n x h x wd input with ``w``: what
    :func:`choose_variant` decides on."""
    return n * reference.output_size(h, w.kernel_size[0], w.stride[0], w.padding[0]) \
        * reference.output_size(wd, w.kernel_size[1], w.stride[1], w.padding[1])


def choose_variant(device, w: PackedConvWeight, pixels: int) -> str:
    """The kernel one convolution with ``pixels`` output pixels (batch x H_out x W_out) runs on ``device``:
    a forced variant as it is (but "simt" where "mma" cannot take the shape); else the device's
    :func:`default_variant`, with the s8 x s8 kernel instead of the bit-plane one from ``MMA_MIN_PIXELS``
    pixels on, and the CUDA-core kernel where the s8 x s8 kernel's tables cannot hold the shape."""
    variant = default_variant(device)
    if variant == "bmma" and not _forced_variant() and pixels >= MMA_MIN_PIXELS and mma_shape_error(w) is None:
        return "mma"
    if variant == "mma" and mma_shape_error(w):
        return "simt"  # a convolution too large for the mma kernel's tables
    return variant


def set_variant(variant: Optional[str]) -> None:
    """Force the variant of :func:`w1a4_conv2d` and W1A4Conv2d in this process (None: automatic)."""
    if variant is not None and variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    _state["variant"] = variant


def _quantize_args(x: torch.Tensor, out: torch.Tensor, step: torch.Tensor, qn: int, qp: int, units: int,
                   kernels: dict = PACK_KERNELS):
    """(kernel name, kernel arguments) of a quantize kernel (``kernels``: PACK_KERNELS, packed nibbles, or
    BYTES_KERNELS, s8 codes; ``units`` of output per pixel): ``x`` read in place in its own dtype and
    strides (no float32 copy), ``step`` passed by pointer (no ``.item()``, so no device sync)."""
    import numpy as np

    if x.dtype not in kernels:
        raise ValueError(f"the quantize kernels take float32, float16 or bfloat16 input, got {x.dtype}")
    if step.dtype != torch.float32 or step.numel() != 1 or step.device != x.device:
        raise ValueError("step must be a one-element float32 tensor on the input's device")
    n, c, h, wd = x.shape
    args = (np.uint64(x.data_ptr()), np.uint64(out.data_ptr()), np.int32(n), np.int32(c), np.int32(h),
            np.int32(wd), *(np.int64(s) for s in x.stride()), np.int32(units),
            np.uint64(step.data_ptr()), np.int32(qn), np.int32(qp))
    return kernels[x.dtype], args


def quantize_pack(x: torch.Tensor, step, qn: int = -8, qp: int = 7,
                  out: Optional[torch.Tensor] = None) -> PackedActivation:
    """:func:`binarydm.kernels.packing.pack_activation` on the GPU (one kernel, any input strides).

    ``step``: a float32 one-element tensor on the input's device (no copy, no sync) or a number.
    ``out``, if given, is the int32 [N, H, W, C_pad/8] codes tensor to write into.
    """
    if qp - qn > 15:
        raise ValueError(f"the code range [{qn}, {qp}] needs more than 4 bits")
    module = load_module()
    n, c, h, wd = x.shape
    shape = (n, h, wd, padded_channels(c) // 8)
    codes = out if out is not None else torch.empty(shape, dtype=torch.int32, device=x.device)
    if codes.shape != shape or codes.dtype != torch.int32 or not codes.is_contiguous():
        raise ValueError(f"out must be a contiguous int32 tensor of shape {shape}")
    step_t = torch.as_tensor(step, dtype=torch.float32, device=x.device).reshape(())
    name, args = _quantize_args(x, codes, step_t, qn, qp, codes.shape[-1])
    total = codes.numel()
    _launch_on(x.device, module.get_function(name), (-(-total // 256),), (256,), args)
    return PackedActivation(codes, step_t, -qn, c)


def _bytes_out(n: int, c: int, h: int, wd: int, device, out: Optional[torch.Tensor]) -> torch.Tensor:
    shape = (n, h, wd, padded_channels(c))
    if out is None:
        return torch.empty(shape, dtype=torch.int8, device=device)
    if out.shape != shape or out.dtype != torch.int8 or not out.is_contiguous() or out.data_ptr() % 16:
        raise ValueError(f"out must be a contiguous, 16-byte aligned int8 tensor of shape {shape}")
    return out


def quantize_bytes(x: torch.Tensor, step, qn: int = -8, qp: int = 7,
                   out: Optional[torch.Tensor] = None) -> ByteActivation:
    """LSQ quantization of ``x`` (float32/fp16/bf16, any strides, read in place) into the s8 x s8
    kernel's operand: int8 [N, H, W, C_pad] = the signed code round(clamp(x / d, qn, qp)), zero point
    -qn (the codes of :func:`binarydm.kernels.packing.pack_activation` minus it). One kernel, the step
    read by pointer (no sync). ``out``: the int8 tensor to write into."""
    if qp - qn > 15:
        raise ValueError(f"the code range [{qn}, {qp}] needs more than 4 bits")
    n, c, h, wd = x.shape
    codes = _bytes_out(n, c, h, wd, x.device, out)
    step_t = torch.as_tensor(step, dtype=torch.float32, device=x.device).reshape(())
    units = codes.shape[-1] // 16
    name, args = _quantize_args(x, codes, step_t, qn, qp, units, BYTES_KERNELS)
    total = n * h * wd * units
    _launch_on(x.device, load_module().get_function(name), (-(-total // BYTES_THREADS),), (BYTES_THREADS,), args)
    return ByteActivation(codes, step_t, -qn, c)


@dataclass(frozen=True)
class GroupNormGeometry:
    """How ``w1a4_gn_partial`` covers x [N, C, H, W]: S slices of each sample's H W pixels (pixel p at
    ``p * pixel_stride``), K channels x PL pixel lanes per block, channel-fastest in the thread index where
    the channels are adjacent in memory. The launcher and the host emulation use the same one."""

    slices: int
    channels: int
    lanes: int
    chan_fast: bool
    pixel_stride: int


def groupnorm_geometry(x: torch.Tensor, blocks: int = 1024) -> GroupNormGeometry:
    """The statistics pass's grid for ``x`` (H and W one axis: ``x.stride(2) == W * x.stride(3)``, true of
    contiguous and channels_last tensors): about ``blocks`` blocks, each at least 16 pixels per lane."""
    n, c, h, wd = x.shape
    chan_fast = x.stride(1) == 1 and c > 1
    if chan_fast:
        k = min(c, GN_THREADS)
        lanes = GN_THREADS // k
    else:
        lanes = min(32, h * wd)
        k = min(c, GN_THREADS // lanes)
    slices = max(1, min(-(-blocks // n), (h * wd) // (16 * lanes)))
    return GroupNormGeometry(slices, k, lanes, chan_fast, x.stride(3))


def _groupnorm_affine(x: torch.Tensor, norm: torch.nn.GroupNorm, c_pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, ab): x with H and W one axis (copied to channels_last where they are not), and each (sample,
    channel)'s affine of ``norm`` as float32 [N, c_pad, 2] ((0, 0) past the channels): ``w1a4_gn_partial``
    (the sums in one read of x) then ``w1a4_gn_finish``; no sync."""
    import numpy as np

    if x.dtype not in GN_KERNELS:
        raise ValueError(f"the fused GroupNorm takes float32, float16 or bfloat16 input, got {x.dtype}")
    if norm.num_groups > GN_MAX_GROUPS:
        raise ValueError(f"the fused GroupNorm takes at most {GN_MAX_GROUPS} groups, got {norm.num_groups}")
    n, c, h, wd = x.shape
    g = norm.num_groups
    if x.stride(2) != wd * x.stride(3):  # H and W not one axis: the statistics pass needs them so
        x = x.contiguous(memory_format=torch.channels_last)
    geo = groupnorm_geometry(x)
    partial = torch.empty(n, geo.slices, g, 2, dtype=torch.float64, device=x.device)
    ab = torch.empty(n, c_pad, 2, dtype=torch.float32, device=x.device)
    ptr = lambda t: np.uint64(t.data_ptr())  # noqa: E731
    affine = (norm.weight.detach().float().contiguous(), norm.bias.detach().float().contiguous()) \
        if norm.affine else None
    gamma, beta = (ptr(t) for t in affine) if affine else (np.uint64(0), np.uint64(0))  # null: no affine
    _launch_on(x.device, load_module().get_function(GN_KERNELS[x.dtype][0]), (n * geo.slices,), (GN_THREADS,),
               (ptr(x), ptr(partial), np.int32(c), np.int32(h * wd), np.int64(x.stride(0)), np.int64(x.stride(1)),
                np.int64(geo.pixel_stride), np.int32(g), np.int32(geo.slices), np.int32(geo.channels),
                np.int32(geo.lanes), np.int32(geo.chan_fast)))
    _launch_on(x.device, load_module().get_function(GN_FINISH_KERNEL), (-(-n * c_pad // GN_THREADS),),
               (GN_THREADS,), (ptr(partial), gamma, beta, ptr(ab), np.int32(n), np.int32(c), np.int32(c_pad),
                               np.int32(g), np.int32(geo.slices), np.int32(h * wd), np.float32(norm.eps)))
    return x, ab


def groupnorm_silu_bytes(x: torch.Tensor, norm: torch.nn.GroupNorm, step, qn: int = -8, qp: int = 7,
                         out: Optional[torch.Tensor] = None) -> ByteActivation:
    """The s8 x s8 kernel's operand for SiLU(norm(x)) (a ResNet block's norm -> SiLU -> conv), made from
    ``x`` (float32/fp16/bf16; contiguous or channels_last, other strides are copied to channels_last first)
    without writing the normalized tensor: the (sample, group) sums in one read of ``x``
    (``w1a4_gn_partial``), each (sample, channel)'s affine (``w1a4_gn_finish``), then normalize + SiLU + LSQ
    in float32 with the MUFU exponential and reciprocal (``w1a4_gn_silu_bytes``); no sync. The codes equal
    those of ``quantize_bytes(F.silu(norm(x.float())))`` up to float rounding (a code can differ by one where
    a value lies within a few ulp of a step boundary)."""
    import numpy as np

    if qp - qn > 15:
        raise ValueError(f"the code range [{qn}, {qp}] needs more than 4 bits")
    n, c, h, wd = x.shape
    units = padded_channels(c) // 16
    if n * h * wd * units >= 2**31:  # the apply kernel's 32-bit index math
        raise ValueError(f"groupnorm_silu_bytes takes fewer than 2^31 units of 16 channels, got {tuple(x.shape)}")
    x, ab = _groupnorm_affine(x, norm, units * 16)
    codes = _bytes_out(n, c, h, wd, x.device, out)
    step_t = torch.as_tensor(step, dtype=torch.float32, device=x.device).reshape(())
    total = n * h * wd * units
    _launch_on(x.device, load_module().get_function(GN_KERNELS[x.dtype][1]), (-(-total // BYTES_THREADS),),
               (BYTES_THREADS,),
               (np.uint64(x.data_ptr()), np.uint64(ab.data_ptr()), np.uint64(codes.data_ptr()), np.int32(n),
                np.int32(c), np.int32(h * wd), np.int64(x.stride(0)), np.int64(x.stride(1)), np.int64(x.stride(3)),
                np.int32(units), np.uint64(step_t.data_ptr()), np.int32(qn), np.int32(qp)))
    return ByteActivation(codes, step_t, -qn, c)


def groupnorm_silu_planes(x: torch.Tensor, norm: torch.nn.GroupNorm, step, qn: int = -8, qp: int = 7,
                          out: Optional[tuple] = None) -> PlanarActivation:
    """The bit-plane kernel's operand for SiLU(norm(x)): the statistics of :func:`groupnorm_silu_bytes`, then
    normalize + SiLU + LSQ straight into the 4 bit-planes and the per-pixel sums (``w1a4_gn_planes_*``); the
    codes of :func:`groupnorm_silu_bytes`, no sync."""
    import numpy as np

    if qp - qn > 15:
        raise ValueError(f"the code range [{qn}, {qp}] needs more than 4 bits")
    n, c, h, wd = x.shape
    planes, sums = _planes_out(n, c, h, wd, x.device, out)
    x, ab = _groupnorm_affine(x, norm, c)
    step_t = torch.as_tensor(step, dtype=torch.float32, device=x.device).reshape(())
    g = bmma_groups(c)
    args = (np.uint64(x.data_ptr()), np.uint64(ab.data_ptr()), np.int32(c), np.uint64(planes.data_ptr()),
            np.uint64(sums.data_ptr()), np.int32(n), np.int32(c), np.int32(h), np.int32(wd),
            *(np.int64(v) for v in x.stride()), np.int32(g), np.uint64(step_t.data_ptr()), np.int32(qn),
            np.int32(qp))
    _launch_on(x.device, load_module(BMMA_SOURCE).get_function(GN_PLANES_KERNELS[x.dtype]),
               (-(-(n * h * wd) // (BMMA_PACK_THREADS // g)),), (BMMA_PACK_THREADS,), args)
    return PlanarActivation(planes, sums, step_t, -qn, c)


def to_bytes(x: PackedActivation, out: Optional[torch.Tensor] = None) -> ByteActivation:
    """Packed nibble codes -> the s8 x s8 kernel's bytes q - z (one kernel, no sync);
    :func:`binarydm.kernels.packing.byte_codes` on the GPU."""
    import numpy as np

    if not x.codes.is_contiguous() or x.codes.data_ptr() % 16:
        raise ValueError("the activation codes must be contiguous and 16-byte aligned")
    n, c, h, wd = x.shape
    codes = _bytes_out(n, c, h, wd, x.codes.device, out)
    units = codes.shape[-1] // 16
    total = n * h * wd * units
    args = (np.uint64(x.codes.data_ptr()), np.uint64(codes.data_ptr()), np.int64(total), np.int32(units),
            np.int32(c), np.int32(int(x.zero_point)))
    _launch_on(x.codes.device, load_module().get_function(BYTES_CODES_KERNEL), (-(-total // BYTES_THREADS),),
               (BYTES_THREADS,), args)
    return ByteActivation(codes, x.step, int(x.zero_point), c)


def w1a4_conv2d(x: PackedActivation, w: PackedConvWeight, out_dtype: torch.dtype = torch.float16,
                scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """W1A4 convolution on the GPU (the kernel of :func:`choose_variant`), or the reference with one
    warning where it cannot run.

    ``scale``: the pair's epilogue scales if the caller keeps them (see :func:`launch`)."""
    if x.codes.device.type != "cuda":
        _warn_fallback("the operands are on the CPU")
        return reference.w1a4_conv2d(x, w, out_dtype)
    try:
        load_module()
        variant = choose_variant(x.codes.device, w, output_pixels(w, *x.codes.shape[:3]))
        return launch(x, w, out_dtype, variant, scale=scale)
    except KernelUnavailable as err:
        _warn_fallback(str(err))
        return reference.w1a4_conv2d(x, w, out_dtype)


def w1a1_conv2d(x: torch.Tensor, beta: Optional[torch.Tensor], w: PackedConvWeight,
                out_dtype: torch.dtype = torch.float16, scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """W1A1 convolution of float ``x`` on the GPU: sign(x + beta) packed by :func:`sign_planes` into the
    2-plane bit-plane kernel where the bit-plane kernel is the device's variant (:func:`default_variant`),
    else its 4-bit codes (:func:`packing.pack_sign_input`) on the forced variant; the reference with one
    warning where no kernel can run. ``scale`` as for :func:`launch`."""
    if x.device.type != "cuda":
        _warn_fallback("the operands are on the CPU")
        return reference.w1a1_conv2d(x, beta, w, out_dtype)
    try:
        load_module()
        variant = default_variant(x.device)
        if variant == "bmma":
            return launch_bmma(sign_planes(x, beta), w, out_dtype, scale=scale)
        return launch(pack_sign_input(x, beta), w, out_dtype, variant, scale=scale)
    except KernelUnavailable as err:
        _warn_fallback(str(err))
        return reference.w1a1_conv2d(x, beta, w, out_dtype)
