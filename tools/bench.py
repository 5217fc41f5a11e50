"""The comparison suite: binarization algorithms x tasks x bit widths, with BiBench's tracks.

    python tools/bench.py suite=smoke out=bench/smoke            # minutes on a CPU (the tests run it)
    python tools/bench.py suite=paper out=bench/paper            # BinaryDM's W1A4 comparison, Fashion-MNIST
    python tools/bench.py suite=full out=bench/full threads=2
    python tools/bench.py suite=paper steps=200 fid_samples=256 methods=[binarydm,xnor]
    python tools/bench.py suite=full dataset.classification=cifar10 options.classification={root:data}

Writes <out>/runs.csv, tracks.csv, overall.csv, report.md and PNG plots; every run is cached in
<out>/runs/<hash>/, so the same command after a kill (or with more methods) runs only what is missing.
Options (key=value, values parsed as YAML): see DEFAULTS below and docs/bench.md.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `suite` is a package next to this file

DEFAULTS: dict[str, Any] = {
    "suite": "smoke",          # smoke | paper | full
    "out": None,               # report directory (default bench/<suite>)
    "steps": None,             # training steps of every run (default: the suite's per task)
    "fid_samples": None,       # diffusion: generated images per FID (default: the suite's)
    "tasks": None,             # a subset of the suite's tasks, e.g. [classification]
    "methods": None,           # a subset of the suite's methods (fp is always kept)
    "dataset": {},             # task -> dataset, e.g. dataset.classification=cifar10
    "options": {},             # task -> options, e.g. options.language={corpus:wiki.txt}
    "seed": 0,
    "seeds": None,             # e.g. [0,1,2]: every run once per seed; tables show mean +- std
    "threads": None,           # torch.set_num_threads
    "progress": True,
    "plots": True,
    "kernel_results": None,    # JSON from tools/bench_kernel.py (a GPU run): the hardware track
}


def parse(argv: Sequence[str]) -> dict[str, Any]:
    import yaml

    args = {k: (dict(v) if isinstance(v, dict) else v) for k, v in DEFAULTS.items()}
    for item in argv:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise SystemExit(f"argument {item!r} is not key=value; valid keys: {sorted(DEFAULTS)}")
        top, _, sub = key.partition(".")
        if top not in DEFAULTS:
            raise SystemExit(f"unknown option {top!r}; valid keys: {sorted(DEFAULTS)}")
        parsed = yaml.safe_load(value) if value else None
        if sub:
            if not isinstance(DEFAULTS[top], dict):
                raise SystemExit(f"option {top!r} has no sub-keys (got {key!r})")
            args[top][sub] = parsed
        else:
            args[top] = parsed
    if args["out"] is None:
        args["out"] = f"bench/{args['suite']}"
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
    from suite import report, suites
    from suite.runner import run_all
    from suite.tracks import task_tracks

    args = parse(sys.argv[1:] if argv is None else argv)
    options = {t: dict(v or {}) for t, v in (args["options"] or {}).items()}
    if args["fid_samples"]:
        options.setdefault("diffusion", {})["fid_samples"] = int(args["fid_samples"])
    specs = suites.build(args["suite"], steps=args["steps"], tasks=args["tasks"], methods=args["methods"],
                         options=options, datasets=args["dataset"], seed=int(args["seed"]),
                         seeds=args["seeds"])
    out = Path(args["out"])
    start = time.time()
    done, failed = run_all(specs, out, progress=bool(args["progress"]), num_threads=args["threads"])
    latency, source = latency_from(args["kernel_results"])
    tracks = task_tracks(done, latency)
    path = report.write(out, args["suite"], done, failed, tracks, time.time() - start, source, bool(args["plots"]))
    print(f"report: {path}")
    return path


if __name__ == "__main__":
    main()
