"""Tiny latent pipelines built by the tests themselves (no download): an autoencoder (AutoencoderKL or VQModel,
downsampling factor 2), a CLIP text encoder and tokenizer learnt from a few captions, and pipeline
directories in diffusers' layout (LDMPipeline, StableDiffusionPipeline)."""

from __future__ import annotations

from pathlib import Path

import torch

from binarydm.latent.text import SYNTHETIC_CLASSES, TEMPLATES, build_clip

# 16x16 images -> 8x8 latents: the tiny UNets of conftest.TINY_UNET (sample_size 8) fit them.
IMAGE_SIZE = 16


def make_autoencoder(kind: str = "kl", channels: int = 3, seed: int = 0, latent_channels: int = 4):
    from diffusers import AutoencoderKL, VQModel

    common = dict(in_channels=channels, out_channels=channels, down_block_types=["DownEncoderBlock2D"] * 2,
                  up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 8], layers_per_block=1,
                  norm_num_groups=4, sample_size=IMAGE_SIZE, latent_channels=latent_channels)
    torch.manual_seed(seed)
    if kind == "vq":
        ae = VQModel(**common, num_vq_embeddings=16, vq_embed_dim=latent_channels, scaling_factor=1.5)
    else:
        ae = AutoencoderKL(**common, scaling_factor=0.7)
    return ae.eval()


def make_clip(seed: int = 0, hidden: int = 16):
    corpus = [t.format(c) for t in TEMPLATES for c in SYNTHETIC_CLASSES]
    return build_clip(corpus, hidden_size=hidden, layers=1, heads=2, max_length=16, seed=seed)


def make_pipeline(directory: Path, kind: str = "ldm", unet=None, seed: int = 0) -> Path:
    """A full-precision pipeline directory: ``ldm`` (LDMPipeline: VQModel + UNet2DModel) or ``sd``
    (StableDiffusionPipeline: AutoencoderKL + CLIP + UNet2DConditionModel), 16x16 images, 8x8x4 latents."""
    from diffusers import DDIMScheduler, LDMPipeline, StableDiffusionPipeline, UNet2DConditionModel

    from conftest import make_tiny_unet

    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0195, clip_sample=False,
                              steps_offset=1)
    if kind == "ldm":
        unet = unet if unet is not None else make_tiny_unet(seed, in_channels=4, out_channels=4)
        pipe = LDMPipeline(vqvae=make_autoencoder("vq", seed=seed), unet=unet, scheduler=scheduler)
    else:
        encoder, tokenizer = make_clip(seed)
        torch.manual_seed(seed)
        unet = unet if unet is not None else UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=4,
            cross_attention_dim=16)
        pipe = StableDiffusionPipeline(vae=make_autoencoder("kl", seed=seed), text_encoder=encoder,
                                       tokenizer=tokenizer, unet=unet, scheduler=scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(directory)
    return Path(directory)


def latent_run_values(pipeline: Path, out_dir: Path, **extra) -> dict:
    """A few CPU steps of binarydm.train on the tiny pipeline with synthetic 16x16 data (labels -> captions)."""
    values = {
        "name": "latent", "out_dir": str(out_dir), "quant": "w1a4", "model.pretrained": str(pipeline),
        "data.name": "synthetic", "data.image_size": IMAGE_SIZE, "data.channels": 3, "data.batch_size": 4,
        "data.num_workers": 0, "data.val_size": 4, "data.synthetic_size": 12,
        "data.latent_cache": str(Path(out_dir) / "cache"),
        "optim.lr": 1e-3, "optim.schedule": "constant", "sample.num_images": 2, "sample.num_inference_steps": 2,
        "trainer.accelerator": "cpu", "trainer.max_steps": 3, "trainer.val_check_interval": 3,
        "trainer.limit_val_batches": 1, "trainer.log_every_n_steps": 1, "trainer.checkpoint_every_n_steps": 3,
        "trainer.enable_progress_bar": False, "eval.packed": False,
    }
    values.update(extra)
    return values
