"""The operator level: sign and STE, quantizers, quantized layers, model surgery, accounting.

Nothing here imports Lightning or the training code.
"""

from .attention import QuantAttnProcessor
from .base import Quantizer, quantizers
from .config import PRESETS, QuantConfig
from .convert import (
    activation_quantizers,
    binarize_,
    calibrate_,
    progressive_groups,
    quant_layers,
    set_quant_state_,
    weight_quantizers,
)
from .layers import QuantConv2d, QuantLinear
from .lmb import LMB
from .lsq import LSQ
from .registry import LayerSpec, register_act, register_preset, register_weight, with_options
from .ste import binary_sign, round_ste, scaled_sign_ste, sign_ste
from .summary import Summary, summary

__all__ = [
    "LMB", "LSQ", "PRESETS", "LayerSpec", "QuantAttnProcessor", "QuantConfig", "QuantConv2d", "QuantLinear",
    "Quantizer", "Summary", "activation_quantizers", "binarize_", "binary_sign", "calibrate_",
    "progressive_groups", "quant_layers", "quantizers", "register_act", "register_preset", "register_weight",
    "round_ste", "scaled_sign_ste", "set_quant_state_", "sign_ste", "summary", "weight_quantizers", "with_options",
]
