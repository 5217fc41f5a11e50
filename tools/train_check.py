"""The trainer on a GPU, checked in one command (issue 28; a stage of tools/device_check.sh).

    python tools/train_check.py --out DIR [--device cuda] [--steps 50] [--dry-run]

1. **parity**: the same ``--parity-steps`` (5) training steps of a randomly initialised UNet (ddpm-cifar10-32's
   architecture; ``--dry-run``: the tiny test UNet), same seed and data, float32, on the CPU and on ``--device``:
   the per-step losses agree within ``--rtol`` (1e-3) relative. TF32 is off for this check (cuDNN's default
   would round the convolutions' inputs to 10 mantissa bits).
2. **no host sync inside a step**: ``torch.profiler`` over ``--window`` (10) steps of the next run that neither
   log, validate nor checkpoint: the count per step of the CUDA runtime calls that make the host wait for the
   device (``cudaStreamSynchronize``, ``cudaDeviceSynchronize``, ``cudaEventSynchronize``, ``cudaMemcpy``), which
   must be 0; ``aten::item`` calls are reported besides (torch's Adam reads its CPU step counters so).
3. **a run on the device**: ``--steps`` (50) steps through ``binarydm.training.run`` (synthetic data, batch 32),
   ending in its sample grid, export and report; then the exported student reloaded on the CPU
   (``binarydm.load``) samples, and the device's last checkpoint resumes on the CPU for 2 more steps.

Writes DIR/train_check.json and one line per check; exit status 1 if a check fails. ``--dry-run`` runs
everything on the CPU (the parity of the CPU with itself), to test this script without a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import lightning as L
import torch

# CUDA runtime calls that make the host wait for the device (an .item() of a CUDA tensor is a copy and a
# cudaStreamSynchronize); aten::item is counted besides, for information: torch's Adam reads its step counters,
# CPU tensors, with it.
SYNC_EVENTS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")
INFO_EVENTS = ("aten::item",)


class StepLosses(L.Callback):
    """Each training step's loss, read after the step (a host sync: only for the parity runs)."""

    def __init__(self):
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss.detach().cpu()))


class ProfileWindow(L.Callback):
    """torch.profiler over the training steps ``first .. first + count - 1`` (batch indices)."""

    def __init__(self, first: int, count: int, device: str):
        self.first, self.count = first, count
        acts = [torch.profiler.ProfilerActivity.CPU]
        if device == "cuda":
            acts.append(torch.profiler.ProfilerActivity.CUDA)
        self.profiler = torch.profiler.profile(activities=acts)
        self.events: Optional[dict[str, int]] = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.first:
            self.profiler.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.first + self.count:  # global_step counts the steps done
            if torch.cuda.is_available():
                torch.cuda.synchronize()  # outside the window: the queued work lands in the trace
            self.profiler.__exit__(None, None, None)
            counts: dict[str, int] = {}
            for event in self.profiler.events():
                if event.name in SYNC_EVENTS + INFO_EVENTS:
                    counts[event.name] = counts.get(event.name, 0) + 1
            self.events = counts


def make_config(out: Path, name: str, device: str, steps: int, batch: int, dry_run: bool,
                overrides: Sequence[str] = ()):
    """The tiny test config (synthetic data), on ddpm-cifar10-32's architecture unless ``dry_run``; float32,
    no FID; validation and checkpoint only at the end; the progress bar on (a step must not sync for it either)."""
    from binarydm.training import load_config
    from binarydm.unets import DDPM_CIFAR10_32

    values = {"out_dir": str(out), "name": name, "trainer.accelerator": "gpu" if device == "cuda" else "cpu",
              "trainer.max_steps": steps, "trainer.precision": "32-true", "trainer.val_check_interval": steps,
              "trainer.checkpoint_every_n_steps": steps, "trainer.log_every_n_steps": 25,
              "trainer.enable_progress_bar": True,
              "data.batch_size": batch, "data.synthetic_size": 4 * batch,
              "eval.fid_samples": 0}
    cfg = load_config("tiny", list(overrides), values=values)
    if not dry_run:
        cfg.model.config = dict(DDPM_CIFAR10_32)  # replaces the tiny architecture
        cfg.data.image_size = DDPM_CIFAR10_32["sample_size"]
    return cfg


def parity(out: Path, device: str, steps: int, dry_run: bool) -> dict:
    from binarydm.training import run

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    losses = {}
    for side, where in (("cpu", "cpu"), ("device", device)):
        rec = StepLosses()
        run(make_config(out, side, where, steps, 8, dry_run), extra_callbacks=[rec])
        losses[side] = rec.losses
    a, b = losses["cpu"], losses["device"]
    rel = max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a, b))
    return dict(losses_cpu=a, losses_device=b, max_rel_diff=rel)


def device_run(out: Path, device: str, steps: int, window: int, dry_run: bool) -> dict:
    import binarydm
    from binarydm.sampling import sample_images
    from binarydm.training import run

    first = max(1, (steps - window) // 2)
    prof = ProfileWindow(first, window, device)
    t0 = time.perf_counter()
    result = run(make_config(out, "run", device, steps, 32, dry_run), extra_callbacks=[prof])
    seconds = time.perf_counter() - t0
    run_dir = Path(result["run_dir"])
    student = binarydm.load(run_dir / "student")  # on the CPU
    images = sample_images(student, 4, steps=3, progress=False)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    resumed = run(make_config(out, "resume_cpu", "cpu", steps + 2, 32, dry_run, [f"resume={ckpt}"]))
    per_step = {k: v / window for k, v in (prof.events or {}).items() if k in SYNC_EVENTS}
    info = {k: v / window for k, v in (prof.events or {}).items() if k in INFO_EVENTS}
    return dict(seconds=seconds, global_step=result["trainer"].global_step, sync_events_per_step=per_step,
                item_calls_per_step=info,
                profiled_steps=[first, first + window - 1], samples_shape=list(images.shape),
                samples_finite=bool(images.float().isfinite().all()),
                resumed_on_cpu_to_step=resumed["trainer"].global_step)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--parity-steps", type=int, default=5)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--rtol", type=float, default=1e-3)
    parser.add_argument("--dry-run", action="store_true", help="everything on the CPU, the tiny UNet")
    args = parser.parse_args(argv)
    device = "cpu" if args.dry_run else args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("train_check: no CUDA device; use --dry-run to run it on the CPU", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    report = dict(device=torch.cuda.get_device_name() if device == "cuda" else "cpu", dry_run=args.dry_run)
    ok = True
    report["parity"] = p = parity(args.out / "parity", device, args.parity_steps, args.dry_run)
    good = p["max_rel_diff"] <= args.rtol
    ok &= good
    print(f"train_check parity: {args.parity_steps} steps cpu vs {device}, max relative loss difference "
          f"{p['max_rel_diff']:.2e} ({'ok' if good else 'FAILED'}, tolerance {args.rtol:g})", flush=True)
    report["run"] = r = device_run(args.out / "run", device, args.steps, args.window, args.dry_run)
    syncs = sum(r["sync_events_per_step"].values())
    good = r["global_step"] == args.steps and r["samples_finite"] and r["resumed_on_cpu_to_step"] == args.steps + 2
    ok &= good
    print(f"train_check run: {r['global_step']} steps on {device} in {r['seconds']:.1f} s, exported, reloaded and "
          f"sampled on the CPU, resumed on the CPU to step {r['resumed_on_cpu_to_step']} "
          f"({'ok' if good else 'FAILED'})", flush=True)
    if device == "cuda":
        ok &= syncs == 0
    print(f"train_check sync: {syncs:g} host-sync events per step over steps {r['profiled_steps'][0]}-"
          f"{r['profiled_steps'][1]} {r['sync_events_per_step']}"
          + ("" if device == "cuda" else " (the CPU: reported, not checked)"), flush=True)
    report["ok"] = bool(ok)
    (args.out / "train_check.json").write_text(json.dumps(report, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
