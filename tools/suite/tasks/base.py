"""What a task of the comparison suite receives and returns.

A task trains one model (full precision, or quantized by one algorithm) and measures it. The
suite runner (``suite.runner``) caches each run under the hash of its :class:`RunSpec`, so a task
must be a pure function of the spec and the context's data: same spec, same result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

FP = "fp"  # the algorithm name of the full-precision reference run


@dataclass(frozen=True)
class RunSpec:
    """One run: a task on a dataset, trained by one algorithm with one recipe.

    method:    the row label in reports ("fp", "xnor", "binarydm", "lsq-w2a4", ...).
    algorithm: ``fp`` or a name of ``binarydm.algorithms.available()``.
    quant:     QuantConfig field overrides for ``binarydm.algorithms.preset(algorithm, **quant)``.
    train:     task-specific training overrides (the diffusion task: dotted config keys such as
               ``loss.lrm_weight``; the other tasks: keys of their own option tables).
    steps, lr, optimizer ("adamw" | "sgd"), seed: the recipe.
    grid:      index of the recipe in the suite's learning-rate/optimiser grid (0: the reference
               recipe whose metric the report shows; the others feed the stability track only).
    options:   task-specific sizes (batch size, evaluation samples, widths, data root ...).
    """

    task: str
    dataset: str
    method: str
    algorithm: str
    quant: tuple = ()
    train: tuple = ()
    steps: int = 100
    lr: float = 1e-3
    optimizer: str = "adamw"
    seed: int = 0
    grid: int = 0
    options: tuple = ()

    @staticmethod
    def make(**kw: Any) -> "RunSpec":
        """Build from plain dicts (``quant``, ``train``, ``options`` become sorted item tuples: hashable)."""
        for key in ("quant", "train", "options"):
            value = kw.get(key) or {}
            kw[key] = tuple(sorted((str(k), _freeze(v)) for k, v in dict(value).items()))
        return RunSpec(**kw)

    @property
    def quant_dict(self) -> dict[str, Any]:
        return {k: _thaw(v) for k, v in self.quant}

    @property
    def train_dict(self) -> dict[str, Any]:
        return {k: _thaw(v) for k, v in self.train}

    @property
    def options_dict(self) -> dict[str, Any]:
        return {k: _thaw(v) for k, v in self.options}

    def option(self, key: str, default: Any = None) -> Any:
        return self.options_dict.get(key, default)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(quant=self.quant_dict, train=self.train_dict, options=self.options_dict)
        return d

    def key(self) -> str:
        """The cache key: a hash of every field (a changed recipe is a new run)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    def fp_counterpart(self) -> "RunSpec":
        """The full-precision run this run's ratios are taken against (same task, dataset, recipe)."""
        return dataclasses.replace(self, method=FP, algorithm=FP, quant=(), train=())


def _freeze(v: Any) -> Any:
    if isinstance(v, dict):
        return tuple(sorted((str(k), _freeze(x)) for k, x in v.items()))
    if isinstance(v, list):
        return ("__list__",) + tuple(_freeze(x) for x in v)
    return v


def _thaw(v: Any) -> Any:
    if isinstance(v, tuple):
        if v and v[0] == "__list__":
            return [_thaw(x) for x in v[1:]]
        return {k: _thaw(x) for k, x in v}
    return v


def merged_options(spec: RunSpec, task: str, datasets, defaults: dict[str, Any],
                   train_keys: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """``defaults`` updated by ``spec.options``, after checking the dataset, the option keys and (where the
    task has a fixed set) the train keys; each error names the valid values."""
    if spec.dataset not in datasets:
        raise ValueError(f"unknown {task} dataset {spec.dataset!r}; valid: {list(datasets)}")
    unknown = set(spec.options_dict) - set(defaults)
    if unknown:
        raise ValueError(f"unknown {task} option(s) {sorted(unknown)}; valid: {sorted(defaults)}")
    if train_keys is not None:
        unknown = set(spec.train_dict) - set(train_keys)
        if unknown:
            raise ValueError(f"unknown {task} train key(s) {sorted(unknown)}; valid: {sorted(train_keys)}")
    return {**defaults, **spec.options_dict}


@dataclass
class Context:
    """What the runner gives a task besides the spec.

    work_dir:  a directory private to this run (checkpoints for resuming, samples).
    cache_dir: shared between runs (a task's pretrained full-precision model, FID reference statistics).
    progress:  show progress bars.
    """

    work_dir: Path
    cache_dir: Path
    progress: bool = True
    num_threads: Optional[int] = None


@dataclass
class RunResult:
    """What a task returns for one run.

    metric: the task's metric (top-1 accuracy in %, perplexity, FID); ``higher_is_better`` says
    which way is better. wall_s: training wall time of this run (not counting evaluation).
    storage_bytes / ops: the model's weight storage and the OPs of one forward at the task's input
    (``binarydm.summary``: 1-bit and b-bit operations counted as BiBench does, /64 and b_w*b_a/64);
    fp_* the same model at full precision. robustness: metric under each corruption (classification).
    extra: anything else worth keeping (secondary metrics, paths).
    """

    metric: float
    metric_name: str
    higher_is_better: bool
    wall_s: float
    storage_bytes: float
    fp_storage_bytes: float
    ops: float
    fp_ops: float
    robustness: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "RunResult":
        return RunResult(**d)
