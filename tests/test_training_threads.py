"""A run's thread count: the config's, a resumed run's own, or torch's default lowered to the free cores."""

import torch

from binarydm.training import threads


def test_requested_count_wins():
    assert threads.choose_threads(3, resume="/nonexistent.ckpt") == 3


def test_a_resumed_run_uses_the_count_its_checkpoint_recorded(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "global_step": 4, threads.CHECKPOINT_KEY: 1}, path)
    monkeypatch.setattr(threads, "busy_cores", lambda interval=0.25: 0.0)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert threads.recorded_threads(str(path)) == 1
    assert threads.choose_threads(None, resume=str(path)) == 1  # not the idle machine's 2
    old = tmp_path / "old.ckpt"
    torch.save({"state_dict": {}, "global_step": 4}, old)  # written before the count was kept
    assert threads.recorded_threads(str(old)) is None and threads.choose_threads(None, resume=str(old)) == 2


def test_busy_cores_lower_the_default_with_a_notice(monkeypatch, capsys):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(threads, "busy_cores", lambda interval=0.25: 2.8)
    assert threads.choose_threads(None) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "2.8 of 4 cores are busy" in err and "num_threads=" in err
    monkeypatch.setattr(threads, "busy_cores", lambda interval=0.25: 0.3)
    assert threads.choose_threads(None) == 4 and capsys.readouterr().err == ""


def test_busy_cores_reads_proc_stat():
    busy = threads.busy_cores(0.05)
    assert 0.0 <= busy <= (threads.os.cpu_count() or 1) + 1e-6


def test_checkpoints_record_the_count(tmp_path):
    checkpoint = {}
    threads.RecordThreads().on_save_checkpoint(None, None, checkpoint)
    assert checkpoint[threads.CHECKPOINT_KEY] == torch.get_num_threads()
