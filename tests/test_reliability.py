"""Issue 14, one test per defect: divergence stops the run, one run per directory, checkpoints that
survive a kill, validation before anything is written, sample/fid outputs, integrity of the exported files."""

import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import pytest
import torch

import binarydm
from binarydm.errors import CLIExit, UsageError
from binarydm.packing import PackedFormatError, export_packed, load_packed, load_student_dir, save_student_dir
from binarydm.packing.files import TMP_SUFFIX, clean_stale_temp
from binarydm.training import load_config
from binarydm.training.guards import LOCK_FILE, AtomicCheckpointIO, DivergenceError
from binarydm.training.runner import run
from conftest import make_tiny_unet

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
FAST = ["sample.num_images=0", "eval.packed=false"]


def tiny_cfg(out_dir, *overrides):
    return load_config("tiny", [f"out_dir={out_dir}", *FAST, *overrides])


def train_main(*args):
    from binarydm.train import main

    return main(list(args))


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---- 1. divergence ------------------------------------------------------------------------------
def test_nan_from_a_huge_learning_rate_stops_the_run_and_exports_nothing(tmp_path, capsys):
    rc = train_main("config=tiny", f"out_dir={tmp_path}", "optim.lr=1e9", "trainer.max_steps=6")
    assert rc == 1
    line = error_line(capsys)
    assert "diverged at step" in line and "optim.lr" in line and "nothing was exported" in line
    run_dir = tmp_path / "tiny"
    for f in ("student", "report.md", "student.packed.safetensors"):
        assert not (run_dir / f).exists(), f
    assert not list(run_dir.glob("checkpoints/*.ckpt"))  # the diverged state is never saved
    assert not list(run_dir.glob("samples/*.png"))  # no black grids


class PoisonAt(L.Callback):
    """Writes a NaN into one weight after step ``step`` (a divergence between two loss checks)."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.student.parameters()).view(-1)[0] = float("nan")


def test_divergence_keeps_the_last_good_checkpoint(tmp_path):
    cfg = tiny_cfg(tmp_path, "trainer.max_steps=9", "trainer.checkpoint_every_n_steps=3")
    with pytest.raises(DivergenceError, match=r"diverged at step (5|6).*last good checkpoint"):
        run(cfg, extra_callbacks=[PoisonAt(5)])
    ckpts = tmp_path / "tiny" / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("*.ckpt")) == ["last.ckpt", "step=3.ckpt"]
    state = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
    assert not (tmp_path / "tiny" / "student").exists()


def test_a_nan_parameter_never_reaches_a_checkpoint(tmp_path):
    # Poisoned at the very step a checkpoint is due: the loss of that step was finite, the weights are not.
    cfg = tiny_cfg(tmp_path, "trainer.max_steps=9", "trainer.checkpoint_every_n_steps=3")
    with pytest.raises(DivergenceError, match="before writing a checkpoint"):
        run(cfg, extra_callbacks=[PoisonAt(6)])
    state = torch.load(tmp_path / "tiny" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == 3


def test_deferred_loss_check_reads_the_device_flag_every_n_steps_and_before_a_checkpoint():
    # On an accelerator the guard folds isfinite(loss) into a flag on the device and reads it every loss_every
    # steps: no host synchronisation in between (loss_every forces that path here, on the CPU).
    from types import SimpleNamespace

    from binarydm.training.guards import DivergenceGuard

    guard = DivergenceGuard(lr=1e-3, loss_every=4)
    trainer = SimpleNamespace(global_step=1, world_size=1, checkpoint_callback=None)
    guard.check_loss(trainer, torch.tensor(float("nan")))  # seen, not read
    trainer.global_step = 2
    guard.check_loss(trainer, torch.tensor(1.0))
    trainer.global_step = 4
    with pytest.raises(DivergenceError, match="diverged at step 4: the loss became non-finite since"):
        guard.check_loss(trainer, torch.tensor(1.0))
    guard.check_loss(trainer, torch.tensor(1.0))  # the flag starts again after a read
    trainer.global_step = 5
    guard.check_loss(trainer, torch.tensor(float("inf")))
    with pytest.raises(DivergenceError, match="diverged at step 5"):  # a checkpoint is never written after it
        guard.on_save_checkpoint(trainer, torch.nn.Linear(1, 1), {})


# ---- 2. one run per directory -------------------------------------------------------------------
def test_a_live_run_holds_its_directory(tmp_path, capsys):
    run_dir = tmp_path / "tiny"
    run_dir.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"fd = os.open({str(run_dir / LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\nos.write(fd, str(os.getpid()).encode())\n"
         "print('locked', flush=True)\ntime.sleep(120)\n"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert train_main("config=tiny", f"out_dir={tmp_path}") == 2
        line = error_line(capsys)
        assert "in use by a live run" in line and f"PID {holder.pid}" in line
        assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]  # nothing written
    finally:
        holder.kill()
        holder.wait()


def test_a_finished_run_is_not_overwritten_without_resume_or_overwrite(tmp_path, capsys):
    assert train_main("config=tiny", f"out_dir={tmp_path}", "trainer.max_steps=2", *FAST) == 0
    run_dir = tmp_path / "tiny"
    last = run_dir / "checkpoints" / "last.ckpt"
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and "csv" not in p.parts
              and "tensorboard" not in p.parts}
    assert train_main("config=tiny", f"out_dir={tmp_path}", "trainer.max_steps=3", *FAST) == 2
    line = error_line(capsys)
    assert "holds the results of an earlier run" in line and "resume=" in line and "overwrite=true" in line
    assert {p: p.read_bytes() for p in before} == before  # nothing of the first run changed
    # A resume= from another run's checkpoint is refused too: it would write over this one.
    other = tmp_path / "other"
    assert train_main("config=tiny", f"out_dir={other}", "trainer.max_steps=2", *FAST) == 0
    assert train_main("config=tiny", f"out_dir={tmp_path}", "trainer.max_steps=3",
                      f"resume={other / 'tiny' / 'checkpoints' / 'last.ckpt'}", *FAST) == 2
    assert "another run" in error_line(capsys)
    # Continuing this run, and an explicit overwrite, are allowed.
    assert train_main("config=tiny", f"out_dir={tmp_path}", "trainer.max_steps=3", f"resume={last}", *FAST) == 0
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 3
    assert train_main("config=tiny", f"out_dir={tmp_path}", "trainer.max_steps=1", "overwrite=true", *FAST) == 0
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt")) == ["last.ckpt"]  # step=3.ckpt gone
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 1
    assert len(list(run_dir.glob("csv/version_*"))) == 1  # the old logs went with the old run


@pytest.mark.parametrize("override", ["data.image_size=16", "optim.lr=0", "data.name=fashion_mnist"])
def test_a_failed_check_leaves_no_run_directory(tmp_path, capsys, override):
    assert train_main("config=tiny", f"out_dir={tmp_path / 'runs'}", override, f"data.root={tmp_path}") == 2
    error_line(capsys)
    assert not (tmp_path / "runs").exists()


# ---- 3. checkpoints that survive a kill -----------------------------------------------------------
WRITER = """
import sys, torch
from binarydm.training.guards import AtomicCheckpointIO
io, path, i = AtomicCheckpointIO(), sys.argv[1], 0
x = torch.zeros(4_000_000)  # 16 MB: a write takes long enough to be killed in the middle
print("ready", flush=True)
while True:
    i += 1
    io.save_checkpoint({"i": i, "x": x + i}, path)
"""


def test_checkpoint_survives_sigkill_during_writes(tmp_path):
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"i": 0, "x": torch.zeros(4_000_000)}, ckpt)
    # $TMPDIR is where fsspec's transaction (Lightning's default) puts its temporary file; on another
    # file system (tmpfs, like a RAM /tmp) its final move is a copy that a kill leaves truncated.
    shm = Path("/dev/shm")
    other_fs = shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != tmp_path.stat().st_dev
    tmpdir = Path(tempfile.mkdtemp(dir=shm)) if other_fs else tmp_path / "tmpdir"
    tmpdir.mkdir(exist_ok=True)
    for delay in (0.05, 0.13, 0.2, 0.29, 0.37, 0.45, 0.61, 0.9):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(ckpt)], stdout=subprocess.PIPE, text=True,
                                env={**ENV, "TMPDIR": str(tmpdir)}, cwd=ROOT)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = torch.load(ckpt, map_location="cpu", weights_only=True)  # always a whole checkpoint
        assert torch.equal(state["x"], torch.full((4_000_000,), float(state["i"])))
    assert not list(tmpdir.iterdir())
    tmpdir.rmdir()
    # Kills leave at most a temporary file in the checkpoint's own directory, which a new run removes.
    removed = clean_stale_temp(ckpt.parent)
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["last.ckpt"]
    assert removed  # some kills did land in the middle of a write (the writer does nothing else)


def test_kill_before_the_rename_keeps_the_old_checkpoint(tmp_path):
    ckpt = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"i": 0}, ckpt)
    hang = ("import os, sys, time\nos.replace = lambda *a: (print('renaming', flush=True), time.sleep(60))\n"
            "from binarydm.training.guards import AtomicCheckpointIO\n"
            "AtomicCheckpointIO().save_checkpoint({'i': 1}, sys.argv[1])\n")
    proc = subprocess.Popen([sys.executable, "-c", hang, str(ckpt)], stdout=subprocess.PIPE, text=True, env=ENV,
                            cwd=ROOT)
    assert proc.stdout.readline().strip() == "renaming"
    proc.kill()
    proc.wait()
    assert torch.load(ckpt, weights_only=True)["i"] == 0
    stale = [p for p in tmp_path.iterdir() if p.name.endswith(TMP_SUFFIX)]
    assert len(stale) == 1 and torch.load(stale[0], weights_only=True)["i"] == 1  # complete, never renamed
    assert clean_stale_temp(tmp_path) == stale


def test_a_new_run_removes_stale_temporary_files(tmp_path):
    stale = tmp_path / "tiny" / "checkpoints" / f".last.ckpt.abc{TMP_SUFFIX}"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a checkpoint")
    run(tiny_cfg(tmp_path, "trainer.max_steps=1", "export=false"))
    assert not stale.exists()


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        model, unet_config = _student()
        AtomicCheckpointIO().save_checkpoint({"i": 0}, tmp_path / "a.ckpt")
        export_packed(model, unet_config, "w1a4", tmp_path / "m.safetensors")
        save_student_dir(model, unet_config, "w1a4", tmp_path / "student")
    finally:
        os.umask(old)
    files = [tmp_path / "a.ckpt", tmp_path / "m.safetensors", *(tmp_path / "student").iterdir()]
    assert {oct(stat.S_IMODE(f.stat().st_mode)) for f in files} == {oct(0o640)}


# ---- 4. validation before anything is written ------------------------------------------------------
@pytest.mark.parametrize("overrides, key", [
    (["data.image_size=16"], "data.image_size"),
    (["data.channels=1"], "data.channels"),
    (["model.pretrained=binarydm/assets/fmnist_teacher"], "model.pretrained"),
    (["optim.lr=-0.1"], "optim.lr"),
    (["optim.lr=.nan"], "optim.lr"),
    (["optim.shortcut_lr_scale=0"], "optim.shortcut_lr_scale"),
    (["loss.kd_weight=1.5"], "loss.kd_weight"),
    (["trainer.max_steps=0"], "trainer.max_steps"),
    (["data.batch_size=0"], "data.batch_size"),
    (["data.batch_size=64"], "data.batch_size"),  # more than the 32 synthetic images
])
def test_config_values_checked_up_front(tmp_path, overrides, key):
    with pytest.raises(UsageError, match=key.replace(".", r"\.")) as info:
        run(tiny_cfg(tmp_path, *overrides))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "tiny").exists()


@pytest.fixture(scope="module")
def fp_checkpoint(tmp_path_factory):
    """last.ckpt of a 1-step full-precision run: another architecture than the W1A4 student."""
    out = tmp_path_factory.mktemp("fp")
    run(tiny_cfg(out, "quant=none", "trainer.max_steps=1", "export=false"))
    return out / "tiny" / "checkpoints" / "last.ckpt"


def test_resume_errors_are_one_line(tmp_path, fp_checkpoint):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(fp_checkpoint.read_bytes()[:5000])
    cases = {str(tmp_path / "nope.ckpt"): "no such checkpoint file", str(tmp_path): "is a directory",
             str(truncated): "truncated or corrupted", str(fp_checkpoint): "another architecture"}
    for path, what in cases.items():
        with pytest.raises(UsageError, match=what) as info:
            run(tiny_cfg(tmp_path / "runs", f"resume={path}"))
        msg = str(info.value)
        assert "\n" not in msg and len(msg) < 600 and msg.startswith(f"resume={path}"), msg
    assert not (tmp_path / "runs").exists()


# ---- 5. sample, export, fid ------------------------------------------------------------------------
def _student():
    model = make_tiny_unet()
    unet_config = dict(model.config)
    binarydm.binarize_(model, "w1a4")
    binarydm.calibrate_(model, torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)),
                        torch.tensor([1, 250, 500, 999]))
    return model.eval(), unet_config


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    model, unet_config = _student()
    root = tmp_path_factory.mktemp("ckpt")
    sched = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"}
    return export_packed(model, unet_config, "w1a4", root / "m.safetensors", scheduler_config=sched)


def sample_main(*args):
    from binarydm.sample import main

    main(list(args))


def test_sample_writes_images_as_made_and_replaces_its_own_earlier_output(packed, tmp_path):
    out = tmp_path / "s"
    sample_main(f"ckpt={packed}", "num=5", "steps=2", "batch=2", f"out={out}")
    sample_main(f"ckpt={packed}", "num=3", "steps=2", "batch=2", f"out={out}")
    assert sorted(p.name for p in (out / "images").iterdir()) == ["00000.png", "00001.png", "00002.png"]
    assert json.loads((out / "sample_info.json").read_text())["complete"] is True


def test_sample_refuses_foreign_files_and_clears_them_on_request(packed, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(CLIExit) as info:
        sample_main(f"ckpt={packed}", "num=2", "steps=2", f"out={out}")
    assert info.value.code == 2 and "thesis.tex" in error_line(capsys)
    assert (out / "thesis.tex").read_text() == "precious"
    sample_main(f"ckpt={packed}", "num=2", "steps=2", f"out={out}", "overwrite=true")
    assert not (out / "thesis.tex").exists() and len(list((out / "images").iterdir())) == 2


def test_sample_checks_out_before_sampling(packed, tmp_path, capsys, monkeypatch):
    import binarydm.sampling as sampling

    monkeypatch.setattr(sampling, "sample_images", lambda *a, **k: pytest.fail("sampled before checking out="))
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CLIExit):
        sample_main(f"ckpt={packed}", "num=2", f"out={blocker / 'sub'}")
    assert "out=" in error_line(capsys)


def test_killed_sampling_is_refused_by_fid(packed, tmp_path, capsys, monkeypatch):
    import binarydm.sampling as sampling

    real = sampling.save_png
    calls = []

    def die_after_two(img, path):
        calls.append(path)
        if len(calls) > 2:
            raise KeyboardInterrupt  # stands for a kill in the middle of the sampling
        real(img, path)

    monkeypatch.setattr(sampling, "save_png", die_after_two)
    with pytest.raises(CLIExit):
        sample_main(f"ckpt={packed}", "num=4", "steps=2", "batch=1", f"out={tmp_path / 's'}")
    capsys.readouterr()
    from binarydm.fid import main as fid_main

    with pytest.raises(CLIExit):
        fid_main([f"gen={tmp_path / 's'}", f"ref={tmp_path / 's'}", "extractor=tiny", f"cache={tmp_path}"])
    assert "did not finish" in error_line(capsys)


def _images(folder, n):
    from binarydm.sampling import save_images

    save_images(torch.randint(0, 255, (n, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(n)),
                folder)
    return folder


def test_fid_minimum_count_and_bias_warning(tmp_path, capsys):
    from binarydm.fid import main as fid_main

    ref = _images(tmp_path / "ref", 6)
    one = _images(tmp_path / "one", 1)
    with pytest.raises(CLIExit) as info:
        fid_main([f"gen={one}", f"ref={ref}", "extractor=tiny", f"cache={tmp_path}"])
    assert info.value.code == 2 and "at least 2" in error_line(capsys)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CLIExit):
        fid_main([f"gen={tmp_path / 'empty'}", f"ref={ref}", "extractor=tiny", f"cache={tmp_path}"])
    assert "no images" in error_line(capsys)
    three = _images(tmp_path / "three", 3)
    fid_main([f"gen={three}", f"ref={ref}", "extractor=tiny", f"cache={tmp_path}", "backend=cleanfid"])
    captured = capsys.readouterr()
    assert "biased upwards" in captured.err and "fid_cleanfid" in captured.out


# ---- 6. integrity ----------------------------------------------------------------------------------
def _rewrite_metadata(path, **changes):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for key, (old, new) in changes.items():
        assert old in meta[key]
        meta[key] = meta[key].replace(old, new)
    save_file(tensors, str(path), metadata=meta)


@pytest.mark.parametrize("key, old, new", [("quant_config", '"a_bits": 4', '"a_bits": 5'),
                                           ("scheduler_config", '"beta_end": 0.02', '"beta_end": 0.03'),
                                           ("unet_config", '"norm_eps": 1e-05', '"norm_eps": 1e-06')])
def test_packed_metadata_is_covered_by_the_checksum(packed, tmp_path, key, old, new):
    copy = tmp_path / "m.safetensors"
    copy.write_bytes(packed.read_bytes())
    load_packed(copy)
    _rewrite_metadata(copy, **{key: (old, new)})
    with pytest.raises(PackedFormatError, match="tensor data or metadata does not match the checksum"):
        load_packed(copy)


def test_student_directory_carries_a_checksum(tmp_path):
    model, unet_config = _student()
    d = save_student_dir(model, unet_config, "w1a4", tmp_path / "student")
    load_student_dir(d)
    weights = d / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    with pytest.raises(PackedFormatError, match="diffusion_pytorch_model.safetensors: does not match its checksum"):
        load_student_dir(d)
    d2 = save_student_dir(model, unet_config, "w1a4", tmp_path / "student2")
    qc = d2 / "config.json"  # binarydm's quantization_config lives in the model config
    qc.write_text(qc.read_text().replace('"a_bits": 4', '"a_bits": 5'))
    with pytest.raises(PackedFormatError, match="config.json: does not match its checksum"):
        load_student_dir(d2)


def test_a_trained_run_exports_a_verified_student(tmp_path):
    from binarydm.training.runner import load_student

    out = run(tiny_cfg(tmp_path, "trainer.max_steps=1"))
    d = out["student_dir"]
    assert (d / "SHA256SUMS").is_file()
    names = {line.split()[1] for line in (d / "SHA256SUMS").read_text().splitlines()}
    assert names == {"diffusion_pytorch_model.safetensors", "config.json", "scheduler_config.json"}
    load_student(d)
    sched = d / "scheduler_config.json"
    sched.write_text(sched.read_text().replace('"beta_end": 0.02', '"beta_end": 0.03'))
    with pytest.raises(PackedFormatError, match="scheduler_config.json"):
        load_student(d)


# ---- 7. one error style ----------------------------------------------------------------------------
def test_debug_switch_shows_the_traceback(tmp_path):
    args = [sys.executable, "-m", "binarydm.sample", f"ckpt={tmp_path / 'nope'}"]
    plain = subprocess.run(args, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120)
    assert plain.returncode == 2 and plain.stderr.strip().splitlines() == [
        f"error: ckpt={tmp_path / 'nope'}: no such file or directory"]
    debug = subprocess.run(args, capture_output=True, text=True, env={**ENV, "BINARYDM_DEBUG": "1"}, cwd=ROOT,
                           timeout=120)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "UsageError" in debug.stderr


def test_sigkilled_run_releases_its_directory_and_resumes(tmp_path, capsys):
    """kill -9 during training: the lock dies with the process, the run's results are protected from a
    fresh run, and resume= continues it."""
    args = ["config=tiny", f"out_dir={tmp_path}", "trainer.max_steps=30", "trainer.checkpoint_every_n_steps=1",
            "trainer.val_check_interval=100", *FAST]
    proc = subprocess.Popen([sys.executable, "-m", "binarydm.train", *args], cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "tiny" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not (tmp_path / "tiny" / "checkpoints" / "step=3.ckpt").exists() and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert 2 <= step < 30  # last.ckpt is written just after step=N.ckpt: the kill may fall between
    assert train_main(*args) == 2
    assert "holds the results of an earlier run" in error_line(capsys)
    assert train_main(*args, f"resume={last}") == 0
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 30
    assert not list((tmp_path / "tiny").rglob(f"*{TMP_SUFFIX}"))
    assert (tmp_path / "tiny" / LOCK_FILE).read_text().strip() == str(os.getpid())
