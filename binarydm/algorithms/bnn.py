"""BNN (Courbariaux, Hubara et al., "Binarized Neural Networks", NeurIPS 2016).

    weights:      W_b = sign(W)          activations: x_b = sign(x)
    backward:     clipped STE on both, d sign(u)/du := 1{|u| <= 1}

No scale and nothing learnable beyond the latent weights.
"""

from __future__ import annotations

import torch

from binarydm.quant.registry import LayerSpec, register_act, register_weight
from binarydm.quant.ste import sign_ste

from ._common import ParameterFree


class SignBinarizer(ParameterFree):
    """sign(u) with a chosen surrogate gradient (clipped STE by default); no parameters."""

    def __init__(self, surrogate="clipped") -> None:
        super().__init__()
        self.surrogate = surrogate

    @property
    def bits(self) -> int:
        return 1

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return sign_ste(x, self.surrogate)


@register_weight("bnn")
def _weight(layer, spec: LayerSpec) -> SignBinarizer:
    return SignBinarizer("clipped")


@register_act("bnn", one_bit=True)
def _act(spec: LayerSpec) -> SignBinarizer:
    return SignBinarizer("clipped")
