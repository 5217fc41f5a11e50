"""Benchmark of the binarization core on the google/ddpm-cifar10-32 architecture (random weights).

Prints the storage and OPs ratios of the W1A4 model against full precision (binarydm.summary), and
the CPU time of a fake-quantized forward against the full-precision forward, measured side by side
(interleaved repetitions, median) in one run.

    python tools/bench_core.py [--preset w1a4] [--batch 8] [--reps 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import binarydm
from binarydm.unets import build_unet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="w1a4")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    fp = build_unet("ddpm-cifar10-32").eval()
    student = binarydm.binarize_(copy.deepcopy(fp), args.preset)
    x = torch.randn(args.batch, 3, 32, 32)
    t = torch.randint(0, 1000, (args.batch,))
    binarydm.calibrate_(student, x, t)

    s = binarydm.summary(student, x[:1], t[:1])
    print(f"architecture google/ddpm-cifar10-32 ({s.params / 1e6:.2f}M parameters), preset {args.preset}: "
          f"{binarydm.QuantConfig.preset(args.preset)}")
    print(f"storage: {s.storage_bytes / 2**20:.3f} MiB vs FP32 {s.fp_storage_bytes / 2**20:.3f} MiB "
          f"-> storage_ratio {s.storage_ratio:.2f}x")
    print(f"OPs per sample: {s.ops / 1e9:.4f} G vs FP {s.fp_ops / 1e9:.4f} G -> ops_ratio {s.ops_ratio:.2f}x")

    times = {"fp": [], "fake-quant": []}
    with torch.no_grad():
        for model in (fp, student):  # warm-up
            model(x, t)
        for _ in range(args.reps):
            for name, model in (("fp", fp), ("fake-quant", student)):
                start = time.perf_counter()
                model(x, t)
                times[name].append(time.perf_counter() - start)
    fp_t, q_t = statistics.median(times["fp"]), statistics.median(times["fake-quant"])
    print(f"CPU forward, batch {args.batch}, {args.threads} threads, median of {args.reps}: "
          f"FP {fp_t * 1e3:.1f} ms, fake-quant {q_t * 1e3:.1f} ms -> ratio {q_t / fp_t:.2f}x")


if __name__ == "__main__":
    main()
