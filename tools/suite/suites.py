"""The suites: which tasks, methods, recipes and sizes a ``tools/bench.py suite=NAME`` run covers.

smoke  every task on synthetic data with tiny models, three methods and a two-recipe grid on
       classification: minutes on a CPU; the test suite runs it end to end.
paper  BinaryDM's comparison (arXiv 2404.05662, Table 1) at W1A4 on the offline diffusion task
       (the shipped Fashion-MNIST teacher): FP, the baseline, LSQ W2A4, XNOR, ReActNet, BiPer and
       BinaryDM with and without LRM and progressive initialisation. Weight binarizers of the
       1-bit-activation methods are paired with 4-bit LSQ activations here, as the paper does.
full   every algorithm of ``binarydm.algorithms`` in its own configuration (BiBench's W1A1 for
       the 1-bit-activation ones) on all three tasks, with the learning-rate/optimiser grids.
latent the paper's latent ablation in miniature (its Table 4 is on LDM-4 LSUN-Bedrooms): the diffusion
       task on the latent miniature (an LDMPipeline with a VQ autoencoder of factor 4): FP, the
       baseline, + LMB, + LRM, both, BinaryDM, LSQ W2A4 and XNOR.
w1a1   fully binarized diffusion on the offline diffusion task: BiDM, BiDM with each of its parts removed (its
       paper's ablation in miniature), BiDM without its full-precision extras, BinaryDM's recipe with 1-bit
       activations, XNOR, ReActNet and Bi-Real at W1A1, and BinaryDM at W1A4 for reference
       (docs/ablation_variants_w1a1.yaml holds the same rows for tools/ablate.py).
"""

from __future__ import annotations

from typing import Any, Optional

from binarydm import algorithms

from .tasks.base import FP, RunSpec

# LRM's weight on the normalised loss (RunConfig's loss.lrm_weight default; docs/training.md, "LRM").
LRM_WEIGHT = 1.0
_LRM = {"loss.lrm_weight": LRM_WEIGHT}
_PROG = {"progressive.enabled": True}
_W1A4 = {"act": "lsq", "a_bits": 4, "attention": True}

# method -> (algorithm, QuantConfig overrides, diffusion-run overrides). The first six rows are the
# paper's ablation in miniature (its Table 4): the single-basis baseline, + LMB, + LRM, both, the
# full method with progressive initialisation, and the final paper's EBB on top of it.
PAPER_METHODS: dict[str, tuple[str, dict, dict]] = {
    FP: (FP, {}, {}),
    "baseline": ("baseline", {}, {}),
    "+lmb": ("lmb", {}, {}),
    "+lrm": ("baseline", {}, _LRM),
    "+lmb+lrm": ("lmb", {}, _LRM),
    "binarydm": ("lmb", {}, {**_LRM, **_PROG}),
    "ebb": ("ebb", {}, {**_LRM, **_PROG, "ebb.enabled": True}),
    "lsq-w2a4": ("lsq", {"w_bits": 2, "a_bits": 4}, {}),
    "xnor": ("xnor", _W1A4, {}),
    "reactnet": ("reactnet", _W1A4, {}),
    "biper": ("biper", _W1A4, {}),
}

# task -> (dataset, reference lr, steps, options) per suite
_SMOKE_TASKS: dict[str, tuple[str, float, int, dict]] = {
    "diffusion": ("synthetic", 1e-3, 4, {"fid_samples": 16, "sample_steps": 2, "sample_batch": 16,
                                         "features": "tiny"}),
    "classification": ("synthetic", 2e-3, 8, {"width": 0.25, "pretrain_steps": 20, "batch_size": 32,
                                              "eval_size": 64}),
    "language": ("synthetic", 2e-3, 8, {"d_model": 32, "n_layer": 1, "n_head": 2, "context": 16, "batch_size": 8,
                                        "eval_batches": 2, "pretrain_steps": 20}),
}
_FULL_TASKS: dict[str, tuple[str, float, int, dict]] = {
    "diffusion": ("fashion_mnist", 2e-4, 400, {"fid_samples": 500, "sample_steps": 25}),
    "classification": ("fashion_mnist", 1e-3, 500, {"pretrain_steps": 2000, "eval_size": 2000}),
    "language": ("pydoc", 1e-3, 500, {"pretrain_steps": 2000}),
}
# (optimizer, lr multiplier of the reference lr): the stability track's grid; the first is the reference.
_GRIDS: dict[str, list[tuple[str, float]]] = {
    "classification": [("adamw", 1.0), ("adamw", 0.1), ("sgd", 50.0), ("sgd", 5.0)],
    "language": [("adamw", 1.0), ("adamw", 0.3), ("sgd", 100.0)],
}
_LATENT_METHODS = (FP, "baseline", "+lmb", "+lrm", "+lmb+lrm", "binarydm", "lsq-w2a4", "xnor")
# BiDM's loss: space patched distillation at the authors' LDM weight (docs/algorithms.md, "BiDM (W1A1)").
_SPD = {"loss.spd_weight": 0.01}
W1A1_METHODS: dict[str, tuple[str, dict, dict]] = {
    FP: (FP, {}, {}),
    "bidm": ("bidm", {}, _SPD),
    "bidm-spd": ("bidm", {}, {}),
    "bidm-connection": ("bidm", {"timestep_connection": 0}, _SPD),
    "bidm-scale_map": ("bidm", {"scale_map": False}, _SPD),
    "bidm-shortcut": ("bidm", {"shortcut": False}, _SPD),
    "bidm-compact": ("bidm", {"projection": False, "fp_skip": False, "attention": True, "keep_bits": 8}, _SPD),
    "binarydm-w1a1": ("lmb", {"act": "reactnet", "a_bits": 1, "attention": False}, {**_LRM, **_PROG}),
    "xnor-w1a1": ("xnor", {}, {}),
    "reactnet-w1a1": ("reactnet", {}, {}),
    "bireal": ("bireal", {}, {}),
    "binarydm": PAPER_METHODS["binarydm"],
}
SUITES = ("smoke", "paper", "full", "latent", "w1a1")


def _specs(task: str, dataset: str, lr: float, steps: int, options: dict, methods: dict, grid: list,
           seed: int) -> list[RunSpec]:
    specs = []
    for method, (algo, quant, train) in methods.items():
        for i, (opt, mult) in enumerate(grid):
            specs.append(RunSpec.make(task=task, dataset=dataset, method=method, algorithm=algo, quant=quant,
                                      train=train if task == "diffusion" else {}, steps=steps, lr=lr * mult,
                                      optimizer=opt, seed=seed, grid=i, options=options))
    return specs


def build(name: str, steps: Optional[int] = None, tasks: Optional[list[str]] = None,
          methods: Optional[list[str]] = None, options: Optional[dict[str, dict[str, Any]]] = None,
          datasets: Optional[dict[str, str]] = None, seed: int = 0,
          seeds: Optional[list[int]] = None) -> list[RunSpec]:
    """The RunSpecs of suite ``name``; ``steps``, ``tasks``, ``methods``, per-task ``options`` and
    ``datasets`` (task -> dataset, e.g. ``{"classification": "cifar10"}``) override it. ``seeds``
    repeats every run once per seed (the report then shows mean +- std); default ``[seed]``."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; valid: {list(SUITES)}")
    if name in ("paper", "latent", "w1a1"):
        table = {"diffusion": _FULL_TASKS["diffusion"]}
        method_table = W1A1_METHODS if name == "w1a1" else PAPER_METHODS
        grids: dict[str, list] = {}
        if name == "latent":
            table = {"diffusion": ("latent_fashion_mnist", *_FULL_TASKS["diffusion"][1:])}
            method_table = {m: PAPER_METHODS[m] for m in _LATENT_METHODS}
    else:
        table = _SMOKE_TASKS if name == "smoke" else _FULL_TASKS
        if name == "smoke":
            method_table = {m: PAPER_METHODS[m] for m in (FP, "xnor", "binarydm")}
            method_table["xnor"] = ("xnor", {}, {})  # XNOR's own W1A1
            grids = {"classification": _GRIDS["classification"][:1] + _GRIDS["classification"][2:3]}
        else:
            method_table = {FP: (FP, {}, {}), **{a: (a, {}, {}) for a in algorithms.available()},
                            "lsq-w2a4": PAPER_METHODS["lsq-w2a4"], "binarydm": PAPER_METHODS["binarydm"]}
            method_table.pop("lmb", None)  # the binarydm row is LMB with BinaryDM's training
            grids = _GRIDS
    if tasks:
        unknown = sorted(set(tasks) - set(table))
        if unknown:
            raise ValueError(f"suite {name!r} has no task(s) {unknown}; its tasks: {sorted(table)}")
        table = {t: table[t] for t in tasks}
    if methods:
        unknown = sorted(set(methods) - set(method_table))
        if unknown:
            raise ValueError(f"suite {name!r} has no method(s) {unknown}; its methods: {sorted(method_table)}")
        keep = set(methods) | {FP}  # every ratio needs the FP run
        method_table = {m: v for m, v in method_table.items() if m in keep}
    specs = []
    for s in (seeds if seeds else [seed]):
        for task, (dataset, lr, task_steps, opts) in table.items():
            merged = {**opts, **((options or {}).get(task) or {})}
            dataset = (datasets or {}).get(task, dataset)
            specs += _specs(task, dataset, lr, steps or task_steps, merged, method_table,
                            grids.get(task, [("adamw", 1.0)]), int(s))
    return specs


__all__ = ["LRM_WEIGHT", "PAPER_METHODS", "SUITES", "W1A1_METHODS", "build"]
