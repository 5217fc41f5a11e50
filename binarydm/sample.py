"""``python -m binarydm.sample ckpt=PATH num=N steps=S sampler=ddim|ddpm batch=B seed=K out=DIR``

Generates images with a binarized UNet inside diffusers' own ``DDIMPipeline`` (Song et al. 2021,
deterministic with eta=0) or ``DDPMPipeline`` (Ho et al. 2020, ancestral sampling). ``ckpt`` is a
packed file (``python -m binarydm.export``), a student directory (``config.json`` with binarydm's
``quantization_config`` + ``diffusion_pytorch_model.safetensors``, or the earlier ``student.safetensors`` +
``quant_config.json`` + ``unet_config.json``; a run directory holding ``student/`` works too) or a
full-precision diffusers model directory (the FP teacher). Writes ``DIR/images/00000.png ...`` (each as soon as its batch is made, atomically), ``DIR/grid.png`` and
``DIR/sample_info.json`` (settings and seconds per image; ``"complete": false`` until the last image).
Every argument and ``out`` are checked before sampling starts. An ``out`` holding files this command did
not write is refused (``overwrite=true`` deletes them); an earlier ``binarydm.sample`` output in ``out`` is
replaced whole, so no stale image survives.

Image ``i`` of batch ``b`` comes from a generator seeded with ``seed + b``: the same seed, count
and batch size give the same images. A class-conditional UNet takes ``label=3`` (every image of class 3)
or ``label=0,1,2`` (cycled over the images); without ``label`` image i has class i mod the classes.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
import re
import shutil
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .errors import UsageError, one_line, run_main

# The noise schedule of DDPM (Ho et al. 2020) and of google/ddpm-cifar10-32, used when a checkpoint
# carries no scheduler config of its own.
DEFAULT_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"}

DEFAULTS = {
    "ckpt": None,
    "num": 16,
    "steps": 100,
    "sampler": "ddim",
    "batch": 16,
    "seed": 0,
    "out": "samples",
    "eta": 0.0,
    "device": "cpu",
    "grid": 64,  # at most this many images in grid.png
    "overwrite": False,  # delete files in out that binarydm.sample did not write
    "label": None,  # class-conditional UNets: a class (3) or classes cycled over the images (0,1,2); default all
}


def parse_args(argv: Sequence[str], defaults: Mapping[str, Any], usage: str) -> dict[str, Any]:
    """``key=value`` arguments over ``defaults``; a value takes the type of its default (int, float,
    bool; a None default gives a string). An unknown key is an error that lists the valid ones."""
    args = dict(defaults)
    for item in argv:
        if item in ("-h", "--help"):
            print(usage)
            raise SystemExit(0)
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"argument {item!r} is not key=value (see --help)")
        if key not in args:
            raise UsageError(f"unknown argument {key!r}; valid: {', '.join(sorted(args))}")
        kind = type(defaults[key])
        try:
            if kind is bool:
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                args[key] = value.lower() in ("true", "1", "yes")
            elif kind in (int, float):
                args[key] = kind(value)
            else:
                args[key] = value if value not in ("", "null", "none") else None
        except ValueError:
            raise UsageError(f"argument {key}={value!r}: expected a {kind.__name__}") from None
    return args


def scheduler_for(sampler: str, scheduler_config: Optional[Mapping[str, Any]] = None):
    """The diffusers scheduler of a sampler name, from the checkpoint's training noise schedule."""
    from diffusers import DDIMScheduler, DDPMScheduler

    config = {k: v for k, v in dict(scheduler_config or DEFAULT_SCHEDULER).items() if not k.startswith("_")}
    if sampler == "ddim":
        return DDIMScheduler.from_config(config)
    if sampler == "ddpm":
        return DDPMScheduler.from_config(config)
    raise ValueError(f"sampler must be 'ddim' or 'ddpm', got {sampler!r}")


@torch.no_grad()
def sample_images(model: nn.Module, num: int, steps: int = 100, sampler: str = "ddim", batch: int = 16,
                  seed: int = 0, eta: float = 0.0, scheduler_config: Optional[Mapping[str, Any]] = None,
                  progress: bool = True,
                  on_batch: Optional[Callable[[int, torch.Tensor], None]] = None,
                  labels: Optional[Sequence[int]] = None) -> torch.Tensor:
    """``num`` images from ``model`` as uint8 [N, C, H, W], sampled by diffusers' pipelines.
    ``on_batch(first_index, images)`` is called with each batch as soon as it is made.

    A class-conditional UNet (``binarydm.unets.num_classes``) gets image i's class from ``labels``
    (cycled; default 0, 1, 2, ...), passed to every UNet call of the pipeline."""
    from diffusers import DDIMPipeline, DDPMPipeline
    from tqdm.auto import tqdm

    from .unets import condition_kwargs, conditioned, num_classes

    scheduler = scheduler_for(sampler, scheduler_config)
    pipe = (DDIMPipeline if sampler == "ddim" else DDPMPipeline)(unet=model.eval(), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)  # one bar over images below, not one per batch
    device = next(model.parameters()).device
    out = []
    with tqdm(total=num, desc=f"{sampler}-{steps}", unit="img", disable=not progress) as bar:
        for b in range(math.ceil(num / batch)):
            n = min(batch, num - b * batch)
            generator = torch.Generator(device=device).manual_seed(seed + b)
            kwargs = {"eta": eta} if sampler == "ddim" else {}
            cond = {}
            config = getattr(model, "config", {})
            if num_classes(config) is not None:
                k = num_classes(config)
                cycle = list(labels) if labels else list(range(k))
                batch_labels = [cycle[(b * batch + j) % len(cycle)] for j in range(n)]
                cond = condition_kwargs(config, batch_labels, device=device)
            with conditioned(model, cond):
                images = pipe(batch_size=n, generator=generator, num_inference_steps=steps, output_type="np",
                              **kwargs).images  # float [n, H, W, C] in [0, 1]
            out.append(torch.from_numpy(np.round(np.asarray(images) * 255).astype(np.uint8)).permute(0, 3, 1, 2))
            if on_batch is not None:
                on_batch(b * batch, out[-1])
            bar.update(n)
    return torch.cat(out)


def _save_png(img: torch.Tensor, path: Path) -> None:
    """One uint8 [C, H, W] image as a PNG, written atomically (a kill never leaves half a file)."""
    from PIL import Image

    from .packing.format import atomic_path

    arr = img.permute(1, 2, 0).numpy()
    with atomic_path(path) as tmp:
        Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(tmp, format="PNG")


def save_grid(images: torch.Tensor, path: Path) -> None:
    from torchvision.utils import make_grid

    g = make_grid(images, nrow=max(1, int(math.ceil(math.sqrt(images.shape[0])))), padding=1)
    _save_png(g, path)


def save_images(images: torch.Tensor, out: Path, grid: int = 64) -> None:
    """PNG files ``out/images/00000.png ...`` and ``out/grid.png`` (the first ``grid`` images)."""
    out = Path(out)
    folder = out / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        _save_png(img, folder / f"{i:05d}.png")
    if grid > 0:
        save_grid(images[:grid], out / "grid.png")


# ---- checks before sampling --------------------------------------------------------------------
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
    from .packing.format import check_output_path

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


def check_args(args: Mapping[str, Any]) -> None:
    """Every argument, before the model is loaded (one line naming the argument)."""
    if args["ckpt"] is None:
        raise UsageError("ckpt=PATH is required (a packed file, a student directory or a run directory)")
    if not Path(args["ckpt"]).exists():
        raise UsageError(f"ckpt={args['ckpt']}: no such file or directory")
    for key in ("num", "steps", "batch"):
        if int(args[key]) < 1:
            raise UsageError(f"{key}={args[key]}: must be at least 1")
    for key in ("grid", "seed"):
        if int(args[key]) < 0:
            raise UsageError(f"{key}={args[key]}: must be 0 or more")
    if args["sampler"] not in ("ddim", "ddpm"):
        raise UsageError(f"sampler={args['sampler']!r}: must be ddim or ddpm")
    eta = float(args["eta"])
    if not math.isfinite(eta) or eta < 0:
        raise UsageError(f"eta={args['eta']}: must be a finite number >= 0 (0: deterministic DDIM)")
    try:
        device = torch.device(str(args["device"]))
    except RuntimeError:
        raise UsageError(f"device={args['device']!r}: not a torch device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device={args['device']}: no CUDA device is available here; use device=cpu")
    parse_labels(args.get("label"))


def parse_labels(value: Any) -> Optional[list[int]]:
    """``label=3`` or ``label=0,1,2`` as a list of ints (None: not given)."""
    if value is None or str(value).strip() == "":
        return None
    try:
        labels = [int(v) for v in str(value).split(",") if v.strip() != ""]
    except ValueError:
        raise UsageError(f"label={value}: expected a class number or a comma-separated list (label=3, "
                         "label=0,1,2)") from None
    if not labels or min(labels) < 0:
        raise UsageError(f"label={value}: class numbers are integers >= 0")
    return labels


def check_condition(model: nn.Module, labels: Optional[list[int]], key: str = "ckpt") -> None:
    """The model's need for a condition against the ``label`` given (before sampling starts)."""
    from .unets import needs_text, num_classes

    config = getattr(model, "config", {})
    k = num_classes(config)
    if needs_text(config):
        raise UsageError(f"{key}: a UNet2DConditionModel conditioned on text (encoder_hidden_states of "
                         f"cross_attention_dim {config.get('cross_attention_dim')}): sample it inside its pipeline "
                         "with a prompt (StableDiffusionPipeline, docs/evaluation.md); binarydm.sample takes class "
                         "labels only")
    if k is None and labels is not None:
        raise UsageError(f"label={','.join(map(str, labels))}: the model is unconditional (no class labels); drop "
                         "label=")
    if k is not None and labels is not None and max(labels) >= k:
        raise UsageError(f"label={','.join(map(str, labels))}: the model has {k} classes (0 to {k - 1})")


def load_for_cli(ckpt: Path, key: str = "ckpt"):
    """The model and its configs from any form ``binarydm.load`` reads (a pipeline directory: its UNet and
    scheduler; a ``.ckpt``: with its run's config.yaml) or a full-precision diffusers model directory, with
    errors as one-line user errors naming ``key``."""
    from .packing.format import PackedFormatError
    from .packing.loading import load_with_configs

    if ckpt.is_dir() and (ckpt / "student").is_dir():
        ckpt = ckpt / "student"
    try:
        return load_with_configs(ckpt, allow_fp=True)
    except UsageError as err:
        raise UsageError(f"{key}={one_line(err)}") from None
    except PackedFormatError as err:
        raise UsageError(f"{key}={ckpt}: {one_line(err).removeprefix(str(ckpt) + ': ')}") from None
    except FileNotFoundError as err:  # a directory that is no student directory
        raise UsageError(f"{key}={ckpt}: {one_line(err).removeprefix(str(ckpt) + ': ')}") from None


def run(args: Mapping[str, Any]) -> dict[str, Any]:
    check_args(args)
    out = Path(args["out"])
    from .packing.format import check_output_path

    check_output_path(out, "out", directory=True)  # before the model is loaded and anything is sampled
    model, configs = load_for_cli(Path(args["ckpt"]))
    steps = int(args["steps"])
    train_steps = int((configs.get("scheduler_config") or DEFAULT_SCHEDULER).get("num_train_timesteps", 1000))
    if steps > train_steps:
        raise UsageError(f"steps={steps}: more than the {train_steps} timesteps the model was trained with; "
                         f"use steps <= {train_steps}")
    labels = parse_labels(args.get("label"))
    check_condition(model, labels)
    model.to(args["device"])
    prepare_out(out, bool(args.get("overwrite", False)))
    from .packing.format import atomic_write

    info = {**{k: (str(v) if isinstance(v, Path) else v) for k, v in args.items()},
            "torch_threads": torch.get_num_threads(), "complete": False}
    with atomic_write(out / "sample_info.json", "w") as f:  # marks the folder as ours from the start
        json.dump(info, f, indent=1)
    folder = out / "images"
    folder.mkdir(parents=True, exist_ok=True)

    def write(first: int, images: torch.Tensor) -> None:
        for j, img in enumerate(images):
            _save_png(img, folder / f"{first + j:05d}.png")

    start = time.perf_counter()
    images = sample_images(model, int(args["num"]), steps, args["sampler"], int(args["batch"]),
                           int(args["seed"]), float(args["eta"]), configs.get("scheduler_config"), on_batch=write,
                           labels=labels)
    elapsed = time.perf_counter() - start
    if int(args["grid"]) > 0:
        save_grid(images[:int(args["grid"])], out / "grid.png")
    info.update({"seconds": round(elapsed, 3), "seconds_per_image": round(elapsed / images.shape[0], 4),
                 "complete": True})
    with atomic_write(out / "sample_info.json", "w") as f:
        json.dump(info, f, indent=1)
    return info


USAGE = __doc__.split("\n\n")[0] + "\n  options: " + ", ".join(f"{k}={v}" for k, v in DEFAULTS.items())


def _main(argv: list[str]) -> None:
    args = parse_args(argv, DEFAULTS, USAGE)
    info = run(args)
    print(f"{info['num']} images in {args['out']}/images, grid {args['out']}/grid.png, "
          f"{info['seconds_per_image']:.3f} s/image ({args['sampler']}-{args['steps']}, {args['device']})")


def main(argv: Optional[Sequence[str]] = None) -> None:
    """A user error prints ``error: ...`` and raises SystemExit(2) (BINARYDM_DEBUG=1: the traceback)."""
    run_main(_main, argv, raise_exit=True)


if __name__ == "__main__":
    main()
