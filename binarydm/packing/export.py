"""Export: the packed 1-bit checkpoint of a trained student, with its size against the FP32 model.

:func:`export` reads a student directory (``config.json`` with binarydm's ``quantization_config`` +
``diffusion_pytorch_model.safetensors`` [+ ``scheduler_config.json``], as a training run writes it, or the
earlier ``student.safetensors`` + ``quant_config.json`` + ``unet_config.json``; a run directory holding
``student/`` works too), any other form :func:`binarydm.load` reads, or an existing packed file
(re-export), and writes the packed file (:func:`binarydm.packing.export_packed`). It reports the file
size, the size of the same UNet as an FP32 diffusers checkpoint and their ratio, and the theoretical
storage of ``binarydm.summary``; ``verify`` reloads the file and compares its output with the student's.
An existing ``out`` that is not a packed file is refused (``overwrite`` replaces it). Bad input raises
:class:`binarydm.errors.UsageError` before any work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn

from ..errors import UsageError
from ..quant.summary import summary
from ..unets import condition_kwargs, needs_text
from .files import PathLike, check_output_path
from .packed import export_packed, file_sizes, load_packed
from .loading import is_packed_file, load_for_cli


@dataclass
class ExportArgs:
    """``python -m binarydm.export ckpt=PATH out=FILE [verify=true] [overwrite=true] [ema=false]``: write the
    packed 1-bit checkpoint of a trained student (a student, run or pipeline directory, a .ckpt or a packed
    file; ``ema=false``: a .ckpt's raw weights rather than its EMA)."""

    ckpt: Optional[str] = None
    out: Optional[str] = None
    verify: bool = False
    overwrite: bool = False
    ema: bool = True


def fp32_checkpoint_bytes(unet_config: Mapping[str, Any]) -> int:
    """Tensor bytes of the float32 diffusers checkpoint of this architecture (what ``save_pretrained``
    writes into diffusion_pytorch_model.safetensors, less its few-kB header)."""
    import diffusers

    config = dict(unet_config)
    cls = getattr(diffusers, config.get("_class_name", "UNet2DModel"))
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = cls.from_config(config)
    return sum(t.numel() * 4 for t in model.state_dict().values())


def example_inputs(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """A zero image batch of one and the timestep 500, shaped for ``model``."""
    cfg = model.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
    device = next(model.parameters()).device
    return torch.zeros(1, cfg.in_channels, size, size, device=device), torch.tensor([500], device=device)


def example_condition(model: nn.Module, batch: int = 1) -> dict[str, Any]:
    """The conditioning of a class-conditional UNet (label 0, 1, ...); a text-conditioned one gets one
    zero token of ``cross_attention_dim`` (what the packed model's accounting and check need)."""
    device = next(model.parameters()).device
    if needs_text(model.config):
        return {"encoder_hidden_states": torch.zeros(batch, 1, int(model.config.cross_attention_dim), device=device)}
    return condition_kwargs(model.config, batch=batch, device=device)


def _binarized_dir(directory: Path) -> bool:
    """Whether a diffusers model directory's config.json carries binarydm's quantization_config."""
    try:
        qc = json.loads((directory / "config.json").read_text()).get("quantization_config")
    except (OSError, ValueError, AttributeError):
        return True  # unreadable: let the loader say what is wrong
    return isinstance(qc, dict) and qc.get("quant_method") == "binarydm"


def _latent_pipeline(configs: Mapping[str, Any]) -> Optional[str]:
    """The class of the latent pipeline the UNet was read from (a pipeline directory with an autoencoder, or a
    packed file that records one), else None."""
    if configs.get("latent_pipeline"):
        return str(configs["latent_pipeline"])
    directory = configs.get("pipeline_dir")
    if directory is None:
        sources = configs.get("sources") or {}
        return "a latent run's pipeline" if sources.get("autoencoder") else None
    index = json.loads((Path(directory) / "model_index.json").read_text())
    if any(isinstance(index.get(s), list) and index[s][0] for s in ("vae", "vqvae")):
        return str(index.get("_class_name"))
    return None


def check_out(out: Path, overwrite: bool = False) -> None:
    """``out`` must be a new file, an earlier packed file (replaced) or, with ``overwrite``, any file."""
    check_output_path(out, "out", directory=False)
    if out.exists() and not overwrite and not is_packed_file(out):
        raise UsageError(f"out={out}: exists and is not a binarydm packed file; choose another out=, or pass "
                         "overwrite=true to replace it")


def export(ckpt: Optional[PathLike], out: Optional[PathLike], verify: bool = False,
           overwrite: bool = False, ema: bool = True) -> dict[str, Any]:
    """Write the packed file of ``ckpt`` to ``out``; returns the sizes (and ``verified_equal`` with ``verify``)."""
    if ckpt is None or out is None:
        raise UsageError("ckpt=PATH and out=FILE are both required (see --help)")
    ckpt, out = Path(ckpt), Path(out)
    if not ckpt.exists():
        raise UsageError(f"ckpt={ckpt}: no such file or directory")
    check_out(out, overwrite)  # before any work
    if ckpt.is_dir() and (ckpt / "student").is_dir():
        ckpt = ckpt / "student"
    fp_dir = ckpt.is_dir() and not (ckpt / "quant_config.json").is_file() and (ckpt / "config.json").is_file() \
        and not _binarized_dir(ckpt)  # said before loading it (no loader warning before the error)
    model, configs = (None, {"quant_config": None}) if fp_dir else load_for_cli(ckpt, ema=ema)
    if configs.get("quant_config") is None:
        raise UsageError(f"ckpt={ckpt}: a full-precision diffusers model (no binarydm quantization_config): nothing "
                         "to pack; export a binarized student")
    export_packed(model, configs["unet_config"], configs["quant_config"], out, configs.get("scheduler_config"),
                  latent_pipeline=_latent_pipeline(configs))
    sizes = file_sizes(out)
    fp32 = fp32_checkpoint_bytes(configs["unet_config"])
    theory = summary(model, *example_inputs(model), **example_condition(model))
    report = {
        "file": str(out),
        "bytes": sizes["total"],
        "header_bytes": sizes["header"],
        "fp32_bytes": fp32,
        "ratio": fp32 / sizes["total"],
        "summary_bytes": theory.storage_bytes,
        "summary_ratio": theory.storage_ratio,
        "params": theory.params,
    }
    if verify:
        x, t = example_inputs(model)
        x = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).to(x.device)
        cond = example_condition(model)
        with torch.no_grad():
            report["verified_equal"] = bool(torch.equal(model(x, t, **cond).sample,
                                                        load_packed(out)(x, t, **cond).sample))
    return report


def report_lines(report: Mapping[str, Any]) -> list[str]:
    """What ``python -m binarydm.export`` prints about an :func:`export` report (the JSON follows)."""
    mib = 2**20
    lines = [f"wrote {report['file']}: {report['bytes'] / mib:.3f} MiB ({report['bytes']:,} bytes, header "
             f"{report['header_bytes']:,})",
             f"FP32 diffusers checkpoint of the same UNet: {report['fp32_bytes'] / mib:.3f} MiB -> "
             f"{report['ratio']:.2f}x smaller",
             f"binarydm.summary theoretical storage: {report['summary_bytes'] / mib:.3f} MiB "
             f"({report['summary_ratio']:.2f}x)"]
    if "verified_equal" in report:
        lines.append(f"reloaded output equals the student's: {report['verified_equal']}")
    return lines + [json.dumps(report)]


__all__ = ["ExportArgs", "check_out", "example_condition", "example_inputs", "export", "fp32_checkpoint_bytes",
           "report_lines"]
