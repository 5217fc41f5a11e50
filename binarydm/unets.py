"""UNet architectures the project builds from a config alone (no download), the diffusers UNet classes
it handles, and how a class label becomes a conditional UNet's input."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

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


# The diffusers UNets binarydm trains, samples and exports; ``_class_name`` in a config picks one.
UNET_CLASSES = ("UNet2DModel", "UNet2DConditionModel")

# A relative path such as binarydm/assets/fmnist_teacher also resolves against the checkout, so the
# demo config works from any working directory.
PACKAGE_PARENT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def quiet_hub() -> Iterator[None]:
    """diffusers' hub lookups pass huggingface_hub an argument it has deprecated, and it warns on every call:
    not the user's to act on (filtered by its exact text; anything else still shows)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The `local_dir_use_symlinks` argument is deprecated")
        yield


def looks_like_path(name: str) -> bool:
    """Whether a model name is meant as a local path: hub ids are "owner/name", so a leading / . ~ or more
    than one separator means a path."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1


def resolve_local(pretrained: str) -> Optional[Path]:
    """The local directory ``pretrained`` names (as given, or relative to the checkout), else None."""
    path = Path(pretrained).expanduser()
    if path.exists():
        return path
    if not path.is_absolute() and (PACKAGE_PARENT / path).exists():
        return PACKAGE_PARENT / path
    return None


def unet_class(config: Mapping[str, Any]):
    """The diffusers class of a UNet config: ``_class_name`` (UNet2DModel when absent)."""
    import diffusers

    name = dict(config).get("_class_name") or "UNet2DModel"
    if name not in UNET_CLASSES:
        raise ValueError(f"model class {name!r} (_class_name): binarydm handles {', '.join(UNET_CLASSES)}")
    return getattr(diffusers, name)


def build_unet(config: "str | Mapping[str, Any]"):
    """A randomly initialised UNet from an architecture name or a config mapping (``_class_name``:
    ``UNet2DModel``, the default, or ``UNet2DConditionModel``)."""
    if isinstance(config, str):
        if config not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {config!r}; valid names: {sorted(ARCHITECTURES)}")
        config = ARCHITECTURES[config]
    cls = unet_class(config)
    config = {k: v for k, v in dict(config).items() if not k.startswith("_") and k != "quantization_config"}
    return cls(**config)


# ---- conditioning ------------------------------------------------------------------------------
# A class label reaches a UNet in one of two ways, read from its own config:
# - ``num_class_embeds`` (UNet2DModel or UNet2DConditionModel): ``class_labels=label``;
# - a UNet2DConditionModel with ``encoder_hid_dim_type="text_proj"`` and ``encoder_hid_dim=K``: the label as
#   one token, ``encoder_hidden_states = one_hot(label, K)`` of shape (B, 1, K); the UNet's own
#   ``encoder_hid_proj`` (a Linear K -> cross_attention_dim, kept out of binarization) is then the learned
#   label embedding, and the cross-attention layers attend to it (the recipe of configs/tiny_cond.yaml).
# A UNet2DConditionModel without either needs encoder_hidden_states from a text encoder (Stable
# Diffusion): sample it with its pipeline.
def num_classes(config: Mapping[str, Any]) -> Optional[int]:
    """How many class labels the UNet takes (None: unconditional, or conditioned on text)."""
    config = dict(config)
    if config.get("num_class_embeds"):
        return int(config["num_class_embeds"])
    if config.get("_class_name") == "UNet2DConditionModel" or "cross_attention_dim" in config:
        if config.get("encoder_hid_dim_type") == "text_proj" and config.get("encoder_hid_dim"):
            return int(config["encoder_hid_dim"])
    return None


def needs_text(config: Mapping[str, Any]) -> bool:
    """A UNet2DConditionModel whose encoder_hidden_states come from outside (a text encoder)."""
    config = dict(config)
    cond = config.get("_class_name") == "UNet2DConditionModel" or "cross_attention_dim" in config
    return cond and not (config.get("encoder_hid_dim_type") == "text_proj" and config.get("encoder_hid_dim"))


def condition_kwargs(config: Mapping[str, Any], labels=None, batch: Optional[int] = None,
                     device=None) -> dict[str, Any]:
    """The keyword arguments that carry ``labels`` (a LongTensor (B,)) into a UNet of this config; {} for
    an unconditional UNet. Without labels a conditional UNet gets labels 0, 1, 2, ... (mod classes)."""
    import torch

    config = dict(config)
    k = num_classes(config)
    if k is None:
        if needs_text(config):
            raise ValueError("this UNet2DConditionModel takes encoder_hidden_states from a text encoder (no class "
                             "labels): run it inside its pipeline (e.g. StableDiffusionPipeline) with a prompt")
        return {}
    if labels is None:
        if batch is None:
            raise ValueError("a class-conditional UNet needs labels (or a batch size)")
        labels = torch.arange(batch) % k
    labels = torch.as_tensor(labels, dtype=torch.long, device=device)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= k):
        raise ValueError(f"class labels must lie in [0, {k - 1}], got {labels.tolist()[:8]}")
    if config.get("num_class_embeds"):
        return {"class_labels": labels}
    onehot = torch.nn.functional.one_hot(labels, k).float()[:, None, :]
    return {"encoder_hidden_states": onehot}


@contextlib.contextmanager
def conditioned(unet, kwargs: Mapping[str, Any]) -> Iterator[None]:
    """Inside the block every ``unet(x, t)`` call also receives ``kwargs`` (labels, encoder_hidden_states):
    how diffusers' unconditional pipelines (DDIMPipeline, DDPMPipeline) drive a conditional UNet."""
    if not kwargs:
        yield
        return

    def inject(module, args, call_kwargs):
        return args, {**kwargs, **call_kwargs}

    handle = unet.register_forward_pre_hook(inject, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
