"""XNOR-Net (Rastegari et al., ECCV 2016).

    weights:      W_b = a_w * sign(W),  a_w = mean|W| over each output channel's filter (detached)
    activations:  x_b = b * sign(x),    b = mean|x| over C, H, W of each sample (detached; per token over C
                  for sequence inputs, so a causal model stays causal)
    backward:     clipped STE without the scale, dW = g * 1{|W| <= 1},  dx = g * 1{|x| <= 1}

The backward is BiBench's (its XNORConv2d: ``(a * sign(W)).detach() - clamp(W).detach() + clamp(W)``):
the scales are in the value, not in the gradient. ``XnorOptions(scaled_grad=True)`` (the name
``xnor(scaled_grad=True)``) multiplies the gradients by the detached scales instead (dW = g a_w 1{|W|<=1},
dx = g b 1{|x|<=1}: autograd's reading of a_w * sign_ste(W)); on a pretrained UNet, where
mean|W| ~ 0.02, those weight gradients are ~50x smaller, which an SGD learning rate must make up for
(Adam-type optimisers divide the factor out of each element's update).

The paper's activation scale K is a spatial map (an average of |x| over channels, convolved with
a box filter); BiBench and most later work use the per-sample scalar above, as the spec does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from binarydm.quant.registry import LayerSpec, register_act, register_weight
from binarydm.quant.ste import scaled_sign_ste, sign_ste

from ._common import ParameterFree, out_channel_mean_abs, per_sample_mean_abs


@dataclass(frozen=True)
class XnorOptions:
    """scaled_grad: multiply sign's surrogate gradient by the detached scale (False: BiBench's gradient)."""

    scaled_grad: bool = False


def scaled_sign(x: torch.Tensor, scale: torch.Tensor, surrogate, scaled_grad: bool) -> torch.Tensor:
    """scale * sign(x) with ``surrogate``'s gradient, times the scale only if ``scaled_grad``."""
    if scaled_grad:
        return scale.detach() * sign_ste(x, surrogate)
    return scaled_sign_ste(x, scale, surrogate)


class _ScaledSign(ParameterFree):
    def __init__(self, surrogate="clipped", scaled_grad: bool = False) -> None:
        super().__init__()
        self.surrogate = surrogate
        self.scaled_grad = scaled_grad

    @property
    def bits(self) -> int:
        return 1


class XnorWeight(_ScaledSign):
    """a_w * sign(W) with a_w = mean|W| per output channel (detached); clipped STE.

    ``stored_scale`` (a buffer, not saved in the state dict) replaces mean|W| when set: the packed 1-bit file
    stores a_w beside the sign bits, and no latent weight with those signs has exactly that float mean
    (the mean of equal magnitudes rounds), so the loaded layer uses the stored value itself."""

    def __init__(self, surrogate="clipped", scaled_grad: bool = False) -> None:
        super().__init__(surrogate, scaled_grad)
        self.register_buffer("stored_scale", None, persistent=False)

    def scale(self, w: torch.Tensor) -> torch.Tensor:
        """a_w, shaped to broadcast against ``w``."""
        return self.stored_scale if self.stored_scale is not None else out_channel_mean_abs(w)

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        return scaled_sign(w, self.scale(w), self.surrogate, self.scaled_grad)

    def derived_numel(self, weight: torch.Tensor) -> int:
        return weight.shape[0]  # a_w, stored in the packed file


class XnorAct(_ScaledSign):
    """b * sign(x) with b = mean|x| per sample (C, H, W) or per token (C) (detached)."""

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return scaled_sign(x, per_sample_mean_abs(x), self.surrogate, self.scaled_grad)


def weight_of(spec: LayerSpec) -> XnorWeight:
    """The XNOR weight binarizer with the spec's options (shared by DoReFa, Bi-Real and ReActNet)."""
    return XnorWeight("clipped", spec.options.scaled_grad)


@register_weight("xnor", options=XnorOptions)
def _weight(layer, spec: LayerSpec) -> XnorWeight:
    return weight_of(spec)


@register_act("xnor", options=XnorOptions, one_bit=True)
def _act(spec: LayerSpec) -> XnorAct:
    return XnorAct("clipped", spec.options.scaled_grad)
