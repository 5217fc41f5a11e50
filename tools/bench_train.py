"""Step time of BinaryDM QAT (student + frozen teacher + LRM) against plain FP fine-tuning, same UNet.

    .venv/bin/python tools/bench_train.py [--batch 8] [--steps 20] [--threads 2] [--unet attn16 demo]
    .venv/bin/python tools/bench_train.py --latent binarydm/assets/ldm_fmnist [--batch 32]
    python tools/bench_train.py --device cuda --unet ddpm-cifar10-32 --batch 64 [--precision bf16-mixed]
    python tools/bench_train.py --device cuda --unet sd15 --batch 4 --precision bf16-mixed --gradient-checkpointing \
        --json bench_train_sd15.json

Two UNets by default: ``attn16``, 0.7M parameters with attention at 16x16 (256 tokens, the
resolution of the CIFAR-10 DDPM's attention: the attention-heavy case), and ``demo``, the
architecture of the shipped Fashion-MNIST teacher that ``config=demo`` binarizes (attention at 8x8).
Both loops run in this one process on the same UNet, data and optimiser (AdamW), without Lightning
(its overhead is the same for both and would only dilute the ratio). The QAT step is the one
``DiffusionQAT.training_step`` runs: teacher forward (no grad) with feature hooks, binarized student
forward/backward with all quantizers on (W1A4, attention operands included), the LRM loss.

``--latent PIPELINE``: the QAT step of a latent pipeline's UNet on cached latents (what ``binarydm.train``
runs: no autoencoder, no text encoder) against the same step preceded by encoding the batch's images (and
embedding its captions), what a trainer without the latent cache runs every step.

``--device cuda`` runs the same loops on the GPU (CUDA-synchronised timings, the peak memory of each loop);
``--precision bf16-mixed`` / ``16-mixed`` wraps each step in autocast as Lightning's mixed precision does (the
quantizers compute in float32 inside it). ``ddpm-cifar10-32`` is that model's architecture with random weights
(no download): the paper's CIFAR-10 setting at batch 64. ``sd15`` is Stable Diffusion 1.5's
``UNet2DConditionModel`` (860M parameters) on 64x64x4 latents with random 77 x 768 text embeddings (no
download); ``cond-tiny`` a small text-conditioned UNet for tests. ``--gradient-checkpointing`` turns on
diffusers' checkpointing in the trained UNet (student, or the FP model) of every loop. ``--json PATH`` writes
per UNet the median ms/step, images/s and, on a GPU, the peak memory (``torch.cuda.max_memory_allocated``)
of each loop; a loop's peak includes what the earlier loops left allocated (the models and optimiser states of
all three stay in memory), so it bounds the loop's own need from above.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

UNET = dict(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=8, attention_head_dim=32)
DEMO_TEACHER = Path(__file__).resolve().parents[1] / "binarydm" / "assets" / "fmnist_teacher"


# Stable Diffusion 1.5's UNet (its unet/config.json), built with random weights.
SD15 = dict(_class_name="UNet2DConditionModel", sample_size=64, in_channels=4, out_channels=4,
            down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            block_out_channels=[320, 640, 1280, 1280], layers_per_block=2, cross_attention_dim=768,
            attention_head_dim=8, norm_num_groups=32)
COND_TINY = dict(_class_name="UNet2DConditionModel", sample_size=8, in_channels=4, out_channels=4,
                 down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D",
                                                                                 "CrossAttnUpBlock2D"],
                 block_out_channels=[32, 64], layers_per_block=1, cross_attention_dim=32, attention_head_dim=8,
                 norm_num_groups=8)
TEXT_TOKENS = 77
UNETS = ["attn16", "demo", "ddpm-cifar10-32", "sd15", "cond-tiny"]


def unet_config(name: str) -> dict:
    if name == "attn16":
        return dict(UNET)
    if name == "sd15":
        return dict(SD15)
    if name == "cond-tiny":
        return dict(COND_TINY)
    if name == "ddpm-cifar10-32":
        from binarydm.unets import DDPM_CIFAR10_32

        return dict(DDPM_CIFAR10_32)
    if name == "demo":  # the shipped teacher's architecture, freshly initialised
        from diffusers import UNet2DModel

        return dict(UNet2DModel.load_config(DEMO_TEACHER))
    raise ValueError(f"unknown --unet {name!r}; valid: {', '.join(UNETS)}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(step_fns: dict, steps: int, warmup: int = 2,
                     device: torch.device = torch.device("cpu")) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Per-step wall times, the candidates taking turns so that a busy machine slows all alike; and each
    candidate's peak device memory in bytes (CUDA only)."""
    peaks: dict[str, int] = {}
    for name, fn in step_fns.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(warmup):
            fn()
        _sync(device)
        if device.type == "cuda":
            peaks[name] = torch.cuda.max_memory_allocated(device)
    times: dict[str, list[float]] = {k: [] for k in step_fns}
    for _ in range(steps):
        for name, fn in step_fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return times, peaks


def measure(config: dict, batch: int, steps: int, device: str = "cpu", precision: str = "32",
            gradient_checkpointing: bool = False) -> dict[str, float]:
    """Median ms/step of FP fine-tuning, QAT (student + teacher + LRM) and the student alone (and, on a GPU,
    their peak memory)."""
    from diffusers import DDPMScheduler

    import binarydm
    from binarydm.training.module import DiffusionQAT, LossConfig
    from binarydm.unets import build_unet

    dev = torch.device(device)
    autocast = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    if precision not in ("32", "bf16-mixed", "16-mixed"):
        raise ValueError(f"--precision {precision!r}: 32, bf16-mixed or 16-mixed")
    torch.manual_seed(0)
    fp = build_unet(config)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    x0 = (torch.rand(batch, fp.config.in_channels, fp.config.sample_size, fp.config.sample_size) * 2 - 1).to(dev)
    text = getattr(fp.config, "cross_attention_dim", None)
    cond = {"encoder_hidden_states": torch.randn(batch, TEXT_TOKENS, text, device=dev)} if text else {}

    student = binarydm.binarize_(copy.deepcopy(fp), "w1a4")
    qat = DiffusionQAT(student, scheduler, teacher=copy.deepcopy(fp).to(dev), loss=LossConfig(lrm_weight=1e-4)).to(dev)
    plain = DiffusionQAT(copy.deepcopy(fp), scheduler, teacher=None).to(dev)
    g = torch.Generator(device=dev).manual_seed(0)
    x_t, t, eps = qat.noisy_inputs(x0, g)
    binarydm.calibrate_(student, x_t, t, **cond)
    if gradient_checkpointing:
        for unet in (student, plain.student):
            unet.enable_gradient_checkpointing()

    def stepper(module):
        opt = torch.optim.AdamW(module.student.parameters(), lr=1e-5)

        def step():
            with torch.autocast(dev.type, dtype=autocast, enabled=autocast is not None):
                loss = module.compute_losses(x_t, t, eps, cond)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    # The student alone (quantizers on, no teacher, no LRM): how much of the gap is the quantizers.
    student_only = DiffusionQAT(student, scheduler, teacher=None).to(dev)
    times, peaks = time_interleaved({"fp": stepper(plain), "qat": stepper(qat), "student": stepper(student_only)},
                                    steps, device=dev)
    result = {k: statistics.median(v) * 1000 for k, v in times.items()}
    result.update({f"images_per_s_{k}": batch / (result[k] / 1000) for k in times})
    result.update({f"peak_{k}": v for k, v in peaks.items()})
    result["params"] = sum(p.numel() for p in fp.parameters())
    return result


def measure_latent(pipeline: str, batch: int, steps: int) -> dict[str, float]:
    """Median ms/step of the latent QAT step with the cache and with per-step encoding."""
    from diffusers import DDPMScheduler

    import binarydm
    from binarydm.latent.components import encode_images, load_components
    from binarydm.latent.text import FASHION_MNIST_CLASSES, class_captions, embed_prompts
    from binarydm.training.module import DiffusionQAT, LossConfig
    from binarydm.training.teacher import load_unet

    teacher = load_unet(pipeline).eval()
    parts = load_components(pipeline, dict(teacher.config))
    ae = parts.autoencoder
    size = int(teacher.config.sample_size) * 2 ** (len(ae.config.block_out_channels) - 1)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(batch, int(ae.config.in_channels), size, size, generator=g) * 2 - 1
    captions = class_captions(torch.randint(0, 10, (batch,), generator=g).tolist(), FASHION_MNIST_CLASSES)
    student = binarydm.binarize_(copy.deepcopy(teacher), "w1a4")
    qat = DiffusionQAT(student, DDPMScheduler(num_train_timesteps=1000), teacher=teacher, loss=LossConfig())
    latents = encode_images(ae, images)
    cond = {"encoder_hidden_states": embed_prompts(parts.text_encoder, parts.tokenizer, captions)} if parts.text else {}
    x_t, t, eps = qat.noisy_inputs(latents, g)
    binarydm.calibrate_(student, x_t, t, **cond)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-5)

    def qat_step(z, c):
        loss = qat.compute_losses(*qat.noisy_inputs(z, torch.Generator().manual_seed(1)), c)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def uncached():
        with torch.no_grad():
            z = encode_images(ae, images)
            c = {"encoder_hidden_states": embed_prompts(parts.text_encoder, parts.tokenizer, captions)} \
                if parts.text else {}
        qat_step(z, c)

    times, _ = time_interleaved({"cached": lambda: qat_step(latents, cond), "uncached": uncached}, steps)
    return {k: statistics.median(v) * 1000 for k, v in times.items()} | {"image_size": size, "text": parts.text}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--unet", nargs="+", default=["attn16", "demo"], choices=UNETS)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", default="32", choices=["32", "bf16-mixed", "16-mixed"])
    parser.add_argument("--latent", help="a latent pipeline directory: the step with and without the latent cache")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="in the trained UNet of every loop")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.latent:
        r = measure_latent(args.latent, args.batch, args.steps)
        print(f"{args.latent}: batch {args.batch} of {r['image_size']}-pixel images, {args.threads} threads, median "
              f"of {args.steps} steps, W1A4 QAT (teacher + LRM){', text-conditioned' if r['text'] else ''}")
        print(f"{'cached latents (binarydm.train)':>40}: {r['cached']:8.1f} ms/step")
        print(f"{'encoding every step (no cache)':>40}: {r['uncached']:8.1f} ms/step")
        print(f"{'the cache saves':>40}: {1 - r['cached'] / r['uncached']:8.1%} of the step")
        return
    where = (torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else f"{args.threads} threads")
    print(f"batch {args.batch}, {where}, precision {args.precision}, median of {args.steps} steps, W1A4 (attention "
          f"operands quantized), LRM lambda 1e-4{', gradient checkpointing' if args.gradient_checkpointing else ''}")
    figures = dict(device=where, batch=args.batch, precision=args.precision, steps=args.steps,
                   gradient_checkpointing=args.gradient_checkpointing, unets={})
    for name in args.unet:
        config = unet_config(name)
        r = measure(config, args.batch, args.steps, args.device, args.precision, args.gradient_checkpointing)
        figures["unets"][name] = r
        if args.json:
            args.json.write_text(json.dumps(figures, indent=1))  # after each UNet: a cut-short run keeps what it has
        size = config["sample_size"]
        print(f"\nUNet {name}: {r['params'] / 1e6:.2f}M params, {config['in_channels']}x{size}x{size}")
        print(f"{'FP fine-tuning':>32}: {r['fp']:8.1f} ms/step")
        print(f"{'QAT (student+teacher+LRM)':>32}: {r['qat']:8.1f} ms/step")
        print(f"{'  of which binarized student':>32}: {r['student']:8.1f} ms/step (no teacher, no LRM)")
        print(f"{'ratio QAT / FP':>32}: {r['qat'] / r['fp']:8.2f}  (target <= 1.6)")
        if "peak_fp" in r:
            print(f"{'peak memory FP / QAT / student':>32}: {r['peak_fp'] / 2**20:.0f} / {r['peak_qat'] / 2**20:.0f} / "
                  f"{r['peak_student'] / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
