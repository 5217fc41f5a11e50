"""The comparison suite: binarization algorithms x tasks x bit widths, with BiBench's tracks.

    python tools/bench.py suite=smoke out=bench/smoke            # minutes on a CPU (the tests run it)
    python tools/bench.py suite=paper out=bench/paper            # BinaryDM's W1A4 comparison, Fashion-MNIST
    python tools/bench.py suite=full out=bench/full threads=2
    python tools/bench.py suite=paper steps=200 fid_samples=256 methods=[binarydm,xnor]
    python tools/bench.py suite=full dataset.classification=cifar10 options.classification={root:data}

Writes <out>/runs.csv, tracks.csv, overall.csv, report.md and PNG plots; every run is cached in
<out>/runs/<hash>/, so the same command after a kill (or with more methods) runs only what is missing.
Arguments (key=value, values read as YAML, the grammar of binarydm's entry points): BenchArgs below and
docs/bench.md. A bad argument prints one line, ``error: ...``, and exits 2.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `suite` is a package next to this file

from binarydm import cli  # noqa: E402
from binarydm.errors import UsageError, one_line, run_main  # noqa: E402


@dataclass
class BenchArgs:
    """The arguments of ``tools/bench.py`` (``key=value``, values read as YAML)."""

    suite: str = "smoke"  # smoke | paper | full
    out: Optional[str] = None  # report directory (default bench/<suite>)
    steps: Optional[int] = None  # training steps of every run (default: the suite's per task)
    fid_samples: Optional[int] = None  # diffusion: generated images per FID (default: the suite's)
    tasks: Optional[List[str]] = None  # a subset of the suite's tasks, e.g. [classification]
    methods: Optional[List[str]] = None  # a subset of the suite's methods (fp is always kept)
    dataset: Dict[str, str] = field(default_factory=dict)  # task -> dataset, e.g. dataset.classification=cifar10
    options: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # task -> options, e.g. options.language={corpus:wiki.txt}
    seed: int = 0
    seeds: Optional[List[int]] = None  # e.g. [0,1,2]: every run once per seed; tables show mean +- std
    threads: Optional[int] = None  # torch.set_num_threads
    progress: bool = True
    plots: bool = True
    kernel_results: Optional[str] = None  # JSON from tools/bench_kernel.py (a GPU run): the hardware track


def parse(argv: Sequence[str]) -> BenchArgs:
    """``argv`` as BenchArgs; an unknown key or a badly typed value is a one-line UsageError."""
    args = cli.parse(BenchArgs, argv, usage=__doc__)
    if args.out is None:
        args.out = f"bench/{args.suite}"
    return args


def latency_from(path: Optional[str]) -> tuple[Optional[dict[str, float]], Optional[str]]:
    """The hardware track from a kernel-benchmark JSON: {"device": ..., "unet_speedup": x} applies to the
    W1A4 rows (the kernel executes 1-bit weights with 4-bit activations)."""
    if not path:
        return None, None
    data = json.loads(Path(path).read_text())
    speedup = float(data["unet_speedup"])
    from suite.suites import PAPER_METHODS

    w1a4 = [m for m in PAPER_METHODS if m not in ("fp", "lsq-w2a4")]
    return ({m: speedup for m in w1a4},
            f"whole-UNet W1A4 kernel vs fp16 on {data.get('device', 'a GPU')}: {speedup:.2f}x (from {path})")


def main(argv: Optional[Sequence[str]] = None) -> Path:
    args = parse(sys.argv[1:] if argv is None else argv)  # before the suite's imports: a typo fails at once
    from suite import report, suites
    from suite.runner import run_all
    from suite.tracks import task_tracks

    options = {t: dict(v) for t, v in args.options.items()}
    if args.fid_samples:
        options.setdefault("diffusion", {})["fid_samples"] = args.fid_samples
    try:
        specs = suites.build(args.suite, steps=args.steps, tasks=args.tasks, methods=args.methods, options=options,
                             datasets=args.dataset, seed=args.seed, seeds=args.seeds)
    except ValueError as err:  # an unknown suite, task or method: the message names the valid ones
        raise UsageError(one_line(err)) from None
    out = Path(args.out)
    start = time.time()
    done, failed = run_all(specs, out, progress=args.progress, num_threads=args.threads)
    latency, source = latency_from(args.kernel_results)
    tracks = task_tracks(done, latency)
    path = report.write(out, args.suite, done, failed, tracks, time.time() - start, source, args.plots)
    print(f"report: {path}")
    return path


if __name__ == "__main__":
    run_main(main, None, raise_exit=True)  # a bad argument: one line, `error: ...`, exit status 2
