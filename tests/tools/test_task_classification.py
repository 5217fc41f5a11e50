"""The suite's classification task: ResNet-20, the data readers, the corruptions, runs end to end on tiny data."""

import gzip
import math

import pytest
import torch
from torch import nn

from suite.tasks import classification as cls
from suite.tasks import common
from suite.tasks.base import Context, RunSpec

# 4/8/16 channels, batches of 32: a run is a second or two on one thread.
TINY = dict(width=0.25, batch_size=32, pretrain_steps=80, eval_size=200, synthetic_size=512)


def spec(algorithm="fp", steps=5, quant=None, train=None, dataset="synthetic", **options):
    return RunSpec.make(task="classification", dataset=dataset, method=algorithm, algorithm=algorithm, quant=quant,
                        train=train, steps=steps, lr=1e-3, options={**TINY, **options})


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    """One cache for the module: the tiny FP model is pretrained once and shared by the runs below."""
    root = tmp_path_factory.mktemp("cls")
    return Context(work_dir=root / "work", cache_dir=root / "cache", progress=False)


# ---- model ------------------------------------------------------------------------------------------
def test_resnet20_structure_and_size():
    model = cls.ResNetCifar(depth=20, width=1.0, in_channels=3, num_classes=10)
    # He et al. 2016, Table 6: ResNet-20 has 0.27M parameters (with projection shortcuts ~0.272M).
    n = sum(p.numel() for p in model.parameters())
    assert 0.26e6 < n < 0.28e6
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 18 + 2  # stem, 9 blocks x 2, two projection shortcuts
    assert model.conv1.in_channels == 3 and model.fc.in_features == 64
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert [len(getattr(model, f"layer{i}")) for i in (1, 2, 3)] == [3, 3, 3]
    assert model.layer2[0].conv1.stride == (2, 2) and model.layer1[0].conv1.stride == (1, 1)
    with pytest.raises(ValueError, match="6n"):
        cls.ResNetCifar(depth=21)


def test_quantize_keeps_first_and_last_layer_and_swaps_relu():
    model = cls.relu_to_hardtanh_(cls.ResNetCifar(width=0.25))
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    student = common.quantize(model, spec("xnor"), keep=cls.KEEP, example=torch.randn(4, 3, 32, 32))
    assert type(student.conv1) is nn.Conv2d and type(student.fc) is nn.Linear
    assert type(student.layer1[0].conv1) is not nn.Conv2d  # swapped for a quantized layer


# ---- data -------------------------------------------------------------------------------------------
def write_idx(path, array, magic):
    header = b"".join(int(v).to_bytes(4, "big") for v in (magic, *array.shape))
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype("uint8").tobytes())


@pytest.fixture
def fake_fashion(tmp_path):
    g = torch.Generator().manual_seed(0)
    data = {}
    for split, n in (("train", 40), ("t10k", 12)):
        images = torch.randint(1, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
        labels = torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8)
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", images.numpy(), 2051)
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", labels.numpy(), 2049)
        data[split] = images, labels
    return tmp_path, data


def test_fashion_mnist_reader_pads_and_reads_labels(fake_fashion):
    root, data = fake_fashion
    for train, key in ((True, "train"), (False, "t10k")):
        split = cls.fashion_mnist(str(root), train)
        images, labels = data[key]
        assert split.images.dtype == torch.uint8 and split.images.shape == (len(labels), 1, 32, 32)
        assert torch.equal(split.images[:, 0, 2:30, 2:30], images)  # centred: 2 pixels of padding each side
        border = torch.ones(32, 32, dtype=torch.bool)
        border[2:30, 2:30] = False
        assert int(split.images[:, 0][:, border].max()) == 0  # the fake images are >= 1: the border is padding
        assert torch.equal(split.labels, labels.long())


def test_fashion_mnist_missing_names_the_option(tmp_path):
    with pytest.raises(FileNotFoundError, match="root"):
        cls.fashion_mnist(str(tmp_path), True)


def test_run_on_fake_fashion_mnist_uses_one_channel(fake_fashion, tmp_path):
    root, _ = fake_fashion
    s = spec("xnor", steps=1, dataset="fashion_mnist", root=str(root), pretrain_steps=2, batch_size=8, eval_size=12)
    r = cls.run(s, Context(tmp_path / "w", tmp_path / "c", progress=False))
    assert r.metric in {100 * k / 12 for k in range(13)}  # 12 test images
    state = torch.load(next((tmp_path / "c").glob("*.pt")), weights_only=True)
    assert state["conv1.weight"].shape[1] == 1


def test_synthetic_is_fixed_and_balanced():
    a, b = cls.synthetic(300, 10, True), cls.synthetic(300, 10, True)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(cls.synthetic(300, 10, False).images, a.images)  # test split differs from train
    assert a.images.shape == (300, 3, 32, 32) and set(a.labels.tolist()) == set(range(10))


def test_batches_are_deterministic_and_augmented_in_range():
    split = cls.synthetic(64, 10, True)
    x1, y1 = cls.batch(split, seed=3, step=7, stream=1, size=16, augment=True)
    x2, y2 = cls.batch(split, seed=3, step=7, stream=1, size=16, augment=True)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    x3, _ = cls.batch(split, seed=3, step=8, stream=1, size=16, augment=True)
    assert not torch.equal(x1, x3)
    assert x1.shape == (16, 3, 32, 32) and x1.min() >= -1 and x1.max() <= 1
    # Without augmentation a batch is exactly the scaled images it indexes.
    x, y = cls.batch(split, seed=3, step=7, stream=0, size=16, augment=False)
    idx = torch.randint(64, (16,), generator=common.seeded(3, 2 * 7 + 0))
    assert torch.equal(x, cls.to_float(split.images[idx])) and torch.equal(y, split.labels[idx])


# ---- corruptions ------------------------------------------------------------------------------------
def test_corruptions_follow_their_formulas():
    g = torch.Generator().manual_seed(0)
    x = 0.5 * torch.rand(8, 3, 32, 32, generator=g) - 0.25  # inside [-1, 1] with room: no clipping
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(cls.corrupt(x, "contrast"), m + 0.4 * (x - m))
    noise = cls.corrupt(x, "gaussian_noise") - x
    assert torch.equal(noise, cls.corrupt(x, "gaussian_noise") - x)  # fixed noise
    assert abs(float(noise.std()) - 0.3) < 0.02 and abs(float(noise.mean())) < 0.02
    flat = torch.full((1, 3, 32, 32), 0.3)
    assert torch.allclose(cls.corrupt(flat, "gaussian_blur"), flat)  # a constant image is unchanged
    blurred = cls.corrupt(x, "gaussian_blur")
    assert blurred.std() < 0.6 * x.std()  # i.i.d. pixels: a sigma-1 blur removes most of the variance
    with pytest.raises(ValueError, match="gaussian_noise"):
        cls.corrupt(x, "fog")


# ---- runs -------------------------------------------------------------------------------------------
def test_fp_run_beats_chance(ctx):
    r = cls.run(spec("fp"), ctx)
    assert r.metric_name == "top1" and r.higher_is_better
    assert r.metric > 40  # chance is 10 %
    assert r.storage_bytes == r.fp_storage_bytes and r.ops == r.fp_ops
    assert set(r.robustness) == set(cls.CORRUPTIONS)
    assert r.wall_s > 0 and math.isfinite(r.extra["train_loss_last"])


@pytest.mark.parametrize("algorithm, quant", [("xnor", {}), ("lmb", {"a_bits": 4})])
def test_quantized_run_is_smaller_and_cheaper(ctx, algorithm, quant):
    r = cls.run(spec(algorithm, quant=quant), ctx)
    assert math.isfinite(r.metric) and 0 <= r.metric <= 100
    assert r.storage_bytes < r.fp_storage_bytes and r.ops < r.fp_ops
    assert set(r.robustness) == set(cls.CORRUPTIONS)
    assert all(0 <= v <= 100 for v in r.robustness.values())


def test_pretrained_model_is_cached_and_runs_are_reproducible(tmp_path):
    c = Context(tmp_path / "work", tmp_path / "cache", progress=False)
    s = spec("xnor", steps=2, pretrain_steps=3, eval_size=64)
    first = cls.run(s, c)
    files = list((tmp_path / "cache").iterdir())
    assert [f.name for f in files] == [cls.pretrained_path(s, {**cls.DEFAULT_OPTIONS, **s.options_dict},
                                                           tmp_path / "cache").name]
    assert first.extra["pretrain_cached"] is False and first.extra["pretrain_s"] > 0
    mtime = files[0].stat().st_mtime_ns
    second = cls.run(s, c)
    assert second.extra["pretrain_cached"] is True and "pretrain_s" not in second.extra
    assert files[0].stat().st_mtime_ns == mtime  # not retrained
    assert second.metric == first.metric and second.robustness == first.robustness
    assert second.extra["train_loss_last"] == first.extra["train_loss_last"]


def test_kd_term_changes_the_loss(ctx):
    # One step: the reported loss is that of the same student on the same batch, CE alone or CE + KL (> 0).
    plain = cls.run(spec("xnor", steps=1), ctx)
    kd = cls.run(spec("xnor", steps=1, train={"kd": 1.0}), ctx)
    assert kd.extra["train_loss_last"] > plain.extra["train_loss_last"] + 1e-4


def test_bad_names_are_clear_errors(ctx):
    with pytest.raises(ValueError, match="fashion_mnist.*cifar10.*synthetic"):
        cls.run(spec(dataset="mnist"), ctx)
    with pytest.raises(ValueError, match="eval_size"):
        cls.run(spec(evalsize=10), ctx)
    with pytest.raises(ValueError, match="kd"):
        cls.run(spec(train={"kdd": 1.0}), ctx)
    with pytest.raises(ValueError, match="10 classes"):
        cls.run(spec(dataset="cifar10", num_classes=5), ctx)
