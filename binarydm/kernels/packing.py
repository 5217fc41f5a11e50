"""Packed operands of the W1A4 convolution: 1-bit weights and 4-bit activation codes.

Arithmetic (docs/kernels.md, spec w1a4-kernel.md). A weight is one or two binary bases with a
per-output-channel scale, as BinaryDM's LMB produces them (Zheng, Qin et al., arXiv 2404.05662,
Sec. 3.2):

    W[o, c, ky, kx] = sum_b alpha[b, o] * (2 * S_b[o, c, ky, kx] - 1),     S_b in {0, 1}

An activation is an unsigned 4-bit code q in 0..15 with a per-tensor step d and an integer zero
point z (LSQ, Esser et al., ICLR 2020: a signed code q_s in [-8, 7] is stored as q = q_s + 8, z = 8):

    x[n, c, h, w] = d * (q[n, c, h, w] - z)

Layouts (both zero-padded along C_in to C_pad, a multiple of 32, so that one 32-bit weight word and
four 32-bit activation words cover the same 32 channels):

* weight bits   int32 [n_bases, C_out, KH*KW, C_pad / 32]; bit j of word k is channel 32k + j of
  tap t = ky * KW + kx; padded channels hold bit 0 (they multiply codes 0, so any value would do).
* row sums      int32 [n_bases, C_out, KH*KW]; R[b, o, t] = sum over the real channels of
  (2 S_b - 1) = 2 popc(S_b[o, :, t]) - C_in: the border correction of zero padding.
* activation    int32 [N, H, W, C_pad / 8] (NHWC); nibble j (bits 4j..4j+3) of word k is the code
  of channel 8k + j; padded channels hold code 0.
* byte codes    int8 [N, H, W, C_pad] (NHWC): q - z, one byte per channel, 0 in padded channels: the
  operand of the s8 x s8 tensor-core kernel (:class:`ByteActivation`).

W1A1 (BiDM, ReActNet: x_b = sign(x + beta) in {-1, +1}, XNOR-type weights a_w sign(W)) is the same
arithmetic with d = 1, z = 1 and codes q = x_b + 1 in {0, 2}: real zero (the convolution's zero padding)
is the code z, as for 4-bit codes, so the kernels run it unchanged (:func:`pack_sign_input`,
:func:`xnor_bits`); two of the four bit-planes are then always zero.

The 32-bit words are stored in int32 tensors (PyTorch has no uint32 arithmetic on every device);
bit 31 is the sign bit, which is only a matter of reading them as unsigned.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import torch
from torch import nn

from ..quant.layers import QuantConv2d
from ..quant.lmb import LMB
from ..quant.lsq import LSQ
from ..quant.ste import binary_sign

CHANNEL_ALIGN = 32
CODE_BITS = 4
CODES_PER_WORD = 32 // CODE_BITS


def padded_channels(channels: int) -> int:
    """C_in rounded up to a multiple of 32 (the kernel's K granule)."""
    return -(-channels // CHANNEL_ALIGN) * CHANNEL_ALIGN


def _pair(v) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    a, b = v
    return (int(a), int(b))


def _to_int32_words(values: torch.Tensor) -> torch.Tensor:
    """int64 values in [0, 2^32) -> int32 with the same 32 bits (two's complement)."""
    return torch.where(values >= 2**31, values - 2**32, values).to(torch.int32)


def _from_int32_words(words: torch.Tensor) -> torch.Tensor:
    """int32 words -> int64 in [0, 2^32): the unsigned reading of the same bits."""
    return words.to(torch.int64) & 0xFFFFFFFF


# ---- weights ------------------------------------------------------------------------------------
@dataclass
class PackedConvWeight:
    """A binarized convolution in the kernel's layout (see the module docstring).

    ``bits``: int32 [n_bases, C_out, KH*KW, C_pad/32]; ``alpha``: float32 [n_bases, C_out];
    ``row_sums``: int32 [n_bases, C_out, KH*KW]; ``bias``: float32 [C_out] or None.
    """

    bits: torch.Tensor
    alpha: torch.Tensor
    row_sums: torch.Tensor
    bias: Optional[torch.Tensor]
    in_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    # The tensor-core kernels' weight operands (:func:`bmma_weight_fragments`, :func:`mma_weight_fragments`,
    # ``bmma_weight_fragments(wgmma=True)``), each made once on first use.
    bmma_frag: Optional[torch.Tensor] = field(default=None, repr=False, compare=False)
    mma_frag: Optional[torch.Tensor] = field(default=None, repr=False, compare=False)
    bgmma_frag: Optional[torch.Tensor] = field(default=None, repr=False, compare=False)

    @property
    def n_bases(self) -> int:
        return self.bits.shape[0]

    @property
    def out_channels(self) -> int:
        return self.bits.shape[1]

    @property
    def taps(self) -> int:
        return self.kernel_size[0] * self.kernel_size[1]

    def to(self, device) -> "PackedConvWeight":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return PackedConvWeight(move(self.bits), move(self.alpha), move(self.row_sums), move(self.bias),
                                self.in_channels, self.kernel_size, self.stride, self.padding, move(self.bmma_frag),
                                move(self.mma_frag), move(self.bgmma_frag))

    def signs(self) -> torch.Tensor:
        """The bases as +-1 float64 [n_bases, C_out, C_in, KH, KW] (unpacked, padding dropped)."""
        return unpack_weight_bits(self.bits, self.in_channels, self.kernel_size).to(torch.float64) * 2 - 1

    def dequantize(self) -> torch.Tensor:
        """W = sum_b alpha_b (2 S_b - 1) as float64 [C_out, C_in, KH, KW]."""
        alpha = self.alpha.to(torch.float64)[:, :, None, None, None]
        return (alpha * self.signs()).sum(0)


def pack_weight_bits(bits: torch.Tensor) -> torch.Tensor:
    """{0,1} (or bool) [n_bases, C_out, C_in, KH, KW] -> int32 [n_bases, C_out, KH*KW, C_pad/32]."""
    if bits.dim() != 5:
        raise ValueError(f"weight bits must be [n_bases, C_out, C_in, KH, KW], got shape {tuple(bits.shape)}")
    nb, c_out, c_in, kh, kw = bits.shape
    c_pad = padded_channels(c_in)
    b = bits.to(torch.int64).permute(0, 1, 3, 4, 2).reshape(nb, c_out, kh * kw, c_in)
    b = torch.nn.functional.pad(b, (0, c_pad - c_in))
    b = b.reshape(nb, c_out, kh * kw, c_pad // 32, 32)
    shifts = torch.arange(32, device=b.device, dtype=torch.int64)
    return _to_int32_words((b << shifts).sum(-1))


def unpack_weight_bits(words: torch.Tensor, in_channels: int, kernel_size) -> torch.Tensor:
    """Inverse of :func:`pack_weight_bits`: uint8 {0,1} [n_bases, C_out, C_in, KH, KW]."""
    kh, kw = _pair(kernel_size)
    nb, c_out, taps, n_words = words.shape
    if taps != kh * kw or n_words * 32 < in_channels:
        raise ValueError(
            f"packed weight of shape {tuple(words.shape)} does not hold a {kh}x{kw} kernel with "
            f"{in_channels} input channels"
        )
    shifts = torch.arange(32, device=words.device, dtype=torch.int64)
    b = (_from_int32_words(words)[..., None] >> shifts) & 1
    b = b.reshape(nb, c_out, kh, kw, n_words * 32)[..., :in_channels]
    return b.permute(0, 1, 4, 2, 3).to(torch.uint8).contiguous()


def row_sums(bits: torch.Tensor) -> torch.Tensor:
    """R[b, o, t] = sum_c (2 S_b[o, c, t] - 1) over the real channels, int32 [n_bases, C_out, KH*KW]."""
    nb, c_out, c_in, kh, kw = bits.shape
    s = bits.to(torch.int64).reshape(nb, c_out, c_in, kh * kw)
    return (2 * s.sum(2) - c_in).to(torch.int32)


def pack_weight(bits: torch.Tensor, alpha: torch.Tensor, bias: Optional[torch.Tensor] = None,
                stride=1, padding=0) -> PackedConvWeight:
    """Pack binary bases ``bits`` [n_bases, C_out, C_in, KH, KW] with scales ``alpha`` [n_bases, C_out]."""
    nb, c_out, c_in, kh, kw = bits.shape
    if nb not in (1, 2):
        raise ValueError(f"the W1A4 kernel takes one or two binary bases, got {nb}")
    if bits.min() < 0 or bits.max() > 1:
        raise ValueError("weight bits must be 0 (for -1) or 1 (for +1); convert signs with (sign > 0)")
    alpha = alpha.detach().to(torch.float32).reshape(nb, c_out).contiguous()
    if bias is not None:
        bias = bias.detach().to(torch.float32).reshape(c_out).contiguous()
    return PackedConvWeight(pack_weight_bits(bits).contiguous(), alpha, row_sums(bits).contiguous(), bias,
                            c_in, (kh, kw), _pair(stride), _pair(padding))


@torch.no_grad()
def lmb_bits(quantizer: LMB, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The bases and scales of LMB's forward, w = s1 sign(w) + s2 sign(w - s1 sign(w)).

    Returns (bits {0,1} uint8 [n_bases, C_out, C_in, KH, KW], alpha float32 [n_bases, C_out]); the
    second sign is computed exactly as :meth:`LMB.quantize` does (same dtype, same operations), so the
    packed weight reproduces the layer's binarized weight bit for bit. sign(0) = +1 gives bit 1.
    """
    w = weight.detach()
    first_sign = binary_sign(w)
    bases = [first_sign]
    alphas = [quantizer.s1.detach().reshape(-1)]
    if quantizer.n_bases == 2:
        first = quantizer.s1.detach() * first_sign
        bases.append(binary_sign(w - first))
        alphas.append(quantizer.s2.detach().reshape(-1))
    bits = torch.stack([(s > 0).to(torch.uint8) for s in bases])
    return bits, torch.stack(alphas).to(torch.float32)


@torch.no_grad()
def xnor_bits(quantizer, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The basis and scale of the XNOR family's forward, a_w sign(W) with a_w = mean|W| per output channel
    (``binarydm.algorithms.xnor.XnorWeight`` and BiDM's weight): bits uint8 [1, C_out, C_in, KH, KW] and
    alpha float32 [1, C_out], a_w the quantizer's own (``XnorWeight.scale``: computed, or stored by a packed
    file)."""
    w = weight.detach()
    return (binary_sign(w) > 0).to(torch.uint8)[None], quantizer.scale(w).reshape(1, -1).to(torch.float32)


def pack_quant_conv(layer: QuantConv2d, bias: bool = True) -> PackedConvWeight:
    """The kernel's weight operand of a QuantConv2d whose weight quantizer is an initialised LMB or
    an XNOR-type binarizer (``bias=False``: the epilogue leaves the layer's bias out)."""
    from ..algorithms.xnor import XnorWeight

    _check_conv(layer)
    wq = layer.weight_quantizer
    if not isinstance(wq, (LMB, XnorWeight)):
        raise TypeError(
            f"the W1A4 kernel needs an LMB or XNOR-type weight quantizer, got {type(wq).__name__}; binarize the "
            "layer with a BinaryDM preset (e.g. binarydm.binarize_(model, 'w1a4'))"
        )
    if not (wq.enabled and wq.initialized):
        raise ValueError("the weight quantizer is disabled or not initialised: nothing binary to pack")
    bits, alpha = lmb_bits(wq, layer.weight) if isinstance(wq, LMB) else xnor_bits(wq, layer.weight)
    return pack_weight(bits, alpha, layer.bias if bias else None, layer.stride, layer.padding)


def _check_conv(layer: nn.Module) -> None:
    if not isinstance(layer, QuantConv2d):
        raise TypeError(f"expected a binarydm QuantConv2d, got {type(layer).__name__}")
    problems = []
    if layer.groups != 1:
        problems.append(f"groups={layer.groups}")
    if tuple(layer.dilation) != (1, 1):
        problems.append(f"dilation={tuple(layer.dilation)}")
    if layer.padding_mode != "zeros":
        problems.append(f"padding_mode={layer.padding_mode!r}")
    if isinstance(layer.padding, str):
        problems.append(f"padding={layer.padding!r}")
    if problems:
        raise ValueError(
            "the W1A4 kernel supports groups=1, dilation=1 and numeric zero padding only; this layer has "
            + ", ".join(problems) + ": keep it on the fake-quantized path"
        )


# ---- activations ----------------------------------------------------------------------------------
@dataclass
class _Codes:
    """Integer activation codes with their LSQ step and zero point: x = step * (q - zero_point)."""

    codes: torch.Tensor
    step: torch.Tensor
    zero_point: int
    channels: int

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(N, C, H, W) of the tensor the codes stand for."""
        n, h, w, _ = self.codes.shape
        return (n, self.channels, h, w)


@dataclass
class PackedActivation(_Codes):
    """4-bit codes in the kernel's layout: ``codes`` int32 [N, H, W, C_pad/8], x = step * (q - zero_point)."""

    def unpack(self) -> torch.Tensor:
        """The codes as int32 [N, C, H, W]."""
        return unpack_codes(self.codes, self.channels)

    def dequantize(self) -> torch.Tensor:
        """x = d * (q - z) as float64 [N, C, H, W]."""
        return self.step.to(torch.float64) * (self.unpack().to(torch.float64) - self.zero_point)


def pack_codes(codes: torch.Tensor) -> torch.Tensor:
    """Integer codes in 0..15, [N, C, H, W] -> int32 [N, H, W, C_pad/8] (NHWC, 8 codes per word)."""
    if codes.dim() != 4:
        raise ValueError(f"activation codes must be [N, C, H, W], got shape {tuple(codes.shape)}")
    if codes.numel() and (codes.min() < 0 or codes.max() > 15):
        raise ValueError("4-bit activation codes must lie in 0..15 (shift signed codes by the zero point)")
    n, c, h, w = codes.shape
    c_pad = padded_channels(c)
    q = codes.to(torch.int64).permute(0, 2, 3, 1)
    q = torch.nn.functional.pad(q, (0, c_pad - c)).reshape(n, h, w, c_pad // 8, 8)
    shifts = torch.arange(0, 32, 4, device=q.device, dtype=torch.int64)
    return _to_int32_words((q << shifts).sum(-1)).contiguous()


def unpack_codes(words: torch.Tensor, channels: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: int32 [N, C, H, W]."""
    n, h, w, n_words = words.shape
    if n_words * 8 < channels:
        raise ValueError(f"{n_words} words per pixel hold {n_words * 8} codes, fewer than {channels} channels")
    shifts = torch.arange(0, 32, 4, device=words.device, dtype=torch.int64)
    q = (_from_int32_words(words)[..., None] >> shifts) & 0xF
    q = q.reshape(n, h, w, n_words * 8)[..., :channels]
    return q.permute(0, 3, 1, 2).to(torch.int32)


def quantize_codes(x: torch.Tensor, step: torch.Tensor, qn: int, qp: int) -> torch.Tensor:
    """LSQ's integer code round(clamp(x / step, qn, qp)) - qn in 0..qp-qn, computed in float32."""
    step = torch.as_tensor(step, dtype=torch.float32, device=x.device)
    q = torch.round(torch.clamp(x.to(torch.float32) / step, qn, qp))
    return (q - qn).to(torch.int32)


def pack_activation(x: torch.Tensor, step, qn: int = -8, qp: int = 7) -> PackedActivation:
    """Quantize float ``x`` [N, C, H, W] with LSQ step ``step`` and range [qn, qp], and pack the codes.

    The stored code is q - qn (unsigned), so the zero point is z = -qn (8 for a signed 4-bit LSQ).
    """
    if qp - qn > 15:
        raise ValueError(f"the code range [{qn}, {qp}] needs more than 4 bits")
    step_t = torch.as_tensor(step, dtype=torch.float32, device=x.device).reshape(())
    return PackedActivation(pack_codes(quantize_codes(x, step_t, qn, qp)), step_t, -qn, x.shape[1])


def pack_sign_input(x: torch.Tensor, beta: Optional[torch.Tensor] = None) -> PackedActivation:
    """The W1A1 operand of ``x`` [N, C, H, W]: x_b = sign(x + beta_c) (sign(0) = +1; beta None: 0) as codes
    q = x_b + 1 in {0, 2} with step 1 and zero point 1 (real zero, the padding, is the code z)."""
    # In float32, as the fake-quantized binarizer computes it (binarydm.quant.base.Quantizer.forward).
    u = x.float() if beta is None else x.float() + beta.float().view(1, -1, 1, 1)
    codes = (binary_sign(u) > 0).to(torch.int32) * 2
    return PackedActivation(pack_codes(codes), torch.ones((), device=x.device), 1, x.shape[1])


def pack_quant_conv_input(layer: QuantConv2d, x: torch.Tensor) -> PackedActivation:
    """The kernel's activation operand for ``layer``'s input ``x``, from its LSQ act quantizer."""
    aq = layer.act_quantizer
    if not isinstance(aq, LSQ):
        raise TypeError(f"the W1A4 kernel needs an LSQ activation quantizer, got {type(aq).__name__}")
    if not (aq.enabled and aq.initialized):
        raise ValueError("the LSQ activation quantizer is disabled or not initialised: calibrate first")
    if aq.step.numel() != 1:
        raise ValueError("the W1A4 kernel needs a per-tensor activation step (one zero point, one scale)")
    if aq.bits > CODE_BITS:
        raise ValueError(f"the W1A4 kernel takes codes of at most 4 bits, the quantizer has {aq.bits}")
    return pack_activation(x, aq.step.detach().reshape(()), aq.qn, aq.qp)


# ---- the s8 x s8 tensor-core kernel (cuda/w1a4_conv.cu, w1a4_conv_mma_*) --------------------------
MMA_BN = 128  # GEMM columns per block of the s8 x s8 kernel
MMA_STEP_UNITS = 256  # 16-byte B units per K step (32 channels of one tap) and column block
MMA_STAGES = 3  # K steps in the kernel's shared memory; it prefetches MMA_STAGES - 1 steps ahead


@dataclass
class ByteActivation(_Codes):
    """The s8 x s8 kernel's activation operand: ``codes`` int8 [N, H, W, C_pad] = q - zero_point (0 in
    padded channels), x = step * codes. Zero padding of x is code 0 here, so the kernel zero-fills taps
    outside the image and needs no border correction."""


def byte_codes(x: PackedActivation) -> torch.Tensor:
    """The codes of ``x`` as the s8 kernel reads them: int8 [N, H, W, C_pad], q - z, padded channels 0."""
    n, c, h, w = x.shape
    q = unpack_codes(x.codes, c).permute(0, 2, 3, 1) - int(x.zero_point)  # [N, H, W, C]
    return torch.nn.functional.pad(q, (0, padded_channels(c) - c)).to(torch.int8).contiguous()


def mma_weight_fragments(w: PackedConvWeight) -> torch.Tensor:
    """The weights as s8 +-1 (0 in padded channels and columns) in the B-fragment order of the s8 x s8
    kernel: int32 [NCB * Ksteps + MMA_STAGES - 1, 256, 4], Ksteps = KH KW C_pad / 32.

    GEMM column j = base j % n_bases of channel j // n_bases; K step ks = tap * C_pad / 32 + cw (32
    channels 32 cw ..). Row cb * Ksteps + ks holds column block cb (128 columns) and step ks: unit
    u = (warp_n * 4 + p) * 32 + lane (lane = 4 g + t) is {b0, b1} of n tile 2p, then of n tile 2p + 1, of
    column 64 warp_n + 8 tile + g: b0 = the 4 weights of k 4t .. 4t + 3, b1 of k 16 + 4t .. (the PTX ISA's
    B fragment of mma.m16n8k32 .s8), byte j of a word = element j. The last MMA_STAGES - 1 rows are
    zeros: the kernel's prefetches past the last step of the last block read them. Made once per weight
    (``w.mma_frag``)."""
    nb, c_out, taps, cw = w.bits.shape
    ncols = nb * c_out
    ncb = -(-ncols // MMA_BN)
    device = w.bits.device
    shifts = torch.arange(32, device=device, dtype=torch.int64)
    s = (_from_int32_words(w.bits)[..., None] >> shifts) & 1  # [nb, C_out, T, Cw, 32]
    real = (torch.arange(cw * 32, device=device) < w.in_channels).reshape(cw, 32)
    signs = torch.where(real, 2 * s - 1, 0).to(torch.int8)
    cols = signs.permute(1, 0, 2, 3, 4).reshape(ncols, taps * cw, 32)  # column j = (channel j // nb, base j % nb)
    full = torch.zeros(ncb * MMA_BN, taps * cw, 32, dtype=torch.int8, device=device)
    full[:ncols] = cols
    # column = 128 cb + 64 warp_n + 16 p + 8 (tile % 2) + g; k = 16 half + 4 t + j
    f = full.reshape(ncb, 2, 4, 2, 8, taps * cw, 2, 4, 4)  # cb, warp_n, p, tile % 2, g, ks, half, t, j
    f = f.permute(0, 5, 1, 2, 4, 7, 3, 6, 8).contiguous()  # cb, ks, warp_n, p, g, t, tile % 2, half, j
    words = f.view(torch.int32).reshape(ncb * taps * cw, MMA_STEP_UNITS, 4)
    return torch.cat([words, words.new_zeros(MMA_STAGES - 1, MMA_STEP_UNITS, 4)])


# ---- the bit-plane kernel (cuda/w1a4_bmma.cu) ------------------------------------------------------
BMMA_BN = 64  # GEMM columns per block of the bit-plane kernel
BMMA_CHUNK_WORDS = 8  # 32-bit K words per 256-bit K chunk (one m16n8k256)


def bmma_groups(channels: int) -> int:
    """G of the bit-plane layout: 32-channel groups per pixel, a multiple of 4 (C_in up to 128s)."""
    return 4 * -(-channels // 128)


def bmma_chunks(channels: int, taps: int) -> int:
    """256-bit K chunks of the bit-plane kernel: K words tap * G + group, 8 per chunk."""
    return -(-taps * bmma_groups(channels) // BMMA_CHUNK_WORDS)


def _bmma_fragment_index(device) -> tuple[torch.Tensor, torch.Tensor]:
    """(column within the block, K word within the chunk) of each word of a chunk's 128 16-byte units.

    Unit u = (warp_n * 2 + p) * 32 + lane (lane = 4 g + t) holds {b0, b1} of n tile 2p, then of n tile
    2p + 1, of that lane: b0 = K word t, b1 = K word t + 4 of column warp_n * 32 + tile * 8 + g (the
    PTX ISA's B fragment of mma.m16n8k256 .b1: b0 rows 32t..32t+31, b1 rows 128+32t.., column g)."""
    u = torch.arange(128, device=device)[:, None]
    w = torch.arange(4, device=device)[None, :]
    warp_n, p, lane = u // 64, (u // 32) % 2, u % 32
    g, t = lane // 4, lane % 4
    tile = 2 * p + w // 2
    col = warp_n * 32 + tile * 8 + g
    kk = t + 4 * (w % 2)
    return col, kk


def _bgmma_unit_index(device) -> tuple[torch.Tensor, torch.Tensor]:
    """The same for the warpgroup kernel's canonical K-major layout (cuda/w1a4_bmma.cu, "the warpgroup path"):
    unit u = (8-column group * 2 + K half) * 8 + column % 8 holds K words 4 half .. 4 half + 3 of its column,
    so that 8 columns' 16 bytes form a core matrix and the stage's units are copied in this order."""
    u = torch.arange(128, device=device)[:, None]
    i = torch.arange(4, device=device)[None, :]
    col = (u // 16) * 8 + u % 8
    kk = 4 * ((u // 8) % 2) + i
    return col.expand(128, 4), kk


def bmma_weight_fragments(w: PackedConvWeight, wgmma: bool = False) -> torch.Tensor:
    """The weight bits in the bit-plane kernel's B-fragment order: int32 [NCB, NCH, 128, 4].

    GEMM column j = base j % n_bases of channel j // n_bases; K word kk = tap * G + group (G of
    :func:`bmma_groups`); column block cb, chunk c, unit u, word i = word kk = 8 c + kk(u, i) of column
    64 cb + col(u, i) (:func:`_bmma_fragment_index`; ``wgmma``: the warpgroup kernel's layout,
    :func:`_bgmma_unit_index`). Columns, groups and K words past the end are 0.
    Made once per weight (``w.bmma_frag`` / ``w.bgmma_frag``), on the weight's device."""
    nb, c_out, taps, gc = w.bits.shape
    g = bmma_groups(w.in_channels)
    nch = bmma_chunks(w.in_channels, taps)
    ncols = nb * c_out
    ncb = -(-ncols // BMMA_BN)
    device = w.bits.device
    cols = w.bits.permute(1, 0, 2, 3).reshape(ncols, taps, gc)  # column j = (channel j // nb, base j % nb)
    cols = torch.nn.functional.pad(cols, (0, g - gc)).reshape(ncols, taps * g)
    w2 = torch.zeros(ncb * BMMA_BN, nch * BMMA_CHUNK_WORDS, dtype=torch.int32, device=device)
    w2[:ncols, : taps * g] = cols
    col, kk = (_bgmma_unit_index if wgmma else _bmma_fragment_index)(device)
    cb = torch.arange(ncb, device=device)[:, None, None, None]
    ch = torch.arange(nch, device=device)[None, :, None, None]
    return w2[cb * BMMA_BN + col, ch * BMMA_CHUNK_WORDS + kk].contiguous()


@dataclass
class PlanarActivation:
    """The bit-plane kernel's activation operand (cuda/w1a4_bmma.cu), written by its pack kernels.

    ``planes`` int32 [N, H, W, G/4, P, 4] (bit-planes of q XOR z, see :func:`bmma_planes_reference`;
    P = ``n_planes``: 4 for 4-bit codes, 2 for W1A1's codes {0, 2} with zero point 1), ``sums`` int32
    [N, H, W] (sum of q - z over the real channels); x = step * (q - zero_point)."""

    planes: torch.Tensor
    sums: torch.Tensor
    step: torch.Tensor
    zero_point: int
    channels: int
    n_planes: int = 4

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(N, C, H, W) of the activation."""
        n, h, w = self.sums.shape
        return (n, self.channels, h, w)


def bmma_planes_reference(x: PackedActivation, n_planes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """What the bit-plane pack kernels write, computed by PyTorch (for tests).

    ``planes`` int32 [N, H, W, G/4, n_planes, 4]: [pixel][group // 4][plane k][group % 4] = bit k of
    (q XOR z) of the group's 32 channels (bit j = channel 32 group + j), 0 for padded channels;
    ``sums`` int32 [N, H, W]: the sum of (q - z) over the real channels. ``n_planes`` 2 (the W1A1
    kernels) needs q XOR z < 4."""
    n, c, h, wd = x.shape
    g = bmma_groups(c)
    q = unpack_codes(x.codes, c).to(torch.int64)  # [N, C, H, W]
    z = int(x.zero_point)
    sums = (q - z).sum(1).to(torch.int32)
    b = torch.nn.functional.pad((q ^ z).permute(0, 2, 3, 1), (0, 32 * g - c))  # [N, H, W, 32 G]
    if b.numel() and int(b.max()) >= 1 << n_planes:
        raise ValueError(f"codes XOR the zero point reach {int(b.max())}: more than {n_planes} bit-planes")
    b = b.reshape(n, h, wd, g, 32)
    shifts = torch.arange(32, dtype=torch.int64)
    planes = torch.stack([(((b >> k) & 1) << shifts).sum(-1) for k in range(n_planes)], -1)  # [N, H, W, G, P]
    planes = planes.reshape(n, h, wd, g // 4, 4, n_planes).transpose(-1, -2)  # [.., G/4, plane, G % 4]
    return _to_int32_words(planes).contiguous(), sums.contiguous()


def planes_codes(planes: torch.Tensor, channels: int, zero_point: int) -> torch.Tensor:
    """Inverse of :func:`bmma_planes_reference`'s planes: the codes q int64 [N, C, H, W] that bit-planes
    int32 [N, H, W, G/4, P, 4] hold (b = q XOR z; for tests)."""
    n, h, wd, g4, n_planes, _ = planes.shape
    words = planes.to(torch.int64) & 0xFFFFFFFF
    words = words.transpose(-1, -2).reshape(n, h, wd, 4 * g4, n_planes)  # [.., group, plane]
    bits = (words[..., None] >> torch.arange(32, device=planes.device)) & 1  # [.., group, plane, channel]
    b = (bits << torch.arange(n_planes, device=planes.device)[:, None]).sum(-2)
    return (b.reshape(n, h, wd, 32 * 4 * g4)[..., :channels] ^ zero_point).permute(0, 3, 1, 2)


def _repeat_pixels(t: torch.Tensor, factor: int) -> torch.Tensor:
    """A pixel-major tensor [N, H, W, ...] with every pixel repeated factor x factor: [N, fH, fW, ...]."""
    n, h, w = t.shape[:3]
    rest = tuple(t.shape[3:])
    grid = t[:, :, None, :, None].expand(n, h, factor, w, factor, *rest)
    return grid.reshape(n, h * factor, w * factor, *rest)


def upsample_nearest(x, factor: int = 2):
    """The operand of ``interpolate(real, scale_factor=factor, mode="nearest")`` from the operand of the real
    tensor: quantization is elementwise, so quantizing and then copying pixels gives the same codes as copying
    and then quantizing, with 1 / factor^2 of the quantization work. ``x``: a :class:`PackedActivation`,
    :class:`ByteActivation` or :class:`PlanarActivation` (all three are pixel-major)."""
    if isinstance(x, PlanarActivation):
        return replace(x, planes=_repeat_pixels(x.planes, factor), sums=_repeat_pixels(x.sums, factor))
    if isinstance(x, _Codes):
        return replace(x, codes=_repeat_pixels(x.codes, factor))
    raise TypeError(f"upsample_nearest takes an activation operand, got {type(x).__name__}")
