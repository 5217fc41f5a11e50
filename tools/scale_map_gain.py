"""How a fresh BiDM student's binary convolutions compare with their full-precision selves, with and without the
scale map, on a run's first calibration batch (docs/results/w1a1_comparison.md, "Why the scale map hurts").

    python tools/scale_map_gain.py config=ldm_demo                       # the latent miniature, BiDM as coded
    python tools/scale_map_gain.py config=demo quant_options.scale_init=unit quant_options.scale_border=valid

The student is built and calibrated as ``binarydm.train`` builds it (``quant=bidm`` unless given; every quantizer
on, as without progressive initialisation), on the first training batch's (x_t, t). For each binarized
convolution with a scale map, on its own input x in that forward, with y = conv(x_b, W_b) the binary output, K(x)
the scale map and f = conv(x, W) the full-precision output: the least-squares gain g = <f, z> / <z, z>, the
cosine of f and z and the norm ratio |f| / |z| (= g / cos), for z = y (no map) and z = K(x) y (the map). A ratio
> 1: the binary output is smaller than the float one. Where the layer has BiDM's shortcut u = P(pool(x)) (before
its scale s), also the best s for each start, s* = <f - z, u> / <u, u>, and the share of |f - z|^2 that s* u
removes, cos(f - z, u)^2: how much the shortcut can add to the layer's approximation of its float self; and the
whole student's MSE to the teacher's noise prediction on the first validation batch with every s set to 0, 0.1,
0.3 and 0.5 (the network's start, against each layer's best s). Prints one row per layer, the means and the
network's line; ``out=FILE.json`` writes them.
"""

from __future__ import annotations

import json
import tempfile
from typing import Optional, Sequence

import torch
from torch.nn import functional as F

from binarydm.errors import UsageError, run_main

SHORTCUT_STARTS = (0.0, 0.1, 0.3, 0.5)


def _row(name: str, layer, x: torch.Tensor) -> dict:
    from binarydm.algorithms.bidm import binary_and_float_outputs

    y, full = binary_and_float_outputs(layer, x)
    k = layer.weight_quantizer.local_scale(x)
    row = {"layer": name, "size": list(x.shape[-2:]), "mean_K": float(k.mean())}
    shortcut = layer.weight_quantizer.shortcut
    u = None if shortcut is None else shortcut.path(x, y.shape[-2:])
    for key, z in (("plain", y), ("map", y * k)):
        row[f"gain_{key}"] = float((full * z).sum() / (z * z).sum())
        row[f"cos_{key}"] = float(F.cosine_similarity(full.flatten(), z.flatten(), dim=0))
        row[f"norm_{key}"] = float(full.norm() / z.norm())
        if u is not None:  # the best s for this start, and the share of |f - z|^2 that s u then removes
            rest = (full - z).flatten()
            row[f"s_{key}"] = float(rest @ u.flatten() / (u * u).sum())
            row[f"removed_{key}"] = float(F.cosine_similarity(rest, u.flatten(), dim=0) ** 2)
    return row


@torch.no_grad()
def measure(argv: Sequence[str]) -> tuple[list[dict], dict]:
    from binarydm.algorithms.bidm import BiDMWeight
    from binarydm.quant import calibrate_, set_quant_state_
    from binarydm.quant.layers import QuantConv2d
    from binarydm.training.config import from_argv
    from binarydm.training.runner import build

    argv = list(argv)
    if not any(a.startswith("quant=") for a in argv):
        argv.append("quant=bidm")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = from_argv(argv + [f"out_dir={tmp}", "progressive.enabled=false"])
        built = build(cfg)
        student, module = built.module.student, built.module
        layers = [(n, m) for n, m in student.named_modules()
                  if isinstance(m, QuantConv2d) and isinstance(m.weight_quantizer, BiDMWeight)
                  and m.weight_quantizer.local_scale is not None]
        if not layers:
            raise UsageError(f"quant={cfg.quant} with quant_options={dict(cfg.quant_options or {})}: no binarized "
                             "convolution has a scale map; use quant=bidm without quant_options.scale_map=false")
        built.data.setup("fit")
        batch = next(iter(built.data.train_dataloader()))
        x_t, t, _ = module.batch_inputs(batch, 0)
        cond = module.condition(batch)
        set_quant_state_(student, weights=True, activations=True)
        calibrate_(student, x_t, t, **cond)
        rows: list[dict] = []
        hooks = [m.register_forward_hook(lambda m, args, out, n=n: rows.append(_row(n, m, args[0])))
                 for n, m in layers]
        student.eval()
        student(x_t, t, **cond)
        for h in hooks:
            h.remove()
        network = _network_error(module, next(iter(built.data.val_dataloader())))
    return rows, network


def _network_error(module, batch) -> dict:
    """The whole student's MSE to the teacher's noise prediction on ``batch`` with every shortcut's s set to each of
    SHORTCUT_STARTS (empty without shortcuts): where the network starts, as against each layer's best s."""
    from binarydm.algorithms.bidm import ScaledShortcut
    from binarydm.quant.connection import connection_of

    shortcuts = [m for m in module.student.modules() if isinstance(m, ScaledShortcut)]
    if not shortcuts:
        return {}
    x_t, t, _ = module.batch_inputs(batch, 0)
    cond = module.condition(batch)
    teacher = module.teacher(x_t, t, **cond).sample
    connection = connection_of(module.student)
    errors = {}
    for s in SHORTCUT_STARTS:
        for m in shortcuts:
            m.scale.fill_(s)
        if connection is not None:  # each pass a first step: nothing carried over from the pass before
            connection.reset()
        errors[s] = float(F.mse_loss(module.student(x_t, t, **cond).sample, teacher))
    return errors


def _main(argv: list[str]) -> list[dict]:
    out = next((a.split("=", 1)[1] for a in argv if a.startswith("out=")), None)
    rows, network = measure([a for a in argv if not a.startswith("out=")])
    keys = ["mean_K", "gain_plain", "cos_plain", "norm_plain", "gain_map", "cos_map", "norm_map"]
    head = (f"{'layer':40s} {'size':>5s} {'mean K':>6s} | no map: {'gain':>5s} {'cos':>5s} {'norm':>5s} | "
            f"map: {'gain':>5s} {'cos':>5s} {'norm':>5s}")
    if all("s_map" in r for r in rows):
        keys += ["s_plain", "removed_plain", "s_map", "removed_map"]
        head += f" | best s, removed: {'no map':>13s} {'map':>13s}"
    print(head)
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in keys}
    for r in rows + [dict(mean, layer=f"mean of {len(rows)} layers", size=[])]:
        v = [r[k] for k in keys]
        line = (f"{r['layer']:40s} {'x'.join(map(str, r['size'])):>5s} {v[0]:6.3f} | {v[1]:13.3f} {v[2]:5.3f} "
                f"{v[3]:5.3f} | {v[4]:10.3f} {v[5]:5.3f} {v[6]:5.3f}")
        if len(v) > 7:
            line += f" | {v[7]:24.3f} {v[8]:5.3f} {v[9]:7.3f} {v[10]:5.3f}"
        print(line)
    if network:
        print("the student's MSE to the teacher on a validation batch, every shortcut at s = "
              + ", ".join(f"{s}: {e:.4f}" for s, e in network.items()))
    if out:
        with open(out, "w") as f:
            json.dump({"argv": argv, "layers": rows, "mean": mean, "network_mse_by_s": network}, f, indent=1)
    return rows


def main(argv: Optional[Sequence[str]] = None):
    """A bad argument prints one line, ``error: ...``, and exits 2."""
    return run_main(_main, argv, raise_exit=True)


if __name__ == "__main__":
    main()
