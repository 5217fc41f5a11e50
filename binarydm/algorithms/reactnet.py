"""ReActNet (Liu et al., ECCV 2020): the RSign activation binarizer.

    activations:  x_b = sign(x + beta_c),  beta one learnable shift per input channel, init 0
    backward:     ApproxSign on u = x + beta:  d x_b/du = max(0, 2 - 2|u|);
                  dL/dx = g * d(u),  dL/dbeta_c = sum over every position of channel c of g * d(u)
    weights:      a_w * sign(W), a_w = mean|W| per output channel (detached), clipped STE without
                  the scale (BiBench's ReActConv2d; ``reactnet(scaled_grad=True)``: times a_w)

The spec writes the threshold as sign(x + beta); the paper's "sign(x - alpha)" is the same with
beta = -alpha. RPReLU is part of ReActNet's backbone, not of the binarizer, and is not added to
other models. BiBench's ReActLinear drops the threshold in forward; here it is applied to every
layer type (feature maps: channel axis 1; token inputs: the last axis).
"""

from __future__ import annotations

import torch

from binarydm.quant.registry import LayerSpec, register_act, register_weight
from binarydm.quant.ste import sign_ste

from ._common import ChannelSized, channel_axis, empty_param, view_along
from .xnor import XnorOptions, XnorWeight, weight_of


class RSign(ChannelSized):
    """sign(x + beta_c) with a learnable per-input-channel shift (sized at calibration); ApproxSign."""

    channel_params = ("beta",)

    def __init__(self, surrogate="approx_sign") -> None:
        super().__init__()
        self.surrogate = surrogate
        self.beta = empty_param()

    @property
    def bits(self) -> int:
        return 1

    def _initialize(self, x: torch.Tensor) -> None:
        self._size_channels(x.shape[channel_axis(x)], 0.0)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        beta = view_along(self.beta.to(x.dtype), x, channel_axis(x))
        return sign_ste(x + beta, self.surrogate)


@register_weight("reactnet", options=XnorOptions)
def _weight(layer, spec: LayerSpec) -> XnorWeight:
    return weight_of(spec)


@register_act("reactnet", one_bit=True)
def _act(spec: LayerSpec) -> RSign:
    return RSign()
