"""A small CLIP text encoder and tokenizer, built offline: the text parts of the text-to-image miniature.

    python tools/make_text_encoder.py out=runs/fmnist_clip

Writes ``<out>/text_encoder/`` (a ``CLIPTextModel``, weights drawn from ``seed``) and ``<out>/tokenizer/``
(a ``CLIPTokenizer`` whose byte-level BPE vocabulary is learnt from the captions of the Fashion-MNIST and
synthetic class names with every template of ``binarydm.latent.text``), the layout of a Stable Diffusion
pipeline, so that ``model.text_encoder=<out>`` trains a text-conditioned UNet with it
(configs/teacher_t2i_fmnist.yaml). A real CLIP is trained on 400M captioned images; this one stays at its
random initialisation (frozen, as in Stable Diffusion): its embeddings differ per caption and carry the
class word, which is all the miniature needs. An existing ``out`` is refused unless ``overwrite=true``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from binarydm.cli import parse
from binarydm.errors import UsageError, run_main


@dataclass
class TextEncoderArgs:
    """``python tools/make_text_encoder.py out=DIR [hidden=64] [layers=2] [heads=2] [max_length=16] [seed=0]
    [overwrite=false]``"""

    out: Optional[str] = None
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    max_length: int = 16
    seed: int = 0
    overwrite: bool = False


def make(args: TextEncoderArgs) -> Path:
    from binarydm.latent.text import FASHION_MNIST_CLASSES, SYNTHETIC_CLASSES, TEMPLATES, build_clip, save_clip

    if not args.out:
        raise UsageError("out=DIR is required (where text_encoder/ and tokenizer/ are written)")
    for key in ("hidden", "layers", "heads", "max_length"):
        if getattr(args, key) < 1:
            raise UsageError(f"{key}={getattr(args, key)}: must be at least 1")
    if args.hidden % args.heads:
        raise UsageError(f"hidden={args.hidden} must be a multiple of heads={args.heads}")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        if not args.overwrite:
            raise UsageError(f"out={out}: exists and is not empty; choose another out= or pass overwrite=true")
        shutil.rmtree(out)
    corpus = [t.format(name) for t in TEMPLATES for name in (*FASHION_MNIST_CLASSES, *SYNTHETIC_CLASSES)]
    encoder, tokenizer = build_clip(corpus, args.hidden, args.layers, args.heads, args.max_length, args.seed)
    return save_clip(encoder, tokenizer, out)


def _main(argv: Sequence[str]) -> None:
    out = make(parse(TextEncoderArgs, list(argv), __doc__))
    print(f"text encoder and tokenizer in {out}/text_encoder, {out}/tokenizer")


def main(argv: Optional[Sequence[str]] = None) -> None:
    run_main(_main, argv, raise_exit=True)


if __name__ == "__main__":
    main()
