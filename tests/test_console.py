"""The console of the entry points: no third-party advertisement or deprecation noise, binarydm's own warnings kept."""

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

from binarydm.console import quiet_third_party

ROOT = Path(__file__).resolve().parents[1]
NOISE = ("Tip:", "litlogger", "is deprecated", "FutureWarning", "DeprecationWarning")


def test_a_training_run_prints_no_third_party_tips_or_deprecations(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "binarydm.train", "config=tiny", f"out_dir={tmp_path}",
                           "num_threads=1", "trainer.enable_progress_bar=true"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "report:" in out  # the run's own lines are still there
    assert not [line for line in out.splitlines() if any(n in line for n in NOISE)], out
    # One line per phase (the device and precision in binarydm's own words, not Lightning's), a summary of the
    # phases' times, and a progress bar that says what it counts.
    lines = out.replace("\r", "\n").splitlines()
    assert any(line.startswith("training ") and "6 steps of batch 8 on 1 x cpu" in line for line in lines), out
    assert any(line.startswith("exporting the student to ") for line in lines), out
    assert any(line.startswith("done in ") and "training" in line and "export" in line for line in lines), out
    assert not any(line.startswith(("GPU available:", "TPU available:", "`Trainer.fit` stopped")) or "Epoch 0" in line
                   for line in lines), out
    assert any(line.startswith("training") and "6/6" in line for line in lines), out  # the bar
    assert "train/loss: " in out, out  # the bar shows the loss
    assert "| training |" in (tmp_path / "tiny" / "report.md").read_text()  # the phases' seconds in the report


def test_filters_are_precise():
    quiet_third_party()
    quiet_third_party()  # idempotent: one filter per logger
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    assert sum(type(f).__name__ == "_DropAdvert" for f in logger.filters) == 1
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        logger.info("💡 Tip: For seamless cloud logging, try installing litlogger")
        logger.info("`Trainer.fit` stopped: `max_steps=6` reached.")
        logger.info("Restored all states from the checkpoint at x.ckpt")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert [r.getMessage() for r in records] == ["Restored all states from the checkpoint at x.ckpt"]
    with warnings.catch_warnings(record=True) as caught:
        quiet_third_party()
        warnings.simplefilter("always")  # what a test run does; the entry points keep the default filters
        quiet_third_party()
        warnings.warn("`torch.jit.load` is deprecated. Please switch to `torch.export`.", FutureWarning)
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning)
        warnings.warn("binarydm: a warning of our own", UserWarning)
        warnings.warn("something else is deprecated", FutureWarning)
    assert [str(w.message) for w in caught] == ["binarydm: a warning of our own", "something else is deprecated"]
