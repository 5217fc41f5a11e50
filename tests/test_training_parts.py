"""Pieces of the training room: data, sampler, optimiser groups, LR schedule, EBB and EMA callbacks."""

import math
import os

import pytest
import torch

import binarydm
from binarydm.quant.lmb import LMB
from binarydm.training.callbacks import EMA, EBBTransition
from binarydm.training.data import (
    FASHION_MNIST_DIR,
    DataConfig,
    StepBatchSampler,
    build_dataset,
    fashion_mnist,
    synthetic,
)
from binarydm.training.module import DiffusionQAT, OptimConfig, lr_factor, parameter_groups


def test_step_sampler_is_a_function_of_the_step_and_shards_global_batches():
    full = StepBatchSampler(20, 4, seed=3, random_flip=True)
    # Epoch e is a permutation: every index exactly once in each run of 20 // 4 batches.
    first_epoch = [i for k in range(5) for i, _, _ in full.batch(k)]
    assert sorted(first_epoch) == list(range(20))
    assert [i for k in range(5, 10) for i, _, _ in full.batch(k)] != first_epoch  # reshuffled per epoch
    # Starting at step 7 (a resume) gives exactly batches 7, 8, ... of the uninterrupted order.
    it = iter(StepBatchSampler(20, 4, seed=3, start=7, random_flip=True))
    assert [next(it) for _ in range(3)] == [full.batch(k) for k in (7, 8, 9)]
    # Two ranks split each global batch between them, disjointly.
    r0, r1 = (StepBatchSampler(20, 4, seed=3, rank=r, world_size=2, random_flip=True) for r in (0, 1))
    for k in range(6):
        assert sorted(r0.batch(k) + r1.batch(k)) == sorted(full.batch(k))
    with pytest.raises(ValueError, match="divisible"):
        StepBatchSampler(20, 5, world_size=2)


def test_synthetic_images_are_in_range():
    ds = synthetic(6, 8, 3)
    x = torch.stack([ds[i] for i in range(len(ds))])
    assert x.shape == (6, 3, 8, 8) and x.min() >= -1 and x.max() <= 1


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_DIR), reason="apt package dataset-fashion-mnist not installed")
def test_fashion_mnist_is_padded_to_32_and_scaled():
    ds = fashion_mnist(FASHION_MNIST_DIR, train=False, image_size=32, channels=1)
    assert len(ds) == 10_000
    x = ds[0]
    assert x.shape == (1, 32, 32)
    # The 2-pixel border is padding: black, i.e. -1 after scaling; the garment reaches +1 territory.
    assert torch.all(x[:, :2] == -1) and torch.all(x[:, :, -2:] == -1)
    assert x.max() > 0.5
    rgb = build_dataset(DataConfig(name="fashion_mnist", root=FASHION_MNIST_DIR, channels=3), train=False)
    assert torch.equal(rgb[0], x.expand(3, -1, -1))


def test_lr_schedule_warmup_then_cosine():
    cfg = OptimConfig(lr=1.0, warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    assert [lr_factor(s, cfg) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, cfg) == pytest.approx(1.0)
    assert lr_factor(9, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(14, cfg) == pytest.approx(0.1)
    assert lr_factor(100, OptimConfig(schedule="constant", warmup_steps=0)) == 1.0
    with pytest.raises(ValueError, match="total_steps"):  # a cosine needs its length (runs: trainer.max_steps)
        lr_factor(5, OptimConfig(warmup_steps=2))


def test_parameter_groups_keep_scales_biases_norms_out_of_weight_decay(tiny_unet):
    binarydm.binarize_(tiny_unet, "w1a4")
    groups = {g["name"]: g for g in parameter_groups(tiny_unet, weight_decay=0.05)}
    ids = {k: {id(p) for p in g["params"]} for k, g in groups.items()}
    assert groups["latent_weights"]["weight_decay"] == 0.05
    assert groups["quantizer_scales"]["weight_decay"] == groups["biases_norms"]["weight_decay"] == 0.0
    lmb = next(m for m in tiny_unet.modules() if isinstance(m, LMB))
    assert id(lmb.s1) in ids["quantizer_scales"]
    conv = tiny_unet.down_blocks[0].resnets[0].conv1
    assert id(conv.weight) in ids["latent_weights"] and id(conv.bias) in ids["biases_norms"]
    assert id(tiny_unet.down_blocks[0].resnets[0].norm1.weight) in ids["biases_norms"]
    # Every parameter is in exactly one group.
    all_ids = [i for s in ids.values() for i in s]
    assert len(all_ids) == len(set(all_ids)) == len(list(tiny_unet.parameters()))


def test_shortcut_lr_scale_moves_the_shortcut_scales_that_many_times_faster(tiny_unet, unet_batch):
    from diffusers import DDPMScheduler

    from binarydm.algorithms import preset
    from binarydm.algorithms.bidm import ScaledShortcut

    x, t = unet_batch
    student = binarydm.binarize_(tiny_unet, preset("bidm", shortcut_init=0.3))
    binarydm.calibrate_(student, x, t)
    scales = [m.scale for m in student.modules() if isinstance(m, ScaledShortcut)]
    # Without the option the groups (and so a checkpoint's optimizer state) are as before: s with the scales.
    assert [g["name"] for g in parameter_groups(student, 0.0)] == ["latent_weights", "quantizer_scales", "biases_norms"]
    module = DiffusionQAT(student, DDPMScheduler(), optim=OptimConfig(lr=1e-3, total_steps=10, shortcut_lr_scale=25))
    opt = module.configure_optimizers()["optimizer"]
    groups = {g["name"]: g for g in opt.param_groups}
    assert {id(p) for p in groups["shortcut_scales"]["params"]} == {id(s) for s in scales} and scales
    before = [s.detach().clone() for s in scales]
    others = [p for p in groups["quantizer_scales"]["params"] if p.numel() == 1]
    others_before = [p.detach().clone() for p in others]
    student(x, t).sample.square().mean().backward()
    opt.step()
    # Adam's first step moves a parameter by its lr times the sign of its gradient.
    moved = torch.stack([(s.detach() - b).abs() for s, b in zip(scales, before)])
    torch.testing.assert_close(moved, torch.full_like(moved, 25e-3), rtol=1e-3, atol=1e-6)
    assert all((p.detach() - b).abs().max() <= 1.001e-3 for p, b in zip(others, others_before))
    with pytest.raises(ValueError, match="shortcut_lr_scale"):
        OptimConfig(shortcut_lr_scale=0)


@pytest.mark.parametrize("lrm_weight", [0.0, 1.0])
def test_kd_weight_mixes_the_teachers_eps_into_the_target(tiny_unet, unet_batch, lrm_weight):
    import copy

    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    from binarydm.training.config import LossConfig

    teacher = copy.deepcopy(tiny_unet).eval()
    student = binarydm.binarize_(tiny_unet, binarydm.QuantConfig(a_bits=32, keep_bits=32))
    x, t = unet_batch
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        teacher_eps = teacher(x, t).sample
        pred = student(x, t).sample
    for alpha in (0.0, 0.3, 1.0):
        module = DiffusionQAT(student, DDPMScheduler(), teacher, loss=LossConfig(lrm_weight=lrm_weight, kd_weight=alpha))
        with torch.no_grad():
            losses = module.compute_losses(x, t, eps)
        torch.testing.assert_close(losses["simple"], F.mse_loss(pred, eps))
        lrm = lrm_weight * losses["lrm"] if lrm_weight else 0.0
        if alpha == 0.0:  # the paper's loss, untouched: no teacher output is computed or logged
            assert "kd" not in losses
            torch.testing.assert_close(losses["loss"], losses["simple"] + lrm)
            continue
        torch.testing.assert_close(losses["kd"], F.mse_loss(pred, teacher_eps))
        # Regressing the mixed target (1 - a) eps + a eps_T has the same gradient as this weighted sum.
        torch.testing.assert_close(losses["loss"], (1 - alpha) * losses["simple"] + alpha * losses["kd"] + lrm)
    assert losses["kd"] < losses["simple"]  # the teacher is far closer to the student than one noise draw


class _FakeTrainer:
    def __init__(self, step):
        self.global_step = step


class _FakeModule:
    def __init__(self, student):
        self.student = student


def test_ebb_penalty_in_the_loss_and_transition_drops_s2(tiny_unet, unet_batch):
    from diffusers import DDPMScheduler

    student = binarydm.binarize_(tiny_unet, binarydm.QuantConfig(a_bits=32, keep_bits=32, dual_levels=1))
    two = [m for m in student.modules() if isinstance(m, LMB) and m.n_bases == 2]
    assert two
    tau = 0.09
    module = DiffusionQAT(student, DDPMScheduler(), teacher=None, ebb_tau=tau)
    x, t = unet_batch
    losses = module.compute_losses(x, t, torch.zeros_like(x))
    expected = torch.stack([m.s2.mean() for m in two]).mean()
    torch.testing.assert_close(losses["ebb"], expected)
    torch.testing.assert_close(losses["loss"], losses["simple"] + tau * expected)

    cb = EBBTransition(transition_step=5)
    cb.on_train_batch_start(_FakeTrainer(4), _FakeModule(student), None, 0)
    assert all(m.n_bases == 2 for m in two)
    cb.on_train_batch_start(_FakeTrainer(5), _FakeModule(student), None, 0)
    assert all(m.n_bases == 1 and float(m.s2.abs().sum()) == 0 for m in two)
    assert "ebb" not in module.compute_losses(x, t, torch.zeros_like(x))  # stage 2: no penalty left
    assert cb.state_dict() == {"done": True}


def test_ema_follows_the_recurrence(tiny_unet):
    ema = EMA(decay=0.5, start_step=1)
    mod = _FakeModule(tiny_unet)
    p = tiny_unet.conv_in.weight
    with torch.no_grad():
        p.fill_(1.0)
    ema.on_train_batch_end(_FakeTrainer(1), mod, None, None, 0)  # before start: copy
    with torch.no_grad():
        p.fill_(3.0)
    ema.on_train_batch_end(_FakeTrainer(2), mod, None, None, 0)  # warm-up d_0 = 1/10: 0.1 * 1 + 0.9 * 3
    torch.testing.assert_close(ema.shadow["conv_in.weight"], torch.full_like(p, 2.8))
    with ema.applied(tiny_unet):
        torch.testing.assert_close(tiny_unet.conv_in.weight, torch.full_like(p, 2.8))
    assert torch.all(tiny_unet.conv_in.weight == 3.0)
    assert ema.current_decay() == 2.0 / 11.0  # d_1 = (1 + 1) / (10 + 1) < 0.5
    ema.num_updates = 100
    assert ema.current_decay() == 0.5  # warmed up: the configured decay
    restored = EMA(0.5)
    restored.load_state_dict(ema.state_dict())
    assert torch.equal(restored.shadow["conv_in.weight"], ema.shadow["conv_in.weight"])
    assert restored.num_updates == 100


def test_image_folder_reads_resizes_and_scales(tmp_path):
    from PIL import Image

    (tmp_path / "sub").mkdir()
    Image.new("RGB", (20, 10), (255, 0, 0)).save(tmp_path / "a.png")
    Image.new("L", (12, 12), 0).save(tmp_path / "sub" / "b.jpg")
    ds = build_dataset(DataConfig(name="folder", root=str(tmp_path), image_size=8, channels=3), train=True)
    assert len(ds) == 2
    red, black = ds[0], ds[1]
    assert red.shape == black.shape == (3, 8, 8)
    assert torch.allclose(red[0], torch.ones(8, 8)) and torch.allclose(red[1:], -torch.ones(2, 8, 8))
    assert torch.allclose(black, -torch.ones(3, 8, 8))


def test_calibration_broadcasts_the_fitted_scale_maps_with_the_activation_steps(tiny_unet, unet_batch, monkeypatch):
    """Each DDP rank calibrates on its own shard: the scale maps that calibrate_ fits (BiDM's scale_init) must
    come from rank 0 like the activation steps, or the replicas start apart."""
    from binarydm.algorithms import preset
    from binarydm.quant.convert import activation_quantizers
    from binarydm.training import callbacks

    student = binarydm.binarize_(tiny_unet, preset("bidm", scale_init="unit"))
    module = _FakeModule(student)
    module.global_step = 0
    module.batch_inputs = lambda batch, step: (*batch, None)
    module.condition = lambda batch: {}
    sent = []
    monkeypatch.setattr(callbacks, "_broadcast_from_rank0", lambda tensors: sent.extend(tensors))
    callbacks.calibrate_once(module, unet_batch)
    maps = [m.weight_quantizer.local_scale.weight for m in student.modules()
            if getattr(getattr(m, "weight_quantizer", None), "local_scale", None) is not None]
    assert maps and all(not torch.allclose(w, torch.full_like(w, 1 / w.numel())) for w in maps)  # fitted
    sent_ids = {id(t) for t in sent}
    assert all(id(w) in sent_ids for w in maps)
    assert all(id(p) in sent_ids for q in activation_quantizers(student) for p in q.parameters())
