"""Bi-Real Net (Liu et al., ECCV 2018).

    weights:      W_b = a_w * sign(W), a_w = mean|W| per output channel (detached); clipped STE
    activations:  x_b = sign(x), backward ApproxSign:
                  d/dx = 2 + 2x on [-1, 0),  2 - 2x on [0, 1),  0 elsewhere  (= max(0, 2 - 2|x|))

The paper's "magnitude-aware" weight gradient (through a_w) is replaced by the detached scale, as
in the spec and BiBench; the real-valued shortcut of every block belongs to the backbone.
"""

from __future__ import annotations

from binarydm.quant.registry import LayerSpec, register_act, register_weight

from ._common import check_one_bit
from .bnn import SignBinarizer
from .xnor import XnorWeight


@register_weight("bireal")
def _weight(layer, spec: LayerSpec) -> XnorWeight:
    return XnorWeight("clipped")


@register_act("bireal")
def _act(spec: LayerSpec) -> SignBinarizer:
    check_one_bit(spec, "bireal")
    return SignBinarizer("approx_sign")
