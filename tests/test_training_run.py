"""End-to-end training on the tiny UNet and synthetic data (CPU, offline)."""

import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from binarydm.quant import QuantAttnProcessor, progressive_groups, quant_layers
from binarydm.quant.lmb import LMB
from binarydm.training import load_config, run
from binarydm.training.callbacks import StopAtStep
from binarydm.training.runner import build, load_student


ROOT = Path(__file__).resolve().parents[1]


def tiny_cfg(tmp_path, *overrides):
    return load_config("tiny", [f"out_dir={tmp_path}", *overrides])


class Recorder(L.Callback):
    """Records, at the start of every step (after the progressive callback ran), the quantizer state."""

    def __init__(self):
        self.enabled = []  # per step: {group name: all weight quantizers of the group enabled}
        self.attention = []
        self.s1_vs_mean_abs = []  # per step: max |s1 - mean|w|| over the layers switched at this step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        student = pl_module.student
        groups = progressive_groups(student)
        state = {}
        for name, prefixes in groups:
            qs = [layer.weight_quantizer for _, layer in quant_layers(student, prefixes)]
            state[name] = all(q.enabled for q in qs)
            assert all(q.enabled for q in qs) or not any(q.enabled for q in qs)
        newly = [n for n in state if state[n] and not (self.enabled and self.enabled[-1][n])]
        err = 0.0
        for name, prefixes in groups:
            if name in newly:
                for _, layer in quant_layers(student, prefixes):
                    q = layer.weight_quantizer
                    if isinstance(q, LMB):
                        w = layer.weight.detach()
                        mean_abs = w.abs().mean(dim=tuple(range(1, w.dim())), keepdim=True)
                        err = max(err, (q.s1 - mean_abs).abs().max().item())
        self.s1_vs_mean_abs.append(err)
        self.enabled.append(state)
        self.attention.append(all(q.enabled for m in student.modules() if isinstance(m, QuantAttnProcessor)
                                  for q in m.quantizers()))


def test_cli_run_writes_checkpoint_config_logs_and_samples(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "binarydm.train", "config=tiny", f"out_dir={tmp_path}",
                           "trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.checkpoint_every_n_steps=2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "tiny"
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(run_dir / "config.yaml")
    assert cfg.trainer.max_steps == 4 and cfg.data.name == "synthetic"
    ckpts = {p.name for p in (run_dir / "checkpoints").glob("*.ckpt")}
    assert {"step=2.ckpt", "step=4.ckpt", "last.ckpt"} <= ckpts
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4
    assert any(k.startswith("lrm.proj_") for k in ckpt["state_dict"])
    assert not any(k.startswith("teacher.") for k in ckpt["state_dict"])
    metrics = next(run_dir.glob("csv/version_*/metrics.csv")).read_text().splitlines()
    header = metrics[0].split(",")
    assert {"train/loss", "train/simple", "train/lrm", "val/simple"} <= set(header)
    assert list(run_dir.glob("tensorboard/version_*/events.out.tfevents.*"))
    from PIL import Image

    grids = sorted((run_dir / "samples").glob("step_*.png"))
    assert [g.name for g in grids] == ["step_0000002.png", "step_0000004.png"]
    with Image.open(grids[-1]) as im:
        # 4 images of 8x8 in a 2x2 grid with 1-pixel padding.
        assert im.size == (2 * 8 + 3, 2 * 8 + 3)
    report = (run_dir / "report.md").read_text()
    assert "wall time" in report and "train/simple" in report and str(run_dir / "student") in report
    for f in ("diffusion_pytorch_model.safetensors", "config.json", "scheduler_config.json", "SHA256SUMS"):
        assert (run_dir / "student" / f).is_file()


def test_exported_student_rebuilds_exactly(tmp_path):
    out = run(tiny_cfg(tmp_path, "trainer.max_steps=3", "sample.num_images=0"))
    student = out["module"].student.eval()
    rebuilt = load_student(out["student_dir"])
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 900])
    with torch.no_grad():
        expected = student(x, t).sample
        assert torch.equal(expected, rebuilt(x, t).sample)
    # The same directory is what binarydm.packing / sample / export read.
    packing = pytest.importorskip("binarydm.packing")
    model, configs = packing.load_student_dir(out["student_dir"])
    with torch.no_grad():
        assert torch.equal(expected, model(x, t).sample)
    assert configs["quant_config"] == out["built"].quant.to_dict()


def test_loss_decreases_on_a_fixed_batch(tmp_path):
    built = build(tiny_cfg(tmp_path, "progressive.enabled=false"))
    module = built.module
    student = module.student
    x0 = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    g = torch.Generator().manual_seed(0)
    x_t, t, eps = module.noisy_inputs(x0, g)
    from binarydm import calibrate_

    calibrate_(student, x_t, t)
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = module.compute_losses(x_t, t, eps)
        opt.zero_grad()
        loss["loss"].backward()
        opt.step()
        losses.append(loss["simple"].item())
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses


def test_progressive_init_switches_groups_middle_outwards(tmp_path):
    rec = Recorder()
    out = run(tiny_cfg(tmp_path, "trainer.max_steps=9", "progressive.every=2", "progressive.start_step=1",
                       "sample.num_images=0", "export=false"), extra_callbacks=[rec])
    student = out["module"].student
    names = [n for n, _ in progressive_groups(student)]
    # The spec's order for a 2-level UNet: the mid block, the lowest-resolution pair, the outermost pair.
    assert names == ["mid_block", "level_1", "level_0"]
    assert progressive_groups(student)[1][1][:2] == ["down_blocks.1", "up_blocks.0"]
    assert progressive_groups(student)[2][1][:2] == ["down_blocks.0", "up_blocks.1"]
    expected_on = {0: set(), 1: {"mid_block"}, 2: {"mid_block"}, 3: {"mid_block", "level_1"},
                   5: {"mid_block", "level_1", "level_0"}}
    for step, on in expected_on.items():
        assert {n for n, v in rec.enabled[step].items() if v} == on, (step, rec.enabled[step])
    # Attention operands only after the last group (event 3 at step 1 + 3 * 2 = 7).
    assert rec.attention == [False] * 7 + [True] * 2
    # Scales initialised from the weight at switch time (not at conversion): s1 = mean|w| exactly.
    assert max(rec.s1_vs_mean_abs) < 1e-6
    cb = out["built"].progressive
    assert cb.history == [(1, "mid_block"), (3, "level_1"), (5, "level_0"), (7, "attention")]


def test_lrm_projections_fitted_once_and_restored_on_resume(tmp_path, monkeypatch):
    from binarydm.training.lrm import LRM

    out = run(tiny_cfg(tmp_path, "trainer.max_steps=3", "sample.num_images=0", "export=false"))
    saved = {k: v.clone() for k, v in out["module"].lrm.projections().items()}
    assert all(v.shape[1] == -(-v.shape[0] // 4) for v in saved.values())
    ckpt_path = tmp_path / "tiny" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)["state_dict"]
    for block, proj in saved.items():
        assert torch.equal(state["lrm." + "proj_" + block.replace(".", "_")], proj)

    calls = []
    original = LRM.fit_
    monkeypatch.setattr(LRM, "fit_", lambda self, *a, **k: (calls.append(1), original(self, *a, **k))[1])
    out2 = run(tiny_cfg(tmp_path, "trainer.max_steps=5", "sample.num_images=0", "export=false",
                        f"resume={ckpt_path}", "name=tiny2"))
    assert calls == []  # never recomputed after a load
    for block, proj in out2["module"].lrm.projections().items():
        assert torch.equal(proj, saved[block])


# bidm: activation thresholds sized at calibration (empty tensors until then) must resume too.
@pytest.mark.parametrize("quant", ["w1a4", "bidm"])
def test_killed_and_resumed_run_equals_uninterrupted_run(tmp_path, quant):
    common = ["trainer.max_steps=8", "progressive.every=2", "trainer.checkpoint_every_n_steps=4",
              "sample.num_images=0", "export=false", "optim.schedule=cosine", "optim.warmup_steps=2",
              "data.random_flip=true", f"quant={quant}"]
    full = run(tiny_cfg(tmp_path / "a", *common))
    killed = run(tiny_cfg(tmp_path / "b", *common), extra_callbacks=[StopAtStep(4)])
    assert killed["trainer"].global_step == 4
    ckpt = tmp_path / "b" / "tiny" / "checkpoints" / "step=4.ckpt"
    resumed = run(tiny_cfg(tmp_path / "b", *common, f"resume={ckpt}"))
    assert resumed["trainer"].global_step == 8
    a = full["module"].state_dict()
    b = resumed["module"].state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert full["built"].progressive.history == resumed["built"].progressive.history
    qa = [q.enabled for q in full["module"].student.modules() if hasattr(q, "initialized")]
    qb = [q.enabled for q in resumed["module"].student.modules() if hasattr(q, "initialized")]
    assert qa == qb and all(qa)


def test_report_gains_teacher_and_student_fid_packed_size_and_side_by_side(tmp_path):
    from binarydm.sampling import save_images
    from binarydm.training.data import synthetic

    ref = tmp_path / "ref"
    save_images(synthetic(8, 8, 3, seed=5).images, ref)
    out = run(tiny_cfg(tmp_path, "trainer.max_steps=2", "sample.num_images=0", "eval.fid_samples=6",
                       "eval.sample_steps=2", "eval.features=tiny", f"eval.reference={ref / 'images'}"))
    ev = out["evaluation"]
    assert set(ev["fid"]) == {"teacher", "student"}
    for s in ev["fid"].values():
        assert math.isfinite(s["fid"]) and s["fid"] > 0 and s["num_fake"] == 6 and s["num_real"] == 6  # same count each side
    packed = out["run_dir"] / "student.packed.safetensors"
    assert ev["packed"]["bytes"] == packed.stat().st_size and ev["packed"]["ratio"] > 1
    from PIL import Image

    with Image.open(ev["side_by_side"]) as im:
        assert im.width > 2 * im.height - 40  # two grids next to each other
    report = (out["run_dir"] / "report.md").read_text()
    assert "| teacher |" in report and "| student |" in report and "Packed 1-bit checkpoint" in report
    assert "teacher_vs_student.png" in report


def test_teacher_samples_are_drawn_once_per_teacher_and_protocol(tmp_path, monkeypatch):
    from binarydm.sampling import save_images
    from binarydm.training.data import synthetic

    monkeypatch.setenv("BINARYDM_CACHE", str(tmp_path / "cache"))
    ref = tmp_path / "ref"
    save_images(synthetic(8, 8, 3, seed=5).images, ref)
    common = ("trainer.max_steps=1", "sample.num_images=0", "eval.fid_samples=6", "eval.sample_steps=2",
              "eval.features=tiny", f"eval.reference={ref / 'images'}", "eval.packed=false")
    first = run(tiny_cfg(tmp_path, *common, "name=first"))["evaluation"]
    again = run(tiny_cfg(tmp_path, *common, "name=again"))
    second = again["evaluation"]
    assert "teacher_cached" not in first and Path(second["teacher_cached"]).parent == tmp_path / "cache" / "fid"
    assert second["fid"]["teacher"] == first["fid"]["teacher"]  # the same features, so the same FID and KID
    assert not (again["run_dir"] / "eval" / "teacher").exists()  # not sampled again
    assert "eval.teacher_cache=false" in (again["run_dir"] / "report.md").read_text()
    # Another protocol (here: DDIM steps) is another entry; eval.teacher_cache=false samples again.
    other = run(tiny_cfg(tmp_path, *common, "name=other", "eval.sample_steps=3"))["evaluation"]
    fresh = run(tiny_cfg(tmp_path, *common, "name=fresh", "eval.teacher_cache=false"))["evaluation"]
    assert "teacher_cached" not in other and "teacher_cached" not in fresh
    assert fresh["fid"]["teacher"]["fid"] == pytest.approx(first["fid"]["teacher"]["fid"], rel=1e-5)
    # A damaged entry is a miss: sampled again and written anew.
    Path(second["teacher_cached"]).write_bytes(b"PK\x03\x04 not a zip")
    redone = run(tiny_cfg(tmp_path, *common, "name=redone"))["evaluation"]
    assert "teacher_cached" not in redone and redone["fid"]["teacher"] == first["fid"]["teacher"]


def test_report_says_why_fid_is_skipped_without_a_reference(tmp_path):
    out = run(tiny_cfg(tmp_path, "trainer.max_steps=1", "sample.num_images=0", "eval.fid_samples=2",
                       "eval.sample_steps=1", "eval.features=tiny", "eval.packed=false"))
    assert "eval.reference" in out["evaluation"]["fid_skipped"]
    assert "FID skipped" in (out["run_dir"] / "report.md").read_text()


class OptimizerStateRecorder(L.Callback):
    """Per step, after the progressive callback ran: AdamW's step count of the first layer of each group and
    that layer's activation step (LSQ)."""

    def __init__(self):
        self.adam_steps, self.act_steps = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        opt = trainer.optimizers[0]
        adam, act = {}, {}
        for name, prefixes in progressive_groups(pl_module.student):
            _, layer = next(iter(quant_layers(pl_module.student, prefixes)))
            state = opt.state.get(layer.weight, {})
            adam[name] = int(state["step"]) if "step" in state else 0
            act[name] = layer.act_quantizer.step.detach().clone() if layer.act_quantizer is not None else None
        self.adam_steps.append(adam)
        self.act_steps.append(act)


@pytest.mark.parametrize("reset", [True, False])
def test_progressive_switch_resets_optimizer_state_and_recalibrates(tmp_path, reset):
    rec = OptimizerStateRecorder()
    run(tiny_cfg(tmp_path, "trainer.max_steps=8", "progressive.every=2", "progressive.start_step=1",
                 f"progressive.reset_optimizer={str(reset).lower()}", f"progressive.recalibrate={str(reset).lower()}",
                 "sample.num_images=0", "export=false"), extra_callbacks=[rec])
    # level_0 (the outermost group) switches at step 5: its weights trained in FP during steps 0..4.
    assert rec.adam_steps[4]["level_0"] == 4
    if reset:  # AdamW forgets the FP gradients' moments at the switch and counts again from 0
        assert [rec.adam_steps[s]["level_0"] for s in (5, 6, 7)] == [0, 1, 2]
        assert [rec.adam_steps[s]["mid_block"] for s in (1, 2, 3)] == [0, 1, 2]
    else:
        assert [rec.adam_steps[s]["level_0"] for s in (5, 6, 7)] == [5, 6, 7]
    # The activation step of a group is untouched while it is off, then re-initialised at its switch
    # (from the inputs it sees with the inner groups binary) only when recalibrating.
    before, at = rec.act_steps[4]["level_0"], rec.act_steps[5]["level_0"]
    assert torch.equal(rec.act_steps[1]["level_0"], before)  # calibrated at the first event (step 1)
    assert (not torch.equal(before, at)) == reset


def test_precision_auto_is_bf16_where_the_cpu_computes_it_and_scales_stay_float32(tmp_path):
    from binarydm.training.runner import native_bf16, resolve_precision

    assert resolve_precision("32-true", "cpu") == "32-true" and resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"
    expected = "bf16-mixed" if native_bf16("cpu") else "32-true"
    assert resolve_precision("auto", "cpu") == expected
    out = run(tiny_cfg(tmp_path, "trainer.max_steps=3", "trainer.precision=auto", "eval.packed=false"))
    assert out["trainer"].precision == expected
    student = out["module"].student
    # Autocast computes the convolutions in bf16; the latent weights, LMB scales and LSQ steps stay float32.
    assert {p.dtype for p in student.parameters()} == {torch.float32}
    assert all(torch.isfinite(p).all() for p in student.parameters())
