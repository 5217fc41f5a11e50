"""Issue 14: bad invocations of the four entry points, table-driven.

Each must exit with status 2 and print exactly one line, ``error: ...``, naming the offending key or
file, and no traceback. Most run in-process through ``main`` (a subprocess costs seconds of imports);
a few run as real subprocesses to check the exit status and stderr the shell sees.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import binarydm
from binarydm.packing import export_packed, save_student_dir
from conftest import make_tiny_unet

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "binarydm" / "assets" / "fmnist_teacher"


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    from binarydm.sampling import save_images
    from binarydm.training import load_config
    from binarydm.training.runner import run

    root = tmp_path_factory.mktemp("bad")
    model = make_tiny_unet()
    unet_config = dict(model.config)
    binarydm.binarize_(model, "w1a4")
    binarydm.calibrate_(model, torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)),
                        torch.tensor([1, 250, 500, 999]))
    model.eval()
    p = {"root": root, "packed": export_packed(model, unet_config, "w1a4", root / "m.safetensors")}
    p["corrupt"] = root / "corrupt.safetensors"
    p["corrupt"].write_bytes(p["packed"].read_bytes()[:-100])
    p["edited"] = save_student_dir(model, unet_config, "w1a4", root / "edited")
    qc = p["edited"] / "config.json"
    qc.write_text(qc.read_text().replace('"a_bits": 4', '"a_bits": 5'))
    p["blocker"] = root / "blocker"  # a file where a directory is needed
    p["blocker"].write_text("")
    p["empty"] = root / "empty"
    p["empty"].mkdir()
    p["nodir"] = root / "not-a-student"
    p["nodir"].mkdir()
    (p["nodir"] / "notes.txt").write_text("x")
    images = torch.randint(0, 255, (3, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    p["one"], p["three"], p["killed"] = root / "one", root / "three", root / "killed"
    save_images(images[:1], p["one"])
    save_images(images, p["three"])
    p["mixed"] = root / "mixed"  # images of two sizes
    save_images(images[:2], p["mixed"])
    save_images(torch.zeros(1, 3, 6, 6, dtype=torch.uint8), root / "six")
    (root / "six" / "images" / "00000.png").rename(p["mixed"] / "images" / "zz_small.png")
    p["foreign"] = root / "foreign"
    p["foreign"].mkdir()
    (p["foreign"] / "thesis.tex").write_text("precious")
    save_images(images, root / "killed")
    info = root / "killed" / "sample_info.json"
    info.write_text(json.dumps({"complete": False}))
    p["notpacked"] = root / "results.safetensors"
    p["notpacked"].write_text("my own file")
    # Checkpoints to resume from: a full-precision run (another architecture than W1A4), truncated copy.
    run(load_config("tiny", [f"out_dir={root / 'fp'}", "quant=none", "trainer.max_steps=1", "export=false",
                             "sample.num_images=0"]))
    p["fpckpt"] = root / "fp" / "tiny" / "checkpoints" / "last.ckpt"
    p["truncated"] = root / "truncated.ckpt"
    p["truncated"].write_bytes(p["fpckpt"].read_bytes()[:4096])
    p["teacher"] = TEACHER
    return p


T = "config=tiny"
# (entry point, arguments with {placeholders} from `paths`, what the message must name)
CASES = [
    # ---- train: config values ----
    ("train", [T, "optim.lr=0"], "optim.lr"),
    ("train", [T, "loss.spd_taps=every"], "loss.spd_taps"),
    ("train", [T, "loss.lrm_taps=every"], "loss.lrm_taps"),
    ("train", [T, "optim.lr=-1e-3"], "optim.lr"),
    ("train", [T, "optim.lr=.nan"], "optim.lr"),
    ("train", [T, "optim.lr=.inf"], "optim.lr"),
    ("train", [T, "trainer.max_steps=0"], "trainer.max_steps"),
    ("train", [T, "data.batch_size=0"], "data.batch_size"),
    ("train", [T, "data.batch_size=1000"], "data.batch_size"),
    ("train", [T, "optim.betas=[0.9]"], "optim.betas"),
    ("train", [T, "optim.min_lr_ratio=2"], "optim.min_lr_ratio"),
    ("train", [T, "ema.decay=1.5"], "ema.decay"),
    ("train", [T, "progressive.every=0"], "progressive.every"),
    ("train", [T, "sample.num_inference_steps=0"], "sample.num_inference_steps"),
    ("train", [T, "trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val"),
    ("train", [T, "eval.fid_samples=1"], "eval.fid_samples"),
    ("train", [T, "optim.schedule=linear"], "optim.schedule"),
    ("train", [T, "data.name=imagenet"], "data.name"),
    ("train", [T, "data.channels=2"], "data.channels"),
    ("train", [T, "quant=w3a3"], "quant"),
    ("train", [T, "quant_options.a_bits=0"], "quant"),
    ("train", [T, "quant_options.no_such_field=1"], "quant"),
    ("train", [T, "optim.learning_rate=1"], "optim.learning_rate"),
    ("train", ["config=nope"], "nope"),
    ("train", [T, "trainer.max_steps=many"], "trainer.max_steps"),
    ("train", [T, "name=a/b"], "name"),
    ("train", [T, "overwrite=maybe"], "overwrite"),
    ("train", [T, "trainer.precision=8-bit"], "trainer.precision"),
    ("train", [T, "trainer.devices=3"], "data.batch_size"),
    ("train", [T, "eval.fid_samples=4", "eval.features=tiny", "eval.reference={root}/none"], "eval.reference"),
    ("train", [T, "eval.fid_samples=4", "eval.features=tiny", "eval.reference=fashion-mnist", "eval.split=val"],
     "eval.reference"),
    ("train", [T, "trainer.accelerator=tpu"], "trainer.accelerator"),
    # ---- train: the UNet against the data, conflicting keys, data, paths, resume ----
    ("train", [T, "data.image_size=16"], "data.image_size"),
    ("train", [T, "data.channels=1"], "data.channels"),
    ("train", [T, "model.pretrained={teacher}"], "model.pretrained"),
    ("train", [T, "model.config=null"], "model.pretrained"),
    ("train", [T, "data.name=fashion_mnist", "data.root={empty}"], "data.root"),
    ("train", [T, "data.name=folder", "data.root={root}/none"], "data.root"),
    ("train", [T, "out_dir={blocker}"], "out_dir"),
    ("train", [T, "resume={root}/none.ckpt"], "resume"),
    ("train", [T, "resume={root}"], "resume"),
    ("train", [T, "resume={truncated}"], "resume"),
    ("train", [T, "resume={fpckpt}"], "resume"),
    # ---- sample ----
    ("sample", ["ckpt={packed}", "steps=-1"], "steps"),
    ("sample", ["ckpt={packed}", "guidance_scale=3", "out={root}/g"], "guidance_scale"),
    ("sample", ["ckpt={packed}", "steps=0"], "steps"),
    ("sample", ["ckpt={packed}", "num=0"], "num"),
    ("sample", ["ckpt={packed}", "batch=0"], "batch"),
    ("sample", ["ckpt={packed}", "num=many"], "num"),
    ("sample", ["ckpt={packed}", "nmu=3"], "nmu"),
    ("sample", ["ckpt={packed}", "sampler=euler"], "sampler"),
    ("sample", ["ckpt={packed}", "eta=-1"], "eta"),
    ("sample", ["ckpt={packed}", "steps=5000", "out={root}/s1"], "steps"),
    ("sample", ["ckpt={packed}", "out={blocker}/sub"], "out"),
    ("sample", ["ckpt={packed}", "out={foreign}"], "thesis.tex"),
    ("sample", ["num=3"], "ckpt"),
    ("sample", ["ckpt={root}/none"], "ckpt"),
    ("sample", ["ckpt={nodir}"], "ckpt"),
    ("sample", ["ckpt={corrupt}", "out={root}/s2"], "corrupt.safetensors"),
    ("sample", ["ckpt={edited}", "out={root}/s3"], "config.json"),
    ("sample", ["ckpt={packed}", "positional"], "positional"),
    # ---- export ----
    ("export", [], "ckpt"),
    ("export", ["ckpt={root}/none", "out={root}/x.safetensors"], "ckpt"),
    ("export", ["ckpt={packed}", "out={root}"], "out"),
    ("export", ["ckpt={packed}", "out={blocker}/x.safetensors"], "out"),
    ("export", ["ckpt={packed}", "out={notpacked}"], "out"),
    ("export", ["ckpt={teacher}", "out={root}/t.safetensors"], "ckpt"),
    ("export", ["ckpt={corrupt}", "out={root}/c.safetensors"], "corrupt.safetensors"),
    ("export", ["ckpt={edited}", "out={root}/e.safetensors"], "config.json"),
    ("export", ["ckpt={packed}", "out={root}/v.safetensors", "verify=maybe"], "verify"),
    # ---- fid ----
    ("fid", [], "gen"),
    ("fid", ["gen={root}/none"], "gen"),
    ("fid", ["gen={empty}", "ref={three}", "extractor=tiny"], "gen={empty}"),
    ("fid", ["gen={one}", "ref={three}", "extractor=tiny"], "gen={one}"),
    ("fid", ["gen={three}", "ref={one}", "extractor=tiny"], "ref={one}"),
    ("fid", ["gen={three}", "ref={three}", "num=1"], "num"),
    ("fid", ["gen={three}", "ref={three}", "ref_num=1"], "ref_num"),
    ("fid", ["gen={three}", "ref={three}", "extractor=tiny", "num=10"], "num"),
    ("fid", ["gen={three}", "ref={three}", "backend=fast"], "backend"),
    ("fid", ["gen={three}", "ref={three}", "extractor=resnet"], "extractor"),
    ("fid", ["gen={three}", "ref={root}/none"], "ref"),
    ("fid", ["gen={three}", "ref={three}", "fid.weights={root}/nope.pt"], "fid.weights"),
    ("fid", ["gen={three}", "ref={three}", "json={blocker}/r.json"], "json"),
    ("fid", ["gen={three}", "ref=fashion-mnist", "split=val"], "split"),
    ("fid", ["gen={three}", "ref=fashion-mnist", "size=8"], "size"),
    ("fid", ["gen={three}", "ref={three}", "batch=0"], "batch"),
    ("fid", ["gen={packed}", "ref={three}", "extractor=tiny"], "num"),
    ("fid", ["gen={killed}", "ref={three}", "extractor=tiny"], "sample_info.json"),
    ("fid", ["gen={mixed}", "ref={three}", "extractor=tiny"], "zz_small.png is 6x6"),
    ("fid", ["gen={three}", "ref={three}", "extractor=tiny", "prompt=a bag"], "prompt"),
    ("fid", ["gen={mixed}", "ref={three}", "extractor=tiny", "backend=cleanfid"], "different sizes"),
    ("fid", ["gen={mixed}", "ref={three}", "extractor=tiny", "backend=torchmetrics"], "different sizes"),
]


def _main(entry):
    import importlib

    return importlib.import_module(f"binarydm.{entry}").main


def _expand(args, paths):
    return [a.format(**{k: str(v) for k, v in paths.items()}) for a in args]


def test_the_table_is_large_and_covers_every_entry_point():
    assert len(CASES) >= 40
    assert {c[0] for c in CASES} == {"train", "sample", "export", "fid"}


@pytest.mark.parametrize("entry, args, token", CASES, ids=[f"{c[0]}:{' '.join(c[1])}" for c in CASES])
def test_bad_invocation_is_one_line_and_status_2(paths, capsys, monkeypatch, entry, args, token):
    monkeypatch.delenv("BINARYDM_DEBUG", raising=False)
    monkeypatch.setenv("BINARYDM_CACHE", str(paths["root"] / "cache"))
    argv = _expand(args, paths)
    if entry == "train" and not any(a.startswith("out_dir=") for a in argv):
        argv.append(f"out_dir={paths['root'] / 'runs'}")
    try:
        status = _main(entry)(argv)
    except SystemExit as exit_:
        status = exit_.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert _expand([token], paths)[0] in lines[0], lines[0]
    if entry == "train":  # nothing written: no run directory left behind
        assert not (paths["root"] / "runs").exists()
    assert (paths["foreign"] / "thesis.tex").read_text() == "precious"


@pytest.mark.parametrize("entry, args, token", [
    ("train", [T, "optim.lr=0"], "optim.lr"),
    ("sample", ["ckpt={packed}", "steps=-1"], "steps"),
    ("export", ["ckpt={packed}", "out={notpacked}"], "out"),
    ("export", ["ckpt={teacher}", "out={root}/t.safetensors"], "ckpt"),  # no loader warning before the error
    ("fid", ["gen={empty}", "ref={three}", "extractor=tiny"], "empty"),
])
def test_bad_invocation_as_a_subprocess(paths, entry, args, token):
    argv = _expand(args, paths) + ([f"out_dir={paths['root'] / 'runs'}"] if entry == "train" else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("BINARYDM_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", f"binarydm.{entry}", *argv], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    assert _expand([token], paths)[0] in lines[0]
