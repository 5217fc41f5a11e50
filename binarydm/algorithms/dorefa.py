"""DoReFa-Net at 1 bit (Zhou et al., arXiv 1606.06160).

    weights:      W_b = E(|W|) * sign(W), E(|W|) per output channel (detached): the XNOR weight
    activations:  x_b = sign(x)
    backward:     clipped STE on both, the weight's without the scale (BiBench's DoReFaConv2d;
                  ``dorefa(scaled_grad=True)``: times E(|W|), see :mod:`binarydm.algorithms.xnor`)

At 1 bit DoReFa's weight binarizer is exactly XNOR's (the paper uses one scalar per layer; BiBench
and the spec use one per output channel), so the weight quantizer is
:class:`binarydm.algorithms.xnor.XnorWeight`; the activations are BNN's plain sign.
"""

from __future__ import annotations

from binarydm.quant.registry import LayerSpec, register_act, register_weight

from .bnn import SignBinarizer
from .xnor import XnorOptions, XnorWeight, weight_of


@register_weight("dorefa", options=XnorOptions)
def _weight(layer, spec: LayerSpec) -> XnorWeight:
    return weight_of(spec)


@register_act("dorefa", one_bit=True)
def _act(spec: LayerSpec) -> SignBinarizer:
    return SignBinarizer("clipped")
