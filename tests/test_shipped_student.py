"""The shipped W1A4 student of the shipped Fashion-MNIST teacher: a packed 1-bit file that samples right after install."""

import json
import subprocess
import sys
from pathlib import Path

import torch

import binarydm
from binarydm.quant import quant_layers
from binarydm.quant.lmb import LMB

ROOT = Path(__file__).resolve().parents[1]
ASSET = ROOT / "binarydm" / "assets" / "fmnist_w1a4.packed.safetensors"


def test_shipped_student_is_a_small_binarized_w1a4_unet():
    assert ASSET.is_file() and ASSET.stat().st_size < 1_000_000  # the bound: well under 1 MB
    model = binarydm.load(ASSET)
    layers = [m for _, m in quant_layers(model)]
    lmbs = [m.weight_quantizer for m in layers if isinstance(m.weight_quantizer, LMB)]
    assert len(lmbs) > 40 and all(q.enabled for q in lmbs)  # binarized, not full precision
    assert {m.act_quantizer.bits for m in layers if isinstance(m.weight_quantizer, LMB)} == {4}  # W1A4
    x, t = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 900])
    with torch.no_grad():
        out = model(x, t).sample
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_shipped_student_samples_from_the_cli(tmp_path):
    out = tmp_path / "samples"
    subprocess.run([sys.executable, "-m", "binarydm.sample", f"ckpt={ASSET}", "num=2", "steps=2", "batch=2",
                    f"out={out}"], check=True, cwd=tmp_path, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                                                                    "OMP_NUM_THREADS": "1"})
    assert len(list((out / "images").glob("*.png"))) == 2
    assert json.loads((out / "sample_info.json").read_text())["complete"] is True
