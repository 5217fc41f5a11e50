"""The end-of-run evaluation of ``binarydm.train`` (rank 0): what the run's report shows.

- FID (and KID) of the full-precision teacher and of the trained student, each on
  ``eval.fid_samples`` DDIM samples drawn with the same seeds, against the same reference images
  (``binarydm.evaluation``: clean-fid path, offline Inception weights);
- the packed 1-bit checkpoint (``binarydm.packing.export``): its size and ratio against the FP32 model;
- the teacher's and the student's first samples side by side in one picture.

Sampling is the one DDIM path (``binarydm.sampling.sample_images``, diffusers' DDIMPipeline, or for a latent
pipeline its LDMPipeline / StableDiffusionPipeline, decoded by the frozen autoencoder; a text-conditioned UNet is
prompted with the run's prompts at ``eval.guidance_scale``). Without a reference (synthetic data and no
``eval.reference``) the FID is skipped and the report says so.
"""

from __future__ import annotations

import hashlib
import json
import time
import zipfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from ..evaluation import get_extractor
from ..evaluation.fid import (
    cleanfid_folder_features,
    default_cache_dir,
    fid_from_features,
    kid_from_features,
    reference_features,
)
from ..latent.cache import module_digest, tokenizer_digest
from ..packing.export import export
from ..packing.files import atomic_write
from ..packing.loading import load_with_configs
from ..sampling import grid_image, sample_images, save_images

_REFERENCES = {"fashion_mnist": ("fashion-mnist", "test"), "cifar10": ("cifar10", "train")}


def reference_of(cfg: DictConfig) -> Optional[tuple[str, str, Optional[str]]]:
    """(reference, split, root) for the FID, or None where there is none."""
    e = cfg.eval
    if e.reference:
        ref = str(e.reference)
        default_split = _REFERENCES.get(ref.replace("-", "_"), (None, "test"))[1]
        return ref, str(e.split or default_split), None
    if cfg.data.name in _REFERENCES:
        ref, split = _REFERENCES[cfg.data.name]
        return ref, str(e.split or split), str(cfg.data.root)
    return None


def side_by_side(left: torch.Tensor, right: torch.Tensor, path: Path, labels=("teacher", "student"),
                 columns: Optional[int] = None) -> Path:
    """Two uint8 image sets [N, C, H, W] as two grids (square, or of ``columns`` columns) next to each other,
    captioned."""
    from PIL import Image, ImageDraw

    def grid(x: torch.Tensor) -> Image.Image:
        return Image.fromarray(grid_image(x, pad_value=255, columns=columns).permute(1, 2, 0).numpy()).convert("RGB")

    a, b = grid(left), grid(right)
    scale = max(1, 256 // max(a.height, 1))  # small images: enlarge so the picture can be looked at
    a = a.resize((a.width * scale, a.height * scale), Image.NEAREST)
    b = b.resize((b.width * scale, b.height * scale), Image.NEAREST)
    gap, top = 8, 16
    canvas = Image.new("RGB", (a.width + b.width + gap, max(a.height, b.height) + top), "white")
    canvas.paste(a, (0, top))
    canvas.paste(b, (a.width + gap, top))
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 2), labels[0], fill="black")
    draw.text((a.width + gap + 2, 2), labels[1], fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def teacher_cache_path(teacher: nn.Module, protocol: dict, components=None,
                       cache_dir: Optional[Path] = None) -> Path:
    """Where the features of a teacher's FID samples are kept: keyed by the teacher's weights and config, the
    frozen parts of its pipeline, and everything that makes the samples and their features (``protocol``)."""
    h = hashlib.sha256(module_digest(teacher).encode())
    if components is not None:
        for part in (components.autoencoder, components.text_encoder):
            h.update(module_digest(part).encode() if part is not None else b"-")
        h.update(tokenizer_digest(components.tokenizer).encode() if components.tokenizer is not None else b"-")
    h.update(json.dumps(protocol, sort_keys=True, default=str).encode())
    return Path(cache_dir or default_cache_dir()) / f"teacher-{h.hexdigest()[:32]}.npz"


def _read_teacher_cache(path: Path) -> Optional[dict[str, Any]]:
    try:
        with np.load(path) as f:
            return {"features": f["features"], "shown": torch.from_numpy(f["shown"]),
                    "seconds_per_image": float(f["seconds_per_image"])}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):  # none yet, or damaged: sample again
        return None


def _write_teacher_cache(path: Path, features: np.ndarray, shown: torch.Tensor, seconds_per_image: float) -> None:
    with atomic_write(path) as f:  # a killed run never leaves half an entry
        np.savez(f, features=features, shown=shown.numpy(), seconds_per_image=seconds_per_image)


def evaluate_run(cfg: DictConfig, teacher: Optional[nn.Module], student_dir: Path, run_dir: Path,
                 scheduler_config: Optional[dict] = None, components=None,
                 prompts: Optional[list[str]] = None) -> dict[str, Any]:
    """FIDs, packed size and the side-by-side picture of a finished run; returns what the report shows.
    ``components``: a latent pipeline's frozen parts (samples decoded; ``prompts`` for a text-conditioned
    UNet, at ``eval.guidance_scale``)."""
    e = cfg.eval
    out: dict[str, Any] = {}
    student = load_with_configs(student_dir, allow_fp=True)[0].eval()  # a student or a pipeline directory
    if e.packed and getattr(student, "config", {}).get("quantization_config") is not None:
        packed = export(student_dir, run_dir / "student.packed.safetensors")
        out["packed"] = {"file": packed["file"], "bytes": packed["bytes"], "fp32_bytes": packed["fp32_bytes"],
                         "ratio": packed["ratio"]}
    n = int(e.fid_samples)
    if n <= 0:
        return out
    models = {"teacher": teacher, "student": student} if teacher is not None else {"model": student}
    guidance = float(e.guidance_scale if e.guidance_scale is not None else cfg.sample.guidance_scale)
    # Prompts cycled over the samples: two rows, one column per prompt.
    shown, columns = (2 * len(prompts), len(prompts)) if prompts and len(prompts) <= 16 else (16, None)
    ref = reference_of(cfg)
    extractor = get_extractor(e.weights, kind=str(e.features)) if ref is not None else None
    cache = None
    if teacher is not None and extractor is not None and e.teacher_cache:
        # The teacher is the same in every run that binarizes it: its samples' features are made once.
        protocol = {"num": n, "steps": int(e.sample_steps), "batch": int(e.sample_batch), "seed": int(e.seed),
                    "scheduler": scheduler_config, "prompts": prompts, "guidance_scale": guidance,
                    "features": extractor.identity, "shown": shown, "torch": torch.__version__.split("+")[0],
                    "device": next(teacher.parameters()).device.type}
        cache = teacher_cache_path(teacher, protocol, components)
    cached = _read_teacher_cache(cache) if cache is not None else None
    images, features = {}, {}
    for name, model in models.items():
        if name == "teacher" and cached is not None:
            images[name], features[name] = cached["shown"], cached["features"]
            out.setdefault("seconds_per_image", {})[name] = cached["seconds_per_image"]
            out["teacher_cached"] = str(cache)
            continue
        start = time.perf_counter()
        images[name] = sample_images(model.eval(), n, int(e.sample_steps), "ddim", int(e.sample_batch),
                                     seed=int(e.seed), scheduler_config=scheduler_config, components=components,
                                     prompts=prompts, guidance_scale=guidance, desc=name)
        out.setdefault("seconds_per_image", {})[name] = (time.perf_counter() - start) / n
        save_images(images[name], run_dir / "eval" / name, grid=16)
    if "teacher" in images:
        out["side_by_side"] = str(side_by_side(images["teacher"][:shown], images["student"][:shown],
                                               run_dir / "eval" / "teacher_vs_student.png", columns=columns))
    if ref is None:
        out["fid_skipped"] = f"no reference images for data.name={cfg.data.name}: set eval.reference"
        return out
    reference, split, root = ref
    size = int(cfg.data.image_size)
    real = reference_features(reference, extractor, split, n, root, size)
    for name in images:
        if name not in features:
            features[name] = cleanfid_folder_features(run_dir / "eval" / name / "images", extractor, num=n)
            if name == "teacher" and cache is not None:
                _write_teacher_cache(cache, features[name].astype(np.float32), images[name][:shown],
                                     out["seconds_per_image"][name])
        f = features[name].astype(np.float64)
        out.setdefault("fid", {})[name] = {"fid": fid_from_features(f, real), "kid": kid_from_features(f, real),
                                          "num_fake": int(f.shape[0]), "num_real": int(real.shape[0])}
    out["reference"] = f"{reference} ({split})"
    out["features"] = extractor.identity
    return out


def report_lines(result: dict[str, Any], cfg: DictConfig) -> list[str]:
    """The report's evaluation section."""
    if not result:
        return []
    lines = ["", "## Evaluation", ""]
    if "fid" in result:
        lines += [f"FID against {result['reference']}, {cfg.eval.fid_samples} DDIM-{cfg.eval.sample_steps} samples "
                  f"per model, same seeds; features: {result['features']}.", "",
                  "| model | FID | KID | samples | sampling s/image |", "|---|---|---|---|---|"]
        for name, s in result["fid"].items():
            lines.append(f"| {name} | {s['fid']:.2f} | {s['kid']:.4f} | {s['num_fake']} | "
                         f"{result['seconds_per_image'][name]:.3f} |")
        if "teacher_cached" in result:
            lines += ["", f"The teacher's samples were not drawn again: their features are those of an earlier run with "
                          f"the same teacher and protocol ({result['teacher_cached']}); `eval.teacher_cache=false` "
                          "draws them."]
    elif "fid_skipped" in result:
        lines.append(f"FID skipped: {result['fid_skipped']}.")
    if "packed" in result:
        p = result["packed"]
        lines += ["", f"Packed 1-bit checkpoint: {p['file']}, {p['bytes'] / 2**20:.3f} MiB "
                      f"({p['ratio']:.2f}x smaller than the FP32 model's {p['fp32_bytes'] / 2**20:.2f} MiB)."]
    if "side_by_side" in result:
        lines += ["", f"![teacher vs student]({Path(result['side_by_side']).relative_to(Path(cfg.out_dir) / cfg.name)})"]
    return lines


__all__ = ["evaluate_run", "reference_of", "report_lines", "side_by_side"]
