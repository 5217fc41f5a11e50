"""Benchmark of the W1A4 convolution kernel against torch fp16 convolution, per conv shape of a UNet.

For every distinct Conv2d shape of the google/ddpm-cifar10-32 UNet (block_out_channels 128, 256, 256,
256 at 32, 16, 8, 4 resolution; built from its config, random weights) at each batch size: the
kernel's time (packed 4-bit codes in, NHWC fp16 out, two weight bases) against F.conv2d in fp16 with
channels_last and cudnn.benchmark on; CUDA events around each call, the median of many runs after a
warm-up, operand sets rotated so that repeated runs do not measure a warm cache. Achieved TOPS counts
2 * N * OH * OW * C_out * C_in * KH * KW operations. Then the whole UNet forward at each batch size:
the fp16 model (channels_last) against the same model binarized to W1A4, calibrated, converted to
fp16 and switched to the kernel (``binarydm.kernels.inference.w1a4_inference_``). Writes a markdown
table (and prints it), and with --json the figures ``tools/bench.py kernel_results=`` reads.

    python tools/bench_kernel.py [--batch 64 256] [--reps 100] [--variant mma] [--out docs/kernel_figures.md]
                                 [--json bench_kernel.json]

Needs a CUDA GPU and CuPy (pip install cupy-cuda13x); exits with a message otherwise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from torch.nn import functional as F


def conv_shapes(arch: str = "ddpm-cifar10-32") -> list[tuple]:
    """Distinct (C_in, C_out, k, stride, padding, H, W) of the UNet's binarized convolutions, from one forward."""
    from binarydm.unets import build_unet

    model = build_unet(arch).eval()
    seen: dict[tuple, None] = {}

    def hook(module, inputs, _):
        x = inputs[0]
        key = (module.in_channels, module.out_channels, module.kernel_size[0], module.stride[0],
               module.padding[0], x.shape[-2], x.shape[-1])
        seen.setdefault(key, None)

    # conv_in and conv_out stay 8-bit in BinaryDM (QuantConfig keep): they never run through this kernel.
    handles = [m.register_forward_hook(hook) for name, m in model.named_modules()
               if isinstance(m, torch.nn.Conv2d) and name not in ("conv_in", "conv_out")]
    size = model.config.sample_size
    with torch.no_grad():
        model(torch.randn(1, model.config.in_channels, size, size), torch.tensor([10]))
    for h in handles:
        h.remove()
    return list(seen)


def time_ms(fn, reps: int, warmup: int = 10) -> float:
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(i)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def bench_shape(shape, batch: int, reps: int, variant: str, sets: int = 4) -> dict:
    from binarydm.kernels import cuda as kcuda
    from binarydm.kernels.packing import PackedActivation, pack_codes, pack_weight

    cin, cout, k, s, p, h, w = shape
    dev = torch.device("cuda")
    bits = torch.randint(0, 2, (2, cout, cin, k, k), dtype=torch.uint8)
    wp = pack_weight(bits, torch.rand(2, cout) + 0.1, torch.randn(cout), s, p).to(dev)
    xs = [PackedActivation(pack_codes(torch.randint(0, 16, (batch, cin, h, w))).to(dev),
                           torch.tensor(0.1, device=dev), 8, cin) for _ in range(sets)]
    wf = torch.randn(cout, cin, k, k, device=dev, dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    bf = torch.randn(cout, device=dev, dtype=torch.float16)
    xf = [torch.randn(batch, cin, h, w, device=dev, dtype=torch.float16).contiguous(memory_format=torch.channels_last)
          for _ in range(sets)]
    t_kernel = time_ms(lambda i: kcuda.launch(xs[i % sets], wp, torch.float16, variant), reps)
    t_torch = time_ms(lambda i: F.conv2d(xf[i % sets], wf, bf, s, p), reps)
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    ops = 2 * batch * oh * ow * cout * cin * k * k
    return dict(t_kernel=t_kernel, t_torch=t_torch, tops_kernel=ops / t_kernel / 1e9, tops_torch=ops / t_torch / 1e9)


def bench_unet(batch: int, reps: int) -> dict:
    """Whole-UNet forward (one timestep), fp16 model vs W1A4 kernel mode, milliseconds."""
    import warnings

    import binarydm
    from binarydm.kernels.inference import w1a4_inference_
    from binarydm.unets import build_unet

    dev = torch.device("cuda")
    torch.manual_seed(0)
    fp = build_unet("ddpm-cifar10-32").eval()
    student = build_unet("ddpm-cifar10-32").eval()
    student.load_state_dict(fp.state_dict())
    binarydm.binarize_(student, "w1a4")
    binarydm.calibrate_(student, torch.randn(4, 3, 32, 32), torch.tensor([10, 300, 600, 900]))
    fp = fp.to(dev).half().to(memory_format=torch.channels_last)
    student = student.to(dev).half()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback to the reference would not be a kernel figure
        report = w1a4_inference_(student)
    x = torch.randn(batch, 3, 32, 32, device=dev, dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    t = torch.full((batch,), 500, device=dev)
    with torch.no_grad():
        t_fp = time_ms(lambda i: fp(x, t), reps, warmup=5)
        t_q = time_ms(lambda i: student(x, t), reps, warmup=5)
    return dict(t_fp16=t_fp, t_w1a4=t_q, swapped=sum(v == "w1a4" for v in report.values()), convs=len(report))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--variant", choices=["mma", "simt"], default="mma")
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write the table to")
    parser.add_argument("--json", type=Path, default=None, help="JSON file for tools/bench.py kernel_results=")
    parser.add_argument("--unet-reps", type=int, default=30)
    args = parser.parse_args()

    if not torch.cuda.is_available():
        sys.exit("bench_kernel: no CUDA device visible to PyTorch; run this on a machine with an NVIDIA GPU")
    from binarydm.kernels import cuda as kcuda

    try:
        kcuda.load_module()
    except kcuda.KernelUnavailable as err:
        sys.exit(f"bench_kernel: the W1A4 kernel cannot load here: {err}")
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)

    device = torch.cuda.get_device_name()
    lines = [f"W1A4 conv ({args.variant}, 2 bases, fp16 out) vs torch fp16 conv (channels_last, cudnn.benchmark) "
             f"on {device}; median of {args.reps} runs, CUDA events.", "",
             "| batch | C_in | C_out | k | s | H x W | W1A4 us | fp16 us | speedup | W1A4 TOPS | fp16 TFLOPS |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for batch in args.batch:
        for shape in conv_shapes():
            cin, cout, k, s, _, h, w = shape
            r = bench_shape(shape, batch, args.reps, args.variant)
            lines.append(f"| {batch} | {cin} | {cout} | {k} | {s} | {h}x{w} | {r['t_kernel'] * 1e3:.1f} | "
                         f"{r['t_torch'] * 1e3:.1f} | {r['t_torch'] / r['t_kernel']:.2f}x | "
                         f"{r['tops_kernel']:.1f} | {r['tops_torch']:.1f} |")
            print(lines[-1], flush=True)
    lines += ["", "Whole UNet forward (google/ddpm-cifar10-32 architecture, one timestep): fp16 model vs W1A4 "
              "kernel mode (binarized convolutions on the kernel, the rest in fp16).", "",
              "| batch | fp16 ms | W1A4 ms | speedup | convs on the kernel |", "|---|---|---|---|---|"]
    unet = {}
    for batch in args.batch:
        r = bench_unet(batch, args.unet_reps)
        unet[batch] = r
        lines.append(f"| {batch} | {r['t_fp16']:.2f} | {r['t_w1a4']:.2f} | {r['t_fp16'] / r['t_w1a4']:.2f}x | "
                     f"{r['swapped']} of {r['convs']} |")
        print(lines[-1], flush=True)
    table = "\n".join(lines) + "\n"
    print(table)
    if args.json is not None:
        import json

        largest = max(unet)
        args.json.write_text(json.dumps({"device": device, "unet": {str(b): r for b, r in unet.items()},
                                         "unet_speedup": unet[largest]["t_fp16"] / unet[largest]["t_w1a4"]},
                                        indent=1))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)


if __name__ == "__main__":
    main()
