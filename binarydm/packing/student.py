"""The student directory: a binarized UNet as a diffusers model directory, and loading any checkpoint form.

Written since format 1 of quantization_config: a diffusers model directory, ``config.json`` (the
model config with ``_class_name`` and binarydm's ``quantization_config``) +
``diffusion_pytorch_model.safetensors`` (the whole state dict: latent weights, scales, steps, the
quantizers' flags as ``*._extra_state``) [+ ``scheduler_config.json``] + ``SHA256SUMS``. With
``import binarydm`` diffusers' ``from_pretrained`` loads it binarized (packing/hf.py);
:func:`load_student_dir` loads it without diffusers' loader (no ``accelerate`` needed).
Still read: the earlier layout (``student.safetensors`` or ``model.safetensors`` + ``quant_config.json`` +
``unet_config.json`` or ``config.json``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn

from ..quant.config import QuantConfig, resolve
from .files import PackedFormatError, PathLike, atomic_path, atomic_write, verify_checksums, write_checksums
from .packed import _check_architecture, _model_config, _plain_config, build_model, load_packed, packed_metadata

STUDENT_FILES = ("config.json", "diffusion_pytorch_model.safetensors")
LEGACY_STUDENT_FILES = ("student.safetensors", "quant_config.json", "unet_config.json")
_WEIGHT_NAMES = ("student.safetensors", "model.safetensors")
_CONFIG_NAMES = ("unet_config.json", "config.json")
_DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PackedFormatError(f"{file}: invalid JSON ({e})") from e


def _is_binarydm_config(config: Any) -> bool:
    qc = config.get("quantization_config") if isinstance(config, dict) else None
    return isinstance(qc, dict) and qc.get("quant_method") == "binarydm"


def _load_state(weights: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(weights))
    except Exception as e:
        raise PackedFormatError(f"{weights}: cannot read as a safetensors file (truncated or corrupted?): {e}") from e


def _build_and_load(directory: Path, config_file: Path, weights: Path, unet_config: Mapping[str, Any],
                    quant_config) -> nn.Module:
    state = _load_state(weights)
    try:
        model = build_model(unet_config, quant_config)
    except (TypeError, ValueError, KeyError) as e:
        raise PackedFormatError(f"{directory}: {config_file.name} describes no model binarydm can build "
                                f"({type(e).__name__}: {e})") from e
    _check_architecture(weights, model, state)  # the more specific diagnosis first, then any changed byte
    # Weights and configs together: a changed byte in any of them changes the loaded model.
    verify_checksums(directory)
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_student_dir(directory: PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Load a student directory (see above: the diffusers layout or the earlier one) or a plain
    full-precision diffusers model directory (``config.json`` + ``diffusion_pytorch_model.safetensors``,
    e.g. the FP teacher; its ``quant_config`` is None). Returns the model (eval mode) and the configs
    (``quant_config``, ``unet_config``, ``scheduler_config`` when there is one)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PackedFormatError(f"{directory}: no such student directory")
    configs: dict[str, Any] = {}
    if (directory / "scheduler_config.json").is_file():
        configs["scheduler_config"] = _read_json(directory / "scheduler_config.json")
    legacy = (directory / "quant_config.json").is_file()
    if not legacy and (directory / _DIFFUSERS_WEIGHTS).is_file() and (directory / "config.json").is_file():
        config = _read_json(directory / "config.json")
        configs["unet_config"] = config
        if _is_binarydm_config(config):
            configs["quant_config"] = dict(config["quantization_config"].get("quant_config") or {})
            model = _build_and_load(directory, directory / "config.json", directory / _DIFFUSERS_WEIGHTS, config,
                                    None)
            return model, configs
        if isinstance(config, dict) and config.get("quantization_config") is not None:
            method = config["quantization_config"].get("quant_method") if isinstance(
                config["quantization_config"], dict) else None
            raise PackedFormatError(f"{directory / 'config.json'}: quantized with {method!r}, not binarydm")
        configs["quant_config"] = None
        verify_checksums(directory)
        from ..unets import unet_class

        try:
            cls = unet_class(config)
        except ValueError as e:
            raise PackedFormatError(f"{directory / 'config.json'}: {e}") from e
        try:
            # low_cpu_mem_usage=False: the default asks for `accelerate` and warns on stderr without it
            return cls.from_pretrained(str(directory), low_cpu_mem_usage=False).eval(), configs
        except (OSError, ValueError, RuntimeError) as e:
            raise PackedFormatError(f"{directory}: cannot load as a diffusers model ({type(e).__name__}: "
                                    f"{str(e).splitlines()[0] if str(e) else ''})") from e
    weights = next((directory / f for f in _WEIGHT_NAMES if (directory / f).is_file()), None)
    config_file = next((directory / f for f in _CONFIG_NAMES if (directory / f).is_file()), None)
    if weights is None or config_file is None or not legacy:
        raise FileNotFoundError(
            f"{directory}: not a binarydm student directory: expected config.json (with binarydm's "
            f"quantization_config) and {_DIFFUSERS_WEIGHTS}, or the earlier {' or '.join(_WEIGHT_NAMES)} + "
            f"quant_config.json + {' or '.join(_CONFIG_NAMES)}"
        )
    configs["quant_config"] = _read_json(directory / "quant_config.json")
    configs["unet_config"] = _read_json(config_file)
    try:
        quant = QuantConfig.from_dict(configs["quant_config"])
    except (TypeError, ValueError, KeyError) as e:
        raise PackedFormatError(f"{directory}: quant_config.json describes no model binarydm can build "
                                f"({type(e).__name__}: {e})") from e
    model = _build_and_load(directory, config_file, weights, configs["unet_config"], quant)
    return model, configs


def load_checkpoint(path: PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """A model and its configs from a packed file, a student directory or a diffusers model directory."""
    path = Path(path)
    if path.is_dir():
        return load_student_dir(path)
    model = load_packed(path)
    meta = packed_metadata(path)
    configs = {k: meta[k] for k in ("quant_config", "unet_config", "scheduler_config", "latent_pipeline")
               if k in meta}
    return model, configs


def _json_text(config: Mapping[str, Any]) -> str:
    return json.dumps(_plain_config(config), indent=2, sort_keys=True, default=list) + "\n"


def save_student_dir(model: nn.Module, unet_config: Optional[Mapping[str, Any]], quant_config, directory: PathLike,
                     scheduler_config: Any = None) -> Path:
    """Write a student directory (the diffusers layout above; the inverse of :func:`load_student_dir`).

    ``unet_config``: the float model's config (None: the model's own); ``quant_config``: what binarized
    it (None: the ``quantization_config`` ``binarize_`` recorded). ``scheduler_config``: a mapping or a
    diffusers scheduler (then written as its ``save_pretrained`` would). Every file is written atomically;
    ``SHA256SUMS`` covers them all.
    """
    from safetensors.torch import save_file

    from ..quant.convert import quantization_config_dict

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = _model_config(model, dict(model.config) if unet_config is None else unet_config)
    if quant_config is not None:
        recorded = config.get("quantization_config") or {}
        config["quantization_config"] = quantization_config_dict(resolve(quant_config), recorded.get("excluded", ()))
    if not _is_binarydm_config(config):
        raise ValueError("save_student_dir: the model was not binarized by binarydm.binarize_ and no quant_config "
                         "was given")
    try:
        import diffusers

        config.setdefault("_diffusers_version", diffusers.__version__)
    except ImportError:  # pragma: no cover
        pass
    texts = {"config.json": _json_text(config)}
    if scheduler_config is not None:
        texts["scheduler_config.json"] = (scheduler_config.to_json_string() if hasattr(scheduler_config,
                                          "to_json_string") else _json_text(scheduler_config))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(directory / _DIFFUSERS_WEIGHTS) as tmp:
        # "format": "pt" as diffusers writes it; "binarydm" marks the producer
        save_file(state, str(tmp), metadata={"format": "pt", "binarydm": "student"})
    for name, text in texts.items():
        with atomic_write(directory / name, "w") as f:
            f.write(text)
    # Weights and every config that shapes the loaded model: load_student_dir verifies them all.
    write_checksums(directory, [_DIFFUSERS_WEIGHTS, *texts])
    return directory


__all__ = ["LEGACY_STUDENT_FILES", "STUDENT_FILES", "load_checkpoint", "load_student_dir", "save_student_dir"]
