"""What keeps a training run honest: it stops when it diverges, owns its run directory, and writes
checkpoints that survive a kill at any instant.

- :class:`DivergenceGuard` (a Lightning callback): a non-finite loss, or a non-finite parameter at a
  check (every ``param_every`` steps, before every checkpoint and validation, at the end), raises
  :class:`DivergenceError`: ``Trainer.fit`` stops, the checkpoint of that step is never written, and the
  runner's export and report after ``fit`` never run.
- :class:`AtomicCheckpointIO` (a Lightning ``CheckpointIO`` plugin): Lightning's own save goes through
  fsspec, whose local "transaction" writes to a temporary file in ``$TMPDIR`` and then moves it; across
  file systems (a tmpfs /tmp) the move is a copy, and a kill during it leaves a truncated ``last.ckpt``
  and an orphaned temporary file. Here the temporary file is made in the checkpoint's own directory,
  flushed and fsynced, given the umask's mode and renamed over the destination.
- :func:`claim_run_dir`: an exclusive ``flock`` on ``<run>/.binarydm.lock`` for the life of the run, and
  a refusal to write into a directory holding another run's results unless the run resumes from one of
  its checkpoints or ``overwrite`` asks to clear it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Optional

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..errors import RunFailed, UsageError
from ..packing.files import atomic_path, clean_stale_temp


class DivergenceError(RunFailed):
    """Training produced a non-finite loss or parameter."""


def first_non_finite(module: torch.nn.Module) -> Optional[str]:
    """The name of the first parameter or floating buffer holding a NaN or an infinity, else None.
    One device synchronisation: the per-tensor flags are stacked before being read."""
    tensors = [(n, t) for n, t in module.state_dict().items() if torch.is_tensor(t) and t.is_floating_point()
               and t.numel()]
    if not tensors:
        return None
    flags = torch.stack([~torch.isfinite(t).all() for _, t in tensors])
    if not bool(flags.any()):
        return None
    return tensors[int(flags.nonzero()[0, 0])][0]


class DivergenceGuard(L.Callback):
    """Stop training at the first non-finite loss or parameter, with one message naming the step.

    The loss is checked after every step on the CPU (one scalar). On an accelerator reading it would make the
    host wait for every step, so each step folds ``isfinite(loss)`` into a flag on the device and the flag is
    read every ``loss_every`` steps (default 50) and before every checkpoint, validation and the end: a
    diverged step is then named by the step where it was seen, at most ``loss_every - 1`` steps late.
    Parameters are checked every ``param_every`` steps, before each checkpoint is written (so a diverged
    state never becomes ``last.ckpt``), before each validation (no black sample grids) and at the end of
    training (nothing diverged is exported). Under DDP the decision is reduced over ranks, so every rank
    stops at the same step.
    """

    def __init__(self, lr: Optional[float] = None, param_every: int = 100, loss_every: Optional[int] = None):
        self.lr = lr
        self.param_every = int(param_every)
        self.loss_every = loss_every  # None: 1 on the CPU, 50 elsewhere
        self._finite: Optional[torch.Tensor] = None  # the device flag of the steps not yet read

    # -- the checks ------------------------------------------------------------------------------
    def _fail(self, trainer, what: str) -> None:
        ckpt = getattr(trainer, "checkpoint_callback", None)
        last = (getattr(ckpt, "last_model_path", "") or getattr(ckpt, "best_model_path", "")) if ckpt else ""
        keep = (f"the last good checkpoint is {last} (resume= it with the lower rate)" if last
                else "no checkpoint was written before it")
        lr = f"optim.lr={self.lr:g}" if self.lr is not None else "optim.lr"
        raise DivergenceError(
            f"training diverged at step {trainer.global_step}: {what}. The likely cause is a learning rate too "
            f"high for this model: lower {lr} (or set trainer.gradient_clip_val); {keep}; nothing was exported"
        )

    def _any_rank(self, trainer, bad: bool) -> bool:
        if trainer.world_size > 1:
            return bool(trainer.strategy.reduce_boolean_decision(bad, all=False))
        return bad

    def check_loss(self, trainer, loss: Any) -> None:
        if loss is None or not torch.is_tensor(loss):
            return
        loss = loss.detach()
        every = self.loss_every if self.loss_every is not None else (1 if loss.device.type == "cpu" else 50)
        if every <= 1:
            bad = not bool(torch.isfinite(loss).all())
            if self._any_rank(trainer, bad):
                value = loss.float().reshape(-1)[0].item() if bad else "non-finite on another process"
                self._fail(trainer, f"the loss is {value}")
            return
        finite = torch.isfinite(loss).all()
        self._finite = finite if self._finite is None else self._finite & finite  # no host synchronisation
        if trainer.global_step % every == 0:
            self.read_loss_flag(trainer)

    def read_loss_flag(self, trainer) -> None:
        """Fail if a step since the last read had a non-finite loss (one synchronisation)."""
        if self._finite is None:
            return
        bad = not bool(self._finite)
        self._finite = None
        if self._any_rank(trainer, bad):
            self._fail(trainer, "the loss became non-finite since the previous check" if bad
                       else "the loss is non-finite on another process")

    def check_parameters(self, trainer, pl_module, when: str) -> None:
        name = first_non_finite(pl_module)
        if self._any_rank(trainer, name is not None):
            self._fail(trainer, f"parameter {name or '(on another process)'} is not finite ({when})")

    # -- Lightning hooks -------------------------------------------------------------------------
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        self.check_loss(trainer, loss)
        if self.param_every > 0 and trainer.global_step % self.param_every == 0:
            self.check_parameters(trainer, pl_module, "periodic check")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        # Raised here, the checkpoint is never written: last.ckpt stays the last good state.
        self.read_loss_flag(trainer)
        self.check_parameters(trainer, pl_module, "before writing a checkpoint")

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.read_loss_flag(trainer)
            self.check_parameters(trainer, pl_module, "before validation")

    def on_train_end(self, trainer, pl_module) -> None:
        self.read_loss_flag(trainer)
        self.check_parameters(trainer, pl_module, "at the end of training")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint format, written atomically in the destination directory."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options!r}")
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()


# ---- the run directory ---------------------------------------------------------------------------
LOCK_FILE = ".binarydm.lock"
# What makes a directory hold a run's results: losing any of these loses work. A directory with only
# a config, logs and sample grids (a run killed before its first checkpoint) has nothing to resume.
RESULTS = ("checkpoints/*.ckpt", "student", "report.md", "*.packed.safetensors")


def launcher_rank_zero() -> bool:
    """True in the process that owns the run directory: the one started by the user, not a DDP worker
    that Lightning (popen), torchrun or SLURM started on this or another node."""
    return all(os.environ.get(v, "0") in ("", "0") for v in
               ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID"))


def _holder(lock: Path) -> str:
    try:
        pid = lock.read_text().strip()
    except OSError:
        pid = ""
    return f"PID {pid}" if pid else "another process"


def earlier_results(run_dir: Path) -> list[Path]:
    return sorted(p for pattern in RESULTS for p in run_dir.glob(pattern))


def _inside(path: Path, directory: Path) -> bool:
    try:
        path.resolve().relative_to(directory.resolve())
        return True
    except ValueError:
        return False


def _refuse_live(run_dir: Path, lock: Path) -> UsageError:
    return UsageError(f"run directory {run_dir} is in use by a live run ({_holder(lock)}); wait for it to finish "
                      "or choose another name= or out_dir=")


def _check_results(run_dir: Path, resume: Optional[str], overwrite: bool) -> None:
    found = earlier_results(run_dir)
    if not found or overwrite:
        return
    if resume and _inside(Path(resume), run_dir):
        return  # continuing this very run
    first = found[0].relative_to(run_dir)
    hint = ("resume= names a checkpoint of another run, so this run would write over this one's results; "
            if resume else "")
    raise UsageError(
        f"run directory {run_dir} holds the results of an earlier run ({first}, {len(found)} in all); {hint}"
        f"continue it with resume={run_dir / 'checkpoints' / 'last.ckpt'}, choose another name=, or pass "
        "overwrite=true to delete its outputs"
    )


def check_run_dir_free(run_dir: Path, resume: Optional[str], overwrite: bool) -> None:
    """Refuse a run directory held by a live run or holding another run's results; writes nothing."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise UsageError(f"out_dir/name: {run_dir} exists and is not a directory; choose another name= or out_dir=")
    lock = run_dir / LOCK_FILE
    if lock.is_file():
        try:
            fd = os.open(lock, os.O_RDONLY)
        except OSError:
            fd = None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise _refuse_live(run_dir, lock) from None
            finally:
                os.close(fd)
    _check_results(run_dir, resume, overwrite)


@contextlib.contextmanager
def claim_run_dir(run_dir: Path, resume: Optional[str] = None, overwrite: bool = False) -> Iterator[Path]:
    """Hold ``run_dir`` for one run: an exclusive flock on its lock file (released when the block ends or
    the process dies), the checks above, ``overwrite`` clearing the old outputs, and the temporary files
    of a killed earlier writer removed. Only the launching process takes the lock (DDP workers share it)."""
    run_dir = Path(run_dir)
    if not launcher_rank_zero():
        yield run_dir
        return
    check_run_dir_free(run_dir, resume, overwrite)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK_FILE
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # lost a race with a run started at the same instant
            raise _refuse_live(run_dir, lock) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        # Again under the lock: a run that finished between the first check and the lock counts too.
        _check_results(run_dir, resume, overwrite)
        if overwrite:
            for child in run_dir.iterdir():
                if child.name == LOCK_FILE:
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        clean_stale_temp(run_dir, recursive=True)
        yield run_dir
    finally:
        os.close(fd)  # releases the flock


__all__ = ["AtomicCheckpointIO", "DivergenceError", "DivergenceGuard", "LOCK_FILE", "check_run_dir_free",
           "claim_run_dir", "earlier_results", "first_non_finite", "launcher_rank_zero"]
