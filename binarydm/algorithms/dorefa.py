"""DoReFa-Net at 1 bit (Zhou et al., arXiv 1606.06160).

    weights:      W_b = E(|W|) * sign(W), E(|W|) per output channel (detached): the XNOR weight
    activations:  x_b = sign(x)
    backward:     clipped STE on both

At 1 bit DoReFa's weight binarizer is exactly XNOR's (the paper uses one scalar per layer; BiBench
and the spec use one per output channel), so the weight quantizer is
:class:`binarydm.algorithms.xnor.XnorWeight`; the activations are BNN's plain sign.
"""

from __future__ import annotations

from binarydm.quant.registry import LayerSpec, register_act, register_weight

from ._common import check_one_bit
from .bnn import SignBinarizer
from .xnor import XnorWeight


@register_weight("dorefa")
def _weight(layer, spec: LayerSpec) -> XnorWeight:
    return XnorWeight("clipped")


@register_act("dorefa")
def _act(spec: LayerSpec) -> SignBinarizer:
    check_one_bit(spec, "dorefa")
    return SignBinarizer("clipped")
