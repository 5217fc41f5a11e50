"""The full-precision starting point: a diffusers UNet2DModel or UNet2DConditionModel (and its noise schedule).

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

from ..unets import PACKAGE_PARENT, looks_like_path, quiet_hub, resolve_local, unet_class  # noqa: F401 (re-exported)

DEFAULT_PRETRAINED = "google/ddpm-cifar10-32"


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


def _refuse_binarized(path: Path, subfolder: Optional[str]) -> None:
    file = path / (subfolder or "") / "config.json"
    try:
        config = json.loads(file.read_text())
    except (OSError, ValueError):
        return  # diffusers' own error says what is wrong with it
    qc = config.get("quantization_config") if isinstance(config, dict) else None
    if isinstance(qc, dict) and qc.get("quant_method") == "binarydm":
        raise TeacherNotFoundError(
            f"model.pretrained={str(path)!r} is a binarized model (binarydm quantization_config in {file}); the "
            "teacher must be full precision: point model.pretrained at the FP model it was binarized from")


def _class_of(path: Path, subfolder: Optional[str]):
    """UNet2DModel or UNet2DConditionModel, from the directory's config.json ``_class_name``."""
    try:
        config = json.loads((path / (subfolder or "") / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    try:
        return unet_class(config if isinstance(config, dict) else {})
    except ValueError as err:
        raise TeacherNotFoundError(f"model.pretrained={str(path)!r}: {err}") from None


def load_unet(pretrained: Optional[str] = DEFAULT_PRETRAINED, subfolder: Optional[str] = None,
              config: Optional[Mapping[str, Any]] = None) -> nn.Module:
    """A UNet from ``config`` (fresh weights; ``_class_name`` picks UNet2DModel, the default, or
    UNet2DConditionModel) or ``pretrained`` (hub id or local directory; its config.json's class)."""
    from diffusers import UNet2DModel

    if config is not None:
        try:
            cls = unet_class(config)
            return cls(**{k: v for k, v in dict(config).items() if not k.startswith("_")})
        except TypeError as err:
            raise ValueError(f"model.config is not a valid {dict(config).get('_class_name') or 'UNet2DModel'} "
                             f"config: {err}") from None
    if not pretrained:
        raise ValueError("set model.pretrained (a hub id or a local diffusers directory) or model.config")
    path = resolve_local(pretrained)
    if path is not None:
        sub = _local_subfolder(path, subfolder)
        _refuse_binarized(path, sub)
        return _class_of(path, sub).from_pretrained(str(path), subfolder=sub)
    if looks_like_path(pretrained):
        raise TeacherNotFoundError(
            f"model.pretrained={pretrained!r}: no such directory. Point model.pretrained at a diffusers UNet "
            "directory (or a hub id); the demo's teacher is made with `python -m binarydm.train "
            "config=teacher_fmnist` and lives in binarydm/assets/fmnist_teacher"
        )
    try:
        with quiet_hub():
            cls = unet_class(UNet2DModel.load_config(pretrained, subfolder=subfolder))
            return cls.from_pretrained(pretrained, subfolder=subfolder)
    except Exception as err:  # diffusers raises OSError/EnvironmentError/HF errors depending on the case
        raise hub_unavailable(pretrained, err) from None


def hub_unavailable(pretrained: str, err: Optional[BaseException] = None) -> TeacherNotFoundError:
    """The one-line error for a hub id that cannot be read here (offline, or no such id)."""
    why = f" [{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}]" if err is not None else ""
    return TeacherNotFoundError(
        f"cannot load the pretrained model model.pretrained={pretrained!r}: it is not a local directory and "
        f"the hub copy is unavailable (offline, or no such id). Download it where there is a network "
        f"(huggingface-cli download {pretrained} --local-dir DIR) and set model.pretrained=DIR, point "
        f"model.pretrained at another diffusers directory (e.g. binarydm/assets/fmnist_teacher), or train one here "
        f"with quant=none.{why}")


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
