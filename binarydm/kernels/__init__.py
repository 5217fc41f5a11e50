"""W1A4 convolution for NVIDIA GPUs: operand packing, an exact PyTorch reference, the CuPy launcher.

    from binarydm.kernels import pack_quant_conv, pack_quant_conv_input, w1a4_conv2d
    w = pack_quant_conv(layer).to("cuda")              # LMB bases -> bits, scales, row sums
    x = pack_quant_conv_input(layer, act)              # LSQ codes -> packed NHWC nibbles, zero point 8
    y = w1a4_conv2d(x, w)                              # CUDA kernel, or the reference (one warning)

The arithmetic, layouts and how to test and benchmark: docs/kernels.md. The kernels never import
the training code.
"""

from .cuda import KernelUnavailable, is_available, w1a4_conv2d
from .packing import (
    ByteActivation,
    PackedActivation,
    PackedConvWeight,
    byte_codes,
    lmb_bits,
    pack_activation,
    pack_codes,
    pack_quant_conv,
    pack_quant_conv_input,
    pack_weight,
    pack_weight_bits,
    padded_channels,
    unpack_codes,
    unpack_weight_bits,
)
from .reference import w1a4_conv2d as w1a4_conv2d_reference

__all__ = [
    "ByteActivation", "KernelUnavailable", "PackedActivation", "PackedConvWeight", "byte_codes", "is_available",
    "lmb_bits",
    "pack_activation", "pack_codes", "pack_quant_conv", "pack_quant_conv_input", "pack_weight",
    "pack_weight_bits", "padded_channels", "unpack_codes", "unpack_weight_bits", "w1a4_conv2d",
    "w1a4_conv2d_reference",
]
