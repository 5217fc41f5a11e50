"""What the entry points print: one line per phase, progress bars with ETA, and no third-party lines that are
not the user's to act on.

:class:`Phases` times the phases of a run and prints one line as each starts; :func:`training_bar` is
Lightning's progress bar saying "training" (not "Epoch 0/-2" of a step-limited run) without the logger's
version number.

Third-party lines are filtered precisely.
Each filter names one message of one library, so a new warning (binarydm's own, or a library's that a user
should see) still prints:

* Lightning's advertisement, "💡 Tip: For seamless cloud logging ... try installing litlogger ...", logged by
  its trainer on every run, and its information lines "GPU available: False, used: False", "TPU available: ...",
  "Using bfloat16 Automatic Mixed Precision (AMP)", "`Trainer(limit_val_batches=1)` was configured ...", and
  "`Trainer.fit` stopped: `max_steps=400` reached.", which binarydm's own lines of the run replace;
* torch's FutureWarning "`isinstance(treespec, LeafSpec)` is deprecated", raised inside Lightning's own
  ``_pytree`` helper on every fit;
* torch's FutureWarning "`torch.jit.load` is deprecated", raised by the FID feature extractor's loader.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from contextlib import contextmanager
from typing import Iterator

_LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
_DEPRECATIONS = (r"`isinstance\(treespec, LeafSpec\)` is deprecated", r"`torch\.jit\.load` is deprecated")


# Lightning's facts about the machine that binarydm's own "training ..." line states (device, precision), and
# its note on the validation batches the config asked for. Its warnings (e.g. "GPU available but not used")
# are not among them.
_LIGHTNING_FACTS = ("GPU available: ", "TPU available: ", "HPU available: ", "`Trainer(limit_val_batches=",
                    "Using bfloat16 Automatic Mixed Precision", "Using 16bit Automatic Mixed Precision",
                    "`Trainer.fit` stopped: `max_steps=")


class _DropAdvert(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.startswith("💡 Tip:") and "litlogger" in message:
            return False
        return not (record.levelno == logging.INFO and message.startswith(_LIGHTNING_FACTS))


def quiet_third_party() -> None:
    """Install the filters (idempotent); called by every entry point before it runs."""
    for message in _DEPRECATIONS:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)
    for name in _LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropAdvert) for f in logger.filters):
            logger.addFilter(_DropAdvert())


def say(line: str) -> None:
    """A line for the user on stderr (stdout stays for what scripts read, e.g. ``report: PATH``)."""
    print(line, file=sys.stderr, flush=True)


def duration(seconds: float) -> str:
    """``42.0 s``, ``3 min 58 s``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


class Phases:
    """Seconds per phase of a run, in order; ``with phases("training", "training 400 steps ..."):`` prints the
    line (when ``verbose``) and times the block."""

    def __init__(self, verbose: bool = True):
        self.verbose = verbose
        self.seconds: dict[str, float] = {}
        self.start = time.perf_counter()

    @contextmanager
    def __call__(self, name: str, line: str = "") -> Iterator[None]:
        if self.verbose and line:
            say(line)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def total(self) -> float:
        return time.perf_counter() - self.start

    def summary(self) -> str:
        parts = ", ".join(f"{name} {duration(s)}" for name, s in self.seconds.items())
        return f"done in {duration(self.total())} ({parts})"


def training_bar():
    """Lightning's progress bar (rich where installed) with the description "training"."""
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
    from lightning.pytorch.utilities.imports import _RICH_AVAILABLE

    base = RichProgressBar if _RICH_AVAILABLE else TQDMProgressBar

    class TrainingBar(base):
        def _get_train_description(self, current_epoch: int) -> str:  # RichProgressBar
            return "training"

        def on_train_epoch_start(self, trainer, *args) -> None:
            super().on_train_epoch_start(trainer, *args)
            bar = getattr(self, "_train_progress_bar", None)  # TQDMProgressBar's
            if bar is not None:
                bar.set_description("training")

        def get_metrics(self, trainer, pl_module):
            items = super().get_metrics(trainer, pl_module)
            items.pop("v_num", None)  # the logger's version, not the user's business
            # The training losses as the module last read them (binarydm.training.module.reads_due).
            items.update(getattr(pl_module, "bar_values", {}))
            return items

    return TrainingBar()


__all__ = ["Phases", "duration", "quiet_third_party", "say", "training_bar"]
