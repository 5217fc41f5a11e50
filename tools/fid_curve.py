"""FID against training steps for one run: the shipped student's curve in docs/.

    python tools/fid_curve.py run=runs/fmnist_w1a4 config=fmnist_w1a4 steps=[500,1000,2000] num=2000

For every step N with a checkpoint ``<run>/checkpoints/step=N.ckpt``: the student of that checkpoint
(EMA weights where the run keeps an EMA) is exported without training further (``binarydm.train``
resumed with ``trainer.max_steps=N``, into ``<out>/step_N/``), ``num`` DDIM samples are drawn
(``sample_steps`` steps, seed 0) and scored against ``num`` Fashion-MNIST test images (offline
Inception, clean-fid path). Each stage is skipped when its output exists, so the tool resumes.
Writes ``<out>/fid_curve.csv`` and ``<out>/fid_curve.png`` (with the teacher's FID as a line when
``teacher_fid`` is given).
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
    """``python tools/fid_curve.py run=RUN config=NAME steps=[N,...] [num=2000] [sample_steps=25] [out=DIR]
    [teacher_fid=F] [threads=1]``: FID of a run's checkpoints against their steps (see the module's docstring)."""

    run: Optional[str] = None
    config: Optional[str] = None
    steps: List[int] = field(default_factory=list)
    num: int = 2000
    sample_steps: int = 25
    out: Optional[str] = None
    teacher_fid: Optional[float] = None
    threads: int = 1


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
    student = out / "export" / "student"
    if not student.is_dir():
        _python("-m", "binarydm.train", f"config={args.config}", f"out_dir={out}", "name=export",
                f"resume={ckpt}", f"trainer.max_steps={step}", "eval.fid_samples=0", "sample.num_images=0",
                "report=false", f"num_threads={args.threads}", "trainer.enable_progress_bar=false")
    samples = out / "samples"
    if not (samples / "sample_info.json").is_file() or not json.loads(
            (samples / "sample_info.json").read_text()).get("complete", True):
        _python("-m", "binarydm.sample", f"ckpt={student}", f"num={args.num}", f"steps={args.sample_steps}",
                "batch=100", f"out={samples}", "overwrite=true")
    _python("-m", "binarydm.fid", f"gen={samples}", "ref=fashion-mnist", f"num={args.num}",
            f"ref_num={args.num}", "backend=cleanfid", f"json={scores}")
    return float(json.loads(scores.read_text())["fid_cleanfid"])


def plot(rows: list[tuple[int, float]], path: Path, teacher: Optional[float], num: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([s for s, _ in rows], [f for _, f in rows], "o-", label="W1A4 student")
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
    if not args.run or not args.config or not args.steps:
        raise UsageError("run=, config= and steps=[...] are required")
    args.out = args.out or str(Path(args.run) / "fid_curve")
    rows = []
    for step in sorted(args.steps):
        rows.append((step, point(args, step)))
        print(f"step {step}: FID {rows[-1][1]:.2f}", flush=True)
    out = Path(args.out)
    with (out / "fid_curve.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("step", "fid"), *rows])
    plot(rows, out / "fid_curve.png", args.teacher_fid, args.num)
    return out / "fid_curve.csv"


def main(argv: Optional[Sequence[str]] = None) -> Path:
    """A bad argument prints one line, ``error: ...``, and exits 2."""
    return run_main(_main, argv, raise_exit=True)


if __name__ == "__main__":
    main()
