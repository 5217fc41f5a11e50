"""The binarization algorithms of the comparison suite, as plug-ins of binarydm's quantization core.

Importing this package registers every algorithm's weight and activation quantizers with
``binarydm.quant.registry``, so ``binarize_(model, QuantConfig(weight="xnor", act="bireal", a_bits=1))``
works on any model; :func:`preset` gives each algorithm's own configuration::

    from binarydm import algorithms
    algorithms.available()                     # ['baseline', 'bipft', 'biper', 'bireal', ...]
    binarydm.binarize_(unet, algorithms.preset("reactnet"))

One small file per algorithm (formula, paper and deviations in its docstring; the table in
docs/algorithms.md). Scheduled quantizers (ReCU, FDA, BiPer) expose ``set_progress(step, total)``
(:mod:`binarydm.algorithms.schedule`), driven by ``binarydm.training.schedules.QuantScheduleCallback``.
"""

from __future__ import annotations

from typing import Any, Callable

from binarydm.quant.config import QuantConfig

from . import (  # noqa: F401  (imported to register the quantizers)
    baseline,
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


def _binary(name: str) -> Callable[[], QuantConfig]:
    # 1-bit weights and activations. attention=False: the attention matmuls stay full precision,
    # because the core's attention processor quantizes q, k, P, v with signed LSQ, which has no
    # 1-bit code (see docs/algorithms.md).
    return lambda: QuantConfig(weight=name, act=name, a_bits=1, attention=False)


_PRESETS: dict[str, Callable[[], QuantConfig]] = {
    **{n: _binary(n) for n in ("bnn", "xnor", "dorefa", "bireal", "xnorpp", "reactnet", "recu", "fda", "biper",
                               "bipft")},
    # DB-LLM is weight-only (2 binary bases): LSQ activations, as the spec says.
    "fdb": lambda: QuantConfig(weight="fdb", act="lsq", a_bits=4),
    "lsq": lambda: lsq.lsq_config(4, 4),
    "baseline": lambda: QuantConfig.preset("baseline"),
    "lmb": lambda: QuantConfig.preset("w1a4"),
    "ebb": lambda: QuantConfig(weight="ebb"),
    "db-sigmoid": lambda: QuantConfig(weight="lmb", surrogate="db_sigmoid"),
}


def available() -> list[str]:
    """The algorithm names :func:`preset` accepts."""
    return sorted(_PRESETS)


def preset(name: str, **overrides: Any) -> QuantConfig:
    """The QuantConfig of algorithm ``name`` (``available()``), with optional field overrides.

    ``preset("lsq", w_bits=2)`` is LSQ W2A4; ``preset("xnor", act="lsq", a_bits=4)`` XNOR weights with
    LSQ activations. ``_`` and ``-`` are interchangeable in the name.
    """
    key = name.replace("_", "-")
    if key not in _PRESETS:
        raise ValueError(f"unknown binarization algorithm {name!r}; valid names: {available()}")
    config = _PRESETS[key]()
    return config.replace(**overrides) if overrides else config


__all__ = ["available", "preset", "schedule", "dad"]
