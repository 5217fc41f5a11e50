"""Paired recipe measurements: training variants from one config, scored on one fixed validation set.

    python tools/ablate.py steps=200 seeds=[0,1] variants="{base: [], no_reset: [progressive.reset_optimizer=false]}"
    python tools/ablate.py config=demo steps=400 out=runs/ablate/lrm variants=@lrm.yaml

Each variant is a list of ``binarydm.train`` overrides on top of ``config`` and ``common``; every
variant x seed is a run in <out>/<variant>/seed<k>/ (skipped when its metrics exist, so a killed
measurement resumes). At the end of each run the student is validated on the same (x_0, t, noise)
triples (the first ``val_size`` test images; noise and t drawn from the seed), which makes the runs
of one seed paired: the differences between variants are not drowned in sampling noise. Prints and
writes <out>/ablation.md: val/simple (MSE to the true noise) and val/mse_teacher (MSE to the teacher's
prediction), mean +- std over seeds, and each variant's paired difference to the first variant; and
<out>/ablation.png: the ranking metrics per variant, each seed a dot, the mean and std as a bar.

``fid=N`` also scores each run's last checkpoint by FID against N Fashion-MNIST test images (N DDIM
samples, ``sample_steps`` steps, sample seed = the run's seed; ``tools/fid_curve.py``'s stages, kept in
<out>/<variant>/seed<k>/fid<N>/), cached in metrics.json as ``fid@N``: the trained runs are reused, so the
paired metric and FID rank the same networks. ``per_run=FILE.csv`` writes one row per run. ``cached=true``
trains and scores nothing: it writes the report from the runs and scores done so far (e.g. while other
processes still work on the same ``out``).
"""

from __future__ import annotations

import csv
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from binarydm import cli
from binarydm.errors import UsageError, run_main

METRICS = ("val/simple", "val/mse_teacher")


@dataclass
class AblateArgs:
    """``python tools/ablate.py [config=demo] [steps=200] [seeds=[0]] [out=runs/ablate] [variants={name: [overrides]}
    | variants=@file.yaml] [common=[overrides]] [threads=1]`` (see the module's docstring)."""

    config: str = "demo"
    steps: int = 200
    seeds: List[int] = field(default_factory=lambda: [0])
    out: str = "runs/ablate"
    variants: Dict[str, Optional[List[str]]] = field(default_factory=dict)  # name -> overrides (null: none)
    common: List[str] = field(default_factory=list)  # overrides for every variant
    threads: int = 1
    fid: int = 0  # FID samples per run (0: no FID)
    sample_steps: int = 25  # DDIM steps of the FID samples
    per_run: Optional[str] = None  # CSV with one row per variant and seed
    cached: bool = False  # report what is done (while other processes train and score), run nothing


def parse(argv: Sequence[str]) -> AblateArgs:
    """The shared ``key=value`` grammar (binarydm.cli); ``variants=@file.yaml`` reads the variants from a file."""
    items = []
    for item in argv:
        key, sep, value = item.partition("=")
        if key == "variants" and value.startswith("@"):
            try:
                value = Path(value[1:]).read_text()
            except OSError as err:
                raise UsageError(f"variants={value}: cannot read it ({err.strerror})") from None
        items.append(f"{key}={value}" if sep else item)
    args = cli.parse(AblateArgs, items, AblateArgs.__doc__)
    args.variants = {name: list(v or []) for name, v in args.variants.items()} or {"default": []}
    return args


def run_one(config: str, overrides: list[str], run_dir: Path, steps: int, seed: int, threads: int) -> dict:
    """Train one variant and validate once at the end; returns its metrics (cached in metrics.json)."""
    done = run_dir / "metrics.json"
    if done.is_file():
        return json.loads(done.read_text())
    from binarydm.training.config import load_config
    from binarydm.training.runner import run

    base = [f"out_dir={run_dir.parent}", f"name={run_dir.name}", f"seed={seed}", f"num_threads={threads}",
            f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}", "trainer.limit_val_batches=1.0",
            f"trainer.checkpoint_every_n_steps={steps}", "trainer.enable_progress_bar=false",
            "sample.num_images=0", "eval.fid_samples=0", "export=false", "report=false", "data.val_size=256",
            # The protocol is float32, as every row measured before configs/demo.yaml chose precision=auto; a
            # variant may still set it.
            "trainer.precision=32-true"]
    start = time.perf_counter()
    run(load_config(config, base + list(overrides)), overwrite=True)  # a killed variant starts afresh
    rows = list(csv.DictReader(open(next((run_dir / "csv").glob("version_*/metrics.csv")))))
    metrics = {m: float(r[m]) for r in rows for m in METRICS if r.get(m)}
    metrics["wall_s"] = time.perf_counter() - start
    _write(done, metrics)
    return metrics


def _write(path: Path, metrics: dict) -> None:
    from binarydm.packing.files import atomic_write

    with atomic_write(path, "w") as f:  # a killed run never leaves half a cache entry
        f.write(json.dumps(metrics))


def add_fid(metrics: dict, run_dir: Path, steps: int, num: int, sample_steps: int, seed: int) -> dict:
    """``metrics`` with ``fid@num`` of the run's ``step=<steps>.ckpt`` (computed once, cached in metrics.json)."""
    key = f"fid@{num}"
    if key in metrics:
        return metrics
    from omegaconf import OmegaConf

    from fid_curve import CurveArgs, point

    dataset = OmegaConf.load(run_dir / "config.yaml").data.name
    if dataset != "fashion_mnist":  # fid_curve's reference set; another dataset would be scored against the wrong one
        raise UsageError(f"fid={num}: runs of data.name={dataset} cannot be scored here (the FID reference is the "
                         "Fashion-MNIST test set); drop fid= or use a fashion_mnist config")

    args = CurveArgs(run=str(run_dir), steps=[steps], num=num, sample_steps=sample_steps, seed=seed, ema=False,
                     out=str(run_dir / f"fid{num}"))
    metrics = {**metrics, key: point(args, steps)}
    _write(run_dir / "metrics.json", metrics)
    return metrics


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.5g}"
    return f"{statistics.mean(values):.5g} ± {statistics.stdev(values):.2g}"


def table(results: dict[str, dict[int, dict]], seeds: list[int], fid: int = 0) -> list[str]:
    """Markdown rows: each metric's mean +- std over seeds, then each variant's paired difference to the
    first variant (same seeds, hence same validation triples and sampling noise) for the ranking metrics."""
    names = list(results)
    first = names[0]
    metrics = METRICS + ((f"fid@{fid}",) if fid else ())
    paired = metrics[1:]
    lines = ["| variant | " + " | ".join(metrics) + " | " + " | ".join(f"Δ {m} vs {first} (paired)" for m in paired)
             + " |", "|---|" + "---|" * (len(metrics) + len(paired))]
    for name in names:
        cols = []
        for m in metrics:
            cols.append(_fmt([results[name][s][m] for s in seeds if m in results[name].get(s, {})]))
        for m in paired:
            diffs = [results[name][s][m] - results[first][s][m]
                     for s in seeds if m in results[name].get(s, {}) and m in results[first].get(s, {})]
            cols.append(_fmt(diffs) if name != first else "")
        lines.append(f"| {name} | " + " | ".join(cols) + " |")
    return lines


def plot(results: dict[str, dict[int, dict]], seeds: list[int], metrics: Sequence[str], path: Path) -> dict:
    """One panel per metric: each variant's seeds as dots, their mean as a bar with the std as its error
    bar, the variants top to bottom in the given order. Returns {metric: {variant: [values]}} as drawn."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    drawn = {m: {n: [results[n][s][m] for s in seeds if m in results[n].get(s, {})] for n in results}
             for m in metrics}
    drawn = {m: per for m, per in drawn.items() if any(per.values())}
    if not drawn:
        return drawn
    names = list(results)[::-1]  # barh draws bottom up; every panel has every variant, so the rows line up
    # The panels keep their width beside long variant names (tight_layout takes the labels' room from them).
    width = 4.5 * len(drawn) + 0.075 * max(len(n) for n in names)
    fig, axes = plt.subplots(1, len(drawn), figsize=(width, 0.45 * len(names) + 1.2), squeeze=False, sharey=True)
    for ax, (metric, per) in zip(axes[0], drawn.items()):
        for y, n in enumerate(names):
            if not per[n]:
                ax.text(0.02, y, "not scored", va="center", transform=ax.get_yaxis_transform(), color="gray")
                continue
            std = statistics.stdev(per[n]) if len(per[n]) > 1 else 0.0
            ax.barh(y, statistics.mean(per[n]), xerr=std, color="#9ecae1", ecolor="gray", capsize=3)
            ax.plot(per[n], [y] * len(per[n]), "o", color="#d95f02", ms=4)
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel(f"{metric} (lower is better; dots: seeds)")
        values = [v for vs in per.values() for v in vs]
        ax.set_xlim(min(values) * 0.9, max(values) * 1.05)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return drawn


def _main(argv: list[str]) -> Path:
    args = parse(argv)
    out = Path(args.out)
    seeds = args.seeds
    results: dict[str, dict[int, dict]] = {}
    for name, overrides in args.variants.items():
        results[name] = {}
        for seed in seeds:
            run_dir = out / name / f"seed{seed}"
            if args.cached:
                done = run_dir / "metrics.json"
                if done.is_file():
                    results[name][seed] = json.loads(done.read_text())
                continue
            results[name][seed] = run_one(args.config, args.common + overrides, run_dir, args.steps, seed, args.threads)
            if args.fid:
                results[name][seed] = add_fid(results[name][seed], run_dir, args.steps, args.fid, args.sample_steps,
                                              seed)
            print(f"{name} seed {seed}: {results[name][seed]}", flush=True)
    lines = [f"# Ablation: config={args.config}, {args.steps} steps, seeds {seeds}", "",
             "Common overrides: " + (" ".join(args.common) or "none"), "",
             *table(results, seeds, args.fid), "", "Variants:", "",
             *[f"- {n}: {' '.join(v) or '(config as is)'}" for n, v in args.variants.items()]]
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.md").write_text("\n".join(lines) + "\n")
    plot(results, seeds, METRICS[1:] + ((f"fid@{args.fid}",) if args.fid else ()), out / "ablation.png")
    if args.per_run:
        keys = sorted({k for runs in results.values() for m in runs.values() for k in m})
        with open(args.per_run, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["variant", "seed", *keys])
            writer.writerows([name, seed, *(m.get(k, "") for k in keys)]
                             for name, runs in results.items() for seed, m in runs.items())
    print("\n".join(lines))
    return out / "ablation.md"


def main(argv: Optional[Sequence[str]] = None) -> Path:
    """A bad argument prints one line, ``error: ...``, and exits 2."""
    return run_main(_main, argv, raise_exit=True)


if __name__ == "__main__":
    main()
