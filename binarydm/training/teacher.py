"""The full-precision starting point: a diffusers UNet2DModel (and its noise schedule).

``model.pretrained`` is a hub id (``google/ddpm-cifar10-32``) or a local diffusers directory (a model
directory with config.json, or a pipeline directory with ``unet/``); ``model.config`` builds a fresh
UNet2DModel from a config mapping instead. Offline without a local copy, loading fails with one
error naming the option to change.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional

from torch import nn

DEFAULT_PRETRAINED = "google/ddpm-cifar10-32"
# A relative path such as binarydm/assets/fmnist_teacher also resolves against the checkout, so the
# demo config works from any working directory.
PACKAGE_PARENT = Path(__file__).resolve().parents[2]


def resolve_local(pretrained: str) -> Optional[Path]:
    """The local directory ``pretrained`` names (as given, or relative to the checkout), else None."""
    path = Path(pretrained).expanduser()
    if path.exists():
        return path
    if not path.is_absolute() and (PACKAGE_PARENT / path).exists():
        return PACKAGE_PARENT / path
    return None


def _looks_like_path(pretrained: str) -> bool:
    # Hub ids are "owner/name": a leading / . ~ or more than one separator means a local path.
    return pretrained.startswith(("/", ".", "~")) or pretrained.count("/") > 1


class TeacherNotFoundError(OSError):
    """The pretrained model could not be loaded (offline, a wrong path or a wrong id)."""


def _local_subfolder(path: Path, subfolder: Optional[str]) -> Optional[str]:
    if subfolder:
        return subfolder
    if (path / "config.json").is_file():
        return None
    if (path / "unet" / "config.json").is_file():
        return "unet"
    raise TeacherNotFoundError(
        f"model.pretrained={str(path)!r} is a directory without a diffusers model (no config.json and no "
        "unet/config.json); point model.pretrained at a diffusers UNet directory"
    )


def load_unet(pretrained: Optional[str] = DEFAULT_PRETRAINED, subfolder: Optional[str] = None,
              config: Optional[Mapping[str, Any]] = None) -> nn.Module:
    """A UNet2DModel from ``config`` (fresh weights) or ``pretrained`` (hub id or local directory)."""
    from diffusers import UNet2DModel

    if config is not None:
        try:
            return UNet2DModel(**dict(config))
        except TypeError as err:
            raise ValueError(f"model.config is not a valid UNet2DModel config: {err}") from None
    if not pretrained:
        raise ValueError("set model.pretrained (a hub id or a local diffusers directory) or model.config")
    path = resolve_local(pretrained)
    if path is not None:
        return UNet2DModel.from_pretrained(str(path), subfolder=_local_subfolder(path, subfolder))
    if _looks_like_path(pretrained):
        raise TeacherNotFoundError(
            f"model.pretrained={pretrained!r}: no such directory. Point model.pretrained at a diffusers UNet "
            "directory (or a hub id); the demo's teacher is made with `python -m binarydm.train "
            "config=teacher_fmnist` and lives in binarydm/assets/fmnist_teacher"
        )
    try:
        return UNet2DModel.from_pretrained(pretrained, subfolder=subfolder)
    except Exception as err:  # diffusers raises OSError/EnvironmentError/HF errors depending on the case
        raise TeacherNotFoundError(
            f"cannot load the pretrained UNet model.pretrained={pretrained!r}: it is not a local directory and "
            f"the hub copy is unavailable (offline, or no such id). Set model.pretrained=/path/to/a/diffusers/dir "
            f"(e.g. binarydm/assets/fmnist_teacher), download it where there is a network "
            f"(huggingface-cli download {pretrained} --local-dir DIR), or train one here with quant=none. "
            f"[{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}]"
        ) from None


def load_scheduler(pretrained: Optional[str], fallback: Mapping[str, Any]):
    """The DDPMScheduler of a local pretrained directory when it has one, else one built from ``fallback``."""
    from diffusers import DDPMScheduler

    path = resolve_local(pretrained) if pretrained else None
    if path is not None:
        for sub in ("", "scheduler"):
            cfg_path = path / sub / "scheduler_config.json"
            if cfg_path.is_file():
                return DDPMScheduler.from_config(json.loads(cfg_path.read_text()))
    return DDPMScheduler(**dict(fallback))


def frozen_copy(model: nn.Module) -> nn.Module:
    """A frozen copy (eval mode, no gradients): the LRM teacher."""
    import copy

    teacher = copy.deepcopy(model)
    teacher.requires_grad_(False).eval()
    return teacher


__all__ = ["load_unet", "load_scheduler", "frozen_copy", "TeacherNotFoundError", "DEFAULT_PRETRAINED"]
