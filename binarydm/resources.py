"""Where the files that ship beside the code are: the run configs and the CUDA sources.

In a checkout they are the top-level ``configs/`` and ``cuda/`` directories; in an installed wheel
they are package data inside ``binarydm`` (setup.py maps them there). One lookup for both, so
no module walks up from ``__file__`` on its own.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[1]


def _find(name: str) -> Path:
    packaged = Path(str(resources.files("binarydm") / name))
    if packaged.is_dir():
        return packaged
    return _CHECKOUT / name


def config_dir() -> Path:
    """The directory holding the experiment configs (``configs/NAME.yaml``)."""
    return _find("configs")


def cuda_dir() -> Path:
    """The directory holding the CUDA C sources of ``binarydm.kernels``."""
    return _find("cuda")


__all__ = ["config_dir", "cuda_dir"]
