"""BiBench's image-classification task: ResNet-20 on Fashion-MNIST, CIFAR-10 or synthetic images.

BiBench (Qin et al., "BiBench: Benchmarking and Analyzing Network Binarization", ICML 2023)
binarizes a CIFAR ResNet-20 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016)
starting from a full-precision checkpoint, keeps the first and the last layer in full precision,
and reports top-1 accuracy, plus accuracy under input corruptions (its robustness track, after
Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions", ICLR 2019).

Recipe of one run:
  1. a full-precision ResNet-20 is pretrained for ``pretrain_steps`` (AdamW, lr 1e-3, cosine; a
     fixed recipe, independent of the run's) and cached in ``ctx.cache_dir``;
  2. ``fp``: that model fine-tuned for ``spec.steps`` with the run's recipe (so the FP row's wall
     time is comparable); otherwise ``common.quantize`` of it (``conv1`` and ``fc`` kept) trained
     for ``spec.steps`` with cross-entropy, plus optionally the train key ``kd`` times plain
     distillation from the FP model (Hinton et al. 2015), KL(softmax(z_fp) || softmax(z_student))
     (DB-LLM's ``deviation_aware_distillation`` with uniform weights, T = 1);
  3. top-1 (%) on the first ``eval_size`` test images, clean and under each of CORRUPTIONS.

``wall_s`` times step 2 (quantization, calibration, training), neither pretraining nor evaluation.

As in BiBench's binarized configs (``act_cfg=dict(type='Hardtanh')`` over a ReLU checkpoint), a
quantized student's ReLUs become Hardtanh: sign() of a ReLU output is +1 everywhere, so a 1-bit
activation after ReLU would carry no information.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from binarydm.algorithms.dad import deviation_aware_distillation
from binarydm.datasets import read_cifar10, read_idx

from . import common
from .base import FP, Context, RunResult, RunSpec, merged_options

DATASETS = ("fashion_mnist", "cifar10", "synthetic")
METRIC = "top1"
HIGHER_IS_BETTER = True
CORRUPTIONS = ("gaussian_noise", "gaussian_blur", "contrast")
KEEP = ("conv1", "fc")  # BiBench keeps the first and the last layer in full precision
DEFAULT_OPTIONS: dict[str, Any] = {
    "batch_size": 128,
    "eval_size": 2000,       # test images evaluated (the first ones of the test split)
    "pretrain_steps": 1000,  # steps of the cached full-precision model
    "width": 1.0,            # channel multiplier of the stages' 16/32/64 channels
    "depth": 20,             # 6n + 2
    "root": None,            # data directory; None: /usr/share/datasets/fashion-mnist or ./data (CIFAR-10)
    "download": False,       # CIFAR-10 only
    "num_classes": 10,       # must be 10 for the real datasets
    "synthetic_size": 4096,  # synthetic training images (its test images: eval_size)
}
TRAIN_OPTIONS: dict[str, Any] = {"kd": 0.0}  # weight of the distillation term from the FP model's logits
PRETRAIN_LR = 1e-3


# ---- model --------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """act(BN(conv3x3(act(BN(conv3x3(x))))) + shortcut(x)); the shortcut is a 1x1 conv + BN when the
    shape changes (He et al. 2016, option B)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = nn.ReLU()
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(out)) + self.downsample(x))


class ResNetCifar(nn.Module):
    """The CIFAR ResNet (He et al. 2016, Sec. 4.2): 3x3 stem, three stages of (depth - 2) / 6 blocks
    at 16, 32, 64 channels (times ``width``; stride 2 entering stages 2 and 3), global average pool, fc."""

    def __init__(self, depth: int = 20, width: float = 1.0, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"ResNet depth must be 6n + 2 (20, 32, 44, ...), got {depth}")
        channels = [max(1, round(c * width)) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        self.act1 = nn.ReLU()
        cin = channels[0]
        for i, cout in enumerate(channels):
            blocks = [BasicBlock(cin if j == 0 else cout, cout, 2 if i > 0 and j == 0 else 1)
                      for j in range((depth - 2) // 6)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            cin = cout
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean(dim=(2, 3)))


def relu_to_hardtanh_(model: nn.Module) -> nn.Module:
    """Replace every ReLU module by Hardtanh(-1, 1), in place (BiBench's binarized ResNet configs)."""
    for name, child in model.named_children():
        if isinstance(child, nn.ReLU):
            setattr(model, name, nn.Hardtanh())
        else:
            relu_to_hardtanh_(child)
    return model


# ---- data ---------------------------------------------------------------------------------------
class Split(NamedTuple):
    images: torch.Tensor  # uint8 (N, C, 32, 32)
    labels: torch.Tensor  # int64 (N,)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float() / 127.5 - 1.0


def fashion_mnist(root: str, train: bool) -> Split:
    """Fashion-MNIST (Xiao et al. 2017) from its IDX files: 1 x 28 x 28 zero-padded to 32 x 32."""
    from binarydm.training import data

    try:
        images = data.fashion_mnist(root, train, image_size=32, channels=1).images
    except data.DatasetNotFoundError as err:
        raise data.DatasetNotFoundError(f"classification option root={root!r}: {err}") from None
    stem = "train-labels-idx1-ubyte" if train else "t10k-labels-idx1-ubyte"
    directory = Path(root)
    candidates = [d / name for d in (directory, directory / "FashionMNIST" / "raw") for name in (stem, f"{stem}.gz")]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise data.DatasetNotFoundError(f"Fashion-MNIST labels not found: no {stem}[.gz] in option root={root!r}")
    labels = read_idx(path).long()  # torchvision's IDX parser reads 1-D label files too
    if labels.shape != (images.shape[0],):
        raise ValueError(f"{path}: {tuple(labels.shape)} labels for {images.shape[0]} images")
    return Split(images, labels)


def cifar10(root: str, train: bool, download: bool) -> Split:
    """CIFAR-10 (Krizhevsky 2009) through torchvision."""
    return Split(*read_cifar10(root, train, download, root_option="option root", download_option="option download=True"))


def synthetic(n: int, num_classes: int, train: bool) -> Split:
    """Class templates plus per-image clutter: x = clip(0.6 t_y + 0.3 s + 0.2 e, -1, 1).

    t_c and s: smooth random images (4x4 uniform noise in [-1, 1] upsampled bilinearly to 32x32),
    t_c fixed per class, s drawn per image; e: white Gaussian noise. The dataset is a fixed
    function of (n, num_classes, split), not of the run's seed, like a real dataset.
    """
    g = common.seeded(0, 1)
    templates = F.interpolate(torch.rand(num_classes, 3, 4, 4, generator=g) * 2 - 1, size=32, mode="bilinear")
    g = common.seeded(0, 2 if train else 3)
    labels = torch.randint(num_classes, (n,), generator=g)
    clutter = F.interpolate(torch.rand(n, 3, 4, 4, generator=g) * 2 - 1, size=32, mode="bilinear")
    x = (0.6 * templates[labels] + 0.3 * clutter + 0.2 * torch.randn(n, 3, 32, 32, generator=g)).clamp(-1, 1)
    return Split(((x + 1) * 127.5).round().to(torch.uint8), labels)


def load(dataset: str, options: dict[str, Any], train: bool) -> Split:
    if dataset == "fashion_mnist":
        from binarydm.training.data import FASHION_MNIST_DIR

        return fashion_mnist(options["root"] or FASHION_MNIST_DIR, train)
    if dataset == "cifar10":
        return cifar10(options["root"] or "data", train, options["download"])
    return synthetic(options["synthetic_size"] if train else options["eval_size"], options["num_classes"], train)


def batch(split: Split, seed: int, step: int, stream: int, size: int,
          augment: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Training batch ``step`` (``size`` images drawn with replacement), a pure function of its arguments.

    ``stream`` separates the pretraining batches (0) from the run's (1). ``augment``: CIFAR-10's
    random 32x32 crop of the 4-pixel zero-padded image and horizontal flip (He et al. 2016).
    """
    g = common.seeded(seed, 2 * step + stream)
    idx = torch.randint(len(split.labels), (size,), generator=g)
    x = split.images[idx]
    if augment:
        padded = F.pad(x, (4, 4, 4, 4))
        ij = torch.randint(0, 9, (size, 2), generator=g).tolist()
        x = torch.stack([padded[k, :, i:i + 32, j:j + 32] for k, (i, j) in enumerate(ij)])
        flip = (torch.rand(size, generator=g) < 0.5).view(-1, 1, 1, 1)
        x = torch.where(flip, x.flip(-1), x)
    return to_float(x), split.labels[idx]


# ---- evaluation ---------------------------------------------------------------------------------
def corrupt(x: torch.Tensor, name: str) -> torch.Tensor:
    """``x`` (float, [-1, 1]) under one corruption, clipped to [-1, 1]:

    gaussian_noise: x + N(0, 0.3^2) (fixed noise, the same for every run);
    gaussian_blur:  5x5 Gaussian kernel, sigma 1;
    contrast:       m + 0.4 (x - m), m the mean of each image.
    """
    if name == "gaussian_noise":
        out = x + 0.3 * torch.randn(x.shape, generator=common.seeded(0, 4))
    elif name == "gaussian_blur":
        from torchvision.transforms.functional import gaussian_blur

        out = gaussian_blur(x, kernel_size=[5, 5], sigma=[1.0, 1.0])
    elif name == "contrast":
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        out = m + 0.4 * (x - m)
    else:
        raise ValueError(f"unknown corruption {name!r}; valid: {list(CORRUPTIONS)}")
    return out.clamp(-1, 1)


@torch.no_grad()
def top1(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """Top-1 accuracy in % of ``model`` (in eval mode) on float images ``x``."""
    was = model.training
    model.eval()
    correct = sum(int((model(xb).argmax(dim=1) == yb).sum())
                  for xb, yb in zip(x.split(batch_size), y.split(batch_size)))
    model.train(was)
    return 100.0 * correct / len(y)


# ---- the run ------------------------------------------------------------------------------------
def _options(spec: RunSpec) -> dict[str, Any]:
    options = merged_options(spec, "classification", DATASETS, DEFAULT_OPTIONS, TRAIN_OPTIONS)
    if spec.dataset != "synthetic" and options["num_classes"] != 10:
        raise ValueError(f"{spec.dataset} has 10 classes; option num_classes={options['num_classes']}")
    return options


def pretrained_path(spec: RunSpec, options: dict[str, Any], cache_dir: Path) -> Path:
    """Cache file of the pretrained FP model: everything its training depends on is in the name."""
    data = {k: options[k] for k in ("batch_size", "num_classes", "root", "synthetic_size")}
    digest = hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:8]
    name = (f"classification-{spec.dataset}-w{options['width']}-d{options['depth']}"
            f"-p{options['pretrain_steps']}-s{spec.seed}-{digest}.pt")
    return Path(cache_dir) / name


def _pretrained(spec: RunSpec, options: dict[str, Any], train: Split, ctx: Context) -> tuple[nn.Module, dict]:
    """The cached FP model, trained now if absent; and extra fields saying which."""
    model = ResNetCifar(options["depth"], options["width"], train.images.shape[1], options["num_classes"])
    path = pretrained_path(spec, options, ctx.cache_dir)
    if path.is_file():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model, {"pretrain_cached": True}
    recipe = RunSpec(task=spec.task, dataset=spec.dataset, method="pretrain", algorithm=FP,
                     steps=options["pretrain_steps"], lr=PRETRAIN_LR, optimizer="adamw", seed=spec.seed)
    augment = spec.dataset == "cifar10"

    def loss_fn(step: int) -> torch.Tensor:
        x, y = batch(train, spec.seed, step, 0, options["batch_size"], augment)
        return F.cross_entropy(model(x), y)

    start = time.perf_counter()
    common.train_steps(model, loss_fn, recipe, progress=ctx.progress, desc=f"{spec.task}/pretrain")
    seconds = time.perf_counter() - start
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)  # atomic: a killed run never leaves a half-written model for the next one
    return model, {"pretrain_cached": False, "pretrain_s": seconds}


def pretrained_classifier(dataset: str, cache_dir: Path, pretrain_steps: int = 1000, seed: int = 0,
                          progress: bool = True) -> tuple[nn.Module, float]:
    """The task's full-precision ResNet-20 of ``dataset`` (cached; trained now if absent), in eval mode, and its
    top-1 (%) on the first ``eval_size`` test images: the judge of class-conditional and text-to-image samples
    (tools/prompt_accuracy.py)."""
    spec = RunSpec.make(task="classification", dataset=dataset, method="pretrain", algorithm=FP, seed=seed,
                        options={"pretrain_steps": pretrain_steps})
    options = _options(spec)
    train, test = load(dataset, options, True), load(dataset, options, False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, _ = _pretrained(spec, options, train, Context(Path(cache_dir), Path(cache_dir), progress))
    x, y = to_float(test.images[:options["eval_size"]]), test.labels[:options["eval_size"]]
    return model.eval(), top1(model, x, y, options["batch_size"])


def run(spec: RunSpec, ctx: Context) -> RunResult:
    """Train and evaluate one classification run (see the module docstring)."""
    options = _options(spec)
    kd = float(spec.train_dict.get("kd", TRAIN_OPTIONS["kd"]))
    train, test = load(spec.dataset, options, True), load(spec.dataset, options, False)
    if options["eval_size"] > len(test.labels):
        raise ValueError(f"option eval_size={options['eval_size']} exceeds the {len(test.labels)} test images")
    augment = spec.dataset == "cifar10"
    # Model initialisation and quantizer set-up draw from the global RNG: seed it, and leave the caller's alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        teacher, extra = _pretrained(spec, options, train, ctx)
        teacher.eval()
        example, _ = batch(train, spec.seed, 0, 1, options["batch_size"], augment)

        torch.manual_seed(spec.seed)  # again: loading the cached model instead of initialising one draws nothing
        start = time.perf_counter()
        base = teacher if spec.algorithm == FP else relu_to_hardtanh_(copy.deepcopy(teacher))
        student = common.quantize(base, spec, keep=KEEP, example=example)

        def loss_fn(step: int) -> torch.Tensor:
            x, y = batch(train, spec.seed, step, 1, options["batch_size"], augment)
            logits = student(x)
            loss = F.cross_entropy(logits, y)
            if kd:
                with torch.no_grad():
                    target = teacher(x)
                loss = loss + kd * deviation_aware_distillation(logits, target, weighting="uniform")
            return loss

        losses = common.train_steps(student, loss_fn, spec, progress=ctx.progress)
        wall_s = time.perf_counter() - start

    x, y = to_float(test.images[:options["eval_size"]]), test.labels[:options["eval_size"]]
    bs = options["batch_size"]
    robustness = {name: top1(student, corrupt(x, name), y, bs) for name in CORRUPTIONS}
    return RunResult(metric=top1(student, x, y, bs), metric_name=METRIC, higher_is_better=HIGHER_IS_BETTER,
                     wall_s=wall_s, **common.complexity(student, x[:1]), robustness=robustness,
                     extra={"train_loss_last": losses[-1] if losses else None, **extra})


__all__ = ["CORRUPTIONS", "DATASETS", "DEFAULT_OPTIONS", "HIGHER_IS_BETTER", "KEEP", "METRIC", "TRAIN_OPTIONS",
           "BasicBlock", "ResNetCifar", "Split", "batch", "cifar10", "corrupt", "fashion_mnist", "load",
           "pretrained_classifier", "pretrained_path", "relu_to_hardtanh_", "run", "synthetic", "to_float", "top1"]
