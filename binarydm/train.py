"""``python -m binarydm.train config=NAME key=value ...``: train (or binarize) a diffusion UNet.

    python -m binarydm.train config=demo
    python -m binarydm.train config=demo quant=biper quant_options={omega: 10}
    python -m binarydm.train config=ddpm_cifar trainer.devices=8 trainer.strategy=ddp
    python -m binarydm.train config=demo resume=runs/demo/checkpoints/last.ckpt
    python -m binarydm.train config=demo overwrite=true      # replace the results of an earlier run

Every key, its type, default and meaning: binarydm/training/config.py (RunConfig). configs/NAME.yaml
holds an experiment's differences from those defaults; key=value overrides (YAML values) come last
(docs/training.md). A bad input prints one line, ``error: ...``, and exits 2; a diverged run exits 1;
BINARYDM_DEBUG=1 shows tracebacks.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from .errors import run_main
from .resources import config_dir
from .training.config import available_configs, from_argv


def _main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print(f"available configs ({config_dir()}): {', '.join(available_configs())}")
        return 0
    cfg = from_argv(argv)
    from .training.runner import run  # Lightning and diffusers: only once the config is known to be good

    out = run(cfg)
    if out["report"] is not None:
        print(f"report: {out['report']}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Returns the exit status (0, 2 for a user error, 1 for a diverged run)."""
    return run_main(_main, argv, raise_exit=False)


if __name__ == "__main__":
    sys.exit(main())
