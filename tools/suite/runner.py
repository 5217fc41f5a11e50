"""Run a list of RunSpecs with a cache: each finished run is a JSON file named by its spec's hash.

``<out>/runs/<key>/result.json`` holds the spec and its result; a run whose file exists is not run
again, so a killed suite started again picks up where it stopped (and a diffusion run resumes
from its last Lightning checkpoint inside ``<out>/runs/<key>/``). A run that raises is recorded in
``error.json`` and the suite goes on; the report lists it as failed, and the next invocation retries it.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from .tasks import classification, diffusion, language
from .tasks.base import Context, RunResult, RunSpec

TASKS = {"diffusion": diffusion, "classification": classification, "language": language}


def task_module(name: str):
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid: {sorted(TASKS)}")
    return TASKS[name]


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)  # atomic: a killed suite never leaves half a result


def load_result(out: Path, spec: RunSpec) -> Optional[RunResult]:
    path = out / "runs" / spec.key() / "result.json"
    if not path.is_file():
        return None
    return RunResult.from_dict(json.loads(path.read_text())["result"])


def run_all(specs: Sequence[RunSpec], out: Path, progress: bool = True, num_threads: Optional[int] = None,
            log: Callable[[str], None] = print) -> tuple[list[tuple[RunSpec, RunResult]], list[tuple[RunSpec, str]]]:
    """Run (or load from the cache) every spec; returns (done, failed) with failed = (spec, error text)."""
    from tqdm.auto import tqdm

    out = Path(out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    cache = out / "cache"
    done, failed = [], []
    cached = sum(load_result(out, s) is not None for s in specs)
    log(f"suite: {len(specs)} runs, {cached} already done (cache {out / 'runs'})")
    for spec in tqdm(specs, desc="suite", unit="run", disable=not progress):
        res = load_result(out, spec)
        if res is None:
            work = out / "runs" / spec.key()
            work.mkdir(parents=True, exist_ok=True)
            _write_json(work / "spec.json", spec.to_dict())
            if num_threads:
                torch.set_num_threads(num_threads)
            log(f"run {spec.key()}: {spec.task}/{spec.dataset} {spec.method} lr={spec.lr} {spec.optimizer}")
            start = time.perf_counter()
            try:
                res = task_module(spec.task).run(spec, Context(work, cache, progress, num_threads))
            except Exception as exc:  # noqa: BLE001  (recorded, reported, retried next time)
                err = f"{type(exc).__name__}: {exc}"
                _write_json(work / "error.json", {"spec": spec.to_dict(), "error": err,
                                                  "traceback": traceback.format_exc()})
                log(f"run {spec.key()} FAILED: {err}")
                failed.append((spec, err))
                continue
            _write_json(work / "result.json", {"spec": spec.to_dict(), "result": res.to_dict(),
                                               "seconds": time.perf_counter() - start})
            (work / "error.json").unlink(missing_ok=True)
        done.append((spec, res))
    return done, failed


__all__ = ["TASKS", "load_result", "run_all", "task_module"]
