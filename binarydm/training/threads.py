"""How many threads a run uses when the config leaves ``num_threads`` null.

torch's default is one thread per core. On a machine where other work holds some cores, its threads then
share them and wait on each other: measured here, a latent demo step took 6.5 s with the default two threads
beside one busy core, 0.25 s alone. So a new run takes the cores that are free (sampled from /proc/stat; on
systems without it, torch's default), says so in one line when that is fewer than torch's default, and records
the count in its checkpoints: a resumed run uses the same count whatever the machine's load, because float sums
in another order would make the resumed run differ from the uninterrupted one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

import lightning as L
import torch

from ..console import say

CHECKPOINT_KEY = "binarydm_num_threads"


def _cpu_times() -> Optional[tuple[float, float]]:
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    values = [float(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0.0)  # idle + iowait
    return sum(values), idle


def busy_cores(interval: float = 0.25) -> float:
    """How many cores other work kept busy over ``interval`` seconds (0 where /proc/stat is not readable)."""
    first = _cpu_times()
    if first is None:
        return 0.0
    time.sleep(interval)
    second = _cpu_times()
    total, idle = second[0] - first[0], second[1] - first[1]
    if total <= 0:
        return 0.0
    return (1.0 - idle / total) * (os.cpu_count() or 1)


def recorded_threads(checkpoint: str) -> Optional[int]:
    """The thread count a resume checkpoint was written with (None for checkpoints from before it was kept)."""
    try:
        ckpt = torch.load(Path(checkpoint).expanduser(), map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # noqa: BLE001 - an unreadable checkpoint is reported by validate.check_resume
        return None
    value = ckpt.get(CHECKPOINT_KEY) if isinstance(ckpt, dict) else None
    return int(value) if value else None


def choose_threads(requested: Optional[int], resume: Optional[str] = None) -> int:
    """``requested``, else the count the resumed checkpoint recorded, else torch's default lowered to the free cores."""
    if requested:
        return int(requested)
    if resume is not None:
        recorded = recorded_threads(str(resume))
        if recorded:
            return recorded
    default = torch.get_num_threads()
    cores = os.cpu_count() or default
    busy = busy_cores()
    free = max(1, cores - int(round(busy)))
    if free < default:
        say(f"note: {busy:.1f} of {cores} cores are busy with other work: training with {free} thread(s) instead "
            f"of {default} (num_threads= chooses)")
        return free
    return default


class RecordThreads(L.Callback):
    """Writes the run's thread count into every checkpoint (read back by :func:`choose_threads` on resume)."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        checkpoint[CHECKPOINT_KEY] = torch.get_num_threads()


__all__ = ["CHECKPOINT_KEY", "RecordThreads", "busy_cores", "choose_threads", "recorded_threads"]
