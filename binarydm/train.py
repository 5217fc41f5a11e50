"""``python -m binarydm.train config=NAME key=value ...``: train (or binarize) a diffusion UNet.

    python -m binarydm.train config=demo
    python -m binarydm.train config=ddpm_cifar trainer.devices=8 trainer.strategy=ddp
    python -m binarydm.train config=demo resume=runs/demo/checkpoints/last.ckpt
    python -m binarydm.train config=demo overwrite=true      # replace the results of an earlier run

Configs: configs/base.yaml + configs/NAME.yaml + overrides (see docs/training.md). A bad input
prints one line, ``error: ...``, and exits 2; a diverged run exits 1; BINARYDM_DEBUG=1 shows tracebacks.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from .errors import UsageError, run_main

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def _pop_overwrite(argv: list[str]) -> tuple[list[str], bool]:
    """``overwrite=`` is the command's option, not a config key (a run's config should not carry it)."""
    rest, overwrite = [], False
    for arg in argv:
        if arg.startswith("overwrite="):
            value = arg.split("=", 1)[1].strip().lower()
            if value not in _TRUE + _FALSE:
                raise UsageError(f"overwrite={value!r}: expected true or false")
            overwrite = value in _TRUE
        else:
            rest.append(arg)
    return rest, overwrite


def _main(argv: list[str]) -> int:
    from binarydm.training.config import available_configs, load_config, split_cli

    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print("available configs:", ", ".join(available_configs()))
        return 0
    argv, overwrite = _pop_overwrite(argv)
    name, overrides = split_cli(argv)
    cfg = load_config(name, overrides)
    from binarydm.training.runner import run

    out = run(cfg, overwrite=overwrite)
    if out["report"] is not None:
        print(f"report: {out['report']}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Returns the exit status (0, 2 for a user error, 1 for a diverged run)."""
    return run_main(_main, argv, raise_exit=False)


if __name__ == "__main__":
    sys.exit(main())
