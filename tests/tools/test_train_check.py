"""tools/train_check.py (issue 28's GPU training check) run on the CPU (--dry-run), and when a step reads values."""

import json
from types import SimpleNamespace

import torch

import train_check
from binarydm.training.module import reads_due


def test_dry_run_checks_parity_run_reload_and_cpu_resume(tmp_path, capsys):
    rc = train_check.main(["--out", str(tmp_path), "--dry-run", "--steps", "12", "--window", "4"])
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "train_check.json").read_text())
    assert rc == 0 and report["ok"], out
    p, r = report["parity"], report["run"]
    assert len(p["losses_cpu"]) == 5 and p["losses_cpu"] == p["losses_device"] and p["max_rel_diff"] == 0
    assert r["global_step"] == 12 and r["resumed_on_cpu_to_step"] == 14 and r["samples_finite"]
    assert r["profiled_steps"] == [4, 7] and r["sync_events_per_step"] == {}  # no CUDA runtime on the CPU
    assert "train_check parity" in out and "train_check run" in out and "train_check sync" in out


def test_a_step_reads_device_values_only_on_logging_steps_off_the_cpu():
    def module(device, step, every=10):
        return SimpleNamespace(device=torch.device(device), global_step=step,
                               trainer=SimpleNamespace(log_every_n_steps=every))

    assert all(reads_due(module("cpu", s)) for s in range(25))
    assert [s for s in range(25) if reads_due(module("cuda", s))] == [9, 19]  # Lightning logs after steps 10, 20
    assert not any(reads_due(module("cuda", s, every=0)) for s in range(25))
