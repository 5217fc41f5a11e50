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

import time
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig
from torch import nn

from ..evaluation import evaluate, get_extractor
from ..packing.export import export
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
    images = {}
    for name, model in models.items():
        start = time.perf_counter()
        guidance = e.guidance_scale if e.guidance_scale is not None else cfg.sample.guidance_scale
        images[name] = sample_images(model.eval(), n, int(e.sample_steps), "ddim", int(e.sample_batch),
                                     seed=int(e.seed), scheduler_config=scheduler_config, components=components,
                                     prompts=prompts, guidance_scale=float(guidance))
        out.setdefault("seconds_per_image", {})[name] = (time.perf_counter() - start) / n
        save_images(images[name], run_dir / "eval" / name, grid=16)
    if "teacher" in images:
        # Prompts cycled over the samples: two rows, one column per prompt.
        shown, columns = (2 * len(prompts), len(prompts)) if prompts and len(prompts) <= 16 else (16, None)
        out["side_by_side"] = str(side_by_side(images["teacher"][:shown], images["student"][:shown],
                                               run_dir / "eval" / "teacher_vs_student.png", columns=columns))
    ref = reference_of(cfg)
    if ref is None:
        out["fid_skipped"] = f"no reference images for data.name={cfg.data.name}: set eval.reference"
        return out
    reference, split, root = ref
    extractor = get_extractor(e.weights, kind=str(e.features))
    for name in images:
        scores = evaluate(run_dir / "eval" / name / "images", reference, extractor, split=split, num=n, ref_num=n,
                          root=root, size=int(cfg.data.image_size), backends=("cleanfid",), kid=True)
        out.setdefault("fid", {})[name] = {"fid": scores["fid_cleanfid"], "kid": scores["kid"],
                                          "num_fake": scores["num_fake"], "num_real": scores["num_real"]}
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
