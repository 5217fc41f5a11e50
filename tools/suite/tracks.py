"""BiBench's tracks as ratios to the full-precision model of the same task, and the overall score.

For one method on one task (its runs at the suite's reference recipe, and at each recipe of the
sensitivity grid where the suite has one), every track is a ratio in which 1 means "as good as full
precision" and larger is better:

    accuracy     q / fp for a metric where higher is better (top-1), fp / q where lower is better
                 (FID, perplexity).
    robustness   mean over corruptions c of q_c / fp_c: the metric under corruption, relative to the FP
                 model under the same corruption. Classification only. (Dividing out the clean
                 accuracy, (q_c / q_clean) / (fp_c / fp_clean), was tried first and rewarded models
                 that learnt nothing: at chance, corruption cannot hurt them.)
    train_time   wall_fp / wall_q for the same number of steps (QAT costs more: below 1).
    stability    (1 - cv_q) / (1 - cv_fp), cv = std / mean of the metric across the grid of learning
                 rates and optimisers (clipped to [0, 1)): BiBench's hyper-parameter sensitivity,
                 made a ratio in which a method as insensitive as FP scores 1. A model that learns
                 nothing at any setting is "stable": read this track next to accuracy.
    storage, ops fp / q from ``binarydm.summary`` (BiBench's theoretical-complexity track).
    latency      fp16 time / W1A4 kernel time of the whole network, from ``tools/bench_kernel.py``
                 results where a GPU measured them; absent otherwise (never guessed).
    fidelity     fp / q of the paired noise-prediction MSE on a fixed held-out (x_0, t, noise) set
                 (``binarydm.evaluation.paired_mse``; diffusion only): cheap, and paired across rows.

With several seeds, a method's metric (and every ratio built from it) is the mean over the seeds
of its reference-recipe runs; ``metric_std`` is their standard deviation; stability uses the first
seed's grid only.

Overall (Qin et al., "BiBench", ICML 2023): the quadratic mean sqrt(mean_k r_k^2) over the tracks a
method has, each track first averaged over the tasks. The complexity ratios (tens) dwarf the
others (around 1) in a quadratic mean, so the report also gives the overall score without them.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Iterable, Optional

from .tasks.base import FP, RunResult, RunSpec

TRACKS = ("accuracy", "fidelity", "robustness", "train_time", "stability", "storage", "ops", "latency")
COMPLEXITY = ("storage", "ops")


def metric_ratio(q: float, fp: float, higher_is_better: bool) -> float:
    """q / fp or fp / q: 1 = as good as full precision, larger = better."""
    if not (math.isfinite(q) and math.isfinite(fp)) or q <= 0 or fp <= 0:
        return 0.0 if higher_is_better or not math.isfinite(q) else float("nan")
    return q / fp if higher_is_better else fp / q


def quadratic_mean(values: Iterable[float]) -> float:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return math.sqrt(sum(v * v for v in vals) / len(vals)) if vals else float("nan")


def _stability(metrics: list[float]) -> Optional[float]:
    if len(metrics) < 2:
        return None
    mean = statistics.fmean(metrics)
    if mean <= 0:
        return 0.0
    cv = statistics.pstdev(metrics) / mean
    return max(0.0, 1.0 - min(cv, 1.0))


@dataclass
class TaskTracks:
    """The track ratios of one method on one task (task = (task, dataset))."""

    task: str
    dataset: str
    method: str
    metric: float
    fp_metric: float
    ratios: dict[str, float] = field(default_factory=dict)
    metric_std: float = float("nan")
    seeds: int = 1
    extra: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (mean, std) over seeds


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def _averaged(items: list[tuple[RunSpec, RunResult]]) -> tuple[RunResult, list[RunResult], dict]:
    """The reference-recipe runs of ``items`` (lowest grid), one per seed, averaged into one RunResult
    (metric, wall time, numeric extras); also returns the runs and (mean, std) of each numeric extra."""
    grid = min(s.grid for s, _ in items)
    runs = [r for s, r in sorted(items, key=lambda sr: sr[0].seed) if s.grid == grid]
    first = runs[0]
    extras = {k: _mean_std([r.extra[k] for r in runs]) for k, v in first.extra.items()
              if isinstance(v, (int, float)) and not isinstance(v, bool) and all(k in r.extra for r in runs)}
    mean = RunResult(**{**first.to_dict(), "metric": statistics.fmean(r.metric for r in runs),
                        "wall_s": statistics.fmean(r.wall_s for r in runs),
                        "robustness": {c: statistics.fmean(r.robustness[c] for r in runs) for c in first.robustness},
                        "extra": {**first.extra, **{k: m for k, (m, _) in extras.items()}}})
    return mean, runs, extras


def task_tracks(runs: list[tuple[RunSpec, RunResult]], latency: Optional[dict[str, float]] = None) -> list[TaskTracks]:
    """Track ratios per (task, dataset, method) from every run of a suite.

    A method's reference run is its run with the suite's first recipe (the lowest ``spec.grid``);
    all its runs at any recipe feed the stability track.
    ``latency``: method -> latency ratio, where a kernel benchmark measured one.
    """
    groups: dict[tuple[str, str, str], list[tuple[RunSpec, RunResult]]] = {}
    for spec, res in runs:
        groups.setdefault((spec.task, spec.dataset, spec.method), []).append((spec, res))

    def first_seed(items):
        seed = min(s.seed for s, _ in items)
        return [r.metric for s, r in items if s.seed == seed]

    out = []
    for (task, dataset, method), items in sorted(groups.items()):
        fp_items = groups.get((task, dataset, FP))
        if not fp_items:
            continue
        res, runs, extras = _averaged(items)
        fres, _, _ = _averaged(fp_items)
        r: dict[str, float] = {"accuracy": metric_ratio(res.metric, fres.metric, res.higher_is_better)}
        if "mse_noise" in res.extra and "mse_noise" in fres.extra:
            r["fidelity"] = metric_ratio(res.extra["mse_noise"], fres.extra["mse_noise"], False)
        if res.robustness and fres.robustness:
            shares = [metric_ratio(res.robustness[c], fres.robustness[c], res.higher_is_better)
                      for c in res.robustness if c in fres.robustness]
            if shares:
                r["robustness"] = statistics.fmean(shares)
        if res.wall_s > 0:
            r["train_time"] = fres.wall_s / res.wall_s
        sq = _stability(first_seed(items))
        sf = _stability(first_seed(fp_items))
        if sq is not None and sf:
            r["stability"] = sq / sf
        r["storage"] = res.fp_storage_bytes / res.storage_bytes
        r["ops"] = res.fp_ops / res.ops if res.ops else float("nan")
        if latency and method in latency:
            r["latency"] = latency[method]
        std = statistics.stdev([x.metric for x in runs]) if len(runs) > 1 else float("nan")
        out.append(TaskTracks(task, dataset, method, res.metric, fres.metric, r, std, len(runs), extras))
    return out


def overall(tracks: list[TaskTracks]) -> dict[str, dict[str, float]]:
    """Per method: each track averaged over tasks, ``overall`` (quadratic mean of all) and
    ``overall_no_complexity`` (without storage and ops)."""
    by_method: dict[str, dict[str, list[float]]] = {}
    for t in tracks:
        for k, v in t.ratios.items():
            if v is not None and math.isfinite(v):
                by_method.setdefault(t.method, {}).setdefault(k, []).append(v)
    result = {}
    for method, per_track in by_method.items():
        means = {k: statistics.fmean(v) for k, v in per_track.items()}
        means["overall"] = quadratic_mean(means.values())
        means["overall_no_complexity"] = quadratic_mean(v for k, v in means.items()
                                                        if k not in COMPLEXITY and not k.startswith("overall"))
        result[method] = means
    return result


__all__ = ["COMPLEXITY", "TRACKS", "TaskTracks", "metric_ratio", "overall", "quadratic_mean", "task_tracks"]
