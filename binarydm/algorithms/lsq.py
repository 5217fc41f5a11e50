"""LSQ at 2 and 4 bits (Esser et al., "Learned Step Size Quantization", ICLR 2020): presets only.

The quantizer itself is the core's :class:`binarydm.quant.lsq.LSQ` (weights per output channel,
activations per tensor), registered there as ``lsq``; this file names the comparison points:

    x_q = round(clamp(x / a, Qn, Qp)) * a,  Qn = -2^(b-1), Qp = 2^(b-1) - 1 (signed codes)
    backward: dx = g * 1{Qn <= x/a <= Qp};  da = g * (round(x/a) - x/a inside, Qn or Qp outside) / sqrt(N Qp)
"""

from __future__ import annotations

from binarydm.quant.config import QuantConfig


def lsq_config(w_bits: int = 4, a_bits: int = 4) -> QuantConfig:
    """Uniform LSQ W{w_bits}A{a_bits}: the multi-bit reference points of the comparison (W2, W4)."""
    if w_bits < 2:
        raise ValueError(f"LSQ weights need w_bits >= 2 (got {w_bits}); use a binarizer for 1 bit")
    return QuantConfig(weight="lsq", act="lsq", w_bits=w_bits, a_bits=a_bits)
