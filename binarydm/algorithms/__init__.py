"""The binarization algorithms of the comparison suite, as plug-ins of binarydm's quantization core.

Importing this package registers every algorithm's weight and activation quantizers with
``binarydm.quant.registry`` and its configuration under its name in the one table of names
(``binarydm.quant.config.PRESETS``), so ``binarize_(model, "xnor")``,
``binarize_(model, QuantConfig(weight="xnor", act="bireal", a_bits=1))`` and :func:`preset` all work::

    from binarydm import algorithms
    algorithms.available()                     # ['baseline', 'bipft', 'biper', 'bireal', ...]
    binarydm.binarize_(unet, algorithms.preset("reactnet"))
    binarydm.binarize_(unet, algorithms.preset("biper", omega=10))   # an algorithm parameter

One small file per algorithm (formula, paper and deviations in its docstring; the table in
docs/algorithms.md). Scheduled quantizers (ReCU, FDA, BiPer) expose ``set_progress(step, total)``
(:mod:`binarydm.algorithms.schedule`), driven by ``binarydm.training.schedules.QuantScheduleCallback``.
"""

from __future__ import annotations

from typing import Any

from binarydm.quant.config import PRESETS, QuantConfig
from binarydm.quant.registry import register_preset, with_options

from . import (  # noqa: F401  (imported to register the quantizers)
    baseline,
    bidm,
    bipft,
    biper,
    bireal,
    bnn,
    dad,
    db_sigmoid,
    dorefa,
    fda,
    fdb,
    lsq,
    reactnet,
    recu,
    schedule,
    xnor,
    xnorpp,
)


def _binary(name: str) -> QuantConfig:
    # 1-bit weights and activations. attention=False: the attention matmuls stay full precision, as
    # the papers (none binarizes an attention product; BiPFT's own attention is BiPFTSelfAttention).
    # attention=True binarizes q, k, v with the algorithm's activation binarizer (P: unsigned 1-bit LSQ).
    return QuantConfig(weight=name, act=name, a_bits=1, attention=False)


_ALGORITHMS: dict[str, QuantConfig] = {
    **{n: _binary(n) for n in ("bnn", "xnor", "dorefa", "bireal", "xnorpp", "reactnet", "recu", "fda", "biper",
                               "bipft")},
    # DB-LLM is weight-only (2 binary bases): LSQ activations, as the spec says.
    "fdb": QuantConfig(weight="fdb", act="lsq", a_bits=4),
    "lsq": lsq.lsq_config(4, 4),
    "baseline": PRESETS["baseline"],
    "lmb": PRESETS["w1a4"],
    "ebb": QuantConfig(weight="ebb"),
    "db-sigmoid": QuantConfig(weight="lmb", surrogate="db_sigmoid"),
    # BiDM (W1A1): its binary structure and cross-timestep connection (the last 8 output stages, as the authors'
    # LDM-4); stem, head and embeddings stay full precision, as in their code. SPD is a loss (loss.spd_weight).
    "bidm": QuantConfig(weight="bidm", act="bidm", a_bits=1, attention=False, keep_bits=32, timestep_connection=8),
}
for _name, _config in _ALGORITHMS.items():
    register_preset(_name, _config)


def available() -> list[str]:
    """The algorithm names: each works in :func:`preset`, ``binarize_(model, name)`` and ``QuantConfig.preset``."""
    return sorted(_ALGORITHMS)


def preset(name: str, **kwargs: Any) -> QuantConfig:
    """The QuantConfig of algorithm ``name`` (``available()``), with QuantConfig field overrides and
    algorithm parameters.

    ``preset("lsq", w_bits=2)`` is LSQ W2A4; ``preset("xnor", act="lsq", a_bits=4)`` XNOR weights with
    LSQ activations; ``preset("biper", omega=10)`` BiPer with omega = 10 (keywords that are not
    QuantConfig fields go to the algorithm's options, see ``binarydm.quant.registry.with_options``).
    ``_`` and ``-`` are interchangeable in the name.
    """
    key = name.replace("_", "-")
    if key not in _ALGORITHMS:
        raise ValueError(f"unknown binarization algorithm {name!r}; valid names: {available()}")
    fields = set(QuantConfig.fields())
    overrides = {k: v for k, v in kwargs.items() if k in fields}
    params = {k: v for k, v in kwargs.items() if k not in fields}
    config = _ALGORITHMS[key].replace(**overrides) if overrides else _ALGORITHMS[key]
    return with_options(config, **params) if params else config


__all__ = ["available", "preset", "schedule", "dad"]
