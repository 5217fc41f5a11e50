"""The training room: BinaryDM quantization-aware training with Lightning.

``DiffusionQAT`` (the LightningModule: noise prediction + LRM + EBB penalty), ``LRM`` (low-rank
representation mimicking), schedules as callbacks (``ProgressiveInit``, ``EBBTransition``, ``EMA``,
``SampleGrid``), data modules, teacher loading, the OmegaConf run configuration and ``run``.
Lightning is imported here, never by ``binarydm.quant``.

The names below are imported on first use (PEP 562): ``from binarydm.training.config import load_config``
checks a config without importing Lightning or diffusers, so a bad config fails at once.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "callbacks": ("EMA", "EBBTransition", "ProgressiveInit", "ProgressiveSchedule", "SampleGrid"),
    "config": ("ConfigError", "load_config"),
    "data": ("DataConfig", "DatasetNotFoundError", "DiffusionDataModule"),
    "lrm": ("LRM", "FeatureTap", "lrm_block_names"),
    "module": ("DiffusionQAT", "LossConfig", "OptimConfig"),
    "runner": ("build", "export_student", "load_student", "run"),
    "teacher": ("TeacherNotFoundError", "load_unet"),
}
_WHERE = {name: module for module, names in _NAMES.items() for name in names}

__all__ = [name for names in _NAMES.values() for name in names]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'binarydm.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
