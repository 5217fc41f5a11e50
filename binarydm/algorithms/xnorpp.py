"""XNOR-Net++ (Bulat and Tzimiropoulos, BMVC 2019): a learned, factorised output scale Gamma.

    weights:      W_b = sign(W)          activations: x_b = sign(x)      backward: clipped STE
    output:       y = Gamma * conv(x_b, W_b) + bias,   Gamma[c, i, j] = o[c] * h[i] * w[j]
                  (the paper's case 3: one vector per output dimension, all initialised to 1)

For a linear layer (tokens [..., C_out]) Gamma is o[c] alone. Unlike a per-channel alpha, Gamma
varies over the output's spatial positions, so it cannot be folded into the weight: it acts on the
layer OUTPUT through the weight quantizer's :meth:`XnorPPWeight.transform_output`, which ``QuantConv2d``
/ ``QuantLinear`` apply before the bias.

Sizing h and w: they depend on the layer's output resolution, which the weight alone does not give,
so Gamma is an :class:`OutputGamma` quantizer initialised from a calibration output, explicitly and
once, by ``binarydm.calibrate_`` (which lists ``weight_quantizer.output_quantizer`` among the
activation quantizers). Until then a forward raises. A loaded state dict resizes h and w to the saved
shapes first: nothing is re-initialised. The learned Gamma fixes the resolution: a different one
raises a clear error.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from binarydm.quant.base import Quantizer
from binarydm.quant.registry import LayerSpec, register_act, register_weight
from binarydm.quant.ste import sign_ste

from ._common import empty_param
from .bnn import SignBinarizer


class OutputGamma(Quantizer):
    """Gamma = o[c] h[i] w[j] applied to a layer output y (before its bias); all factors init 1.

    For a conv layer h and w are sized by :meth:`initialize_` from one output (the layer's output
    resolution); for a linear layer (``spatial=False``) Gamma is o alone and nothing is left to size.
    """

    def __init__(self, out_channels: int, spatial: bool = True) -> None:
        super().__init__()
        self.o = nn.Parameter(torch.ones(out_channels))
        self.h = empty_param()
        self.w = empty_param()
        self.spatial = spatial
        self.initialized = not spatial

    @property
    def bits(self) -> int:
        return 32

    def _initialize(self, y: torch.Tensor) -> None:
        if self.spatial:
            height, width = y.shape[-2:]
            self.h.data = torch.ones(height, dtype=self.o.dtype, device=self.o.device)
            self.w.data = torch.ones(width, dtype=self.o.dtype, device=self.o.device)

    def quantize(self, y: torch.Tensor) -> torch.Tensor:
        if not self.spatial:
            return y * self.o.to(y.dtype)
        height, width = y.shape[-2:]
        if (self.h.numel(), self.w.numel()) != (height, width):
            raise RuntimeError(
                f"XNOR++ Gamma was learned for a {self.h.numel()}x{self.w.numel()} output, got {height}x{width}: "
                "the factorised output scale fixes the resolution"
            )
        o, h, w = (p.to(y.dtype) for p in (self.o, self.h, self.w))
        return y * o.view(1, -1, 1, 1) * h.view(1, 1, -1, 1) * w.view(1, 1, 1, -1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("h", "w"):
            saved = state_dict.get(prefix + name)
            p = getattr(self, name)
            if saved is not None and saved.shape != p.shape:
                p.data = torch.empty(saved.shape, dtype=p.dtype, device=p.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class XnorPPWeight(Quantizer):
    """sign(W) (clipped STE); owns the layer's output scale Gamma (:class:`OutputGamma`)."""

    def __init__(self, out_channels: int, spatial: bool = True) -> None:
        super().__init__()
        self.output_quantizer = OutputGamma(out_channels, spatial)

    @property
    def bits(self) -> int:
        return 1

    def quantize(self, weight: torch.Tensor) -> torch.Tensor:
        return sign_ste(weight, "clipped")

    def transform_output(self, y: torch.Tensor, x: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Gamma * y for the layer output y before its bias ([B, C, H, W] or [..., C]); the input x is not used."""
        return self.output_quantizer(y)

    def inference_numel(self) -> int:
        return self.output_quantizer.inference_numel()


@register_weight("xnorpp")
def _weight(layer, spec: LayerSpec) -> XnorPPWeight:
    return XnorPPWeight(layer.weight.shape[0], spatial=layer.weight.dim() == 4)


@register_act("xnorpp", one_bit=True)
def _act(spec: LayerSpec) -> SignBinarizer:
    return SignBinarizer("clipped")
