"""FID against training steps for one run: the shipped student's curve in docs/.

    python tools/fid_curve.py run=runs/fmnist_w1a4 ema=false steps=[500,1000,2000] num=2000

For every step N with a checkpoint ``<run>/checkpoints/step=N.ckpt``: ``num`` DDIM samples of the
student of that checkpoint (``sample_steps`` steps, seed ``seed``; its EMA weights where the run keeps an
EMA, its raw weights with ``ema=false``) are drawn into ``<out>/step_N/samples`` and scored against
``num`` Fashion-MNIST test images (offline Inception, clean-fid path). Each stage is skipped when its
output exists, so the tool resumes. ``out`` defaults to ``<run>/fid_curve`` (``fid_curve_raw`` with
``ema=false``, ``_seedK`` appended for seed K > 0), so that no curve overwrites another's files. Writes
``<out>/fid_curve.csv`` (step, FID, which weights) and ``<out>/fid_curve.png`` (with the teacher's FID as
a line when ``teacher_fid`` is given, and the curves of the ``fid_curve.csv`` files in ``also``).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

from binarydm.cli import parse
from binarydm.errors import UsageError, run_main


@dataclass
class CurveArgs:
    """``python tools/fid_curve.py run=RUN steps=[N,...] [num=2000] [sample_steps=25] [seed=0] [ema=true]
    [out=DIR] [teacher_fid=F] [also=[CSV,...]]``: FID of a run's checkpoints against their steps (see the module's docstring)."""

    run: Optional[str] = None
    steps: List[int] = field(default_factory=list)
    num: int = 2000
    sample_steps: int = 25
    out: Optional[str] = None
    teacher_fid: Optional[float] = None
    seed: int = 0
    ema: bool = True
    also: List[str] = field(default_factory=list)  # other curves' fid_curve.csv, drawn in the same plot


def _python(*args: str) -> None:
    subprocess.run([sys.executable, *args], check=True)


def point(args: CurveArgs, step: int) -> float:
    run, out = Path(args.run), Path(args.out) / f"step_{step}"
    scores = out / "fid.json"
    if scores.is_file():
        return float(json.loads(scores.read_text())["fid_cleanfid"])
    ckpt = run / "checkpoints" / f"step={step}.ckpt"
    if not ckpt.is_file():
        raise UsageError(f"steps: no checkpoint {ckpt}; pick steps among "
                         f"{sorted(p.name for p in (run / 'checkpoints').glob('step=*.ckpt'))}")
    samples = out / "samples"
    if not (samples / "sample_info.json").is_file() or not json.loads(
            (samples / "sample_info.json").read_text()).get("complete", True):
        _python("-m", "binarydm.sample", f"ckpt={ckpt}", f"ema={str(args.ema).lower()}", f"num={args.num}",
                f"steps={args.sample_steps}", f"seed={args.seed}", "batch=100", f"out={samples}", "overwrite=true")
    _python("-m", "binarydm.fid", f"gen={samples}", "ref=fashion-mnist", f"num={args.num}",
            f"ref_num={args.num}", "backend=cleanfid", f"json={scores}")
    return float(json.loads(scores.read_text())["fid_cleanfid"])


def label(ema: bool, seed: int) -> str:
    return ("EMA weights" if ema else "raw weights") + (f", sample seed {seed}" if seed else "")


def read_curve(path: Path) -> tuple[str, list[tuple[int, float]]]:
    """(label, [(step, FID), ...]) of a fid_curve.csv."""
    try:
        rows = list(csv.DictReader(path.open()))
        return rows[0].get("weights") or path.parent.name, [(int(r["step"]), float(r["fid"])) for r in rows]
    except (OSError, KeyError, ValueError, IndexError) as err:
        raise UsageError(f"also={path}: not a fid_curve.csv of this tool ({type(err).__name__}: {err})") from None


def plot(curves: list[tuple[str, list[tuple[int, float]]]], path: Path, teacher: Optional[float], num: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, rows in curves:
        ax.plot([s for s, _ in rows], [f for _, f in rows], "o-", label=f"W1A4 student, {name}")
    if teacher is not None:
        ax.axhline(teacher, color="gray", ls="--", label=f"FP teacher ({teacher:.1f})")
    ax.set_xlabel("training steps")
    ax.set_ylabel(f"FID ({num} samples, DDIM-25)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _main(argv: list[str]) -> Path:
    args = parse(CurveArgs, argv, CurveArgs.__doc__)
    if not args.run or not args.steps:
        raise UsageError("run= and steps=[...] are required")
    name = "fid_curve" + ("" if args.ema else "_raw") + (f"_seed{args.seed}" if args.seed else "")
    args.out = args.out or str(Path(args.run) / name)
    others = [read_curve(Path(p)) for p in args.also]  # a bad path fails before hours of sampling
    rows = []
    for step in sorted(args.steps):
        rows.append((step, point(args, step)))
        print(f"step {step}: FID {rows[-1][1]:.2f}", flush=True)
    out = Path(args.out)
    own = label(args.ema, args.seed)
    with (out / "fid_curve.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("step", "fid", "weights"), *((s, fid, own) for s, fid in rows)])
    plot([(own, rows), *others], out / "fid_curve.png", args.teacher_fid, args.num)
    return out / "fid_curve.csv"


def main(argv: Optional[Sequence[str]] = None) -> Path:
    """A bad argument prints one line, ``error: ...``, and exits 2."""
    return run_main(_main, argv, raise_exit=True)


if __name__ == "__main__":
    main()
