"""Registries of weight and activation quantizers, looked up by name from a ``QuantConfig``.

A weight-quantizer factory receives the float layer and a :class:`LayerSpec` and returns a
:class:`~binarydm.quant.base.Quantizer` for its weight; an activation factory receives the spec alone.
The algorithms of the comparison suite register themselves here (``binarydm.algorithms``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from torch import nn

from .base import Quantizer
from .config import QuantConfig
from .lmb import LMB
from .lsq import LSQ


@dataclass(frozen=True)
class LayerSpec:
    """What a factory needs to know about the layer it quantizes."""

    name: str  # qualified module name in the model
    config: QuantConfig
    n_bases: int = 1  # LMB bases chosen for this layer (2 on the outer UNet levels)
    kept: bool = False  # a kept layer quantized at keep_bits (8-bit W and A)


WeightFactory = Callable[[nn.Module, LayerSpec], Optional[Quantizer]]
ActFactory = Callable[[LayerSpec], Optional[Quantizer]]

_WEIGHT: dict[str, WeightFactory] = {}
_ACT: dict[str, ActFactory] = {}


def register_weight(name: str) -> Callable[[WeightFactory], WeightFactory]:
    def deco(fn: WeightFactory) -> WeightFactory:
        _WEIGHT[name] = fn
        return fn

    return deco


def register_act(name: str) -> Callable[[ActFactory], ActFactory]:
    def deco(fn: ActFactory) -> ActFactory:
        _ACT[name] = fn
        return fn

    return deco


def _lookup(table: dict, kind: str, name: str):
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown {kind} quantizer {name!r}; valid names: {sorted(table)}") from None


def weight_factory(name: str) -> WeightFactory:
    return _lookup(_WEIGHT, "weight", name)


def act_factory(name: str) -> ActFactory:
    return _lookup(_ACT, "activation", name)


def weight_quantizers() -> list[str]:
    return sorted(_WEIGHT)


def act_quantizers() -> list[str]:
    return sorted(_ACT)


@register_weight("lmb")
def _lmb(layer: nn.Module, spec: LayerSpec) -> Quantizer:
    return LMB(layer.weight.shape[0], layer.weight.dim(), n_bases=spec.n_bases, surrogate=spec.config.surrogate)


@register_weight("lsq")
def _lsq_weight(layer: nn.Module, spec: LayerSpec) -> Quantizer:
    bits = spec.config.w_bits
    if bits < 2:
        raise ValueError("weight='lsq' needs w_bits >= 2 (a signed 1-bit uniform code has no positive level)")
    return LSQ(bits, signed=True, channels=layer.weight.shape[0], dim=layer.weight.dim())


@register_weight("fp")
def _fp_weight(layer: nn.Module, spec: LayerSpec) -> None:
    return None


@register_act("lsq")
def _lsq_act(spec: LayerSpec) -> Quantizer:
    return LSQ(spec.config.a_bits, signed=True)


@register_act("fp")
def _fp_act(spec: LayerSpec) -> None:
    return None
