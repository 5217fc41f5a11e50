"""Sampling with diffusers' pipelines: reproducibility, the CLI's artifacts, packed file == student dir."""

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import binarydm
from binarydm.packing import export_packed, load_packed, save_student_dir
from binarydm.sample import main
from binarydm.sampling import sample_images, scheduler_for
from conftest import make_tiny_unet


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    model = make_tiny_unet()
    unet_config = dict(model.config)
    binarydm.binarize_(model, "w1a4")
    g = torch.Generator().manual_seed(0)
    binarydm.calibrate_(model, torch.randn(4, 3, 8, 8, generator=g), torch.tensor([1, 250, 500, 999]))
    sched = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"}
    packed = export_packed(model, unet_config, "w1a4", root / "m.safetensors", scheduler_config=sched)
    student = save_student_dir(model.eval(), unet_config, "w1a4", root / "student", scheduler_config=sched)
    return packed, student


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_same_seed_same_images(checkpoints, sampler):
    model = load_packed(checkpoints[0])
    a = sample_images(model, 5, steps=3, sampler=sampler, batch=2, seed=7, progress=False)
    b = sample_images(model, 5, steps=3, sampler=sampler, batch=2, seed=7, progress=False)
    c = sample_images(model, 5, steps=3, sampler=sampler, batch=2, seed=8, progress=False)
    assert a.shape == (5, 3, 8, 8) and a.dtype == torch.uint8
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_schedulers_come_from_diffusers():
    from diffusers import DDIMScheduler, DDPMScheduler

    assert isinstance(scheduler_for("ddim"), DDIMScheduler)
    ddpm = scheduler_for("ddpm", {"num_train_timesteps": 500, "beta_schedule": "linear"})
    assert isinstance(ddpm, DDPMScheduler) and ddpm.config.num_train_timesteps == 500
    with pytest.raises(ValueError, match="ddim.*ddpm"):
        scheduler_for("euler")


def test_cli_writes_pngs_grid_and_info(checkpoints, tmp_path):
    packed, student = checkpoints
    main([f"ckpt={packed}", "num=5", "steps=3", "batch=2", "seed=3", f"out={tmp_path / 'p'}"])
    main([f"ckpt={student}", "num=5", "steps=3", "batch=2", "seed=3", f"out={tmp_path / 's'}"])
    files = sorted((tmp_path / "p" / "images").glob("*.png"))
    assert [f.name for f in files] == [f"{i:05d}.png" for i in range(5)]
    grid = Image.open(tmp_path / "p" / "grid.png")
    assert grid.size == (3 * (8 + 1) + 1, 2 * (8 + 1) + 1)  # 3 columns x 2 rows, 1-pixel padding
    info = json.loads((tmp_path / "p" / "sample_info.json").read_text())
    assert info["num"] == 5 and info["sampler"] == "ddim" and info["seconds_per_image"] > 0
    # The packed file rebuilds the student exactly, so the same seed gives the same PNG files.
    for f in files:
        assert np.array_equal(np.asarray(Image.open(f)), np.asarray(Image.open(tmp_path / "s" / "images" / f.name)))


def test_cli_samples_on_the_kernels(checkpoints, tmp_path, capsys):
    # kernels=true: every binarized conv on the W1A4 kernel's layer (here its PyTorch reference: integer sums,
    # then the scales), the same images as the fake-quantized path up to float rounding.
    packed, _ = checkpoints
    main([f"ckpt={packed}", "num=4", "steps=3", "batch=2", "seed=3", f"out={tmp_path / 'fq'}"])
    from binarydm.kernels import cuda as kcuda

    kcuda._reset_state()  # the reference's once-per-process warning would fire again
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the console stays quiet: the summary line says where the convs ran
        main([f"ckpt={packed}", "num=4", "steps=3", "batch=2", "seed=3", f"out={tmp_path / 'k'}", "kernels=true"])
    assert "convs on the PyTorch reference" in capsys.readouterr().out
    info = json.loads((tmp_path / "k" / "sample_info.json").read_text())
    assert info["kernels"] is True and info["kernel_convs"]["swapped"] > 0
    assert info["kernel_convs"]["swapped"] <= info["kernel_convs"]["convs"]
    for i in range(4):
        a, b = (np.asarray(Image.open(tmp_path / d / "images" / f"{i:05d}.png"), dtype=np.int16) for d in ("fq", "k"))
        assert np.abs(a - b).max() <= 2


def test_kernels_on_a_full_precision_model_is_one_line(tmp_path):
    model = make_tiny_unet()
    model.save_pretrained(tmp_path / "fp")
    with pytest.raises(SystemExit, match="kernels=true: the model has no convolution"):
        main([f"ckpt={tmp_path / 'fp'}", "num=1", "steps=1", f"out={tmp_path / 'o'}", "kernels=true"])


def test_cli_rejects_unknown_arguments(checkpoints):
    with pytest.raises(SystemExit, match="unknown key 'nmu'.*valid keys.*num"):
        main([f"ckpt={checkpoints[0]}", "nmu=3"])
    with pytest.raises(SystemExit, match="ckpt=PATH is required"):
        main(["num=3"])
    with pytest.raises(SystemExit, match="num .*'many'.*Integer"):
        main([f"ckpt={checkpoints[0]}", "num=many"])
    with pytest.raises(SystemExit, match="label=0,x: expected a class number"):
        main([f"ckpt={checkpoints[0]}", "label=0,x"])


@pytest.mark.parametrize("value, labels", [("3", [3]), ("0,1,2", [0, 1, 2]), ("[4, 5]", [4, 5]), ("", None)])
def test_label_argument_forms(value, labels):
    from binarydm.cli import parse
    from binarydm.sampling import SampleArgs, parse_labels

    assert parse_labels(parse(SampleArgs, [f"label={value}"]).label) == labels


def test_fid_cli_samples_a_checkpoint_first(checkpoints, tmp_path, capsys):
    from binarydm.fid import main as fid_main

    ref = tmp_path / "ref"
    main([f"ckpt={checkpoints[0]}", "num=6", "steps=2", "batch=3", "seed=11", f"out={ref}"])
    fid_main([f"gen={checkpoints[0]}", "num=6", "steps=2", "batch=3", "seed=11", f"out={tmp_path / 'gen'}",
              f"ref={ref}", "extractor=tiny", f"cache={tmp_path / 'cache'}", "kid=false"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(list((tmp_path / "gen" / "images").glob("*.png"))) == 6
    # Same checkpoint, same seed: the generated set is the reference set, so FID is ~0 on both paths.
    assert abs(result["fid_cleanfid"]) < 1e-6 and abs(result["fid_torchmetrics"]) < 1e-4
