"""UNet architectures the project builds from a config alone (no download)."""

from __future__ import annotations

from typing import Any, Mapping

# The architecture of google/ddpm-cifar10-32 (Ho et al. 2020's CIFAR-10 model as ported to diffusers):
# 35.7M parameters, attention at 16x16. Building it needs no network; its weights do.
DDPM_CIFAR10_32: dict[str, Any] = {
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "freq_shift": 1,
    "flip_sin_to_cos": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [128, 256, 256, 256],
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "downsample_padding": 0,
    "act_fn": "silu",
    "attention_head_dim": None,
    "norm_num_groups": 32,
    "norm_eps": 1e-6,
}

ARCHITECTURES: dict[str, Mapping[str, Any]] = {"ddpm-cifar10-32": DDPM_CIFAR10_32}


def build_unet(config: "str | Mapping[str, Any]"):
    """A randomly initialised ``UNet2DModel`` from an architecture name or a config mapping."""
    from diffusers import UNet2DModel

    if isinstance(config, str):
        if config not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {config!r}; valid names: {sorted(ARCHITECTURES)}")
        config = ARCHITECTURES[config]
    config = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    return UNet2DModel(**config)
