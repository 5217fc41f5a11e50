"""The one sampling path and the one grid writer.

:func:`sample_images` draws images from a UNet inside diffusers' own ``DDIMPipeline`` (Song et al. 2021,
deterministic with eta=0) or ``DDPMPipeline`` (Ho et al. 2020, ancestral sampling) with that scheduler, or,
for the UNet of a latent pipeline, inside ``LDMPipeline`` / ``StableDiffusionPipeline`` (decoded by its
autoencoder; prompts and classifier-free guidance for a text-conditioned UNet); :func:`save_grid`
writes a set of images as one PNG grid. Both serve the validation grids of training
(``training.callbacks.SampleGrid``), the final evaluation of a run (``training.final_eval``), the
``python -m binarydm.sample`` command (:func:`sample_to_folder`), FID of a checkpoint
(``evaluation.run``) and the comparison suite.

Image ``i`` of batch ``b`` comes from a generator seeded with ``seed + b``: the same seed, count and
batch size give the same images. A class-conditional UNet gets image i's class from ``labels``
(cycled; default 0, 1, 2, ... mod its classes).

:func:`sample_to_folder` writes ``out/images/00000.png ...`` (each as soon as its batch is made,
atomically), ``out/grid.png`` and ``out/sample_info.json`` (settings and seconds per image;
``"complete": false`` until the last image). Every argument and ``out`` are checked before sampling
starts; an ``out`` holding files it did not write is refused (``overwrite=true`` deletes them); an
earlier sample set in ``out`` is replaced whole, so no stale image survives.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .errors import UsageError
from .packing.files import atomic_path, atomic_write, check_output_path
from .packing.loading import load_for_cli
from .unets import condition_kwargs, conditioned, needs_text, num_classes

# The noise schedule of DDPM (Ho et al. 2020) and of google/ddpm-cifar10-32, used when a checkpoint
# carries no scheduler config of its own.
DEFAULT_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"}
SAMPLERS = ("ddim", "ddpm")


def scheduler_for(sampler: str, scheduler_config: Optional[Mapping[str, Any]] = None):
    """The diffusers scheduler of a sampler name, from the checkpoint's training noise schedule."""
    from diffusers import DDIMScheduler, DDPMScheduler

    config = {k: v for k, v in dict(scheduler_config or DEFAULT_SCHEDULER).items() if not k.startswith("_")}
    if sampler == "ddim":
        return DDIMScheduler.from_config(config)
    if sampler == "ddpm":
        return DDPMScheduler.from_config(config)
    raise ValueError(f"sampler must be 'ddim' or 'ddpm', got {sampler!r}")


def pipeline_for(model: nn.Module, sampler: str, scheduler_config: Optional[Mapping[str, Any]] = None,
                 components=None):
    """The diffusers pipeline that samples ``model``: ``DDIMPipeline`` / ``DDPMPipeline`` in pixel space;
    with a latent pipeline's ``components`` (``binarydm.latent.Components``), ``LDMPipeline`` (it decodes
    with the autoencoder) or, for a text-conditioned UNet, ``StableDiffusionPipeline`` (the text encoder, and
    classifier-free guidance); the scheduler is ``sampler``'s, from the training noise schedule."""
    from diffusers import DDIMPipeline, DDPMPipeline, LDMPipeline, StableDiffusionPipeline

    text = components is not None and components.text
    # StableDiffusionPipeline rewrites any other steps_offset to 1 (with a deprecation warning): say it at once.
    scheduler = scheduler_for(sampler, {**dict(scheduler_config or DEFAULT_SCHEDULER), "steps_offset": 1} if text
                              else scheduler_config)
    if components is None or not components.latent:
        pipe = (DDIMPipeline if sampler == "ddim" else DDPMPipeline)(unet=model.eval(), scheduler=scheduler)
    elif components.text:
        pipe = StableDiffusionPipeline(vae=components.autoencoder, text_encoder=components.text_encoder,
                                       tokenizer=components.tokenizer, unet=model.eval(), scheduler=scheduler,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    else:
        pipe = LDMPipeline(vqvae=components.autoencoder, unet=model.eval(), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)  # one bar over images (sample_images), not one per batch
    return pipe


@torch.no_grad()
def sample_images(model: nn.Module, num: int, steps: int = 100, sampler: str = "ddim", batch: int = 16,
                  seed: int = 0, eta: float = 0.0, scheduler_config: Optional[Mapping[str, Any]] = None,
                  progress: bool = True,
                  on_batch: Optional[Callable[[int, torch.Tensor], None]] = None,
                  labels: Optional[Sequence[int]] = None, components=None,
                  prompts: Optional[Sequence[str]] = None, guidance_scale: float = 1.0,
                  desc: str = "") -> torch.Tensor:
    """DDIM or DDPM sampling through diffusers' pipelines (:func:`pipeline_for`): ``num`` images as uint8
    [N, C, H, W] (decoded by the autoencoder of a latent pipeline's ``components``). A text-conditioned UNet
    takes ``prompts`` (cycled over the images) at ``guidance_scale``; a class-conditional one ``labels``.
    ``on_batch(first_index, images)`` is called with each batch as soon as it is made; ``desc`` names the
    progress bar (before the sampler's name)."""
    from tqdm.auto import tqdm

    pipe = pipeline_for(model, sampler, scheduler_config, components)
    text = components is not None and components.text
    if text and not prompts:
        raise ValueError("a text-conditioned UNet samples from prompts: give prompts")
    if components is not None and components.latent:
        components.to(next(model.parameters()).device)
    device = next(model.parameters()).device
    config = getattr(model, "config", {})
    k = None if text else num_classes(config)
    out = []
    with tqdm(total=num, desc=f"{desc + ' ' if desc else ''}{sampler}-{steps}", unit="img", disable=not progress) as bar:
        for b in range(math.ceil(num / batch)):
            n = min(batch, num - b * batch)
            generator = torch.Generator(device=device).manual_seed(seed + b)
            kwargs = {"eta": eta} if sampler == "ddim" else {}
            cond = {}
            if k is not None:
                cycle = list(labels) if labels else list(range(k))
                cond = condition_kwargs(config, [cycle[(b * batch + j) % len(cycle)] for j in range(n)], device=device)
            if text:
                kwargs.update(prompt=[prompts[(b * batch + j) % len(prompts)] for j in range(n)],
                              guidance_scale=guidance_scale)
            else:
                kwargs["batch_size"] = n
            with conditioned(model, cond):
                images = pipe(generator=generator, num_inference_steps=steps, output_type="np",
                              **kwargs).images  # float [n, H, W, C] in [0, 1]
            out.append(torch.from_numpy(np.round(np.asarray(images) * 255).astype(np.uint8)).permute(0, 3, 1, 2))
            if on_batch is not None:
                on_batch(b * batch, out[-1])
            bar.update(n)
    return torch.cat(out)


# ---- images on disk ------------------------------------------------------------------------------
def grid_image(images: torch.Tensor, pad_value: int = 0, columns: Optional[int] = None) -> torch.Tensor:
    """uint8 images [N, C, H, W] as one uint8 grid [C, H', W']: ``columns`` (default ceil(sqrt(N))) columns,
    1-pixel padding."""
    from torchvision.utils import make_grid

    columns = columns or max(1, math.ceil(math.sqrt(images.shape[0])))
    return make_grid(images, nrow=columns, padding=1, pad_value=pad_value)


def save_png(img: torch.Tensor, path: Path) -> Path:
    """One uint8 [C, H, W] image as a PNG, written atomically (a kill never leaves half a file)."""
    from PIL import Image

    arr = img.permute(1, 2, 0).numpy()
    with atomic_path(path) as tmp:
        Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(tmp, format="PNG")
    return Path(path)


def save_grid(images: torch.Tensor, path: Path, columns: Optional[int] = None) -> Path:
    """uint8 images [N, C, H, W] as one PNG grid (:func:`grid_image`), written atomically."""
    return save_png(grid_image(images, columns=columns), path)


def save_images(images: torch.Tensor, out: Path, grid: int = 64) -> None:
    """PNG files ``out/images/00000.png ...`` and ``out/grid.png`` (the first ``grid`` images)."""
    out = Path(out)
    folder = out / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        save_png(img, folder / f"{i:05d}.png")
    if grid > 0:
        save_grid(images[:grid], out / "grid.png")


# ---- a sample set on disk: the ``python -m binarydm.sample`` command ------------------------------
@dataclass
class SampleArgs:
    """``python -m binarydm.sample ckpt=PATH num=N steps=S sampler=ddim|ddpm batch=B seed=K out=DIR``

    ``ckpt``: a packed file (``python -m binarydm.export``), a student directory, a run directory holding
    ``student/``, a pipeline directory, a training ``.ckpt`` (with its run's config.yaml) or a
    full-precision diffusers model directory (the FP teacher). Writes ``DIR/images/*.png``, ``DIR/grid.png``
    (at most ``grid`` images) and ``DIR/sample_info.json``. ``overwrite=true`` deletes files in ``out`` that
    binarydm.sample did not write. A class-conditional UNet takes ``label=3`` (every image of class 3) or
    ``label=0,1,2`` (cycled over the images); without ``label`` image i has class i mod the classes.
    ``ema=false``: a training ``.ckpt`` of a run that kept an EMA samples its raw weights (docs/training.md:
    for a binarized student the average is no reliable gain). A latent pipeline (a pipeline directory, the
    run or .ckpt of a latent run) samples through its own pipeline and decodes with its autoencoder; a
    text-conditioned one takes ``prompt="a photo of a bag"`` (or a list, cycled) and ``guidance_scale=G``
    (classifier-free guidance; 1: none). ``pipeline=DIR`` names the pipeline whose autoencoder and text encoder
    a bare UNet (a packed file, a unet/ directory) of a latent model is sampled with. ``kernels=true`` runs the
    binarized convolutions on the W1A4 / W1A1 kernels (``binarydm.kernels.inference.w1a4_inference_``: on a
    GPU the CUDA kernels, elsewhere their PyTorch reference, slower); the images equal the default path's to
    float rounding."""

    ckpt: Optional[str] = None
    num: int = 16
    steps: int = 100
    sampler: str = "ddim"
    batch: int = 16
    seed: int = 0
    out: str = "samples"
    eta: float = 0.0
    device: str = "cpu"
    grid: int = 64
    overwrite: bool = False
    label: Any = None
    ema: bool = True
    prompt: Any = None
    guidance_scale: float = 1.0
    pipeline: Optional[str] = None
    kernels: bool = False


OWN_FILES = ("images", "grid.png", "sample_info.json")
_IMAGE_NAME = re.compile(r"^\d{5,}\.png$")


def foreign_files(out: Path) -> list[Path]:
    """Files in ``out`` that no binarydm.sample run wrote (an output without sample_info.json is foreign)."""
    if not out.is_dir():
        return []
    entries = sorted(out.iterdir())
    if entries and not (out / "sample_info.json").is_file():
        return entries
    found = [p for p in entries if p.name not in OWN_FILES]
    images = out / "images"
    if images.is_dir():
        found += [p for p in sorted(images.iterdir()) if not _IMAGE_NAME.match(p.name)
                  and not p.name.endswith(".binarydm-tmp")]
    return found


def prepare_out(out: Path, overwrite: bool, key: str = "out") -> None:
    """Make ``out`` ready to receive a new sample set, or refuse it (one line, naming a foreign file)."""
    check_output_path(out, key, directory=True)
    foreign = foreign_files(out)
    if foreign and not overwrite:
        raise UsageError(f"{key}={out}: holds files binarydm.sample did not write (first: {foreign[0].name}, "
                         f"{len(foreign)} in all); choose a new or empty {key}=, or pass overwrite=true to delete them")
    if out.is_dir():
        # An earlier sample set (or, with overwrite, anything): removed whole, so fid never sees a stale image.
        for child in out.iterdir():
            if overwrite or child.name in OWN_FILES:
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    out.mkdir(parents=True, exist_ok=True)


def parse_labels(value: Any) -> Optional[list[int]]:
    """``label=3``, ``label=0,1,2`` (a string to YAML) or ``label=[0,1,2]`` as a list of ints (None: not given)."""
    if value is None or str(value).strip() == "":
        return None
    items = list(value) if isinstance(value, (list, tuple)) else str(value).split(",")
    try:
        labels = [int(str(v).strip()) for v in items if str(v).strip() != ""]
    except ValueError:
        labels = None
    shown = ",".join(map(str, items))
    if labels is None or any(isinstance(v, (bool, float)) for v in items):
        raise UsageError(f"label={shown}: expected a class number or a comma-separated list (label=3, "
                         "label=0,1,2)")
    if not labels or min(labels) < 0:
        raise UsageError(f"label={shown}: class numbers are integers >= 0")
    return labels


def check_args(args: SampleArgs) -> None:
    """Every argument, before the model is loaded (one line naming the argument)."""
    if args.ckpt is None:
        raise UsageError("ckpt=PATH is required (a packed file, a student directory or a run directory)")
    if not Path(args.ckpt).exists():
        raise UsageError(f"ckpt={args.ckpt}: no such file or directory")
    for key in ("num", "steps", "batch"):
        if getattr(args, key) < 1:
            raise UsageError(f"{key}={getattr(args, key)}: must be at least 1")
    for key in ("grid", "seed"):
        if getattr(args, key) < 0:
            raise UsageError(f"{key}={getattr(args, key)}: must be 0 or more")
    if args.sampler not in SAMPLERS:
        raise UsageError(f"sampler={args.sampler!r}: must be ddim or ddpm")
    if not math.isfinite(args.guidance_scale) or args.guidance_scale < 1:
        raise UsageError(f"guidance_scale={args.guidance_scale}: must be a number >= 1 (1: no guidance)")
    if args.pipeline is not None and not (Path(args.pipeline) / "model_index.json").is_file():
        raise UsageError(f"pipeline={args.pipeline}: not a pipeline directory (no model_index.json)")
    if not math.isfinite(args.eta) or args.eta < 0:
        raise UsageError(f"eta={args.eta}: must be a finite number >= 0 (0: deterministic DDIM)")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise UsageError(f"device={args.device!r}: not a torch device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device={args.device}: no CUDA device is available here; use device=cpu")
    parse_labels(args.label)


def parse_prompts(value: Any) -> Optional[list[str]]:
    """``prompt="a photo of a bag"`` or ``prompt=[..., ...]`` as a list of strings (None: not given)."""
    if value is None:
        return None
    items = [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
    if not items or any(not p.strip() for p in items):
        raise UsageError('prompt: give a non-empty text (prompt="a photo of a bag") or a list of them')
    return items


def check_condition(model: nn.Module, labels: Optional[list[int]], key: str = "ckpt", prompts=None,
                    components=None, guidance_scale: float = 1.0) -> None:
    """The model's need for a condition against the ``label`` / ``prompt`` given (before sampling starts)."""
    config = getattr(model, "config", {})
    k = num_classes(config)
    if needs_text(config):
        if components is None or not components.text:
            raise UsageError(f"{key}: a UNet conditioned on text (cross_attention_dim "
                             f"{config.get('cross_attention_dim')}) without its text encoder: sample its pipeline "
                             "directory (the run's student/), or give pipeline=DIR")
        if not prompts:
            raise UsageError(f'{key}: a text-conditioned model: give prompt="..." (or a list of prompts)')
        if labels is not None:
            raise UsageError(f"label={','.join(map(str, labels))}: the model takes text, not class labels; use prompt=")
        return
    if prompts:
        raise UsageError(f"prompt: the model ({key}) takes no text; drop prompt=")
    if guidance_scale != 1.0:
        raise UsageError(f"guidance_scale={guidance_scale}: classifier-free guidance needs a text-conditioned model; "
                         f"the model ({key}) takes no text: drop guidance_scale=")
    if k is None and labels is not None:
        raise UsageError(f"label={','.join(map(str, labels))}: the model is unconditional (no class labels); drop "
                         "label=")
    if k is not None and labels is not None and max(labels) >= k:
        raise UsageError(f"label={','.join(map(str, labels))}: the model has {k} classes (0 to {k - 1})")


def components_for(configs: Mapping[str, Any], unet_config: Mapping[str, Any], pipeline: Optional[str] = None):
    """The frozen components a loaded UNet is sampled with: ``pipeline``'s when given, else those of the
    pipeline directory it came from, or of the run that trained it (a .ckpt); None in pixel space. A packed
    file that records a latent pipeline is refused without ``pipeline``."""
    from .latent.components import load_components

    if pipeline is not None:
        return load_components(str(pipeline), unet_config)
    if configs.get("pipeline_dir") is not None:
        return load_components(str(configs["pipeline_dir"]), unet_config)
    sources = configs.get("sources")
    if sources and (sources.get("autoencoder") or sources.get("text_encoder")):
        return load_components(sources.get("pretrained"), unet_config, sources.get("autoencoder"),
                               sources.get("text_encoder"))
    if configs.get("latent_pipeline"):
        raise UsageError(f"ckpt: the UNet of a latent pipeline ({configs['latent_pipeline']}): its samples are "
                         "latents; sample the pipeline directory (the run's student/) or give pipeline=DIR")
    return None


def use_kernels(model: nn.Module, device: str) -> dict[str, Any]:
    """Swap the model's binarized convolutions for the kernels' layers (``w1a4_inference_``); how many were
    swapped, of how many, and where they run. A model with none to swap is refused (one line)."""
    from .kernels import cuda
    from .kernels.inference import w1a4_inference_

    report = w1a4_inference_(model)
    swapped = sum(v in ("w1a4", "w1a1") for v in report.values())
    if swapped == 0:
        raise UsageError("kernels=true: the model has no convolution the W1A4 / W1A1 kernels run (a full-precision "
                         "model, or another quantizer); drop kernels=")
    gpu = torch.device(device).type == "cuda" and cuda.is_available()
    return {"swapped": swapped, "convs": len(report), "where": "CUDA kernels" if gpu else "PyTorch reference"}


def sample_to_folder(args: SampleArgs) -> dict[str, Any]:
    """Check everything, sample ``args.num`` images of ``args.ckpt`` into ``args.out``; returns sample_info."""
    check_args(args)
    out = Path(args.out)
    check_output_path(out, "out", directory=True)  # before the model is loaded and anything is sampled
    model, configs = load_for_cli(Path(args.ckpt), ema=args.ema)
    train_steps = int((configs.get("scheduler_config") or DEFAULT_SCHEDULER).get("num_train_timesteps", 1000))
    if args.steps > train_steps:
        raise UsageError(f"steps={args.steps}: more than the {train_steps} timesteps the model was trained with; "
                         f"use steps <= {train_steps}")
    labels = parse_labels(args.label)
    prompts = parse_prompts(args.prompt)
    components = components_for(configs, dict(model.config), args.pipeline)
    check_condition(model, labels, prompts=prompts, components=components, guidance_scale=args.guidance_scale)
    model.to(args.device)
    swapped = use_kernels(model, args.device) if args.kernels else None
    prepare_out(out, args.overwrite)
    info = {**{k: str(v) if isinstance(v, Path) else v for k, v in asdict(args).items()},
            "torch_threads": torch.get_num_threads(), "complete": False}
    if swapped is not None:
        info["kernel_convs"] = swapped
    with atomic_write(out / "sample_info.json", "w") as f:  # marks the folder as ours from the start
        json.dump(info, f, indent=1)
    folder = out / "images"
    folder.mkdir(parents=True, exist_ok=True)

    def write(first: int, images: torch.Tensor) -> None:
        for j, img in enumerate(images):
            save_png(img, folder / f"{first + j:05d}.png")

    start = time.perf_counter()
    with warnings.catch_warnings():
        if swapped is not None:  # the reference's warning: the summary line says where the kernels ran
            warnings.filterwarnings("ignore", message="W1A4 CUDA kernel unavailable")
        images = sample_images(model, args.num, args.steps, args.sampler, args.batch, args.seed, args.eta,
                               configs.get("scheduler_config"), on_batch=write, labels=labels,
                               components=components, prompts=prompts, guidance_scale=args.guidance_scale)
    elapsed = time.perf_counter() - start
    if args.grid > 0:
        save_grid(images[:args.grid], out / "grid.png")
    info.update({"seconds": round(elapsed, 3), "seconds_per_image": round(elapsed / images.shape[0], 4),
                 "complete": True})
    with atomic_write(out / "sample_info.json", "w") as f:
        json.dump(info, f, indent=1)
    return info


__all__ = ["DEFAULT_SCHEDULER", "SampleArgs", "check_condition", "foreign_files", "grid_image", "parse_labels",
           "prepare_out", "sample_images", "sample_to_folder", "save_grid", "save_images", "save_png",
           "scheduler_for"]
