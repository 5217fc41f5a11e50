"""XNOR-Net (Rastegari et al., ECCV 2016).

    weights:      W_b = a_w * sign(W),  a_w = mean|W| over each output channel's filter (detached)
    activations:  x_b = b * sign(x),    b = mean|x| over C, H, W of each sample (detached; per token over C
                  for sequence inputs, so a causal model stays causal)
    backward:     clipped STE, dW = g * a_w * 1{|W| <= 1},  dx = g * b * 1{|x| <= 1}

The paper's activation scale K is a spatial map (an average of |x| over channels, convolved with
a box filter); BiBench and most later work use the per-sample scalar above, as the spec does.
The scales are detached: they are statistics of the input, not trained through.
"""

from __future__ import annotations

import torch

from binarydm.quant.registry import LayerSpec, register_act, register_weight
from binarydm.quant.ste import sign_ste

from ._common import check_one_bit, out_channel_mean_abs, per_sample_mean_abs
from .bnn import SignBinarizer


class XnorWeight(SignBinarizer):
    """a_w * sign(W) with a_w = mean|W| per output channel (detached); clipped STE."""

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        return out_channel_mean_abs(w).detach() * sign_ste(w, self.surrogate)


class XnorAct(SignBinarizer):
    """b * sign(x) with b = mean|x| per sample (C, H, W) or per token (C) (detached)."""

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return per_sample_mean_abs(x).detach() * sign_ste(x, self.surrogate)


@register_weight("xnor")
def _weight(layer, spec: LayerSpec) -> XnorWeight:
    return XnorWeight()


@register_act("xnor")
def _act(spec: LayerSpec) -> XnorAct:
    check_one_bit(spec, "xnor")
    return XnorAct()
