"""Raw readers of the on-disk datasets, shared by training, FID and the comparison suite.

Each caller keeps its own layout (padding, channels, labels or not) and names its own options in
the error message; the reading and the "where is it, how to get it" check live here once.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import torch


class DatasetNotFoundError(FileNotFoundError):
    """A dataset that is not on disk, with how to get it."""


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file (LeCun's MNIST format; images or labels, optionally gzipped) as a uint8 tensor,
    read by torchvision's parser."""
    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

    if path.suffix == ".gz":
        import tempfile

        with gzip.open(path, "rb") as src, tempfile.NamedTemporaryFile(suffix=".idx") as tmp:
            tmp.write(src.read())
            tmp.flush()
            return read_sn3_pascalvincent_tensor(tmp.name, strict=False).clone()
    return read_sn3_pascalvincent_tensor(str(path), strict=False)


def read_cifar10(root: str, train: bool, download: bool, *, root_option: str = "root",
                 download_option: str = "download=true") -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 (Krizhevsky 2009) through torchvision: images uint8 (N, 3, 32, 32) and labels int64 (N,).

    ``root_option`` / ``download_option`` are how the caller's user spells those settings, for the error.
    """
    from torchvision.datasets import CIFAR10

    try:
        ds = CIFAR10(root, train=train, download=download)
    except RuntimeError as err:
        raise DatasetNotFoundError(
            f"CIFAR-10 not found in {root_option}={root!r} (torchvision looks for cifar-10-batches-py there). "
            f"Set {download_option} to fetch it (needs a network), or copy an extracted cifar-10-batches-py "
            f"into that directory. ({err})"
        ) from None
    return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)


__all__ = ["DatasetNotFoundError", "read_cifar10", "read_idx"]
