"""``binarydm.load(path)``: the binarized UNet (or pipeline) from any form binarydm writes.

| form | what it is | written by |
|---|---|---|
| student directory | ``config.json`` (with binarydm's ``quantization_config``) + ``diffusion_pytorch_model.safetensors`` [+ ``scheduler_config.json``, ``SHA256SUMS``]; the earlier ``student.safetensors`` + ``quant_config.json`` + ``unet_config.json`` too | ``binarydm.train`` (``<run>/student/``), ``unet.save_pretrained`` after ``binarize_``, :func:`save_student_dir` |
| run directory | a directory holding ``student/`` | ``binarydm.train`` |
| packed 1-bit file | safetensors with ``format=binarydm-packed`` | ``python -m binarydm.export``, :func:`export_packed` |
| pipeline directory | ``model_index.json`` + components; the binarized ones (the UNet) carry ``quantization_config`` | ``pipe.save_pretrained`` after ``binarize_(pipe.unet)`` |
| training checkpoint | Lightning ``.ckpt`` in ``<run>/checkpoints/``, read with the run's ``config.yaml`` | ``binarydm.train`` |

Anything else is a :class:`binarydm.errors.UsageError` of one line naming the path and these forms.
Integrity checks stay on: a student directory's ``SHA256SUMS``, a packed file's digest.

No ``accelerate`` is needed: the model is built, binarized with its stored QuantConfig and filled with
a strict ``load_state_dict`` (diffusers' own ``from_pretrained`` reaches the same model through the
quantizer plug-in, ``binarydm.packing.hf``). A training checkpoint gives the student as the run would
export it: with the EMA weights when the run kept an average (``ema=False``: the raw weights).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from torch import nn

from .. import algorithms
from ..errors import UsageError, one_line
from ..quant.config import PRESETS, QuantConfig
from .files import PackedFormatError, PathLike
from .packed import FORMAT, build_model, load_packed
from .student import load_student_dir

ACCEPTED = ("a student directory (config.json with binarydm's quantization_config + "
            "diffusion_pytorch_model.safetensors, or student.safetensors + quant_config.json + unet_config.json), "
            "a run directory holding student/, a packed 1-bit .safetensors file (python -m binarydm.export), a "
            "diffusers pipeline directory (model_index.json) with a binarized unet, or a training checkpoint "
            "(.ckpt) with its run's config.yaml")


def _refuse(path: Path, why: str) -> UsageError:
    return UsageError(f"{path}: {why}; binarydm.load reads {ACCEPTED}")


def _check_packed(path: Path) -> None:
    """Raise unless ``path`` is a packed file: PackedFormatError for a damaged one (truncated, a bad header:
    its diagnosis), UsageError naming the accepted forms for a file of another kind."""
    if is_packed_file(path):
        return
    from .packed import read_packed

    try:
        read_packed(path)
    except PackedFormatError as err:
        if "cannot read as a safetensors file" in str(err) and path.suffix == ".safetensors":
            raise
    raise _refuse(path, "not a form binarydm writes")


def is_training_checkpoint(path: Path) -> bool:
    """A Lightning checkpoint of ``binarydm.train`` (by name: its contents are checked when it is read)."""
    return path.is_file() and path.suffix == ".ckpt"


def is_packed_file(path: Path) -> bool:
    """Whether ``path`` is a binarydm packed file (its header says so; the payload is not read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") == FORMAT
    except Exception:  # noqa: BLE001 - any unreadable file is "not a packed file"
        return False


def quant_config_from(name: Any, options: Optional[Mapping[str, Any]] = None) -> Optional[QuantConfig]:
    """A training config's ``quant`` and ``quant_options`` as a QuantConfig (None for ``none``): an algorithm
    (``binarydm.algorithms.preset``: QuantConfig fields and the algorithm's own parameters, e.g. BiPer's
    ``omega``) or a preset (w1a4, w1a8, w1a32: QuantConfig fields)."""
    name = str(name)
    if name.lower() in ("none", "fp", "fp32"):
        return None
    options = dict(options or {})
    if name.replace("_", "-") in algorithms.available():  # QuantConfig fields and the algorithm's parameters
        return algorithms.preset(name, **options)
    if name in PRESETS:  # w1a4, w1a8, w1a32: QuantConfig fields
        return QuantConfig.from_dict({"preset": name, **options})
    raise ValueError(f"unknown quant {name!r}; valid: none, the presets {sorted(PRESETS)} or the algorithms "
                     f"{algorithms.available()}")


# ---- forms -------------------------------------------------------------------------------------------
def _load_dir(path: Path) -> nn.Module:
    if (path / "student").is_dir() and not (path / "config.json").is_file() \
            and not (path / "model_index.json").is_file():
        path = path / "student"  # a run directory (its student/ may be a pipeline directory)
    if (path / "model_index.json").is_file():
        return load_pipeline(path)
    try:
        model, configs = load_student_dir(path)
    except FileNotFoundError:
        raise _refuse(path, "a directory that holds no binarized model") from None
    if configs.get("quant_config") is None:
        raise _refuse(path, "a full-precision diffusers model (no binarydm quantization_config in config.json); "
                            "binarize it with binarydm.binarize_ and save it, or load it with diffusers")
    return model


def load_pipeline(path: PathLike):
    """A diffusers pipeline directory whose binarized components (the UNet) are rebuilt binarized; the
    others (scheduler, text encoder, VAE) load as diffusers loads them."""
    import diffusers

    path = Path(path)
    try:
        index = json.loads((path / "model_index.json").read_text())
    except (OSError, ValueError) as err:
        raise _refuse(path, f"unreadable model_index.json ({one_line(err)})") from None
    cls = getattr(diffusers, str(index.get("_class_name")), None)
    if cls is None:
        raise _refuse(path, f"model_index.json names pipeline class {index.get('_class_name')!r}, which diffusers "
                            "does not have")
    binarized = {}
    for name in index:
        config = path / name / "config.json"
        if name.startswith("_") or not config.is_file():
            continue
        try:
            qc = json.loads(config.read_text()).get("quantization_config")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(qc, dict) and qc.get("quant_method") == "binarydm":
            binarized[name] = load_student_dir(path / name)[0]
    if not binarized:
        raise _refuse(path, "a pipeline without a binarized component (no binarydm quantization_config in "
                            "<component>/config.json)")
    pipe = cls.from_pretrained(str(path), **binarized)
    return pipe


def run_unet_config(cfg) -> dict[str, Any]:
    """The UNet architecture of a training run's config: ``model.config`` or ``model.pretrained``'s config.json."""
    from omegaconf import OmegaConf

    from ..unets import resolve_local

    if cfg.model.config is not None:
        return dict(OmegaConf.to_container(cfg.model.config, resolve=True))
    pretrained = str(cfg.model.pretrained)
    local = resolve_local(pretrained)
    if local is not None:
        subs = [cfg.model.subfolder] if cfg.model.get("subfolder") else ["", "unet"]
        for sub in subs:
            file = local / sub / "config.json"
            if file.is_file():
                return json.loads(file.read_text())
        raise ValueError(f"model.pretrained={pretrained}: no config.json (or unet/config.json) there")
    from diffusers import DiffusionPipeline, UNet2DModel

    from ..unets import quiet_hub

    subfolder = cfg.model.get("subfolder")
    with quiet_hub():
        if subfolder is None:
            try:  # a hub pipeline keeps its UNet in unet/
                subfolder = "unet" if "unet" in DiffusionPipeline.load_config(pretrained) else None
            except Exception:  # noqa: BLE001 - not a pipeline, or not cached: the UNet config's lookup decides
                subfolder = None
        try:  # a hub id: its config from the local cache (offline)
            return dict(UNet2DModel.load_config(pretrained, subfolder=subfolder))
        except Exception as err:  # noqa: BLE001 - hub errors differ by version
            raise ValueError(f"model.pretrained={pretrained}: the UNet config is neither local nor cached "
                             f"({type(err).__name__})") from None


def run_scheduler_config(cfg) -> dict[str, Any]:
    """The training noise schedule of a run: model.pretrained's scheduler_config.json where it has one
    (as the run itself chose), else the config's ``scheduler`` section."""
    from omegaconf import OmegaConf

    from ..unets import resolve_local

    if cfg.model.config is None and cfg.model.pretrained:
        local = resolve_local(str(cfg.model.pretrained))
        for sub in ("", "scheduler"):
            file = local / sub / "scheduler_config.json" if local is not None else None
            if file is not None and file.is_file():
                return json.loads(file.read_text())
    schedule = {k: v for k, v in OmegaConf.to_container(cfg.scheduler, resolve=True).items() if v is not None}
    # As the run resolved it: x_0 is clipped for images, not for latents (runner._scheduler).
    schedule.setdefault("clip_sample", not run_sources(cfg)["autoencoder"])
    return schedule


def run_sources(cfg) -> dict[str, Optional[str]]:
    """Where a training run's frozen components come from (``binarydm.latent.load_components``' arguments):
    ``pretrained`` (a pipeline, or None for a fresh UNet), ``autoencoder``, ``text_encoder``; ``autoencoder``
    is also set when ``pretrained`` is a latent pipeline."""
    from ..latent.components import autoencoder_slot, model_index

    model = cfg.model
    pretrained = str(model.pretrained) if model.get("config") is None and model.get("pretrained") else None
    autoencoder = model.get("autoencoder") or (pretrained if autoencoder_slot(model_index(pretrained)) else None)
    return {"pretrained": pretrained, "autoencoder": autoencoder, "text_encoder": model.get("text_encoder")}


def _ema_shadow(ckpt: Mapping[str, Any]) -> Optional[dict]:
    for key, state in (ckpt.get("callbacks") or {}).items():
        if str(key).split("{")[0] == "EMA" and isinstance(state, dict) and state.get("shadow"):
            return state["shadow"]
    return None


def load_training_checkpoint(path: PathLike, ema: bool = True) -> nn.Module:
    """The student of a Lightning checkpoint of ``binarydm.train``: architecture and QuantConfig from the
    run's ``config.yaml`` (``<run>/config.yaml`` next to ``<run>/checkpoints/``), weights from the file."""
    return _training_checkpoint(path, ema)[0]


def _training_checkpoint(path: PathLike, ema: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    from omegaconf import OmegaConf

    path = Path(path)
    candidates = [path.parent.parent / "config.yaml", path.parent / "config.yaml"]
    config_file = next((c for c in candidates if c.is_file()), None)
    if config_file is None:
        raise UsageError(f"{path}: a training checkpoint is read with its run's config.yaml, found neither "
                         f"{candidates[0]} nor {candidates[1]}; keep the checkpoint in <run>/checkpoints/ or load "
                         "the run's exported student/ instead")
    try:
        cfg = OmegaConf.load(config_file)
        quant = quant_config_from(cfg.quant, OmegaConf.to_container(cfg.quant_options) if cfg.get("quant_options")
                                  else None)
        unet_config = run_unet_config(cfg)
        scheduler_config = run_scheduler_config(cfg)
    except Exception as err:  # noqa: BLE001 - omegaconf, json and our ValueErrors: one line
        raise UsageError(f"{path}: its run config {config_file} does not describe a model binarydm can build "
                         f"({one_line(err)})") from None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError, EOFError, pickle errors, ...
        first = (str(err).splitlines()[0].split(". ")[0] if str(err) else "") or type(err).__name__
        raise UsageError(f"{path}: cannot read it as a training checkpoint (truncated or corrupted?): {first}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise _refuse(path, "a .ckpt file that is no Lightning checkpoint (no state_dict)")
    state = {k[len("student."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("student.")}
    shadow = _ema_shadow(ckpt) if ema else None
    if shadow:
        state.update({k: v for k, v in shadow.items() if k in state})
    if quant is None:
        from ..unets import build_unet

        with torch.random.fork_rng(devices=[]):
            model = build_unet(unet_config)
    else:
        model = build_model({k: v for k, v in unet_config.items() if k != "quantization_config"}, quant)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise UsageError(f"{path}: does not match the model its run config {config_file} describes "
                         f"({one_line(err)[:300]})") from None
    configs = {"quant_config": None if quant is None else quant.to_dict(), "unet_config": dict(model.config),
               "scheduler_config": scheduler_config, "sources": run_sources(cfg)}
    return model.eval(), configs


def load_with_configs(path: PathLike, *, ema: bool = True, allow_fp: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """The UNet of any form :func:`load` reads (a pipeline directory: its binarized UNet) with its configs
    (``quant_config``, ``unet_config``, ``scheduler_config`` where known): what the command-line tools use.
    ``allow_fp``: a full-precision diffusers model directory is accepted too (``quant_config`` None)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise _refuse(path, "no such file or directory")
    if is_training_checkpoint(path):
        return _training_checkpoint(path, ema)
    if path.is_file():
        _check_packed(path)
        from .student import load_checkpoint

        return load_checkpoint(path)
    configs: dict[str, Any] = {}
    if (path / "student").is_dir() and not (path / "config.json").is_file() \
            and not (path / "model_index.json").is_file():
        path = path / "student"  # a run directory (its student/ may be a pipeline directory)
    if (path / "model_index.json").is_file():
        if not (path / "unet" / "config.json").is_file():
            raise _refuse(path, "a pipeline directory without unet/config.json")
        sched = path / "scheduler" / "scheduler_config.json"
        if sched.is_file():
            configs["scheduler_config"] = json.loads(sched.read_text())
        configs["pipeline_dir"] = path  # its autoencoder / text encoder: binarydm.latent.load_components
        path = path / "unet"
    try:
        model, found = load_student_dir(path)
    except FileNotFoundError:
        raise _refuse(path, "a directory that holds no binarized model") from None
    if found.get("quant_config") is None and not allow_fp:
        raise _refuse(path, "a full-precision diffusers model (no binarydm quantization_config in config.json)")
    return model, {**configs, **found}


def load_for_cli(ckpt: PathLike, key: str = "ckpt", ema: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """:func:`load_with_configs` of any form (a full-precision diffusers model directory too), with errors
    as one-line user errors naming the command's argument ``key``. ``ema=False``: a training .ckpt's raw
    weights (refused for every other form: they hold one set of weights, which would be used silently)."""
    ckpt = Path(ckpt)
    if ckpt.is_dir() and (ckpt / "student").is_dir():
        ckpt = ckpt / "student"
    if not ema and not is_training_checkpoint(ckpt):
        raise UsageError(f"ema=false: {key}={ckpt} holds one set of weights (only a training .ckpt keeps raw and "
                         "averaged ones); drop ema=false or name a .ckpt of the run")
    try:
        return load_with_configs(ckpt, ema=ema, allow_fp=True)
    except UsageError as err:
        raise UsageError(f"{key}={one_line(err)}") from None
    except PackedFormatError as err:
        raise UsageError(f"{key}={ckpt}: {one_line(err).removeprefix(str(ckpt) + ': ')}") from None
    except FileNotFoundError as err:  # a directory that is no student directory
        raise UsageError(f"{key}={ckpt}: {one_line(err).removeprefix(str(ckpt) + ': ')}") from None


def load_student(path: PathLike) -> nn.Module:
    """An exported student directory (either layout; checksums verified), or an FP diffusers model directory."""
    return load_student_dir(path)[0]


def load(path: PathLike, *, ema: bool = True) -> Union[nn.Module, Any]:
    """The binarized UNet (eval mode) stored at ``path``, or the pipeline for a pipeline directory.

    Reads every form in the table of this module; anything else raises :class:`UsageError` (one line
    naming the path and the forms accepted). Corrupted files raise ``PackedFormatError`` (a ValueError).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise _refuse(path, "no such file or directory")
    if path.is_dir():
        return _load_dir(path)
    if path.suffix == ".ckpt":
        return load_training_checkpoint(path, ema=ema)
    if path.name == "config.json" or (path.name == "diffusion_pytorch_model.safetensors"
                                      and (path.parent / "config.json").is_file()):
        return _load_dir(path.parent)
    _check_packed(path)
    return load_packed(path)


__all__ = ["ACCEPTED", "PackedFormatError", "is_packed_file", "load", "load_for_cli", "load_pipeline",
           "load_student", "load_training_checkpoint", "load_with_configs", "quant_config_from",
           "run_scheduler_config", "run_unet_config"]
