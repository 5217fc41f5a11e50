"""The frozen parts of a latent pipeline, found where a user would keep them, and checked against the UNet.

``model.pretrained`` may name a diffusers pipeline (a local directory with ``model_index.json``, or a hub
id): its ``vae`` / ``vqvae`` (AutoencoderKL or VQModel) makes the data latents, its ``text_encoder`` and
``tokenizer`` turn captions into ``encoder_hidden_states``. ``model.autoencoder`` and ``model.text_encoder``
name them explicitly (for a UNet trained from scratch, or to override the pipeline's). Latents are

    z = (E(x) - shift_factor) * scaling_factor        and back  x = D(z / scaling_factor + shift_factor)

with E the posterior mean of an AutoencoderKL (its standard deviation is tiny at LDM's KL weights) or the
pre-quantisation output of a VQModel (LDM-4 trains on it; ``VQModel.decode`` quantises), exactly what
diffusers' ``LDMPipeline`` and ``StableDiffusionPipeline`` undo before decoding.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn

from ..errors import UsageError, one_line
from ..unets import looks_like_path, needs_text, quiet_hub, resolve_local

AUTOENCODER_CLASSES = ("AutoencoderKL", "VQModel")
AUTOENCODER_SLOTS = ("vae", "vqvae")  # StableDiffusionPipeline & co. / LDMPipeline


def autoencoder_class(name: str):
    import diffusers

    if name not in AUTOENCODER_CLASSES:
        raise ValueError(f"autoencoder class {name!r}: binarydm handles {', '.join(AUTOENCODER_CLASSES)}")
    return getattr(diffusers, name)


# ---- latents ---------------------------------------------------------------------------------------
def downsampling_factor(autoencoder: nn.Module) -> int:
    """Pixels per latent along each side: one halving per encoder block after the first."""
    return 2 ** (len(autoencoder.config.block_out_channels) - 1)


def latent_channels(autoencoder: nn.Module) -> int:
    config = autoencoder.config
    if type(autoencoder).__name__ == "VQModel" and config.get("vq_embed_dim"):
        return int(config["vq_embed_dim"])  # quant_conv maps latent_channels to the codebook's dimension
    return int(config.latent_channels)


def _scale_shift(autoencoder: nn.Module) -> tuple[float, float]:
    config = autoencoder.config
    scale = config.get("scaling_factor")
    shift = config.get("shift_factor")
    return float(1.0 if scale is None else scale), float(0.0 if shift is None else shift)


@torch.no_grad()
def encode_images(autoencoder: nn.Module, images: torch.Tensor, batch: int = 64, scale: bool = True) -> torch.Tensor:
    """Images in [-1, 1] (N, C, H, W) -> latents (N, c, H/f, W/f), float32, scaled unless ``scale=False``."""
    device = next(autoencoder.parameters()).device
    s, shift = _scale_shift(autoencoder) if scale else (1.0, 0.0)
    vq = type(autoencoder).__name__ == "VQModel"
    out = []
    for i in range(0, images.shape[0], batch):
        x = images[i:i + batch].to(device, torch.float32)
        encoded = autoencoder.encode(x)
        h = encoded.latents if vq else encoded.latent_dist.mode()
        out.append(((h.float() - shift) * s).cpu())
    return torch.cat(out)


@torch.no_grad()
def decode_latents(autoencoder: nn.Module, latents: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Scaled latents -> images in [-1, 1] (the inverse of :func:`encode_images`, as the pipelines decode)."""
    device = next(autoencoder.parameters()).device
    s, shift = _scale_shift(autoencoder)
    out = []
    for i in range(0, latents.shape[0], batch):
        z = latents[i:i + batch].to(device, torch.float32) / s + shift
        out.append(autoencoder.decode(z).sample.float().clamp(-1, 1).cpu())
    return torch.cat(out)


# ---- finding the parts ---------------------------------------------------------------------------------
def model_index(pretrained: Optional[str]) -> Optional[dict]:
    """A pipeline's ``model_index.json`` (local directory, or a hub id from the local cache); None for
    anything that is not a pipeline or cannot be read offline (the UNet loader then says why)."""
    if not pretrained:
        return None
    path = resolve_local(pretrained)
    if path is not None:
        file = path / "model_index.json"
        if not file.is_file():
            return None
        try:
            index = json.loads(file.read_text())
        except (OSError, ValueError) as err:
            raise UsageError(f"model.pretrained={pretrained}: unreadable model_index.json ({one_line(err)})") from None
        return index if isinstance(index, dict) else None
    try:
        from diffusers import DiffusionPipeline

        with quiet_hub():
            return dict(DiffusionPipeline.load_config(pretrained))
    except Exception:  # noqa: BLE001 - offline, no such id, not a pipeline: hub errors differ by version
        return None


def _slot_class(index: Mapping[str, Any], slot: str) -> Optional[str]:
    entry = index.get(slot)
    if isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[1]:
        return str(entry[1])
    return None


def autoencoder_slot(index: Optional[Mapping[str, Any]]) -> Optional[str]:
    """The pipeline's autoencoder component (``vae`` or ``vqvae``), or None."""
    if not index:
        return None
    return next((s for s in AUTOENCODER_SLOTS if _slot_class(index, s) in AUTOENCODER_CLASSES), None)


@dataclass
class Components:
    """The frozen full-precision parts around a UNet; all None for a pixel-space UNet.

    ``sources`` maps each component (``vae`` / ``vqvae``, ``text_encoder``, ``tokenizer``) to where it
    was read (a local directory, or ``(hub id, subfolder)``), so an exported pipeline can carry the
    very files; ``pipeline_class`` is the source pipeline's class (``LDMPipeline``, ...), when there is one.
    """

    autoencoder: Optional[nn.Module] = None
    text_encoder: Optional[nn.Module] = None
    tokenizer: Any = None
    autoencoder_slot: str = "vae"
    pipeline_class: Optional[str] = None
    pipeline_dir: Optional[Path] = None
    sources: dict[str, Any] = field(default_factory=dict)

    @property
    def latent(self) -> bool:
        return self.autoencoder is not None

    @property
    def text(self) -> bool:
        return self.text_encoder is not None

    @property
    def kind(self) -> str:
        return "text" if self.text else "latent" if self.latent else "pixel"

    def to(self, device) -> "Components":
        for m in (self.autoencoder, self.text_encoder):
            if m is not None:
                m.to(device)
        return self

    def describe(self) -> str:
        parts = []
        if self.autoencoder is not None:
            ae = self.autoencoder
            s, _ = _scale_shift(ae)
            parts.append(f"{type(ae).__name__} (f={downsampling_factor(ae)}, {latent_channels(ae)} latent channels, "
                         f"scaling_factor {s:.5g})")
        if self.text_encoder is not None:
            parts.append(f"{type(self.text_encoder).__name__} ({self.tokenizer.model_max_length} tokens)")
        return ", ".join(parts) or "none (pixel space)"

    def check_unet(self, unet_config: Mapping[str, Any], image_size: int, channels: int, source: str) -> None:
        """The UNet, the autoencoder and the images must fit: one line naming what to change otherwise."""
        config = dict(unet_config)
        if self.autoencoder is None:
            return
        ae = self.autoencoder
        f, c = downsampling_factor(ae), latent_channels(ae)
        default = 4 if config.get("_class_name") == "UNet2DConditionModel" else 3  # the classes' own defaults
        for attr in ("in_channels", "out_channels"):
            have = config.get(attr, default)
            if have is not None and int(have) != c:
                raise UsageError(f"{source}: the UNet's {attr}={have} does not match the autoencoder's {c} latent "
                                 f"channels ({type(ae).__name__} from {self.sources.get(self.autoencoder_slot)}); "
                                 "pair the UNet with the autoencoder it was trained on")
        size = config.get("sample_size")
        if isinstance(size, (list, tuple)):
            size = size[0] if len(set(size)) == 1 else None
        if size is not None and int(size) * f != int(image_size):
            raise UsageError(f"data.image_size={image_size} does not match the latent pipeline: the UNet's sample_size "
                             f"{size} times the autoencoder's downsampling factor {f} is {int(size) * f}; set "
                             f"data.image_size={int(size) * f}")
        ae_in = int(ae.config.in_channels)
        if int(channels) != ae_in:
            raise UsageError(f"data.channels={channels} does not match the autoencoder's in_channels={ae_in}; set "
                             f"data.channels={ae_in}")


# ---- loading ------------------------------------------------------------------------------------------------
def refuse_unet_of_pipeline(path: Path, key: str) -> None:
    """A pipeline's own unet/ named directly would lose the autoencoder that defines its data."""
    parent = path.resolve().parent
    index = model_index(str(parent)) if (parent / "model_index.json").is_file() else None
    if index and path.resolve().name in index and autoencoder_slot(index):
        raise UsageError(f"{key}={path} is the {path.resolve().name}/ of the latent pipeline {parent}: point "
                         f"{key} at {parent} (its autoencoder makes the data latents)")


def _load_autoencoder_from(location: str, key: str) -> tuple[nn.Module, str, Any]:
    """An autoencoder from a model directory, a pipeline directory (its vae / vqvae) or a hub pipeline id;
    returns (model, slot name, source)."""
    path = resolve_local(location)
    if path is not None:
        index = model_index(str(path))
        slot = autoencoder_slot(index)
        folder = path / slot if slot else path
        try:
            config = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError):
            raise UsageError(f"{key}={location}: no autoencoder there (neither an AutoencoderKL / VQModel directory "
                             "nor a pipeline with vae/ or vqvae/)") from None
        name = config.get("_class_name") if isinstance(config, dict) else None
        if name not in AUTOENCODER_CLASSES:
            raise UsageError(f"{key}={location}: {folder / 'config.json'} describes a {name}, not an autoencoder "
                             f"({', '.join(AUTOENCODER_CLASSES)})")
        model = autoencoder_class(name).from_pretrained(str(folder), low_cpu_mem_usage=False)
        return model, slot or ("vqvae" if name == "VQModel" else "vae"), folder
    if looks_like_path(location):
        raise UsageError(f"{key}={location}: no such directory")
    index = model_index(location)
    slot = autoencoder_slot(index)
    if slot is None:
        raise UsageError(f"{key}={location}: neither a local directory nor a hub pipeline with an autoencoder that "
                         f"can be read here (offline?); download it where there is a network (huggingface-cli "
                         f"download {location} --local-dir DIR) and set {key}=DIR")
    model = autoencoder_class(_slot_class(index, slot)).from_pretrained(location, subfolder=slot)
    return model, slot, (location, slot)


@contextlib.contextmanager
def _quiet_transformers():
    """transformers draws a progress bar for every weight file it loads: not the user's to read."""
    from transformers.utils import logging as tf_logging

    was = tf_logging.is_progress_bar_enabled()
    tf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            tf_logging.enable_progress_bar()


def _load_text_from(location: str, key: str, index: Optional[Mapping[str, Any]] = None) -> tuple[Any, Any, dict]:
    """(text encoder, tokenizer, sources) from a directory holding text_encoder/ and tokenizer/ (a pipeline
    or a components directory) or a hub pipeline id."""
    with _quiet_transformers():
        return _read_text_parts(location, key, index)


def _read_text_parts(location: str, key: str, index: Optional[Mapping[str, Any]]) -> tuple[Any, Any, dict]:
    import transformers

    path = resolve_local(location)
    if path is None and looks_like_path(location):
        raise UsageError(f"{key}={location}: no such directory")
    index = index if index is not None else (model_index(str(path)) if path is not None else model_index(location))
    names = {slot: (_slot_class(index, slot) if index else None) for slot in ("text_encoder", "tokenizer")}
    encoder_cls = getattr(transformers, names["text_encoder"] or "CLIPTextModel", None)
    tokenizer_cls = getattr(transformers, names["tokenizer"] or "CLIPTokenizer", None)
    if encoder_cls is None or tokenizer_cls is None:
        raise UsageError(f"{key}={location}: model_index.json names text classes transformers does not have "
                         f"({names['text_encoder']}, {names['tokenizer']})")
    if path is not None:
        missing = [s for s in ("text_encoder", "tokenizer") if not (path / s).is_dir()]
        if missing:
            raise UsageError(f"{key}={location}: no {' and no '.join(s + '/' for s in missing)} there; point it at a "
                             "directory holding text_encoder/ and tokenizer/ (a Stable Diffusion pipeline, or one "
                             "written by tools/make_text_encoder.py)")
        encoder = encoder_cls.from_pretrained(str(path / "text_encoder"))
        tokenizer = tokenizer_cls.from_pretrained(str(path / "tokenizer"))
        return encoder, tokenizer, {"text_encoder": path / "text_encoder", "tokenizer": path / "tokenizer"}
    try:
        encoder = encoder_cls.from_pretrained(location, subfolder="text_encoder")
        tokenizer = tokenizer_cls.from_pretrained(location, subfolder="tokenizer")
    except Exception as err:  # noqa: BLE001 - hub errors differ by version
        raise UsageError(f"{key}={location}: cannot load its text encoder (offline, or no such id: "
                         f"{type(err).__name__}); download it where there is a network (huggingface-cli download "
                         f"{location} --local-dir DIR) and set {key}=DIR") from None
    return encoder, tokenizer, {"text_encoder": (location, "text_encoder"), "tokenizer": (location, "tokenizer")}


def load_components(pretrained: Optional[str], unet_config: Optional[Mapping[str, Any]] = None,
                    autoencoder: Optional[str] = None, text_encoder: Optional[str] = None) -> Components:
    """The frozen parts a UNet is trained and sampled with: from ``autoencoder`` / ``text_encoder`` when
    given, else from the pipeline ``pretrained`` names (none for a plain UNet). Text parts are loaded only
    for a UNet that takes text (``unet_config``), and such a UNet without them is refused."""
    local = resolve_local(pretrained) if pretrained else None
    if local is not None and not (local / "model_index.json").is_file() and autoencoder is None:
        refuse_unet_of_pipeline(local, "model.pretrained")
    index = model_index(pretrained)
    parts = Components(pipeline_class=str(index["_class_name"]) if index and index.get("_class_name") else None,
                       pipeline_dir=local if index is not None else None)
    ae_location = autoencoder or (pretrained if autoencoder_slot(index) else None)
    if ae_location is not None:
        key = "model.autoencoder" if autoencoder else "model.pretrained"
        parts.autoencoder, parts.autoencoder_slot, source = _load_autoencoder_from(str(ae_location), key)
        parts.autoencoder.requires_grad_(False).eval()
        parts.sources[parts.autoencoder_slot] = source
    wants_text = unet_config is not None and needs_text(unet_config)
    if wants_text:
        text_location = text_encoder or (pretrained if index and "text_encoder" in index else None)
        if text_location is None:
            raise UsageError(f"model.pretrained={pretrained}: the UNet is conditioned on text (cross_attention_dim "
                             f"{dict(unet_config).get('cross_attention_dim')}) but no text encoder was found: point "
                             "model.pretrained at its pipeline (with text_encoder/ and tokenizer/) or set "
                             "model.text_encoder=DIR")
        key = "model.text_encoder" if text_encoder else "model.pretrained"
        parts.text_encoder, parts.tokenizer, sources = _load_text_from(
            str(text_location), key, None if text_encoder else index)
        parts.text_encoder.requires_grad_(False).eval()
        parts.sources.update(sources)
        if parts.autoencoder is None:
            raise UsageError(f"{key}={text_location}: text conditioning is trained in latent space here (a Stable "
                             "Diffusion-like pipeline): the pipeline needs an AutoencoderKL (vae/) too, or set "
                             "model.autoencoder=DIR")
    elif text_encoder is not None:
        raise UsageError(f"model.text_encoder={text_encoder}: the UNet takes no text (no cross-attention on "
                         "encoder_hidden_states from a text encoder); drop model.text_encoder")
    return parts


__all__ = ["AUTOENCODER_CLASSES", "AUTOENCODER_SLOTS", "Components", "autoencoder_class", "autoencoder_slot",
           "decode_latents", "downsampling_factor", "encode_images", "latent_channels", "load_components",
           "model_index", "refuse_unet_of_pipeline"]
