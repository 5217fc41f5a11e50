"""The built wheel carries configs/ and cuda/ as package data and runs a tiny training outside the checkout."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What a build reads: the metadata, the package and the two directories mapped into it (setup.py).
SOURCES = ("pyproject.toml", "setup.py", "README.md", "binarydm", "configs", "cuda")

PROBE = """
import json, binarydm, binarydm.resources as r
from binarydm.kernels import cuda
print(json.dumps(dict(file=binarydm.__file__, configs=str(r.config_dir()), cuda=str(r.cuda_dir()),
                      cu=sorted(p.name for p in r.cuda_dir().glob("*.cu*")),
                      spliced=not [l for l in cuda.cuda_source().splitlines() if l.lstrip().startswith("#include")],
                      yaml=sorted(p.name for p in r.config_dir().glob("*.yaml")),
                      source_chars=len(cuda.cuda_source()), bmma_chars=len(cuda.cuda_source(cuda.BMMA_SOURCE)))))
"""


def test_the_checkout_finds_its_configs_and_cuda_sources():
    # The editable install (install.sh) maps binarydm/ only: the files are the checkout's top-level ones.
    from binarydm import resources

    assert resources.config_dir().resolve() == (ROOT / "configs").resolve()
    assert resources.cuda_dir().resolve() == (ROOT / "cuda").resolve()
    assert (resources.cuda_dir() / "w1a4_conv.cu").is_file() and (resources.config_dir() / "tiny.yaml").is_file()


def _copy_sources(dst: Path) -> None:
    """The build runs on a copy, so that setuptools' build/ and egg-info never land in the checkout."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "build", "*.egg-info")
    for name in SOURCES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=ignore)
        else:
            shutil.copy2(src, dst / name)


@pytest.mark.slow
def test_wheel_outside_the_checkout_trains_and_finds_the_cuda_sources(tmp_path):
    src, wheels, target, elsewhere = (tmp_path / d for d in ("src", "wheels", "site", "elsewhere"))
    for d in (src, elsewhere):
        d.mkdir()
    _copy_sources(src)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("binarydm-*.whl")
    install = subprocess.run(pip + ["install", "--no-deps", "--target", str(target), str(wheel)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]

    # PYTHONPATH puts the installed copy before site-packages, where the editable install of the checkout
    # is; the probe below checks that it really is the copy that runs.
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    probe = subprocess.run([sys.executable, "-c", PROBE], cwd=elsewhere, env=env, capture_output=True, text=True,
                           timeout=300)
    assert probe.returncode == 0, probe.stderr[-3000:]
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    package = target / "binarydm"
    assert Path(found["file"]).resolve().is_relative_to(package.resolve()), found["file"]
    assert Path(found["configs"]).resolve() == (package / "configs").resolve()
    assert Path(found["cuda"]).resolve() == (package / "cuda").resolve()
    assert {"w1a4_conv.cu", "w1a4_bmma.cu", "w1a4_common.cuh"} <= set(found["cu"])
    assert found["spliced"]  # the header is there for the NVRTC text to take it in
    assert {"tiny.yaml", "demo.yaml", "folder_teacher.yaml"} <= set(found["yaml"])
    assert found["source_chars"] > 1000 and found["bmma_chars"] > 1000
    assert not list(package.glob("cuda/build")), "cubins of the build machine must not ship"

    train = subprocess.run([sys.executable, "-m", "binarydm.train", "config=tiny", f"out_dir={tmp_path / 'runs'}",
                            "trainer.max_steps=2", "trainer.val_check_interval=2",
                            "trainer.checkpoint_every_n_steps=2", "sample.num_images=2"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    run_dir = tmp_path / "runs" / "tiny"
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert (run_dir / "student").is_dir()
    assert not (elsewhere / "runs").exists()
