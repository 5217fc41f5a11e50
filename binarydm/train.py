"""``python -m binarydm.train config=NAME key=value ...``: train (or binarize) a diffusion UNet.

    python -m binarydm.train config=demo
    python -m binarydm.train config=ddpm_cifar trainer.devices=8 trainer.strategy=ddp
    python -m binarydm.train config=demo resume=runs/demo/checkpoints/last.ckpt

Configs: configs/base.yaml + configs/NAME.yaml + overrides (see docs/training.md).
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    from binarydm.training.config import ConfigError, available_configs, load_config, split_cli
    from binarydm.training.data import DatasetNotFoundError
    from binarydm.training.teacher import TeacherNotFoundError

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print("available configs:", ", ".join(available_configs()))
        return 0
    try:
        name, overrides = split_cli(argv)
        cfg = load_config(name, overrides)
        from binarydm.training.runner import run

        out = run(cfg)
    except (ConfigError, DatasetNotFoundError, TeacherNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if out["report"] is not None:
        print(f"report: {out['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
