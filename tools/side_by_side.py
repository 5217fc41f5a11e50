"""Two models' samples from the same seeds, next to each other: the README's teacher-vs-student picture.

    python tools/side_by_side.py left=binarydm/assets/fmnist_teacher \
        right=binarydm/assets/fmnist_w1a4.packed.safetensors out=docs/figures/fmnist_w1a4_vs_teacher.png

``left``/``right``: anything ``binarydm.sample`` reads (a packed file, a student or diffusers directory, a
run). ``num`` DDIM images each (``steps`` steps, ``seed``), captioned ``left_label``/``right_label``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from binarydm.cli import parse
from binarydm.errors import UsageError, run_main
from binarydm.packing.loading import load_for_cli
from binarydm.sampling import sample_images
from binarydm.training.final_eval import side_by_side


@dataclass
class SideBySideArgs:
    """``python tools/side_by_side.py left=CKPT right=CKPT out=FILE.png [num=64] [steps=25] [seed=0]
    [left_label=teacher] [right_label=W1A4 student]``"""

    left: Optional[str] = None
    right: Optional[str] = None
    out: Optional[str] = None
    num: int = 64
    steps: int = 25
    seed: int = 0
    left_label: str = "teacher"
    right_label: str = "W1A4 student"


def _main(argv: list[str]) -> None:
    args = parse(SideBySideArgs, argv, SideBySideArgs.__doc__)
    if not (args.left and args.right and args.out):
        raise UsageError("left=, right= and out= are required")
    images = []
    for key in ("left", "right"):
        model, configs = load_for_cli(getattr(args, key), key)
        images.append(sample_images(model.eval(), args.num, steps=args.steps, batch=args.num, seed=args.seed,
                                    scheduler_config=configs.get("scheduler_config"), progress=False))
    path = side_by_side(images[0], images[1], Path(args.out), labels=(args.left_label, args.right_label))
    print(f"wrote {path}")


def main(argv: Optional[Sequence[str]] = None) -> None:
    run_main(_main, argv, raise_exit=True)


if __name__ == "__main__":
    main()
