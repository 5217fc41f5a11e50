"""``QuantConfig``: what ``binarize_`` does to a model, as a small validated, frozen dataclass."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Union

from .ste import SURROGATES

# Stable diffusers names of the layers that stay full precision (or 8-bit): the image stem and head
# and the embedding MLPs, whose errors reach every block, and the projection of the conditioning
# (encoder_hid_proj: text embeddings or label tokens into cross_attention_dim). Matched as name prefixes,
# never by position.
DEFAULT_KEEP = ("conv_in", "conv_out", "time_embedding", "class_embedding", "add_embedding", "encoder_hid_proj")


@dataclass(frozen=True)
class QuantConfig:
    """How to quantize a model.

    Attributes:
        weight: weight quantizer name (``binarydm.quant.registry.weight_quantizers()``); ``lmb`` is
            BinaryDM's learnable multi-basis binarizer.
        act: activation quantizer name; ``lsq`` is BinaryDM's choice.
        w_bits: weight bits for multi-bit quantizers (binarizers ignore it).
        a_bits: activation bits; 32 leaves activations (and the attention matmuls) in full precision.
        dual_levels: how many outer resolution levels of a UNet get two LMB bases (down_blocks[:n]
            and up_blocks[-n:]); the other blocks and the mid block get one. 0 = single basis
            everywhere (the paper's baseline). ``"auto"``: the outer half of the levels, at least
            one (the authors' code: the outer two of ddpm-cifar10-32's four; one of three).
        keep: name prefixes of layers kept out of binarization.
        keep_bits: 32 leaves kept layers untouched; 8 quantizes their weights (per channel) and
            inputs to 8 bits with LSQ, as the final BinaryDM paper does.
        attention: quantize q, k, softmax output and v of diffusers attention at ``a_bits``.
        surrogate: backward of sign for binarizers (a name in ``binarydm.quant.ste.SURROGATES``).
        timestep_connection: BiDM's cross-timestep feature connection on the last n output stages of a
            UNet's up path (``binarydm.quant.connection``); 0: none. Models without an up path
            (a classifier) have nothing to connect and are binarized without it.
    """

    weight: str = "lmb"
    act: str = "lsq"
    w_bits: int = 1
    a_bits: int = 4
    dual_levels: Union[int, str] = "auto"
    keep: tuple[str, ...] = DEFAULT_KEEP
    keep_bits: int = 8
    attention: bool = True
    surrogate: str = "clipped"
    timestep_connection: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep", tuple(self.keep))
        for name, lo, hi in (("w_bits", 1, 32), ("a_bits", 1, 32), ("timestep_connection", 0, 10**6)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                raise ValueError(f"QuantConfig.{name} must be an integer in [{lo}, {hi}], got {value!r}")
        if self.keep_bits not in (8, 32):
            raise ValueError(f"QuantConfig.keep_bits must be 8 or 32, got {self.keep_bits!r}")
        if self.dual_levels != "auto" and (not isinstance(self.dual_levels, int) or isinstance(self.dual_levels, bool)
                                           or self.dual_levels < 0):
            raise ValueError(f"QuantConfig.dual_levels must be 'auto' or a non-negative integer, got {self.dual_levels!r}")
        if self.surrogate not in SURROGATES:
            raise ValueError(f"QuantConfig.surrogate must be one of {sorted(SURROGATES)}, got {self.surrogate!r}")

    @property
    def quantize_activations(self) -> bool:
        return self.a_bits < 32

    def dual_levels_for(self, num_levels: int) -> int:
        """The number of outer levels with two bases on a UNet of ``num_levels`` resolution levels."""
        if self.dual_levels == "auto":
            return max(1, num_levels // 2) if num_levels else 0
        return self.dual_levels

    @classmethod
    def fields(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "QuantConfig":
        """Build from a mapping; ``preset`` picks the starting point, other keys override it."""
        values = dict(values)
        base = values.pop("preset", None)
        unknown = sorted(set(values) - set(cls.fields()))
        if unknown:
            raise ValueError(
                f"unknown QuantConfig field(s) {unknown}; valid fields: {cls.fields() + ['preset']}"
            )
        start = PRESETS[_check_preset(base)] if base is not None else cls()
        return dataclasses.replace(start, **values)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "QuantConfig":
        """A named preset (``w1a4``, ``w1a8``, ``w1a32``, ``baseline``) with optional overrides."""
        return cls.from_dict({"preset": name, **overrides})

    def replace(self, **changes: Any) -> "QuantConfig":
        return QuantConfig.from_dict({**dataclasses.asdict(self), **changes})

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["keep"] = list(self.keep)
        return out


PRESETS: dict[str, QuantConfig] = {
    "w1a4": QuantConfig(),
    "w1a8": QuantConfig(a_bits=8),
    "w1a32": QuantConfig(a_bits=32, keep_bits=32),
    # The BinaryDM paper's baseline: one learnable basis s1*sign(W) everywhere, LSQ W1A4.
    "baseline": QuantConfig(dual_levels=0),
}


def _check_preset(name: str) -> str:
    if name not in PRESETS:
        raise ValueError(f"unknown QuantConfig preset {name!r}; valid presets: {sorted(PRESETS)}")
    return name


def resolve(config: Union[None, str, Mapping[str, Any], QuantConfig]) -> QuantConfig:
    """A QuantConfig from None (the w1a4 default), a preset name, a mapping or a QuantConfig."""
    if config is None:
        return QuantConfig()
    if isinstance(config, QuantConfig):
        return config
    if isinstance(config, str):
        return PRESETS[_check_preset(config)]
    if isinstance(config, Mapping):
        return QuantConfig.from_dict(config)
    raise TypeError(f"expected a QuantConfig, a preset name or a mapping, got {type(config).__name__}")


__all__ = ["QuantConfig", "PRESETS", "DEFAULT_KEEP", "resolve"]
