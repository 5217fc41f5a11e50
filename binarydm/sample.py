"""``python -m binarydm.sample ckpt=PATH num=N steps=S sampler=ddim|ddpm batch=B seed=K out=DIR``

Generates images with a binarized UNet inside diffusers' own ``DDIMPipeline`` (Song et al. 2021,
deterministic with eta=0) or ``DDPMPipeline`` (Ho et al. 2020, ancestral sampling). ``ckpt`` is a
packed file (``python -m binarydm.export``), a student directory (``student.safetensors`` or
``model.safetensors`` + ``quant_config.json`` + ``unet_config.json`` or ``config.json``; a run directory
holding ``student/`` works too) or a full-precision diffusers model directory (the FP teacher). Writes ``DIR/images/00000.png ...``, ``DIR/grid.png`` and
``DIR/sample_info.json`` (settings and seconds per image).

Image ``i`` of batch ``b`` comes from a generator seeded with ``seed + b``: the same seed, count
and batch size give the same images.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

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
            raise SystemExit(f"argument {item!r} is not key=value\n{usage}")
        if key not in args:
            raise SystemExit(f"unknown argument {key!r}; valid: {sorted(args)}\n{usage}")
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
            raise SystemExit(f"argument {key}={value!r}: expected a {kind.__name__}\n{usage}") from None
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
                  progress: bool = True) -> torch.Tensor:
    """``num`` images from ``model`` as uint8 [N, C, H, W], sampled by diffusers' pipelines."""
    from diffusers import DDIMPipeline, DDPMPipeline
    from tqdm.auto import tqdm

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
            images = pipe(batch_size=n, generator=generator, num_inference_steps=steps, output_type="np",
                          **kwargs).images  # float [n, H, W, C] in [0, 1]
            out.append(torch.from_numpy(np.round(np.asarray(images) * 255).astype(np.uint8)).permute(0, 3, 1, 2))
            bar.update(n)
    return torch.cat(out)


def save_images(images: torch.Tensor, out: Path, grid: int = 64) -> None:
    """PNG files ``out/images/00000.png ...`` and ``out/grid.png`` (the first ``grid`` images)."""
    from PIL import Image
    from torchvision.utils import make_grid

    folder = out / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        arr = img.permute(1, 2, 0).numpy()
        Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(folder / f"{i:05d}.png")
    shown = images[:grid]
    g = make_grid(shown, nrow=max(1, int(math.ceil(math.sqrt(shown.shape[0])))), padding=1)
    arr = g.permute(1, 2, 0).numpy()
    Image.fromarray(arr).save(out / "grid.png")


def run(args: Mapping[str, Any]) -> dict[str, Any]:
    from .packing import load_checkpoint

    ckpt = Path(args["ckpt"])
    if ckpt.is_dir() and (ckpt / "student").is_dir():
        ckpt = ckpt / "student"
    model, configs = load_checkpoint(ckpt)
    model.to(args["device"])
    start = time.perf_counter()
    images = sample_images(model, int(args["num"]), int(args["steps"]), args["sampler"], int(args["batch"]),
                           int(args["seed"]), float(args["eta"]), configs.get("scheduler_config"))
    elapsed = time.perf_counter() - start
    out = Path(args["out"])
    save_images(images, out, int(args["grid"]))
    info = {**{k: (str(v) if isinstance(v, Path) else v) for k, v in args.items()},
            "seconds": round(elapsed, 3), "seconds_per_image": round(elapsed / images.shape[0], 4),
            "torch_threads": torch.get_num_threads()}
    (out / "sample_info.json").write_text(json.dumps(info, indent=1))
    return info


USAGE = __doc__.split("\n\n")[0] + "\n  options: " + ", ".join(f"{k}={v}" for k, v in DEFAULTS.items())


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv, DEFAULTS, USAGE)
    if args["ckpt"] is None:
        raise SystemExit(f"ckpt=PATH is required (a packed file or a student directory)\n{USAGE}")
    info = run(args)
    print(f"{info['num']} images in {args['out']}/images, grid {args['out']}/grid.png, "
          f"{info['seconds_per_image']:.3f} s/image ({args['sampler']}-{args['steps']}, {args['device']})")


if __name__ == "__main__":
    main()
