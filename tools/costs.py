"""Storage and OPs of quantization configs on a UNet, as ``binarydm.summary`` counts them (one table).

    python tools/costs.py                                   # ddpm-cifar10-32's architecture (random weights: no network)
    python tools/costs.py model=binarydm/assets/fmnist_teacher "configs={w1a4: {preset: lmb}, bidm: {preset: bidm}}"

Each entry of ``configs`` is a name and ``{preset: NAME, ...}``: an algorithm of
``binarydm.algorithms.available()`` and its overrides (``QuantConfig`` fields and the algorithm's options,
as ``algorithms.preset``). The default table is BiDM's structure with its full-precision parts removed one at
a time (docs/algorithms.md, "BiDM (W1A1)"). Storage and OPs depend on the architecture, not the weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence

import torch

from binarydm.cli import parse
from binarydm.errors import UsageError, run_main

_BIDM_STEPS = {
    "bidm (the code)": {"preset": "bidm"},
    "projection=False": {"preset": "bidm", "projection": False},
    "+ fp_skip=False": {"preset": "bidm", "projection": False, "fp_skip": False},
    "+ attention=True": {"preset": "bidm", "projection": False, "fp_skip": False, "attention": True},
    "+ keep_bits=8": {"preset": "bidm", "projection": False, "fp_skip": False, "attention": True, "keep_bits": 8},
    "+ time MLP binarized": {"preset": "bidm", "projection": False, "fp_skip": False, "attention": True, "keep_bits": 8,
                             "keep": ["conv_in", "conv_out"]},
    "BinaryDM W1A4 (lmb)": {"preset": "lmb"},
}


@dataclass
class CostsArgs:
    """``python tools/costs.py [model=ddpm-cifar10-32 | DIR] [configs={name: {preset: NAME, ...}}]``."""

    model: str = "ddpm-cifar10-32"
    configs: Dict[str, Dict[str, Any]] = field(default_factory=lambda: dict(_BIDM_STEPS))


def build(model: str):
    """A float UNet with random weights: a named architecture, or the config.json of a model directory."""
    import json

    from binarydm.unets import ARCHITECTURES, build_unet, resolve_local

    torch.manual_seed(0)
    if model in ARCHITECTURES:
        return build_unet(model)
    local = resolve_local(model)
    config = None if local is None else next((p for p in (local / "config.json", local / "unet" / "config.json")
                                              if p.is_file()), None)
    if config is None:
        raise UsageError(f"model={model}: neither an architecture ({sorted(ARCHITECTURES)}) nor a directory with "
                         "a UNet's config.json")
    return build_unet(json.loads(config.read_text()))


def packed_ratio(unet, config, fp32_bytes: float) -> float:
    """``fp32_bytes`` (the float model) over the bytes of the model's packed 1-bit file (``binarydm.export``'s
    format), written to a temporary directory: what the storage figure becomes on disk."""
    import tempfile
    from pathlib import Path

    from binarydm.packing import export_packed

    unet_config = {k: v for k, v in dict(unet.config).items() if k != "quantization_config"}
    with tempfile.TemporaryDirectory() as tmp:
        path = export_packed(unet, unet_config, config, Path(tmp) / "packed.safetensors")
        return fp32_bytes / path.stat().st_size


def costs(model: str, configs: Dict[str, Dict[str, Any]]) -> list[tuple[str, float, float, float]]:
    """(name, storage ratio, OPs ratio, packed-file ratio) per config."""
    import binarydm
    from binarydm import algorithms

    rows = []
    for name, entry in configs.items():
        entry = dict(entry)
        if "preset" not in entry:
            raise UsageError(f"configs.{name}: needs preset=NAME (one of {algorithms.available()})")
        try:
            config = algorithms.preset(entry.pop("preset"), **entry)
        except ValueError as e:
            raise UsageError(f"configs.{name}: {e}") from None
        unet = binarydm.binarize_(build(model), config).eval()
        size = unet.config.sample_size
        size = size if isinstance(size, int) else size[0]
        x = torch.randn(1, unet.config.in_channels, size, size)
        t = torch.tensor([500])
        binarydm.calibrate_(unet, x, t)
        s = binarydm.summary(unet, x, t)
        rows.append((name, s.storage_ratio, s.ops_ratio, packed_ratio(unet, config, s.fp_storage_bytes)))
    return rows


def _main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse(CostsArgs, argv)
    rows = costs(args.model, args.configs)
    print(f"| {args.model} | storage | OPs | packed file |\n|---|---|---|---|")
    for name, storage, ops, packed in rows:
        print(f"| {name} | {storage:.2f}x | {ops:.2f}x | {packed:.2f}x |")


def main(argv: Optional[Sequence[str]] = None):
    """A bad argument prints one line, ``error: ...``, and exits 2."""
    return run_main(_main, argv, raise_exit=True)


if __name__ == "__main__":
    main()
