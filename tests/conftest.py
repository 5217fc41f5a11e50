"""Shared fixtures: tiny diffusers UNets built from a config (no download), offline by default."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# binarydm's disk cache (FID reference features: binarydm.evaluation.fid.default_cache_dir) goes to a
# directory of this test session, for the subprocesses the tests start too: never ~/.cache/binarydm.
TEST_CACHE = tempfile.mkdtemp(prefix="binarydm-test-cache-")
os.environ["BINARYDM_CACHE"] = TEST_CACHE
atexit.register(shutil.rmtree, TEST_CACHE, ignore_errors=True)

import pytest  # noqa: E402
import torch  # noqa: E402

# Two resolution levels, attention at the inner one: every structural case of the real UNet
# (down/up/mid blocks, attention, up/down-samplers, time embedding) at a few thousand parameters.
TINY_UNET = dict(
    sample_size=8,
    in_channels=3,
    out_channels=3,
    block_out_channels=(8, 16),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=4,
    attention_head_dim=8,
)


def make_tiny_unet(seed: int = 0, **overrides):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(**{**TINY_UNET, **overrides})


@pytest.fixture(autouse=True)
def _one_thread():
    """Tests use tiny tensors: one intra-op thread avoids OpenMP spin-waiting on a shared 2-core CPU
    (the training tests ran 10x slower with torch's default threads while other jobs ran)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_unet():
    return make_tiny_unet()


@pytest.fixture
def unet_batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([1, 250, 500, 999])
    return x, t


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
