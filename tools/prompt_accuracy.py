"""Prompt fidelity of text-to-image models without CLIP weights: a Fashion-MNIST classifier judges the samples.

    python tools/prompt_accuracy.py models=[binarydm/assets/t2i_fmnist,runs/t2i_demo/student] guidance=[1,3]

For each model (a text-to-image pipeline directory, or a run directory holding one) and each guidance scale,
``num`` DDIM samples (``steps`` steps, seed ``seed``, the same for every model) are drawn with prompts that cycle
over the ten classes and, every ten images, the next caption template ("a photo of a sneaker", "a black and white
picture of a sneaker", ...). The suite's full-precision ResNet-20 of Fashion-MNIST (tools/suite/tasks/
classification.py; trained once, ``classifier_steps`` steps, cached in ``cache``) labels them, and the score is
the fraction (%) whose label is the prompt's class; chance is 10 %. The classifier's own top-1 on real test images
is reported beside it (the ceiling of the score). Writes ``<out>/prompt_accuracy.json`` and ``.md`` and, per model
and scale, ``<out>/<model>_g<scale>.png`` (one row per class). Finished (model, scale) pairs are read back from
the JSON, so the tool resumes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from binarydm.cli import parse
from binarydm.errors import UsageError, run_main


@dataclass
class PromptAccuracyArgs:
    """``python tools/prompt_accuracy.py models=[DIR,...] [guidance=[1,3]] [num=500] [steps=25] [seed=0]
    [batch=100] [out=runs/prompt_accuracy] [cache=runs/classifier] [classifier_steps=2000]``"""

    models: List[str] = field(default_factory=list)
    guidance: List[float] = field(default_factory=lambda: [1.0, 3.0])
    num: int = 500
    steps: int = 25
    seed: int = 0
    batch: int = 100
    out: str = "runs/prompt_accuracy"
    cache: str = "runs/classifier"
    classifier_steps: int = 2000


def prompts_and_classes(num: int) -> tuple[list[str], list[int]]:
    """Image i: class i mod 10, template (i // 10) mod (number of templates)."""
    from binarydm.latent.text import FASHION_MNIST_CLASSES, TEMPLATES

    classes = [i % 10 for i in range(num)]
    prompts = [TEMPLATES[(i // 10) % len(TEMPLATES)].format(FASHION_MNIST_CLASSES[c]) for i, c in enumerate(classes)]
    return prompts, classes


def _name(path: str) -> str:
    """A file name for a model: its directory's name (the run's, for a run's student/)."""
    p = Path(path).resolve()
    return p.parent.name if p.name == "student" else p.name


def score(path: str, args: PromptAccuracyArgs, classifier: torch.nn.Module, guidance: float,
          grid: Optional[Path] = None) -> dict:
    from binarydm.packing.loading import load_for_cli
    from binarydm.sampling import components_for, sample_images, save_grid
    from suite.tasks.classification import to_float

    unet, configs = load_for_cli(Path(path), key="models")
    parts = components_for(configs, dict(unet.config))
    if parts is None or not parts.text:
        raise UsageError(f"models: {path} is no text-to-image pipeline (no text encoder)")
    prompts, classes = prompts_and_classes(args.num)
    start = time.perf_counter()
    images = sample_images(unet, args.num, args.steps, "ddim", args.batch, args.seed,
                           scheduler_config=configs.get("scheduler_config"), components=parts, prompts=prompts,
                           guidance_scale=guidance)
    seconds = time.perf_counter() - start
    if images.shape[1] != 1:
        images = images.float().mean(dim=1, keepdim=True).round().to(torch.uint8)
    with torch.no_grad():
        predicted = torch.cat([classifier(to_float(x)).argmax(dim=1) for x in images.split(256)])
    target = torch.tensor(classes)
    per_class = [float((predicted[target == c] == c).float().mean() * 100) for c in range(10)]
    if grid is not None:  # one row per class: the first ten images of each
        order = [i for c in range(10) for i in range(c, min(args.num, 100), 10)]
        save_grid(images[order], grid)
    return {"model": path, "guidance": guidance, "accuracy": float((predicted == target).float().mean() * 100),
            "per_class": per_class, "num": args.num, "steps": args.steps, "seed": args.seed,
            "seconds_per_image": seconds / args.num}


def run(args: PromptAccuracyArgs) -> list[dict]:
    from suite.tasks.classification import pretrained_classifier

    if not args.models:
        raise UsageError("models=[DIR,...] is required: text-to-image pipeline directories (or run directories)")
    for path in args.models:
        if not Path(path).exists():
            raise UsageError(f"models: {path}: no such directory")
    if args.num < 10 or any(g < 1 for g in args.guidance):
        raise UsageError("num must be at least 10 (one per class) and every guidance scale >= 1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "prompt_accuracy.json"
    saved = json.loads(results_file.read_text()) if results_file.is_file() else {"rows": []}
    rows = saved["rows"]
    classifier, ceiling = pretrained_classifier("fashion_mnist", Path(args.cache), args.classifier_steps)
    for path in args.models:
        for g in args.guidance:
            done = [r for r in rows if r["model"] == path and r["guidance"] == g and r["num"] == args.num
                    and r["steps"] == args.steps and r["seed"] == args.seed]
            if done:
                continue
            rows.append(score(path, args, classifier, g, out / f"{_name(path)}_g{g:g}.png"))
            print(f"{path} guidance {g:g}: {rows[-1]['accuracy']:.1f} % of {args.num}")
            _write(out, {"rows": rows, "classifier_top1": ceiling, "classifier_steps": args.classifier_steps})
    _write(out, {"rows": rows, "classifier_top1": ceiling, "classifier_steps": args.classifier_steps})
    return rows


def _write(out: Path, results: dict) -> None:
    from binarydm.packing.files import atomic_write

    with atomic_write(out / "prompt_accuracy.json", "w") as f:
        json.dump(results, f, indent=1)
    lines = ["| model | guidance | prompt accuracy (%) | samples | s/image |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['guidance']:g} | {r['accuracy']:.1f} | {r['num']} | {r['seconds_per_image']:.3f} |"
              for r in results["rows"]]
    lines += ["", f"Judge: ResNet-20 (full precision, {results['classifier_steps']} steps), top-1 "
                  f"{results['classifier_top1']:.1f} % on real Fashion-MNIST test images; chance 10 %."]
    with atomic_write(out / "prompt_accuracy.md", "w") as f:
        f.write("\n".join(lines) + "\n")


def _main(argv: Sequence[str]) -> None:
    run(parse(PromptAccuracyArgs, list(argv), __doc__))


def main(argv: Optional[Sequence[str]] = None) -> None:
    run_main(_main, argv, raise_exit=True)


if __name__ == "__main__":
    main()
