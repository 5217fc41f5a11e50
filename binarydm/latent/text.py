"""Captions and prompt embeddings: what a text-conditioned UNet is trained and sampled with.

- Captions of an image folder follow diffusers' convention (the ``train_text_to_image`` example and the
  ``datasets`` image-folder loader): ``metadata.jsonl`` at the folder's root, one JSON object per line with
  ``file_name`` (relative to the root) and ``text``; or, without it, a ``.txt`` file beside each image.
- Captions of a labelled data set (Fashion-MNIST, the synthetic set) are made from its class names with
  several templates, the template of image i drawn from (seed, i): the text miniature (config=t2i_demo).
- :func:`embed_prompts` is what ``StableDiffusionPipeline.encode_prompt`` computes (pad to the tokenizer's
  ``model_max_length``, truncate, the text encoder's last hidden state; an attention mask only where the
  encoder's config asks for one), so cached embeddings equal those the pipeline makes while sampling.
- :func:`build_clip` makes a small CLIP text encoder and its tokenizer offline: a byte-level BPE vocabulary
  trained on the captions with ``tokenizers`` (CLIP's pre-tokenizer and ``</w>`` word ends, so that
  ``CLIPTokenizer`` reads it) and a randomly initialised ``CLIPTextModel``, frozen like a real one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch
from torch import nn

from ..errors import UsageError

# Class names with their article, so that every template reads as English ("a photo of an ankle boot").
FASHION_MNIST_CLASSES = ("a t-shirt", "a trouser", "a pullover", "a dress", "a coat", "a sandal", "a shirt",
                         "a sneaker", "a bag", "an ankle boot")
SYNTHETIC_CLASSES = tuple(f"a pattern {k}" for k in range(10))
TEMPLATES = (
    "a photo of {}",
    "a black and white picture of {}",
    "{}",
    "a picture of {}",
    "a grey photo of {}",
    "a small image of {}",
    "a centered photo of {}",
    "{} on a black background",
)
METADATA_FILE = "metadata.jsonl"


def class_captions(labels: Sequence[int], class_names: Sequence[str], seed: int = 0,
                   templates: Sequence[str] = TEMPLATES) -> list[str]:
    """One caption per label: image i gets template (seed, i) filled with its class name."""
    g = torch.Generator().manual_seed(int(seed) * 7_919 + 104_729)
    choice = torch.randint(0, len(templates), (len(labels),), generator=g).tolist()
    return [templates[c].format(class_names[int(y)]) for c, y in zip(choice, labels)]


def class_prompts(class_names: Sequence[str], template: str = TEMPLATES[0]) -> list[str]:
    """One prompt per class, in class order (the prompts of the text miniature's grids and its accuracy)."""
    return [template.format(name) for name in class_names]


def folder_captions(root: Path, paths: Sequence[Path]) -> list[str]:
    """The caption of each image of an image folder (``metadata.jsonl``, else a ``.txt`` beside each image);
    a missing caption is one error line naming the image."""
    root = Path(root)
    meta = root / METADATA_FILE
    if meta.is_file():
        captions: dict[str, str] = {}
        for n, line in enumerate(meta.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                captions[str(Path(row["file_name"]))] = str(row["text"])
            except (ValueError, KeyError, TypeError):
                raise UsageError(f"{meta}: line {n} is not a JSON object with file_name and text (diffusers' "
                                 "metadata.jsonl convention)") from None
        out = []
        for p in paths:
            key = str(Path(p).relative_to(root))
            if key not in captions:
                raise UsageError(f"{meta}: no caption for {key} (every image of data.root needs a line "
                                 f'{{"file_name": "{key}", "text": ...}})')
            out.append(captions[key])
        return out
    out = []
    for p in paths:
        txt = Path(p).with_suffix(".txt")
        if not txt.is_file():
            raise UsageError(f"{p}: no caption: a text-conditioned UNet needs {METADATA_FILE} in data.root (lines "
                             f'{{"file_name": ..., "text": ...}}) or a .txt beside each image ({txt.name})')
        out.append(txt.read_text().strip())
    return out


def _attention_mask_wanted(text_encoder: nn.Module) -> bool:
    return bool(getattr(text_encoder.config, "use_attention_mask", False))


@torch.no_grad()
def embed_prompts(text_encoder: nn.Module, tokenizer, prompts: Sequence[str], batch: int = 256) -> torch.Tensor:
    """Prompt embeddings (N, model_max_length, hidden) as ``StableDiffusionPipeline.encode_prompt`` makes
    them (float32, on the CPU)."""
    device = next(text_encoder.parameters()).device
    out = []
    for i in range(0, len(prompts), batch):
        tokens = tokenizer(list(prompts[i:i + batch]), padding="max_length", max_length=tokenizer.model_max_length,
                           truncation=True, return_tensors="pt")
        mask = tokens.attention_mask.to(device) if _attention_mask_wanted(text_encoder) else None
        out.append(text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0].float().cpu())
    return torch.cat(out)


# ---- a small CLIP built offline --------------------------------------------------------------------------
SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


def build_tokenizer(corpus: Iterable[str], max_length: int = 16, vocab_size: int = 1000):
    """A ``CLIPTokenizer`` whose BPE vocabulary is learnt from ``corpus``: every byte and byte + ``</w>`` as in
    CLIP (any text tokenises), then the merges that make the corpus' words whole tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    probe = CLIPTokenizer(vocab={s: i for i, s in enumerate(SPECIAL_TOKENS)}, merges=[])
    bpe = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix="</w>", unk_token=SPECIAL_TOKENS[1]))
    bpe.normalizer = probe.backend_tokenizer.normalizer  # CLIP's: NFC, whitespace, lower case
    bpe.pre_tokenizer = probe.backend_tokenizer.pre_tokenizer  # CLIP's word split, then byte-level
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), end_of_word_suffix="</w>")
    bpe.train_from_iterator(list(corpus), trainer)
    model = json.loads(bpe.to_str())["model"]
    vocab = dict(model["vocab"])
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        for token in (char, char + "</w>"):
            vocab.setdefault(token, len(vocab))
    merges = [tuple(m) if isinstance(m, (list, tuple)) else tuple(m.split(" ")) for m in model["merges"]]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def build_clip(corpus: Iterable[str], hidden_size: int = 64, layers: int = 2, heads: int = 2, max_length: int = 16,
               seed: int = 0):
    """(CLIPTextModel, CLIPTokenizer): a tokenizer learnt from ``corpus`` and a text encoder of the given size with
    weights drawn from ``seed`` (CLIP's initialisation), in eval mode."""
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_tokenizer(corpus, max_length)
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=4 * hidden_size,
                            num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=max_length,
                            projection_dim=hidden_size, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = CLIPTextModel(config)
    return encoder.eval(), tokenizer


def save_clip(text_encoder: nn.Module, tokenizer, out: Path) -> Path:
    """``out/text_encoder/`` and ``out/tokenizer/``, the layout of a Stable Diffusion pipeline."""
    out = Path(out)
    text_encoder.save_pretrained(out / "text_encoder", safe_serialization=True)
    tokenizer.save_pretrained(out / "tokenizer")
    return out


def default_captions(name: str, labels: Optional[Sequence[int]], seed: int = 0) -> list[str]:
    """Captions of a labelled data set ``name`` (fashion_mnist, synthetic) from its class names."""
    names = FASHION_MNIST_CLASSES if name == "fashion_mnist" else SYNTHETIC_CLASSES
    if labels is None:
        raise UsageError(f"data.name={name}: captions are made from class labels, which this data set lacks")
    return class_captions(labels, names, seed)


__all__ = ["FASHION_MNIST_CLASSES", "METADATA_FILE", "SYNTHETIC_CLASSES", "TEMPLATES", "build_clip",
           "build_tokenizer", "class_captions", "class_prompts", "default_captions", "embed_prompts",
           "folder_captions", "save_clip"]
