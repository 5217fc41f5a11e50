"""Step time of BinaryDM QAT (student + frozen teacher + LRM) against plain FP fine-tuning, same UNet.

    .venv/bin/python tools/bench_train.py [--batch 8] [--steps 20] [--threads 2]

Both loops run in this one process on the same UNet, data and optimiser (AdamW), without Lightning
(its overhead is the same for both and would only dilute the ratio). The QAT step is the one
``DiffusionQAT.training_step`` runs: teacher forward (no grad) with feature hooks, binarized student
forward/backward with all quantizers on (W1A4, attention operands included), the LRM loss.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

UNET = dict(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=8, attention_head_dim=32)


def time_interleaved(step_fns: dict, steps: int, warmup: int = 2) -> dict[str, list[float]]:
    """Per-step wall times, the candidates taking turns so that a busy machine slows all alike."""
    for fn in step_fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in step_fns}
    for _ in range(steps):
        for name, fn in step_fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from diffusers import DDPMScheduler, UNet2DModel

    import binarydm
    from binarydm.training.module import DiffusionQAT, LossConfig

    torch.manual_seed(0)
    fp = UNet2DModel(**UNET)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    x0 = torch.rand(args.batch, 3, 32, 32) * 2 - 1

    student = binarydm.binarize_(copy.deepcopy(fp), "w1a4")
    qat = DiffusionQAT(student, scheduler, teacher=copy.deepcopy(fp), loss=LossConfig(lrm_weight=1e-4))
    plain = DiffusionQAT(copy.deepcopy(fp), scheduler, teacher=None)
    g = torch.Generator().manual_seed(0)
    x_t, t, eps = qat.noisy_inputs(x0, g)
    binarydm.calibrate_(student, x_t, t)

    def stepper(module):
        opt = torch.optim.AdamW(module.student.parameters(), lr=1e-5)

        def step():
            loss = module.compute_losses(x_t, t, eps)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    # The student alone (quantizers on, no teacher, no LRM): how much of the gap is the quantizers.
    student_only = DiffusionQAT(student, scheduler, teacher=None)
    times = time_interleaved({"fp": stepper(plain), "qat": stepper(qat), "student": stepper(student_only)},
                             args.steps)
    f, q, s = (statistics.median(times[k]) for k in ("fp", "qat", "student"))
    params = sum(p.numel() for p in fp.parameters())
    print(f"UNet2DModel {params / 1e6:.2f}M params, 32x32, batch {args.batch}, {args.threads} threads, "
          f"median of {args.steps} steps")
    print(f"{'FP fine-tuning':>32}: {f * 1000:8.1f} ms/step")
    print(f"{'QAT (student+teacher+LRM)':>32}: {q * 1000:8.1f} ms/step")
    print(f"{'  of which binarized student':>32}: {s * 1000:8.1f} ms/step (no teacher, no LRM)")
    print(f"{'ratio QAT / FP':>32}: {q / f:8.2f}  (target <= 1.6)")


if __name__ == "__main__":
    main()
