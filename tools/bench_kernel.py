"""Benchmark of the W1A4 convolution kernel against cuDNN fp16 convolution, per conv shape of a UNet.

For every distinct binarized Conv2d shape of the google/ddpm-cifar10-32 UNet (built from its config,
random weights, no download) at each batch size and number of weight bases:

* fp16: ``F.conv2d`` in fp16, channels_last, ``cudnn.benchmark`` on;
* conv: the W1A4 kernel alone (packed codes, or bit-planes for the bit-plane kernel, in; NHWC fp16 out,
  output and epilogue scales allocated once);
* w1a4: the activation quantization (``quantize_bytes``, ``quantize_pack`` for simt, or
  ``quantize_planes`` for the bit-plane kernel, of the fp16 channels_last input) plus the kernel, the
  figure to compare with fp16.

for each kernel variant of ``--variants`` (default: ``bmma``, the bit-plane kernel of cuda/w1a4_bmma.cu,
and ``mma``, the s8 x s8 kernel of cuda/w1a4_conv.cu), one row per (shape, batch, bases, variant).

Each is timed two ways: CUDA events around ``launches`` back-to-back calls (the per-call Python and
launch cost included: a lower bound on what eager code pays), and replays of a CUDA graph holding the
same calls (device time; None with the reason in ``errors`` if the capture fails). Operand sets are
rotated so that repeated calls do not all hit a warm L2. The median of ``--repeats`` timings, per call,
in microseconds. Then the whole UNet forward (one timestep) at each batch: the fp16 model against the
same model binarized to W1A4, calibrated, converted to fp16 and switched to the kernel
(``binarydm.kernels.inference.w1a4_inference_``), once per variant and once as ``auto`` (no variant
forced: each conv on the kernel ``cuda.choose_variant`` picks for its size), with the relative error of the
W1A4 output against the fake-quantized float32 model. On a GPU the mma rows of 3x3 stride-1 convs also
time SiLU(GroupNorm(x)) to s8 codes, unfused (fp16 norm and SiLU, then ``quantize_bytes``) and fused
(``groupnorm_silu_bytes``).

    python tools/bench_kernel.py [--batch 1 64 256] [--bases 1 2] [--variants bmma mma] [--json bench_kernel.json]
                                 [--out kernel_figures.md] [--no-layers] [--no-unet] [--quant w1a4|bidm] [--dry-run]

``--quant bidm`` binarizes the whole UNet with BiDM (W1A1): its convolutions run on the same kernels with
sign codes (``binarydm.kernels.inference.W1A1Conv2d``), the scale maps and shortcuts in PyTorch.

``--json`` is rewritten after every row, so a run cut short keeps what it measured; ``tools/bench.py
kernel_results=`` reads its ``unet_speedup``. ``--dry-run`` runs every step on the CPU (the PyTorch
reference in place of the kernel, perf_counter in place of CUDA events, two shapes, batch 1) to check
this script without a GPU: its figures mean nothing. Needs a CUDA GPU and CuPy otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
import traceback
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


# ---- timing -------------------------------------------------------------------------------------
def _run(fn, launches: int) -> None:
    for i in range(launches):
        fn(i)


def time_calls(fn, launches: int, repeats: int, device: torch.device) -> float:
    """Median over ``repeats`` of the time of ``launches`` back-to-back calls ``fn(i)``, per call, in us."""
    _run(fn, min(launches, 3))  # warm-up: module load, cudnn autotuning, allocator
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            _run(fn, launches)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1e3 / launches)
        else:
            t0 = time.perf_counter()
            _run(fn, launches)
            times.append((time.perf_counter() - t0) * 1e6 / launches)
    return statistics.median(times)


def time_graph(fn, launches: int, repeats: int) -> float:
    """Median replay time of a CUDA graph holding ``launches`` calls ``fn(i)``, per call, in us."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture, as torch.cuda.graphs asks
        _run(fn, 3)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        _run(fn, launches)
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / launches)
    return statistics.median(times)


def launches_for(fn, device: torch.device, target_us: float, cap: int) -> int:
    """Enough calls for one timing to last about ``target_us`` (at least 3, at most ``cap``)."""
    once = time_calls(fn, 1, 1, device)
    return int(max(3, min(cap, target_us // max(once, 1.0))))


class Bench:
    """Rows and errors, written to ``--json`` after every row."""

    def __init__(self, path, meta: dict):
        self.path, self.data = path, {**meta, "layers": [], "unet": [], "errors": [], "complete": False}

    def add(self, kind: str, row: dict) -> None:
        self.data[kind].append(row)
        self.save()

    def error(self, where: str, err: BaseException) -> None:
        self.data["errors"].append({"where": where, "error": f"{type(err).__name__}: {err}"})
        print(f"bench_kernel: {where}: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        self.save()

    def save(self) -> None:
        unet = [r for r in self.data["unet"] if r.get("t_w1a4_ms")]
        if unet:
            batch = max(r["batch"] for r in unet)
            largest = min((r for r in unet if r["batch"] == batch), key=lambda r: r["t_w1a4_ms"])
            self.data["unet_speedup"] = largest["t_fp16_ms"] / largest["t_w1a4_ms"]
            self.data["unet_speedup_variant"] = largest.get("variant")
        if self.path is not None:
            Path(self.path).write_text(json.dumps(self.data, indent=1))


def timed(bench: Bench, where: str, fn, launches: int, repeats: int, device: torch.device, graph: bool):
    """(events us, graph us), either None where it failed (the error recorded)."""
    out = []
    for use_graph in (False, True):
        if use_graph and not graph:
            out.append(None)
            continue
        try:
            out.append(time_graph(fn, launches, repeats) if use_graph else time_calls(fn, launches, repeats, device))
        except Exception as err:  # noqa: BLE001 -- one failed timing must not end the benchmark
            bench.error(f"{where} ({'graph' if use_graph else 'events'})", err)
            out.append(None)
    return out


# ---- per layer ----------------------------------------------------------------------------------
def bench_shape(bench: Bench, shape: tuple, batch: int, bases_list, args, device: torch.device) -> list[dict]:
    from binarydm.kernels.packing import pack_weight

    cin, cout, k, s, p, h, w = shape
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    on_gpu = device.type == "cuda"
    dtype = torch.float16 if on_gpu else torch.float32  # the CPU (dry run) has no fast fp16 conv
    # Enough operand sets that the rotation spans well over the L2 (60 MB on an H200), at most 8.
    set_bytes = batch * cin * h * w * 2
    sets = int(max(2, min(8, -(-160e6 // set_bytes))))
    xf = [(torch.randn(batch, cin, h, w, device=device) * 2).to(dtype).contiguous(memory_format=torch.channels_last)
          for _ in range(sets)]
    wf = torch.randn(cout, cin, k, k, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    bf = torch.randn(cout, device=device, dtype=dtype)
    graph, where = on_gpu and not args.no_graph, f"{shape} batch {batch}"
    fp16 = lambda i: F.conv2d(xf[i % sets], wf, bf, s, p)  # noqa: E731
    n_fp16 = launches_for(fp16, device, args.target_us, args.max_launches)
    t_fp16 = timed(bench, f"fp16 {where}", fp16, n_fp16, args.repeats, device, graph)

    step = torch.tensor(0.5, device=device)
    ops = 2 * batch * oh * ow * cout * cin * k * k
    rows = []
    for nb in bases_list:
        bits = torch.randint(0, 2, (nb, cout, cin, k, k), dtype=torch.uint8)
        wp = pack_weight(bits, torch.rand(nb, cout) + 0.1, torch.randn(cout), s, p).to(device)
        for variant in args.variants:
            if variant == "bmma1" and not _splits_k(device, batch * oh * ow, nb * cout, cin, k):
                continue  # bmma1 (split-K off) is the side-by-side baseline of the launches that split
            try:
                conv, w1a4 = _calls(variant, xf, wp, step, batch, cin, h, w, oh, ow, cout, sets, device)
                n = launches_for(w1a4, device, args.target_us, args.max_launches)
            except Exception as err:  # noqa: BLE001 -- one variant failing must not end the shape
                bench.error(f"{where} bases {nb} {variant}", err)
                continue
            t_conv = timed(bench, f"conv {where} bases {nb} {variant}", conv, n, args.repeats, device, graph)
            t_w1a4 = timed(bench, f"w1a4 {where} bases {nb} {variant}", w1a4, n, args.repeats, device, graph)
            best = lambda t: t[1] if t[1] is not None else t[0]  # noqa: E731  device time where the graph ran
            row = dict(batch=batch, cin=cin, cout=cout, k=k, stride=s, pad=p, h=h, w=w, bases=nb, variant=variant,
                       gops=ops / 1e9, launches_fp16=n_fp16, launches_w1a4=n,
                       fp16_us=t_fp16[0], fp16_graph_us=t_fp16[1], conv_us=t_conv[0], conv_graph_us=t_conv[1],
                       w1a4_us=t_w1a4[0], w1a4_graph_us=t_w1a4[1])
            if best(t_fp16) and best(t_w1a4):
                row["speedup"] = best(t_fp16) / best(t_w1a4)
                row["tops_w1a4"] = ops / best(t_w1a4) / 1e6
                row["tflops_fp16"] = ops / best(t_fp16) / 1e6
            if variant in ("mma", "bmma") and on_gpu and k == 3 and s == 1 and cin % 32 == 0:
                # A ResNet block's norm -> SiLU -> quantize in front of this conv: fp16 GroupNorm and SiLU then
                # the kernel's quantizer, against the fused pass (what W1A4Conv2d.normed runs).
                row.update(_norm_times(bench, where, xf, cin, step, n, args, device, variant))
            bench.add("layers", row)
            rows.append(row)
    return rows


def _norm_times(bench: Bench, where: str, xf, cin: int, step, launches: int, args, device,
                variant: str = "mma") -> dict:
    """Device time (CUDA graph) of SiLU(GroupNorm(x)) quantized to the kernel's operand (s8 codes for
    ``mma``, bit-planes for ``bmma``), unfused and fused, and of a copy of x, in us."""
    from binarydm.kernels import cuda as kcuda

    norm = torch.nn.GroupNorm(32, cin, eps=1e-6).to(device).half()
    sets = len(xf)
    quantize, fused_op = ((kcuda.quantize_planes, kcuda.groupnorm_silu_planes) if variant == "bmma"
                          else (kcuda.quantize_bytes, kcuda.groupnorm_silu_bytes))
    unfused = lambda i: quantize(F.silu(norm(xf[i % sets])), step)  # noqa: E731
    fused = lambda i: fused_op(xf[i % sets], norm, step)  # noqa: E731
    # the issue-29 yardstick: copying the tensor (one read, one write of it) on the same card
    dst = torch.empty_like(xf[0])
    copy = lambda i: dst.copy_(xf[i % sets])  # noqa: E731
    t_unfused = timed(bench, f"norm unfused {where}", unfused, launches, args.repeats, device, True)
    t_fused = timed(bench, f"norm fused {where}", fused, launches, args.repeats, device, True)
    t_copy = timed(bench, f"copy {where}", copy, launches, args.repeats, device, True)
    return dict(norm_unfused_graph_us=t_unfused[1], norm_fused_graph_us=t_fused[1], copy_graph_us=t_copy[1])


def _splits_k(device, pixels: int, columns: int, cin: int, k: int) -> bool:
    """Whether launch_bmma splits K for this layer on ``device`` (never on the CPU)."""
    from binarydm.kernels import cuda as kcuda
    from binarydm.kernels.packing import bmma_chunks

    return device.type == "cuda" and kcuda.bmma_auto_splits(device, pixels, columns, bmma_chunks(cin, k * k)) > 1


def _calls(variant, xf, wp, step, batch, cin, h, w, oh, ow, cout, sets, device):
    """(conv(i), w1a4(i)) of one kernel variant: the kernel alone on packed operand set i % sets, and the
    activation quantization + the kernel. On the CPU (dry run) both are the reference."""
    from binarydm.kernels import cuda as kcuda
    from binarydm.kernels import reference
    from binarydm.kernels.packing import bmma_groups, pack_activation, padded_channels

    if device.type != "cuda":
        packed = [pack_activation(x, step) for x in xf]
        return (lambda i: reference.w1a4_conv2d(packed[i % sets], wp, torch.float16),
                lambda i: reference.w1a4_conv2d(pack_activation(xf[i % sets], step), wp, torch.float16))
    out = torch.empty(batch, oh, ow, cout, dtype=torch.float16, device=device)
    if variant in ("bmma", "bmma1", "bgmma", "bgmma_ws"):
        splits = 1 if variant == "bmma1" else None  # the others: split-K where launch_bmma chooses it
        loop = "bmma" if variant == "bmma1" else variant  # bgmma, bgmma_ws: the wgmma main loops (sm_90a)
        bufs = [(torch.empty(batch, h, w, bmma_groups(cin) // 4, 4, 4, dtype=torch.int32, device=device),
                 torch.empty(batch, h, w, dtype=torch.int32, device=device)) for _ in range(sets)]
        planar = [kcuda.quantize_planes(x, step, out=b) for x, b in zip(xf, bufs)]
        scale = reference.epilogue_scale(wp, pack_activation(xf[0][:1, :, :1, :1], step))
        kcuda.bmma_weight(wp, wgmma=loop != "bmma")  # the fragment-ordered weight, made once (pack time)
        return (lambda i: kcuda.launch_bmma(planar[i % sets], wp, torch.float16, out=out, scale=scale, splits=splits,
                                            loop=loop),
                lambda i: kcuda.launch_bmma(kcuda.quantize_planes(xf[i % sets], step, out=bufs[i % sets]), wp,
                                            torch.float16, out=out, scale=scale, splits=splits, loop=loop))
    if variant == "mma":
        # The s8 x s8 kernel reads s8 codes q - z: quantize_bytes writes them from the float input.
        bufs = [torch.empty(batch, h, w, padded_channels(cin), dtype=torch.int8, device=device) for _ in range(sets)]
        quantize = lambda x, b: kcuda.quantize_bytes(x, step, out=b)  # noqa: E731
    else:
        bufs = [torch.empty(batch, h, w, padded_channels(cin) // 8, dtype=torch.int32, device=device)
                for _ in range(sets)]
        quantize = lambda x, b: kcuda.quantize_pack(x, step, out=b)  # noqa: E731
    packed = [quantize(x, b) for x, b in zip(xf, bufs)]
    scale = reference.epilogue_scale(wp, packed[0])
    return (lambda i: kcuda.launch(packed[i % sets], wp, torch.float16, variant, out=out, scale=scale),
            lambda i: kcuda.launch(quantize(xf[i % sets], bufs[i % sets]), wp, torch.float16, variant, out=out,
                                   scale=scale))


# ---- whole UNet ---------------------------------------------------------------------------------
@contextlib.contextmanager
def _forced(variant: str):
    """Every conv of the UNet on ``variant`` ("auto": as choose_variant picks; "bgmma", "bgmma_ws": the bit-plane
    kernel with that main loop, through BINARYDM_W1A4_LOOP)."""
    from binarydm.kernels import cuda as kcuda

    before = os.environ.get(kcuda.LOOP_ENV)
    kcuda.set_variant(None if variant == "auto" else "bmma" if variant in kcuda.LOOPS else variant)
    if variant in kcuda.LOOPS:  # the bit-plane kernel's main loops; "auto" as the user has it
        os.environ[kcuda.LOOP_ENV] = variant
    try:
        yield
    finally:
        kcuda.set_variant(None)
        if before is None:
            os.environ.pop(kcuda.LOOP_ENV, None)
        else:
            os.environ[kcuda.LOOP_ENV] = before


def build_models(device: torch.device, quant: str = "w1a4"):
    """(fp16 model, kernel-mode model, fake-quantized float32 student) of ddpm-cifar10-32 binarized by
    ``quant`` (a preset: ``w1a4``, or ``bidm`` for BiDM's W1A1 on the same kernels)."""
    import copy
    import warnings

    import binarydm
    from binarydm.kernels.inference import w1a4_inference_
    from binarydm.unets import build_unet

    torch.manual_seed(0)
    fp = build_unet("ddpm-cifar10-32").eval()
    student = copy.deepcopy(fp)
    binarydm.binarize_(student, quant)
    binarydm.calibrate_(student, torch.randn(4, 3, 32, 32), torch.tensor([10, 300, 600, 900]))
    fake = copy.deepcopy(student).to(device)
    half = torch.float16 if device.type == "cuda" else torch.float32
    fp = fp.to(device, half).to(memory_format=torch.channels_last)
    student = student.to(device).to(half)  # after the swap below, .half() must keep the packed operands here
    with warnings.catch_warnings():
        if device.type == "cuda":
            warnings.simplefilter("error")  # a fallback to the reference would not be a kernel figure
        report = w1a4_inference_(student)
    student = student.to(half)
    return fp, student, fake, report


def bench_unet(bench: Bench, args, device: torch.device) -> None:
    from binarydm.kernels import cuda as kcuda

    fp, student, fake, report = build_models(device, args.quant)
    swapped = sum(v in ("w1a4", "w1a1") for v in report.values())
    bench.data["quant"] = args.quant
    half = next(fp.parameters()).dtype
    on_gpu = device.type == "cuda"
    # "auto": no variant forced, each conv on the kernel choose_variant picks for its size (what users get).
    # the UNet runs each forcible variant (bmma1 is a per-layer baseline only); the CPU runs the reference
    variants = [v for v in args.variants if v != "bmma1"]
    variants = variants + ["auto"] if on_gpu else variants[:1]
    with torch.no_grad():
        n = 8 if on_gpu else 1
        x = torch.randn(n, 3, 32, 32, device=device)
        t = torch.linspace(10, 999, n, device=device).long()
        ref = fake(x, t).sample.double()
        rel_err = {}
        for variant in variants:
            if on_gpu and variant in kcuda.LOOPS and not kcuda.bmma_self_check(device, loop=variant):
                key = "check_error" if variant == "bmma" else f"{variant}_check_error"
                bench.error(f"unet {variant}", RuntimeError(f"the bit-plane kernel ({variant}) failed its self-check: "
                                                            f"{kcuda._bmma_state.get(key)}"))
                continue
            with _forced(variant if on_gpu else "auto"):
                got = student(x.to(half), t).sample.double()
            rel_err[variant] = ((got - ref).norm() / ref.norm()).item()
            print(f"bench_kernel: W1A4 UNet ({variant}) vs fake-quantized float32: relative error "
                  f"{rel_err[variant]:.2e}", flush=True)
        for batch in args.batch:
            x = torch.randn(batch, 3, 32, 32, device=device, dtype=half).contiguous(memory_format=torch.channels_last)
            t = torch.full((batch,), 500, device=device)
            graph = on_gpu and not args.no_graph
            where = f"unet batch {batch}"
            t_fp = timed(bench, f"{where} fp16", lambda i: fp(x, t), args.unet_launches, args.repeats, device,
                         graph)
            for variant in rel_err:
                with _forced(variant if on_gpu else "auto"):
                    t_q = timed(bench, f"{where} w1a4 {variant}", lambda i: student(x, t), args.unet_launches,
                                args.repeats, device, graph)
                best = lambda v: v[1] if v[1] is not None else v[0]  # noqa: E731
                row = dict(batch=batch, variant=variant, t_fp16_ms=best(t_fp) and best(t_fp) / 1e3,
                           t_w1a4_ms=best(t_q) and best(t_q) / 1e3,
                           fp16_events_ms=t_fp[0] and t_fp[0] / 1e3, w1a4_events_ms=t_q[0] and t_q[0] / 1e3,
                           graph=t_fp[1] is not None and t_q[1] is not None, swapped=swapped, convs=len(report),
                           rel_err_vs_fake_quant=rel_err[variant])
                if row["t_fp16_ms"] and row["t_w1a4_ms"]:
                    row["speedup"] = row["t_fp16_ms"] / row["t_w1a4_ms"]
                bench.add("unet", row)


# ---- output -------------------------------------------------------------------------------------
def fmt(v, spec=".1f") -> str:
    return "-" if v is None else format(v, spec)


def table(data: dict) -> str:
    lines = []
    if data["layers"]:
        lines += [f"W1A4 conv (variants {', '.join(data['variants'])}: bmma = bit-plane kernel, bmma1 = the same "
                  "without split-K, bgmma / bgmma_ws = its wgmma main loop / the same with a loading warpgroup, "
                  "mma = s8 x s8 kernel) "
                  f"vs cuDNN fp16 (channels_last, cudnn.benchmark) on {data['device']}; "
                  "us per call, median; graph = CUDA graph replay (device time), events = back-to-back eager calls; "
                  "w1a4 = quantize+pack + conv.", "",
                  "| batch | C_in | C_out | k | s | H x W | bases | variant | fp16 graph | w1a4 graph | conv graph | "
                  "fp16 events | w1a4 events | speedup | W1A4 TOPS |", "|" + "---|" * 15]
    for r in data["layers"]:
        lines.append(f"| {r['batch']} | {r['cin']} | {r['cout']} | {r['k']} | {r['stride']} | {r['h']}x{r['w']} | "
                     f"{r['bases']} | {r.get('variant', '-')} | {fmt(r['fp16_graph_us'])} | {fmt(r['w1a4_graph_us'])} | "
                     f"{fmt(r['conv_graph_us'])} | {fmt(r['fp16_us'])} | {fmt(r['w1a4_us'])} | "
                     f"{fmt(r.get('speedup'), '.2f')}x | {fmt(r.get('tops_w1a4'))} |")
    norms = [r for r in data["layers"] if "norm_fused_graph_us" in r]
    if norms:
        lines += ["", "SiLU(GroupNorm(x)) to the kernel's operand in front of a 3x3 conv (32 groups, fp16 input), "
                  "CUDA graph, us (mma: s8 codes, quantize_bytes / groupnorm_silu_bytes; bmma: bit-planes, "
                  "quantize_planes / groupnorm_silu_planes):", "",
                  "| batch | C | H x W | variant | fp16 norm + SiLU, then quantize | fused | copy of x | fused / copy |",
                  "|---|---|---|---|---|---|---|---|"]
        ratio = lambda r: (r["norm_fused_graph_us"] / r["copy_graph_us"]  # noqa: E731
                           if r.get("copy_graph_us") and r["norm_fused_graph_us"] else None)
        lines += [f"| {r['batch']} | {r['cin']} | {r['h']}x{r['w']} | {r.get('variant', 'mma')} | "
                  f"{fmt(r['norm_unfused_graph_us'])} | "
                  f"{fmt(r['norm_fused_graph_us'])} | {fmt(r.get('copy_graph_us'))} | "
                  f"{'-' if ratio(r) is None else format(ratio(r), '.2f') + 'x'} |"
                  for r in norms if r["bases"] == min(x["bases"] for x in norms)]
    if not data["unet"]:
        return "\n".join(lines) + "\n"
    lines += ["", f"Whole UNet forward (ddpm-cifar10-32, random weights, one timestep, binarized by "
                  f"{data.get('quant', 'w1a4')}) on {data['device']}, ms:", "",
              "| batch | variant | fp16 | W1A4 | speedup | graph | convs on the kernel | rel. error vs fake-quant |",
              "|---|---|---|---|---|---|---|---|"]
    for r in data["unet"]:
        lines.append(f"| {r['batch']} | {r.get('variant', '-')} | {fmt(r['t_fp16_ms'], '.3f')} | {fmt(r['t_w1a4_ms'], '.3f')} | "
                     f"{fmt(r.get('speedup'), '.2f')}x | {r['graph']} | {r['swapped']} of {r['convs']} | "
                     f"{r['rel_err_vs_fake_quant']:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--bases", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    parser.add_argument("--repeats", type=int, default=5, help="timings per figure (median)")
    parser.add_argument("--target-us", type=float, default=20000, help="length of one timing of a layer")
    parser.add_argument("--max-launches", type=int, default=200)
    parser.add_argument("--unet-launches", type=int, default=10)
    parser.add_argument("--variants", nargs="+", choices=["bmma", "bmma1", "bgmma", "bgmma_ws", "mma", "simt"],
                        default=["bmma", "bmma1", "bgmma", "bgmma_ws", "mma"],
                        help="kernel variants to time beside fp16 (bmma: bit-plane, split-K where it chooses; "
                             "bmma1: bit-plane without split-K, timed only on the layers bmma splits; bgmma, "
                             "bgmma_ws: the bit-plane kernel's wgmma main loops, where built for sm_90a; mma: s8 x s8; "
                             "simt)")
    parser.add_argument("--variant", choices=["bmma", "mma", "simt"], default=None, help="one variant only")
    parser.add_argument("--no-graph", action="store_true", help="time eager calls only")
    parser.add_argument("--quant", default="w1a4", help="the whole UNet's preset: w1a4, or bidm (W1A1, same kernels)")
    parser.add_argument("--no-layers", action="store_true")
    parser.add_argument("--no-unet", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="CPU, reference, two shapes: checks the script only")
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write the table to")
    parser.add_argument("--json", type=Path, default=None, help="JSON file (rewritten after every row)")
    args = parser.parse_args(argv)
    if args.variant is not None:
        args.variants = [args.variant]

    if args.dry_run:
        device = torch.device("cpu")
        args.batch, args.repeats, args.max_launches, args.unet_launches = [1], 2, 2, 1
        name = "CPU (dry run: reference, figures meaningless)"
    else:
        if not torch.cuda.is_available():
            sys.exit("bench_kernel: no CUDA device visible to PyTorch; run this on a machine with an NVIDIA GPU "
                     "(or --dry-run)")
        from binarydm.kernels import cuda as kcuda

        try:
            kcuda.load_module()
        except kcuda.KernelUnavailable as err:
            sys.exit(f"bench_kernel: the W1A4 kernel cannot load here: {err}")
        device, name = torch.device("cuda"), torch.cuda.get_device_name()
        torch.backends.cudnn.benchmark = True
        if {"bgmma", "bgmma_ws"} & set(args.variants) and not kcuda.wgmma_built():
            print("bench_kernel: no bgmma / bgmma_ws rows: the bit-plane module was not built for sm_90a "
                  "(cuda.build_cubin('sm_90a', source=cuda.BMMA_SOURCE); tools/device_check.sh does)", flush=True)
            args.variants = [v for v in args.variants if v not in ("bgmma", "bgmma_ws")]
        if "bmma" in args.variants and not kcuda.bmma_self_check(device):
            print(f"bench_kernel: the bit-plane kernel failed its self-check ({kcuda._bmma_state.get('check_error')});"
                  " its rows are timed anyway, but w1a4_conv2d would not choose it", file=sys.stderr, flush=True)
    torch.manual_seed(0)
    bench = Bench(args.json, dict(device=name, torch=torch.__version__, variants=args.variants,
                                  bmma_self_check=None if args.dry_run else kcuda._bmma_state["checked"].get(
                                      torch.cuda.current_device()),
                                  batch=args.batch, bases=args.bases, dry_run=args.dry_run))
    if not args.no_layers:
        shapes = conv_shapes()
        if args.dry_run:  # the two cheapest: the reference is slow
            shapes = sorted(shapes, key=lambda c: c[0] * c[1] * c[2] ** 2 * c[5] * c[6])[:2]
        for batch in args.batch:
            for shape in shapes:
                try:
                    for r in bench_shape(bench, shape, batch, args.bases, args, device):
                        print(f"bench_kernel: {r['batch']} x {shape} bases {r['bases']} {r['variant']}: fp16 "
                              f"{fmt(r['fp16_graph_us'])} us, w1a4 {fmt(r['w1a4_graph_us'])} us (graph), "
                              f"speedup {fmt(r.get('speedup'), '.2f')}", flush=True)
                except Exception as err:  # noqa: BLE001 -- record it, go on with the next shape
                    traceback.print_exc()
                    bench.error(f"layer {shape} batch {batch}", err)
    if not args.no_unet:
        try:
            bench_unet(bench, args, device)
        except Exception as err:  # noqa: BLE001
            traceback.print_exc()
            bench.error("unet", err)
    bench.data["complete"] = True
    bench.save()
    text = table(bench.data)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 1 if bench.data["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
