"""Packed-checkpoint size on the google/ddpm-cifar10-32 architecture, per quantization, against FP32.

    python tools/bench_export.py [--out /tmp/bench_export]

Builds the UNet from its config (random weights: sizes do not depend on the values), binarizes and
calibrates it, exports the packed file, reloads it and checks the output is identical, and prints
the file size, the header size, the ratio against the FP32 diffusers checkpoint and the
``binarydm.summary`` theory. ``w1a4+ebb`` is W1A4 after EBB's transition (the final BinaryDM paper):
the second basis of every dual-basis layer dropped, one bit per weight everywhere.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

import binarydm
from binarydm.packing import export_packed, file_sizes, load_packed
from binarydm.packing.export import example_inputs, fp32_checkpoint_bytes
from binarydm.quant import LMB, weight_quantizers
from binarydm.unets import build_unet

CASES = {
    "w1a4": ("w1a4", False, "two bases on the outer level, kept layers 8-bit"),
    "w1a4+ebb": ("w1a4", True, "after EBB's transition: one basis everywhere, kept layers 8-bit"),
    "baseline": ("baseline", False, "one basis everywhere, kept layers 8-bit"),
}


def measure(name: str, out: Path) -> dict:
    preset, ebb, _ = CASES[name]
    torch.manual_seed(0)
    m = build_unet("ddpm-cifar10-32")
    cfg = dict(m.config)
    binarydm.binarize_(m, preset)
    binarydm.calibrate_(m, torch.randn(2, 3, 32, 32), torch.tensor([10, 900]))
    if ebb:
        for q in weight_quantizers(m):
            if isinstance(q, LMB) and q.n_bases == 2:
                q.drop_second_basis_()
    m.eval()
    path = export_packed(m, cfg, preset, out / f"{name}.safetensors")
    sizes = file_sizes(path)
    fp32 = fp32_checkpoint_bytes(cfg)
    theory = binarydm.summary(m, *example_inputs(m))
    x, t = example_inputs(m)
    x = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        equal = torch.equal(m(x, t).sample, load_packed(path)(x, t).sample)
    return {"case": name, "bytes": sizes["total"], "header": sizes["header"], "fp32": fp32,
            "ratio": fp32 / sizes["total"], "theory_bytes": theory.storage_bytes, "theory_ratio": theory.storage_ratio,
            "equal": equal}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--cases", nargs="*", default=list(CASES))
    args = p.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_export_"))
    out.mkdir(parents=True, exist_ok=True)
    print("| quantization | packed file | header | FP32 checkpoint | ratio | summary (theory) | reload equal |")
    print("|---|---|---|---|---|---|---|")
    for name in args.cases:
        r = measure(name, out)
        print(f"| `{name}` ({CASES[name][2]}) | {r['bytes'] / 2**20:.3f} MiB ({r['bytes']:,} B) | {r['header']:,} B "
              f"| {r['fp32'] / 2**20:.3f} MiB | **{r['ratio']:.2f}x** | {r['theory_bytes'] / 2**20:.3f} MiB, "
              f"{r['theory_ratio']:.2f}x | {r['equal']} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
