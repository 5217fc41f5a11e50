"""Registries of weight and activation quantizers, looked up by name from a ``QuantConfig``.

A weight-quantizer factory receives the float layer and a :class:`LayerSpec` and returns a
:class:`~binarydm.quant.base.Quantizer` for its weight; an activation factory receives the spec alone.
The algorithms of the comparison suite register themselves here (``binarydm.algorithms``).

Options. A quantizer may declare its parameters as a small frozen dataclass (``options=``); a name
then carries them: ``"biper(omega=10.0)"`` is BiPer with omega = 10, ``"biper"`` BiPer with the
defaults (the original's). The factory reads the validated object from ``spec.options``. Because the
parameters live in the ``weight`` / ``act`` strings, a ``QuantConfig`` stays frozen, hashable and
JSON-serialisable (``to_dict``), and a saved model rebuilds with its parameters.
:func:`with_options` writes them in canonical form (only values that differ from the defaults).

Presets. :func:`register_preset` adds a named ``QuantConfig`` to ``binarydm.quant.config.PRESETS``,
the one table of configuration names that ``binarize_(model, name)``, ``QuantConfig.preset`` and
``binarydm.algorithms.preset`` read.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import typing
from dataclasses import dataclass
from typing import Any, Callable, Optional

from torch import nn

from .base import Quantizer
from .config import PRESETS, QuantConfig
from .lmb import LMB
from .lsq import LSQ


@dataclass(frozen=True)
class LayerSpec:
    """What a factory needs to know about the layer it quantizes."""

    name: str  # qualified module name in the model
    config: QuantConfig
    n_bases: int = 1  # LMB bases chosen for this layer (2 on the outer UNet levels)
    kept: bool = False  # a kept layer quantized at keep_bits (8-bit W and A)
    options: Any = None  # the quantizer's options object (its ``options=`` class), parsed from the name


WeightFactory = Callable[[nn.Module, LayerSpec], Optional[Quantizer]]
ActFactory = Callable[[LayerSpec], Optional[Quantizer]]


@dataclass(frozen=True)
class _Entry:
    fn: Callable
    options: Optional[type] = None
    one_bit: bool = False


_WEIGHT: dict[str, _Entry] = {}
_ACT: dict[str, _Entry] = {}


def register_weight(name: str, options: Optional[type] = None) -> Callable[[WeightFactory], WeightFactory]:
    def deco(fn: WeightFactory) -> WeightFactory:
        _WEIGHT[name] = _Entry(fn, options)
        return fn

    return deco


def register_act(name: str, options: Optional[type] = None, one_bit: bool = False) -> Callable[[ActFactory], ActFactory]:
    """``one_bit=True``: a binarizer, which refuses a config with ``a_bits != 1`` (naming the fix)."""
    def deco(fn: ActFactory) -> ActFactory:
        _ACT[name] = _Entry(fn, options, one_bit)
        return fn

    return deco


# ---- names with options -------------------------------------------------------------------------
_NAME = re.compile(r"^\s*([A-Za-z_][\w\-]*)\s*(?:\((.*)\))?\s*$", re.S)


def split_name(name: str) -> tuple[str, dict[str, Any]]:
    """``"biper(omega=10.0)"`` -> ``("biper", {"omega": 10.0})``; values are Python literals."""
    m = _NAME.match(name) if isinstance(name, str) else None
    if m is None:
        raise ValueError(f"bad quantizer name {name!r}: expected NAME or NAME(key=value, ...)")
    base, inner = m.group(1), m.group(2)
    if inner is None or not inner.strip():
        return base, {}
    try:
        call = ast.parse(f"f({inner})", mode="eval").body
        if call.args or any(k.arg is None for k in call.keywords):
            raise ValueError("only key=value pairs")
        return base, {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    except (SyntaxError, ValueError) as e:
        raise ValueError(f"bad quantizer name {name!r}: options must be key=value literals ({e})") from None


def make_options(cls: type, values: dict[str, Any], owner: str) -> Any:
    """An instance of the options dataclass ``cls``; unknown keys and wrong types raise ValueError."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for {owner!r}; valid options: {names}")
    hints = typing.get_type_hints(cls)
    checked = {}
    for key, value in values.items():
        kind = hints[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ValueError(f"{owner} option {key} must be {kind.__name__}, got {value!r}")
        checked[key] = value
    return cls(**checked)


def quantizer_name(base: str, options: Any) -> str:
    """The canonical name: ``base`` alone when every option has its default, else ``base(k=v, ...)``."""
    if options is None:
        return base
    changed = [(f.name, getattr(options, f.name)) for f in dataclasses.fields(options)
               if getattr(options, f.name) != f.default]
    return base if not changed else f"{base}({', '.join(f'{k}={v!r}' for k, v in changed)})"


def _resolve(table: dict[str, _Entry], kind: str, name: str) -> tuple[_Entry, Any]:
    base, values = split_name(name)
    entry = table.get(base)
    if entry is None:
        raise ValueError(f"unknown {kind} quantizer {base!r}; valid names: {sorted(table)}")
    if entry.options is None:
        if values:
            raise ValueError(f"{kind} quantizer {base!r} takes no options, got {sorted(values)}")
        return entry, None
    return entry, make_options(entry.options, values, base)


def weight_factory(name: str) -> WeightFactory:
    entry, options = _resolve(_WEIGHT, "weight", name)
    return lambda layer, spec: entry.fn(layer, dataclasses.replace(spec, options=options))


def act_factory(name: str) -> ActFactory:
    entry, options = _resolve(_ACT, "activation", name)
    base = split_name(name)[0]

    def make(spec: LayerSpec):
        if entry.one_bit and spec.config.a_bits != 1:
            raise ValueError(
                f"act={base!r} binarizes activations (1 bit) but the config has a_bits={spec.config.a_bits}; "
                f"set a_bits=1, or use act='lsq' for multi-bit activations"
            )
        return entry.fn(dataclasses.replace(spec, options=options))

    return make


def weight_quantizers() -> list[str]:
    return sorted(_WEIGHT)


def act_quantizers() -> list[str]:
    return sorted(_ACT)


def options_of(kind: str, name: str) -> Optional[type]:
    """The options class of weight (``kind="weight"``) or activation quantizer ``name``, or None."""
    entry = (_WEIGHT if kind == "weight" else _ACT).get(split_name(name)[0])
    return None if entry is None else entry.options


def with_options(config: QuantConfig, **params: Any) -> QuantConfig:
    """``config`` with algorithm parameters written into its weight and/or act names.

    Each parameter goes to every quantizer (weight, act) whose options declare it; a parameter no
    quantizer of the config declares raises ValueError listing the valid ones.
    """
    changes, used, valid = {}, set(), set()
    for field in ("weight", "act"):
        base, current = split_name(getattr(config, field))
        cls = options_of(field, base)
        if cls is None:
            continue
        names = {f.name for f in dataclasses.fields(cls)}
        valid |= names
        mine = {k: v for k, v in params.items() if k in names}
        if mine:
            changes[field] = quantizer_name(base, make_options(cls, {**current, **mine}, base))
            used |= set(mine)
    unknown = sorted(set(params) - used)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for weight={config.weight!r}, act={config.act!r}; "
                         f"valid options: {sorted(valid)}")
    return config.replace(**changes) if changes else config


def register_preset(name: str, config: QuantConfig) -> None:
    """Add ``name`` to the one table of configuration names (``binarydm.quant.config.PRESETS``)."""
    current = PRESETS.get(name)
    if current is not None and current != config:
        raise ValueError(f"preset {name!r} is already registered as {current}")
    PRESETS[name] = config


# ---- the core's quantizers ----------------------------------------------------------------------
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
