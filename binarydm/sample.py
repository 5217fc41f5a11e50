"""``python -m binarydm.sample ckpt=PATH num=N steps=S sampler=ddim|ddpm batch=B seed=K out=DIR``

Generates images with a (binarized) UNet inside diffusers' ``DDIMPipeline`` or ``DDPMPipeline``
(``binarydm.sampling``): ``DIR/images/00000.png ...``, ``DIR/grid.png`` and ``DIR/sample_info.json``.
``ckpt``: a packed file, a student, run or pipeline directory, a training ``.ckpt`` or a full-precision
diffusers model directory. Class-conditional UNets take ``label=3`` or ``label=0,1,2`` (cycled).
Options (defaults): ckpt, num=16, steps=100, sampler=ddim, batch=16, seed=0, out=samples, eta=0.0,
device=cpu, grid=64 (images in grid.png), overwrite=false (delete files in out that binarydm.sample did
not write), label, kernels=false (true: the binarized convolutions on the W1A4 / W1A1 kernels). A bad argument
prints one line, ``error: ...``, and exits 2.
"""

from __future__ import annotations

from typing import Optional, Sequence

from .cli import parse
from .errors import run_main
from .sampling import SampleArgs, sample_to_folder


def _main(argv: list[str]) -> None:
    args = parse(SampleArgs, argv, __doc__)
    info = sample_to_folder(args)
    kernels = info.get("kernel_convs")
    where = f"; {kernels['swapped']} of {kernels['convs']} convs on the {kernels['where']}" if kernels else ""
    print(f"{info['num']} images in {args.out}/images, grid {args.out}/grid.png, "
          f"{info['seconds_per_image']:.3f} s/image ({args.sampler}-{args.steps}, {args.device}{where})")


def main(argv: Optional[Sequence[str]] = None) -> None:
    """A user error prints ``error: ...`` and raises SystemExit(2) (BINARYDM_DEBUG=1: the traceback)."""
    run_main(_main, argv, raise_exit=True)


if __name__ == "__main__":
    main()
