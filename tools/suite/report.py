"""The suite's report directory: runs.csv, tracks.csv, report.md and PNG plots.

    runs.csv     one row per run: the spec (task, dataset, method, algorithm, bits, recipe) and its
                 result (metric, wall time, storage, OPs, corrupted metrics, extras)
    tracks.csv   one row per (task, dataset, method): the track ratios of ``suite.tracks``
    overall.csv  one row per method: each track averaged over the tasks, overall scores
    report.md    the tables, the failed runs, the plots and (diffusion) the sample grids side by side
    *.png        metric per method and task; the accuracy-vs-storage trade-off; the track profile
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Optional, Sequence

from .tasks.base import FP, RunResult, RunSpec
from .tracks import TRACKS, TaskTracks, metric_ratio, overall

METRIC_LABEL = {"fid": "FID (lower is better)", "top1": "top-1 % (higher is better)",
                "perplexity": "perplexity (lower is better)"}


def bits_of(spec: RunSpec) -> str:
    """'W1A4'-style label of the run's quantization (FP: 'W32A32')."""
    if spec.algorithm == FP:
        return "W32A32"
    from binarydm import algorithms

    q = algorithms.preset(spec.algorithm, **spec.quant_dict)
    return f"W{q.w_bits}A{q.a_bits}"


def _fmt(v: Any, digits: int = 4) -> str:
    if isinstance(v, float):
        if not math.isfinite(v):
            return "n/a"
        return f"{v:.{digits}g}"
    return str(v)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return lines


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    os.replace(tmp, path)


def run_rows(runs: list[tuple[RunSpec, RunResult]]) -> tuple[list[str], list[list[Any]]]:
    corruptions = sorted({c for _, r in runs for c in r.robustness})
    extras = sorted({k for _, r in runs for k, v in r.extra.items() if isinstance(v, (int, float))})
    header = ["key", "task", "dataset", "method", "algorithm", "bits", "optimizer", "lr", "steps", "seed",
              "metric_name", "metric", "wall_s", "storage_bytes", "fp_storage_bytes", "ops", "fp_ops",
              *[f"corrupt_{c}" for c in corruptions], *extras]
    rows = []
    for s, r in runs:
        rows.append([s.key(), s.task, s.dataset, s.method, s.algorithm, bits_of(s), s.optimizer, s.lr, s.steps,
                     s.seed, r.metric_name, r.metric, r.wall_s, r.storage_bytes, r.fp_storage_bytes, r.ops,
                     r.fp_ops, *[r.robustness.get(c, "") for c in corruptions],
                     *[r.extra.get(k, "") for k in extras]])
    return header, rows


def _pm(mean: float, std: float) -> str:
    return _fmt(mean) if not math.isfinite(std) else f"{_fmt(mean)} ± {_fmt(std, 2)}"


def _summary(task_runs, tracks: list[TaskTracks], metric: str) -> list[str]:
    """Each method's reference-recipe runs over seeds (mean ± std), best first, with the paired fidelity metric."""
    if not tracks:
        return []
    higher = task_runs[0][1].higher_is_better
    ordered = sorted(tracks, key=lambda t: (t.method != FP, -t.metric if higher else t.metric))
    bits = {s.method: bits_of(s) for s, _ in task_runs}
    has_paired = any("mse_noise" in t.extra for t in ordered)
    header = ["rank", "method", "bits", "seeds", f"{metric} (mean ± std)"]
    header += ["MSE to teacher ε", "MSE to true noise"] if has_paired else []
    rows, rank = [], 0
    for t in ordered:
        rank += t.method != FP
        row = ["" if t.method == FP else rank, t.method, bits.get(t.method, ""), t.seeds, _pm(t.metric, t.metric_std)]
        if has_paired:
            row += [_pm(*t.extra[k]) if k in t.extra else "-" for k in ("mse_teacher", "mse_noise")]
        rows.append(row)
    return ["Summary over seeds (reference recipe; the paired MSEs on one fixed held-out (x_0, t, noise) set):", "",
            *_table(header, rows), ""]


def _plots(out: Path, runs, tracks: list[TaskTracks], scores: dict[str, dict[str, float]]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    written = []
    tasks = sorted({(t.task, t.dataset) for t in tracks})
    if tasks:
        fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
        for ax, (task, dataset) in zip(axes[0], tasks):
            rows = [t for t in tracks if (t.task, t.dataset) == (task, dataset)]
            ref = [(s, r) for s, r in runs if (s.task, s.dataset) == (task, dataset)]
            label = METRIC_LABEL.get(ref[0][1].metric_name, ref[0][1].metric_name) if ref else ""
            ax.bar([t.method for t in rows], [t.metric for t in rows],
                   color=["tab:gray" if t.method == FP else "tab:blue" for t in rows])
            ax.set_title(f"{task} / {dataset}")
            ax.set_ylabel(label)
            ax.tick_params(axis="x", rotation=60)
        fig.tight_layout()
        written.append(out / "metric_by_method.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)

        fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
        for ax, (task, dataset) in zip(axes[0], tasks):
            for t in (t for t in tracks if (t.task, t.dataset) == (task, dataset)):
                ax.scatter(t.ratios.get("storage", 1.0), t.ratios.get("accuracy", float("nan")))
                ax.annotate(t.method, (t.ratios.get("storage", 1.0), t.ratios.get("accuracy", float("nan"))),
                            fontsize=7)
            ax.set_xscale("log")
            ax.set_xlabel("storage compression vs FP32 (x)")
            ax.set_ylabel("accuracy-track ratio (1 = FP)")
            ax.set_title(f"{task} / {dataset}")
        fig.tight_layout()
        written.append(out / "tradeoff.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)

    methods = [m for m in scores if m != FP]
    shown = [k for k in TRACKS if k not in ("storage", "ops") and any(k in scores[m] for m in methods)]
    if methods and shown:
        fig, ax = plt.subplots(figsize=(max(6, len(methods) * 0.9), 4))
        width = 0.8 / len(shown)
        for i, k in enumerate(shown):
            ax.bar([j + i * width for j in range(len(methods))], [scores[m].get(k, 0.0) for m in methods],
                   width, label=k)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(methods))], methods, rotation=60)
        ax.set_ylabel("ratio to full precision")
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(out / "tracks.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
    return written


def write(out: Path, suite: str, runs: list[tuple[RunSpec, RunResult]], failed: list[tuple[RunSpec, str]],
          tracks: list[TaskTracks], wall_s: float, latency_source: Optional[str] = None,
          plots: bool = True) -> Path:
    """Write the report directory; returns report.md's path."""
    out.mkdir(parents=True, exist_ok=True)
    header, rows = run_rows(runs)
    _write_csv(out / "runs.csv", header, rows)
    track_keys = [k for k in TRACKS if any(k in t.ratios for t in tracks)]
    _write_csv(out / "tracks.csv", ["task", "dataset", "method", "metric", "fp_metric", *track_keys],
               [[t.task, t.dataset, t.method, t.metric, t.fp_metric, *[t.ratios.get(k, "") for k in track_keys]]
                for t in tracks])
    scores = overall(tracks)
    score_keys = [k for k in (*TRACKS, "overall", "overall_no_complexity") if any(k in s for s in scores.values())]
    order = sorted(scores, key=lambda m: (m != FP, -scores[m].get("overall_no_complexity", 0.0)))
    _write_csv(out / "overall.csv", ["method", *score_keys],
               [[m, *[scores[m].get(k, "") for k in score_keys]] for m in order])
    images = _plots(out, runs, tracks, scores) if plots else []

    lines = [f"# Comparison suite `{suite}`", "",
             f"{len(runs)} runs done, {len(failed)} failed; wall time of this invocation {wall_s:.0f} s "
             "(cached runs cost nothing).", ""]
    for task, dataset in sorted({(s.task, s.dataset) for s, _ in runs}):
        task_runs = [(s, r) for s, r in runs if (s.task, s.dataset) == (task, dataset)]
        metric = task_runs[0][1].metric_name
        lines += [f"## {task} / {dataset}", "", f"Metric: {METRIC_LABEL.get(metric, metric)}.", ""]
        trows = []
        for s, r in sorted(task_runs, key=lambda sr: (sr[0].method != FP, sr[0].method, sr[0].grid, sr[0].seed)):
            t = next((t for t in tracks if (t.task, t.dataset, t.method) == (task, dataset, s.method)), None)
            trows.append([s.method, bits_of(s), f"{s.optimizer} {s.lr:g}", s.seed, r.metric,
                          metric_ratio(r.metric, t.fp_metric, r.higher_is_better) if t and s.grid == 0 else "",
                          r.wall_s, r.storage_bytes / 1024, r.fp_storage_bytes / r.storage_bytes,
                          r.fp_ops / r.ops if r.ops else float("nan")])
        lines += _table(["method", "bits", "recipe", "seed", metric, "ratio to FP", "train s", "storage KiB",
                         "storage x", "OPs x"], trows) + [""]
        lines += _summary(task_runs, [t for t in tracks if (t.task, t.dataset) == (task, dataset)], metric)
        if any(r.robustness for _, r in task_runs):
            cs = sorted({c for _, r in task_runs for c in r.robustness})
            lines += ["Under corruption (same test images):", ""]
            lines += _table(["method", "clean", *cs],
                            [[s.method, r.metric, *[r.robustness.get(c, float("nan")) for c in cs]]
                             for s, r in task_runs if s.grid == 0]) + [""]
        grids = []
        for s, r in task_runs:
            first_seed = min(x.seed for x, _ in task_runs)
            if "grid" in r.extra and s.grid == 0 and s.seed == first_seed and Path(r.extra["grid"]).is_file():
                # copied next to the report, so that the report directory stands on its own without runs/
                dest = out / "grids" / f"{task}_{dataset}_{s.method}.png"
                dest.parent.mkdir(exist_ok=True)
                shutil.copyfile(r.extra["grid"], dest)
                grids.append((s.method, dest))
        if grids:
            lines += ["Samples (same seeds):", "", "| " + " | ".join(m for m, _ in grids) + " |",
                      "|" + "---|" * len(grids),
                      "| " + " | ".join(f"![{m}]({os.path.relpath(g, out)})" for m, g in grids) + " |", ""]
    lines += ["## Tracks (ratios to full precision, 1 = FP, larger is better)", "",
              "Definitions in `tools/suite/tracks.py` and docs/bench.md.", ""]
    lines += _table(["method", *score_keys], [[m, *[scores[m].get(k, float("nan")) for k in score_keys]]
                                              for m in order]) + [""]
    ranked = [m for m in order if m != FP]
    if ranked:
        lines += [f"Ranking by overall score without complexity: {', '.join(ranked)}.", ""]
    lines += [f"Hardware-inference track: {latency_source or 'not measured (no GPU kernel results given)'}.", ""]
    if failed:
        lines += ["## Failed runs (retried on the next invocation)", ""]
        lines += [f"- {s.task}/{s.dataset} {s.method} ({s.key()}): {err}" for s, err in failed] + [""]
    if images:
        lines += ["## Plots", "", *[f"![{p.stem}]({p.name})" for p in images], ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    (out / "suite.json").write_text(json.dumps({"suite": suite, "runs": len(runs), "failed": len(failed),
                                                "wall_s": wall_s}, indent=1))
    return path


__all__ = ["bits_of", "run_rows", "write"]
