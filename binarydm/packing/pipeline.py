"""The pipeline directory: what a latent run exports, and what ``DiffusionPipeline.from_pretrained`` reads.

    model_index.json     the pipeline class and its components (the source pipeline's, or LDMPipeline /
                         StableDiffusionPipeline for a UNet trained from scratch)
    unet/                the (binarized) UNet: a student directory (``save_student_dir``), or FP
    scheduler/           the source pipeline's scheduler as it was, else a DDIMScheduler of the training schedule
    vae/ or vqvae/       the frozen autoencoder, file for file from where it was read
    text_encoder/, tokenizer/   the frozen text parts (a text-conditioned UNet), likewise
    ...                  any other component of a local source pipeline (e.g. a safety checker), copied

Copying the component files (rather than saving the loaded models again) keeps every byte, so the exported
pipeline decodes exactly as its source did; components read from the hub are written with ``save_pretrained``.
Each file is written atomically. With ``import binarydm``, ``DiffusionPipeline.from_pretrained(dir)`` rebuilds
the binarized UNet through the quantizer plug-in (``packing/hf.py``); ``binarydm.load(dir)`` reads it too.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

from .files import atomic_path, atomic_write

PIPELINE_CLASSES = {"latent": "LDMPipeline", "text": "StableDiffusionPipeline"}
# The slots a StableDiffusionPipeline declares beside its models (none of them is needed to sample).
_SD_EMPTY_SLOTS = ("feature_extractor", "image_encoder", "safety_checker")


def _copy_dir(src: Path, dst: Path) -> None:
    for file in sorted(p for p in Path(src).rglob("*") if p.is_file() and not p.name.startswith(".")):
        target = dst / file.relative_to(src)
        with atomic_path(target) as tmp:
            shutil.copyfile(file, tmp)


def _library(module: Any) -> str:
    return "transformers" if type(module).__module__.startswith("transformers") else "diffusers"


def _constructed_index(kind: str, components) -> dict[str, Any]:
    import diffusers

    index: dict[str, Any] = {"_class_name": PIPELINE_CLASSES[kind], "_diffusers_version": diffusers.__version__}
    if kind == "text":
        index.update({slot: [None, None] for slot in _SD_EMPTY_SLOTS})
        index["requires_safety_checker"] = False
    return index


def save_pipeline_dir(out, components, write_unet: Callable[[Path], Any], unet_class: str,
                      scheduler_config: Optional[dict] = None) -> Path:
    """Write a pipeline directory around the UNet that ``write_unet(out / "unet")`` writes.

    ``components`` (``binarydm.latent.Components``) holds the frozen parts and where each was read;
    ``scheduler_config`` is the training noise schedule (used where the source pipeline has no scheduler/).
    """
    from diffusers import DDIMScheduler

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    source = components.pipeline_dir
    source_index = None
    if source is not None and (Path(source) / "model_index.json").is_file():
        source_index = json.loads((Path(source) / "model_index.json").read_text())
    index = dict(source_index) if source_index else _constructed_index(components.kind, components)
    write_unet(out / "unet")
    index["unet"] = ["diffusers", unet_class]
    written = {"unet"}
    if source is not None and (Path(source) / "scheduler").is_dir():
        _copy_dir(Path(source) / "scheduler", out / "scheduler")
    else:
        config = {k: v for k, v in dict(scheduler_config or {}).items() if not k.startswith("_")}
        if components.kind == "text":  # StableDiffusionPipeline rewrites any other value to 1 (and warns)
            config["steps_offset"] = 1
        scheduler = DDIMScheduler.from_config(config)
        scheduler.save_pretrained(out / "scheduler")
        index["scheduler"] = ["diffusers", "DDIMScheduler"]
    written.add("scheduler")
    parts = {components.autoencoder_slot: components.autoencoder}
    if components.text:
        parts.update({"text_encoder": components.text_encoder, "tokenizer": components.tokenizer})
    for slot, module in parts.items():
        src = components.sources.get(slot)
        if isinstance(src, Path) and src.is_dir():
            _copy_dir(src, out / slot)
        else:
            module.save_pretrained(out / slot)
        index[slot] = [_library(module), type(module).__name__]
        written.add(slot)
    if source_index:  # the source pipeline's other components (a safety checker, ...), where they are local
        for slot, entry in source_index.items():
            if slot.startswith("_") or slot in written or not isinstance(entry, list) or entry[0] is None:
                continue
            if (Path(source) / slot).is_dir():
                _copy_dir(Path(source) / slot, out / slot)
            else:
                index[slot] = [None, None]
    with atomic_write(out / "model_index.json", "w") as f:
        f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return out


__all__ = ["PIPELINE_CLASSES", "save_pipeline_dir"]
