"""Bi-Real Net (Liu et al., ECCV 2018).

    weights:      W_b = a_w * sign(W), a_w = mean|W| per output channel (detached); clipped STE
                  without the scale, dW = g * 1{|W| <= 1} (BiBench's BiRealConv2d;
                  ``bireal(scaled_grad=True)``: times a_w, see :mod:`binarydm.algorithms.xnor`)
    activations:  x_b = sign(x), backward ApproxSign:
                  d/dx = 2 + 2x on [-1, 0),  2 - 2x on [0, 1),  0 elsewhere  (= max(0, 2 - 2|x|))

The paper's "magnitude-aware" weight gradient (through a_w) is not used, as in BiBench; the
real-valued shortcut of every block belongs to the backbone.
"""

from __future__ import annotations

from binarydm.quant.registry import LayerSpec, register_act, register_weight

from .bnn import SignBinarizer
from .xnor import XnorOptions, XnorWeight, weight_of


@register_weight("bireal", options=XnorOptions)
def _weight(layer, spec: LayerSpec) -> XnorWeight:
    return weight_of(spec)


@register_act("bireal", one_bit=True)
def _act(spec: LayerSpec) -> SignBinarizer:
    return SignBinarizer("approx_sign")
