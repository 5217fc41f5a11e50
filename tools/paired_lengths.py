"""Paired differences to a reference row against training length, from ``tools/ablate.py``'s per-run CSVs.

    python tools/paired_lengths.py ref=+lmb+lrm variants=[binarydm,every1] out=docs/figures/x.png \
        "csvs={400: [a_400.csv, b_400.csv], 800: [a_800.csv]}" "labels={binarydm: every 5}"

For each length, the rows of its CSVs (``per_run=`` files: variant, seed, metrics) are read; for each
variant and each seed that the reference also has, the relative difference
``(variant - ref) / ref`` of ``metric`` is one paired point. Prints one line per variant and length
(per-seed differences, mean and std in percent) and draws them: one dot per seed, the mean as a line,
zero (the reference) dashed. Ablate's runs are deterministic per seed, so rows from different CSVs
of the same config, seed and length pair up exactly.
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from binarydm.cli import parse
from binarydm.errors import UsageError, run_main


@dataclass
class LengthsArgs:
    """``python tools/paired_lengths.py ref=VARIANT variants=[V,...] csvs={steps: [CSV,...]} [metric=val/mse_teacher]
    [labels={V: text}] [out=paired_lengths.png]`` (see the module's docstring)."""

    ref: Optional[str] = None
    variants: List[str] = field(default_factory=list)
    csvs: Dict[int, List[str]] = field(default_factory=dict)
    metric: str = "val/mse_teacher"
    labels: Dict[str, str] = field(default_factory=dict)
    out: str = "paired_lengths.png"


def read_rows(paths: Sequence[str], metric: str) -> dict[str, dict[int, float]]:
    """{variant: {seed: metric}} over the CSVs; a variant and seed given twice must agree."""
    rows: dict[str, dict[int, float]] = {}
    for path in paths:
        if not Path(path).is_file():
            raise UsageError(f"csvs: {path} does not exist; give per_run= CSVs written by tools/ablate.py")
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if metric not in row:
                    raise UsageError(f"{path} has no column {metric}; use metric= with one of {list(row)}")
                if row[metric] == "":
                    continue
                seeds = rows.setdefault(row["variant"], {})
                value, seed = float(row[metric]), int(row["seed"])
                if seed in seeds and seeds[seed] != value:
                    raise UsageError(f"{row['variant']} seed {seed} differs between the CSVs of one length")
                seeds[seed] = value
    return rows


def paired(rows: dict[str, dict[int, float]], ref: str, variant: str) -> list[tuple[int, float]]:
    """(seed, relative difference to ``ref``) for the seeds both have."""
    return [(s, (v - rows[ref][s]) / rows[ref][s]) for s, v in sorted(rows.get(variant, {}).items())
            if s in rows.get(ref, {})]


def _main(argv: list[str]) -> dict[str, dict[int, list[tuple[int, float]]]]:
    args = parse(LengthsArgs, argv, LengthsArgs.__doc__)
    if not args.ref or not args.variants or not args.csvs:
        raise UsageError("ref=, variants=[...] and csvs={steps: [CSV,...]} are required")
    result: dict[str, dict[int, list[tuple[int, float]]]] = {v: {} for v in args.variants}
    for steps in sorted(args.csvs):
        rows = read_rows(args.csvs[steps], args.metric)
        if args.ref not in rows:
            raise UsageError(f"the CSVs of {steps} steps have no {args.ref} rows (ref=)")
        for v in args.variants:
            points = paired(rows, args.ref, v)
            if points:
                result[v][steps] = points
                diffs = [100 * d for _, d in points]
                spread = f" ± {statistics.stdev(diffs):.1f}" if len(diffs) > 1 else ""
                print(f"{args.labels.get(v, v)} vs {args.ref}, {steps} steps: "
                      + " / ".join(f"{d:+.1f}" for d in diffs) + f" % (mean {statistics.mean(diffs):+.1f}{spread} %)")
    if not any(result.values()):
        raise UsageError(f"no seed of {args.variants} pairs with {args.ref} in the CSVs")
    plot(result, args)
    return result


def plot(result: dict[str, dict[int, list[tuple[int, float]]]], args: LengthsArgs) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.axhline(0.0, color="gray", ls="--", lw=1, label=f"{args.labels.get(args.ref, args.ref)} (reference)")
    for i, (v, per) in enumerate(result.items()):
        if not per:
            continue
        steps = sorted(per)
        shift = 1.0 + 0.03 * (i - (len(result) - 1) / 2)  # side by side on the log axis
        for s in steps:
            ax.plot([s * shift] * len(per[s]), [100 * d for _, d in per[s]], "o", ms=4, color=f"C{i}", alpha=0.6)
        ax.plot(steps, [100 * statistics.mean(d for _, d in per[s]) for s in steps], "-", color=f"C{i}",
                label=args.labels.get(v, v))
    ax.set_xscale("log")
    lengths = sorted({s for per in result.values() for s in per})
    ax.set_xticks(lengths, [str(s) for s in lengths])
    ax.minorticks_off()
    ax.set_xlabel("training steps")
    ax.set_ylabel(f"{args.metric}: paired % vs reference")
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None):
    """A bad argument prints one line, ``error: ...``, and exits 2."""
    return run_main(_main, argv, raise_exit=True)


if __name__ == "__main__":
    main()
