"""Training on one's own image folder: the recipe (configs/folder_teacher.yaml, configs/folder_w1a4.yaml),
the folder's seeded FID reference subset, and the up-front checks of keys that contradict each other."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from binarydm.errors import UsageError
from binarydm.evaluation import TinyFeatures
from binarydm.evaluation import fid as fidmod
from binarydm.evaluation.fid import folder_subset, reference_features, reference_images, reference_key
from binarydm.training import load_config
from binarydm.training.validate import check_config

ROOT = Path(__file__).resolve().parents[1]
# The tiny UNet of configs/tiny.yaml on 8-pixel images: the recipe's commands in seconds.
TINY = ["data.image_size=8", "model.config.block_out_channels=[8,16]",
        "model.config.down_block_types=[DownBlock2D,AttnDownBlock2D]",
        "model.config.up_block_types=[AttnUpBlock2D,UpBlock2D]", "model.config.norm_num_groups=4",
        "model.config.attention_head_dim=8"]
FAST = ["data.batch_size=4", "data.num_workers=0", "data.val_size=4", "optim.warmup_steps=0", "trainer.max_steps=2",
        "trainer.val_check_interval=2", "trainer.checkpoint_every_n_steps=2", "trainer.accelerator=cpu",
        "sample.num_images=2", "sample.num_inference_steps=2"]


def photo_patches(folder: Path, photos: int = 2, per_photo: int = 20, size=(12, 10)) -> list[Path]:
    """Patches cut from a few "photos", named so that a photo's patches are neighbours in path order (the
    layout where the first N files in sorted order are one photo): photo k is a flat colour of value 40 + 100 k."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(photos):
        for i in range(per_photo):
            path = folder / f"photo{k}_{i:03d}.png"
            Image.fromarray(np.full((size[1], size[0], 3), 40 + 100 * k, np.uint8)).save(path)
            paths.append(path)
    return paths


def mixed_sizes(folder: Path, n: int = 12) -> Path:
    """n smooth random RGB images of varying sizes (the data module resizes and crops them)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        coarse = Image.fromarray((rng.random((4, 4, 3)) * 255).astype(np.uint8))
        coarse.resize((10 + 2 * (i % 3), 9 + i % 4), Image.BILINEAR).save(folder / f"{i:02d}.png")
    return folder


# ---- the seeded reference subset --------------------------------------------------------------------
def test_folder_subset_is_seeded_random_not_the_first_files(tmp_path):
    files = photo_patches(tmp_path / "patches")
    a, b, other = folder_subset(files, 10, seed=0), folder_subset(files, 10, seed=0), folder_subset(files, 10, seed=1)
    assert a == b  # deterministic for a seed
    assert a != other  # another seed, another subset
    assert len(set(a)) == 10 and set(a) <= set(files) and a == sorted(a)  # no repeats, kept in path order
    assert a != files[:10]
    # Both photos are represented (the first 10 files are all from photo 0).
    assert {p.name.split("_")[0] for p in a} == {"photo0", "photo1"}
    assert folder_subset(files, None) == files
    assert folder_subset(files, len(files), seed=3) == files
    with pytest.raises(ValueError, match="40 images, 41 requested"):
        folder_subset(files, 41)


def test_folder_subset_draws_every_file_alike():
    # Over many seeds each of 10 files is drawn about num / n = 30 % of the time (1,000 draws of 3).
    files = [Path(f"{i}.png") for i in range(10)]
    counts = dict.fromkeys(files, 0)
    for seed in range(1000):
        for f in folder_subset(files, 3, seed):
            counts[f] += 1
    assert all(240 < c < 360 for c in counts.values()), counts


def test_folder_reference_is_the_subset_fitted_to_size(tmp_path):
    files = photo_patches(tmp_path / "patches", size=(12, 10))
    images = reference_images(str(tmp_path / "patches"), num=10, size=8, seed=0)
    assert images.shape == (10, 3, 8, 8) and images.dtype == torch.uint8  # 12x10 resized and cropped to 8x8
    expected = [40 + 100 * int(p.name[5]) for p in folder_subset(files, 10, seed=0)]
    assert images[:, :, 4, 4].tolist() == [[v] * 3 for v in expected]
    again = reference_images(str(tmp_path / "patches"), num=10, size=8, seed=0)
    assert torch.equal(images, again)
    # Mixed sizes are a reference too: each image is brought to size x size as for training.
    assert reference_images(str(mixed_sizes(tmp_path / "mixed")), num=5, size=8).shape == (5, 3, 8, 8)


def test_reference_cache_is_keyed_by_the_subset_seed(tmp_path):
    photo_patches(tmp_path / "patches")
    tiny = TinyFeatures()
    ref = str(tmp_path / "patches")
    assert reference_key(ref, "test", 10, 8, tiny, seed=0) != reference_key(ref, "test", 10, 8, tiny, seed=1)
    f0 = reference_features(ref, tiny, num=10, size=8, cache_dir=tmp_path / "cache", seed=0)
    f1 = reference_features(ref, tiny, num=10, size=8, cache_dir=tmp_path / "cache", seed=1)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2 and not np.array_equal(f0, f1)


def test_tests_never_write_the_users_fid_cache():
    # tests/conftest.py points BINARYDM_CACHE at a directory of the session, for subprocesses too.
    cache = fidmod.default_cache_dir().resolve()
    assert not cache.is_relative_to((Path.home() / ".cache" / "binarydm").resolve())
    assert os.environ["BINARYDM_CACHE"] and cache.is_relative_to(Path(os.environ["BINARYDM_CACHE"]).resolve())


# ---- keys that contradict each other -----------------------------------------------------------------
@pytest.fixture
def folder(tmp_path):
    return mixed_sizes(tmp_path / "pictures")


def _cfg(tmp_path, folder, name, *overrides):
    return load_config(name, [f"out_dir={tmp_path / 'runs'}", f"data.root={folder}", *overrides])


@pytest.mark.parametrize("overrides, message", [
    (["quant_options={dual_levels: 2}"], "quant=none trains in full precision, so quant_options"),
    (["ebb.enabled=true"], "ebb.enabled=true binarizes with two bases, but quant=none"),
    (["loss.kd_weight=1.0"], "loss.kd_weight=1.0 distils from a full-precision teacher, but quant=none"),
    (["model.subfolder=unet"], "model.subfolder='unet' and model.config are both set"),
    (["eval.fid_samples=13"], "eval.fid_samples=13: the reference folder .* holds only 12 images"),
    (["model.pretrained=some/dir"], "model.pretrained='some/dir' and model.config are both set"),
    (["data.channels=1", "model.config.in_channels=3", "model.config.out_channels=3"],
     "data.channels=1 does not match the UNet's in_channels=3"),
])
def test_conflicting_keys_are_refused_before_anything_runs(tmp_path, folder, overrides, message):
    with pytest.raises(UsageError, match=message):
        check_config(_cfg(tmp_path, folder, "folder_teacher", *TINY, *overrides))
    assert not (tmp_path / "runs").exists()


def test_the_folder_configs_pass_the_checks(tmp_path, folder):
    teacher = _cfg(tmp_path, folder, "folder_teacher", *TINY, "data.channels=1", "eval.fid_samples=12",
                   "eval.features=tiny")
    check_config(teacher)
    # The UNet follows the data keys, and the folder is the FID reference.
    assert teacher.model.config.sample_size == 8 and teacher.model.config.in_channels == 1
    assert teacher.model.config.out_channels == 1 and str(teacher.eval.reference) == str(folder)
    student = _cfg(tmp_path, folder, "folder_w1a4")
    assert student.model.pretrained == "runs/folder_teacher/student" and student.quant == "w1a4"
    assert student.model.config is None and str(student.eval.reference) == str(folder)


# ---- the recipe, end to end ----------------------------------------------------------------------------
def _train(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "binarydm.train", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_folder_recipe_teacher_then_w1a4_student(tmp_path, folder):
    work = tmp_path / "work"
    work.mkdir()
    # The two commands of docs/training.md ("Your own images"), with tiny sizes.
    teacher = _train(work, "config=folder_teacher", f"data.root={folder}", *TINY, *FAST)
    assert teacher.returncode == 0, teacher.stderr[-3000:]
    teacher_dir = work / "runs" / "folder_teacher" / "student"
    import json

    config = json.loads((teacher_dir / "config.json").read_text())
    assert config["sample_size"] == 8 and config["in_channels"] == 3 and "quantization_config" not in config
    student = _train(work, "config=folder_w1a4", f"data.root={folder}", "data.image_size=8", *FAST,
                     "eval.fid_samples=4", "eval.features=tiny", "eval.sample_steps=2")
    assert student.returncode == 0, student.stderr[-3000:]
    run_dir = work / "runs" / "folder_w1a4"
    config = json.loads((run_dir / "student" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "binarydm"
    report = (run_dir / "report.md").read_text()
    assert f"FID against {folder}" in report and "| student |" in report and "| teacher |" in report
    assert (run_dir / "student.packed.safetensors").is_file()
    # The reference features went to the session's cache, keyed by the folder subset's seed.
    assert list(Path(os.environ["BINARYDM_CACHE"]).glob("fid/folder-pictures-*_fitted_n4-seed0_s8_*.npy"))
