"""Pure-PyTorch reference of the W1A4 convolution: the kernel's integer arithmetic, step by step.

Same signature as :func:`binarydm.kernels.cuda.w1a4_conv2d`, same result bit for bit (integer sums are
exact; the float epilogue is the same sequence of correctly rounded float32 operations).

For an output pixel p, output channel o and base b (S_b the weight bits, q the 4-bit codes, A_k the
bit-plane k of the codes, valid(p) the taps of p that fall inside the image):

    acc_b[o, p] = sum_{t in valid(p), c} (2 S_b[o,c,t] - 1) q[p+t, c]
                = sum_k 2^k (2 popc(A_k & S_b) - popc(A_k))             (the bit-plane popcount form)
    v_b[o, p]   = acc_b[o, p] - z * sum_{t in valid(p)} R_b[o, t]          (border correction)
    y[o, p]     = fl(fl(fl(v_0 * s_0[o]) + fl(v_1 * s_1[o])) + bias[o]),  s_b[o] = fl(alpha_b[o] * d)

Zero padding of x means real value 0, i.e. code z, but the kernel loads code 0 outside the image;
the correction subtracts z R only over the valid taps, so the padded taps contribute exactly 0 —
which is how the float convolution of the dequantized values treats them. |acc| <= 15 * C_in * KH*KW,
far inside int32.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .packing import ByteActivation, PackedActivation, PackedConvWeight, _from_int32_words, pack_sign_input


def output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def check_operands(x, w: PackedConvWeight, out_dtype: torch.dtype) -> tuple[int, int]:
    """Validate the pair (``x`` a PackedActivation, or the s8 kernel's ByteActivation); returns the
    output size (OH, OW). Shared by the reference and the launcher."""
    if x.channels != w.in_channels:
        raise ValueError(f"activation has {x.channels} channels, the weight expects {w.in_channels}")
    held = x.codes.shape[-1] * (1 if isinstance(x, ByteActivation) else 8)
    if held != w.bits.shape[-1] * 32:
        raise ValueError(
            f"channel padding differs: activation words hold {held} channels, weight "
            f"words {w.bits.shape[-1] * 32}; pack both with binarydm.kernels.packing"
        )
    if out_dtype not in (torch.float16, torch.float32):
        raise ValueError(f"out_dtype must be torch.float16 or torch.float32, got {out_dtype}")
    _, _, h, wd = x.shape
    (kh, kw), (sh, sw), (ph, pw) = w.kernel_size, w.stride, w.padding
    oh, ow = output_size(h, kh, sh, ph), output_size(wd, kw, sw, pw)
    if oh < 1 or ow < 1:
        raise ValueError(f"a {kh}x{kw} kernel with padding {w.padding} does not fit a {h}x{wd} input")
    return oh, ow


def epilogue_scale(w: PackedConvWeight, x) -> torch.Tensor:
    """s[b, o] = fl32(alpha[b, o] * d): computed once, by PyTorch, for both the reference and the kernel."""
    return (w.alpha.to(torch.float32) * x.step.to(device=w.alpha.device, dtype=torch.float32)).contiguous()


def _bit_planes(x: PackedActivation) -> torch.Tensor:
    """float64 [4, N, C_pad, H, W]: plane k holds bit k of every code (padded channels 0)."""
    words = _from_int32_words(x.codes)
    shifts = torch.arange(0, 32, 4, device=words.device, dtype=torch.int64)
    q = ((words[..., None] >> shifts) & 0xF).flatten(-2)  # [N, H, W, C_pad]
    planes = torch.stack([(q >> k) & 1 for k in range(4)])
    return planes.permute(0, 1, 4, 2, 3).to(torch.float64)


def integer_accumulators(x: PackedActivation, w: PackedConvWeight) -> torch.Tensor:
    """v_b = acc_b - z * (R_b summed over the valid taps), int64 [n_bases, N, C_out, OH*OW]."""
    (kh, kw), stride, padding = w.kernel_size, w.stride, w.padding
    nb, c_out, taps, n_words = w.bits.shape
    device = x.codes.device
    # S_b as 0/1 rows ordered (channel, tap) like F.unfold's columns.
    shifts = torch.arange(32, device=device, dtype=torch.int64)
    s = (_from_int32_words(w.bits.to(device))[..., None] >> shifts) & 1  # [nb, C_out, T, Cw, 32]
    s = s.flatten(-2).transpose(-1, -2).reshape(nb, c_out, n_words * 32 * taps).to(torch.float64)
    acc = 0
    for k, plane in enumerate(_bit_planes(x)):
        # Counts of set bits are integers far below 2^53: the float64 products are exact.
        cols = F.unfold(plane, (kh, kw), padding=padding, stride=stride)  # [N, C_pad*T, L], zeros outside
        both = torch.einsum("bok,nkl->bnol", s, cols)  # popc(A_k & S_b)
        ones = cols.sum(1)[None, :, None, :]  # popc(A_k)
        acc = acc + (2**k) * (2 * both - ones)
    n, _, h, wd = x.shape
    valid = F.unfold(torch.ones(1, 1, h, wd, dtype=torch.float64, device=device), (kh, kw),
                     padding=padding, stride=stride)[0]  # [T, L], 1 where the tap is inside the image
    corr = torch.einsum("bot,tl->bol", w.row_sums.to(device=device, dtype=torch.float64), valid)[:, None]
    return (acc - x.zero_point * corr).round().to(torch.int64)


def w1a4_conv2d(x: PackedActivation, w: PackedConvWeight, out_dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """W1A4 convolution (reference): y [N, C_out, OH, OW] in channels_last memory, dtype ``out_dtype``."""
    oh, ow = check_operands(x, w, out_dtype)
    v = integer_accumulators(x, w)
    device = x.codes.device
    scale = epilogue_scale(w, x).to(device)
    # The kernel's epilogue, one correctly rounded float32 operation at a time (no fused multiply-add).
    y = v[0].to(torch.float32) * scale[0][None, :, None]
    if w.n_bases == 2:
        y = y + v[1].to(torch.float32) * scale[1][None, :, None]
    if w.bias is not None:
        y = y + w.bias.to(device=device, dtype=torch.float32)[None, :, None]
    n = x.codes.shape[0]
    y = y.to(out_dtype).reshape(n, w.out_channels, oh, ow)
    return y.contiguous(memory_format=torch.channels_last)


def w1a1_conv2d(x: torch.Tensor, beta, w: PackedConvWeight, out_dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """W1A1 convolution (reference) of float ``x`` [N, C, H, W]: sign(x + beta) as the codes of
    :func:`binarydm.kernels.packing.pack_sign_input`, then :func:`w1a4_conv2d`. Same signature and
    result as :func:`binarydm.kernels.cuda.w1a1_conv2d`."""
    return w1a4_conv2d(pack_sign_input(x, beta), w, out_dtype)
