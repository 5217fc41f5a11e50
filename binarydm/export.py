"""``python -m binarydm.export ckpt=PATH out=FILE``: write the packed 1-bit checkpoint of a trained student.

``ckpt`` is a student directory (``config.json`` with binarydm's ``quantization_config`` +
``diffusion_pytorch_model.safetensors`` [+ ``scheduler_config.json``], as a training run writes it, or the
earlier ``student.safetensors`` + ``quant_config.json`` + ``unet_config.json``; a run directory holding
``student/`` works too) or an existing packed file (re-export). Prints the file size, the size of the same UNet as an
FP32 diffusers checkpoint and their ratio, and the theoretical storage of ``binarydm.summary``.
Add ``verify=true`` to reload the file and check that its output equals the student's. An existing
``out`` that is not a packed file is refused (``overwrite=true`` replaces it); the file is written
atomically and follows the umask.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import nn

from .errors import RunFailed, UsageError, run_main
from .sample import load_for_cli, parse_args

DEFAULTS = {"ckpt": None, "out": None, "verify": False, "overwrite": False}
USAGE = __doc__.split("\n\n")[0] + "\n  options: " + ", ".join(f"{k}={v}" for k, v in DEFAULTS.items())


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
    cfg = model.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
    device = next(model.parameters()).device
    return torch.zeros(1, cfg.in_channels, size, size, device=device), torch.tensor([500], device=device)


def example_condition(model: nn.Module, batch: int = 1) -> dict[str, Any]:
    """The conditioning of a class-conditional UNet (label 0, 1, ...); a text-conditioned one gets one
    zero token of ``cross_attention_dim`` (what the packed model's accounting and check need)."""
    from .unets import condition_kwargs, needs_text

    device = next(model.parameters()).device
    if needs_text(model.config):
        return {"encoder_hidden_states": torch.zeros(batch, 1, int(model.config.cross_attention_dim), device=device)}
    return condition_kwargs(model.config, batch=batch, device=device)


def _is_packed(path: Path) -> bool:
    """Whether ``path`` is a binarydm packed file (its header says so; the payload is not read)."""
    from safetensors import safe_open

    from .packing import FORMAT

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") == FORMAT
    except Exception:  # noqa: BLE001 - any unreadable file is "not a packed file"
        return False


def _binarized_dir(directory: Path) -> bool:
    """Whether a diffusers model directory's config.json carries binarydm's quantization_config."""
    try:
        qc = json.loads((directory / "config.json").read_text()).get("quantization_config")
    except (OSError, ValueError, AttributeError):
        return True  # unreadable: let the loader say what is wrong
    return isinstance(qc, dict) and qc.get("quant_method") == "binarydm"


def check_out(out: Path, overwrite: bool = False) -> None:
    """``out`` must be a new file, an earlier packed file (replaced) or, with ``overwrite``, any file."""
    from .packing.format import check_output_path

    check_output_path(out, "out", directory=False)
    if out.exists() and not overwrite and not _is_packed(out):
        raise UsageError(f"out={out}: exists and is not a binarydm packed file; choose another out=, or pass "
                         "overwrite=true to replace it")


def export(ckpt: Path, out: Path, verify: bool = False, overwrite: bool = False) -> dict[str, Any]:
    from . import summary
    from .packing import export_packed, file_sizes, load_packed

    ckpt, out = Path(ckpt), Path(out)
    if not ckpt.exists():
        raise UsageError(f"ckpt={ckpt}: no such file or directory")
    check_out(out, overwrite)  # before any work
    if ckpt.is_dir() and (ckpt / "student").is_dir():
        ckpt = ckpt / "student"
    if ckpt.is_dir() and not (ckpt / "quant_config.json").is_file() and (ckpt / "config.json").is_file() \
            and not _binarized_dir(ckpt):
        configs = {"quant_config": None}  # a full-precision diffusers model directory: said before loading it
    else:
        model, configs = load_for_cli(ckpt)
    if configs.get("quant_config") is None:
        raise UsageError(f"ckpt={ckpt}: a full-precision diffusers model (no binarydm quantization_config): nothing "
                         "to pack; "
                         "export a binarized student")
    export_packed(model, configs["unet_config"], configs["quant_config"], out, configs.get("scheduler_config"))
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


def _main(argv: list[str]) -> None:
    args = parse_args(argv, DEFAULTS, USAGE)
    if args["ckpt"] is None or args["out"] is None:
        raise UsageError("ckpt=PATH and out=FILE are both required (see --help)")
    r = export(Path(args["ckpt"]), Path(args["out"]), bool(args["verify"]), bool(args["overwrite"]))
    mib = 2**20
    print(f"wrote {r['file']}: {r['bytes'] / mib:.3f} MiB ({r['bytes']:,} bytes, header {r['header_bytes']:,})")
    print(f"FP32 diffusers checkpoint of the same UNet: {r['fp32_bytes'] / mib:.3f} MiB -> {r['ratio']:.2f}x smaller")
    print(f"binarydm.summary theoretical storage: {r['summary_bytes'] / mib:.3f} MiB ({r['summary_ratio']:.2f}x)")
    if "verified_equal" in r:
        print(f"reloaded output equals the student's: {r['verified_equal']}")
    print(json.dumps(r))
    if r.get("verified_equal") is False:
        raise RunFailed(f"{r['file']}: the reloaded packed model's output differs from the student's (verify=true)")


def main(argv: Optional[Sequence[str]] = None) -> None:
    """A user error prints ``error: ...`` and raises SystemExit(2) (BINARYDM_DEBUG=1: the traceback)."""
    run_main(_main, argv, raise_exit=True)


if __name__ == "__main__":
    main()
