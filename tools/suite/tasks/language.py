"""Character-level language modelling: a small causal transformer (GPT), binarized by each algorithm.

BiBench's language track binarizes BERT on GLUE, distilled from its full-precision teacher; this
task is the offline, CPU-sized counterpart for generative models: next-character prediction,
measured by perplexity on held-out text.

Corpora (``spec.dataset``), each split by characters into the first 90% (training) and the last 10%
(held out), with the sorted set of the corpus's characters as the vocabulary:
  pydoc:     the Python Language Reference topics that every CPython ships for ``help()``
             (``pydoc_data.topics.topics``: ~465k characters of English prose and code, ~100
             distinct characters), joined in sorted topic order. The default because it is
             offline everywhere; its text differs a little between Python versions, so the cache
             key holds a hash of the text.
  text:      a UTF-8 file named by option ``corpus`` (e.g. WikiText-2 raw ``wiki.train.raw``).
  synthetic: sentences of a small grammar drawn with ``spec.seed``; learnable in a few hundred steps.

Model (:class:`CharGPT`, pre-LN GPT after nanoGPT): token + learned position embeddings; ``n_layer``
blocks x = x + attn(LN(x)), x = x + mlp(LN(x)) with BiPFT's causal self-attention and a
Linear(d, 4d)-GELU-Linear(4d, d) MLP; final LN; ``head`` Linear(d, vocab).

Recipe of one run:
  1. the FP model is pretrained for ``pretrain_steps`` (AdamW, lr 3e-3, cosine; a fixed recipe
     independent of the run's) and cached in ``ctx.cache_dir``;
  2. ``fp``: that model fine-tuned for ``spec.steps`` with the run's recipe (so the FP row's wall
     time is comparable); otherwise ``common.quantize`` of it (``head`` kept full precision; the
     embeddings are not Linear layers, so they stay full precision too) trained for ``spec.steps`` on

         L = CE(student) + kd * D(student logits, frozen FP logits),   kd = train "kd" (1.0)

     with D DB-LLM's deviation-aware distillation (Chen et al., "DB-LLM: Accurate Dual-Binarization
     for Efficient LLMs", arXiv 2402.11960, 2024), ``binarydm.algorithms.dad``: per-character KL re-weighted by the
     teacher's entropy (``distill="dad"``) for ``fdb``, because DB-LLM pairs its FDB with DAD; plain
     KD (uniform weights, ``"kd"``) for every other algorithm, as BiBench distils its BERTs; train
     ``distill`` ("dad", "kd", "none") overrides the choice, ``temperature`` (1.0) is T of both.
  3. perplexity = exp(mean CE per character, in nats) over ``eval_batches`` fixed held-out batches
     (evenly spaced windows, the same for every seed and method); bits per character = mean CE / ln 2.

Attention: ``BiPFTSelfAttention`` (Xing et al., "BiPFT: Binary Pre-trained Foundation Transformer
with Low-rank Estimation of Binarization Residual Polynomials", AAAI 2024). Its to_q/to_k/to_v/to_out
are nn.Linear, binarized by every algorithm like the MLP; its binarized operands (B(Q)B(K)^T with the
rank-1 residual estimators, Boolean attention B(P)) are BiPFT's own and switched on only for
``bipft``. Other algorithms keep the attention matmuls in full precision, as the algorithm presets
do for diffusers attention (``attention=False``).

Caveats: ``binarydm.summary`` counts only nn.Linear layers here (it recognises diffusers attention,
not BiPFTSelfAttention), so OPs leave out the Q K^T and P V products (2 L^2 d MACs per layer and
sequence, ~8% at the defaults) for every method alike. Every student is causal
(``test_students_are_causal``); XNOR's activation scale is per token here for that reason.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import random
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from binarydm import algorithms
from binarydm.algorithms.bipft import BiPFTSelfAttention
from binarydm.algorithms.dad import deviation_aware_distillation

from . import common
from .base import FP, Context, RunResult, RunSpec, merged_options

DATASETS = ("pydoc", "text", "synthetic")
METRIC = "perplexity"
HIGHER_IS_BETTER = False
KEEP = ("head",)  # the output layer stays full precision (BiBench keeps the last layer)
DEFAULT_OPTIONS: dict[str, Any] = {
    "batch_size": 32,
    "context": 64,              # characters per sequence
    "d_model": 128,
    "n_layer": 2,
    "n_head": 4,
    "eval_batches": 20,         # held-out batches of batch_size windows
    "pretrain_steps": 1500,     # steps of the cached full-precision model
    "corpus": None,             # dataset "text": path of a UTF-8 text file
    "synthetic_chars": 200_000,  # dataset "synthetic": length of the generated text
}
TRAIN_OPTIONS: dict[str, Any] = {
    "kd": 1.0,            # weight of the distillation term
    "distill": None,      # "dad" | "kd" | "none"; None: "dad" for fdb, else "kd"
    "temperature": 1.0,   # T of the distillation
}
DISTILL = ("dad", "kd", "none")
PRETRAIN_LR = 3e-3
HELD_OUT = 0.1  # the last 10% of the corpus


# ---- corpora ------------------------------------------------------------------------------------
class Corpus(NamedTuple):
    name: str
    text: str
    vocab: str  # the sorted distinct characters; token i is vocab[i]
    sha1: str   # of the text: its identity in cache keys

    def encode(self) -> torch.Tensor:
        index = {c: i for i, c in enumerate(self.vocab)}
        return torch.tensor([index[c] for c in self.text], dtype=torch.long)

    def split(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(train, held out): the first 90% and the last 10% of the encoded text."""
        data = self.encode()
        cut = int(len(data) * (1 - HELD_OUT))
        return data[:cut], data[cut:]


def pydoc_text() -> str:
    """The Python Language Reference topics of this interpreter, in sorted topic order."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


# A tiny grammar: subject verb object [place] ending. Character-level it has ~25 symbols, words
# are fixed strings (predictable from their first letters) and the choices at word boundaries
# are few: a model that learns it gets far below the uniform perplexity in a few hundred steps.
_SUBJECTS = ("the cat", "a dog", "the old man", "my sister", "a small bird", "the teacher", "our neighbour")
_VERBS = ("sees", "likes", "follows", "finds", "paints", "calls", "waits for")
_OBJECTS = ("the red ball", "a green apple", "the river", "an old book", "the garden gate", "a quiet song")
_PLACES = ("", "", " in the rain", " at night", " near the house", " again")


def synthetic_text(seed: int, n_chars: int) -> str:
    """Sentences of the grammar above drawn with ``seed``, ``n_chars`` characters long (a newline every 5th)."""
    rng = random.Random(seed)
    parts, length, i = [], 0, 0
    while length < n_chars:
        s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}{rng.choice(_PLACES)}."
        s += "\n" if i % 5 == 4 else " "
        parts.append(s)
        length, i = length + len(s), i + 1
    return "".join(parts)[:n_chars]


def load_corpus(dataset: str, options: dict[str, Any], seed: int = 0) -> Corpus:
    """The corpus of ``dataset`` (see the module docstring); ``seed`` matters only for "synthetic"."""
    if dataset == "pydoc":
        text = pydoc_text()
    elif dataset == "text":
        path = options.get("corpus")
        if not path:
            raise ValueError("dataset 'text' reads a UTF-8 file named by option 'corpus' "
                             "(e.g. WikiText-2 raw wiki.train.raw); none was given")
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"option corpus={str(path)!r}: no such file (dataset 'text' needs a UTF-8 file)")
        text = path.read_text(encoding="utf-8")
    elif dataset == "synthetic":
        text = synthetic_text(seed, options["synthetic_chars"])
    else:
        raise ValueError(f"unknown language dataset {dataset!r}; valid: {list(DATASETS)}")
    return Corpus(dataset, text, "".join(sorted(set(text))), hashlib.sha1(text.encode("utf-8")).hexdigest())


def batch(data: torch.Tensor, seed: int, step: int, stream: int, size: int, context: int
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Training batch ``step``: ``size`` random windows (inputs, next-character targets), a pure
    function of its arguments. ``stream`` separates the pretraining batches (0) from the run's (1)."""
    g = common.seeded(seed, 2 * step + stream)
    starts = torch.randint(len(data) - context, (size,), generator=g)
    windows = data[starts[:, None] + torch.arange(context + 1)]
    return windows[:, :-1], windows[:, 1:]


def eval_batches(data: torch.Tensor, n_batches: int, size: int, context: int
                 ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n_batches`` x ``size`` windows evenly spaced over the held-out text (no randomness)."""
    if len(data) < context + 1:
        raise ValueError(f"the held-out text has {len(data)} characters, fewer than option context + 1 = {context + 1}")
    starts = torch.linspace(0, len(data) - context - 1, n_batches * size).long()
    windows = data[starts[:, None] + torch.arange(context + 1)]
    return [(w[:, :-1], w[:, 1:]) for w in windows.split(size)]


# ---- model --------------------------------------------------------------------------------------
class Block(nn.Module):
    """Pre-LN transformer block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, d_model: int, n_head: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = BiPFTSelfAttention(d_model, n_head, causal=True)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CharGPT(nn.Module):
    """A small GPT over characters: tokens [B, L] (L <= context) -> logits [B, L, vocab]."""

    def __init__(self, vocab: int, context: int, d_model: int, n_layer: int, n_head: int):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, d_model)
        self.pos_emb = nn.Embedding(context, d_model)
        # nanoGPT's N(0, 0.02): PyTorch's N(0, 1) embeddings would dwarf what the blocks add to the residual stream.
        for emb in (self.tok_emb, self.pos_emb):
            nn.init.normal_(emb.weight, std=0.02)
        self.blocks = nn.ModuleList(Block(d_model, n_head) for _ in range(n_layer))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)
        set_binarized_attention_(self, False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.tok_emb(tokens) + self.pos_emb(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def set_binarized_attention_(model: nn.Module, on: bool) -> nn.Module:
    """Switch BiPFT's binarized attention operands on or off in every BiPFTSelfAttention of ``model``."""
    for m in model.modules():
        if isinstance(m, BiPFTSelfAttention):
            m.binarize_operands = on
    return model


@torch.no_grad()
def mean_ce(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Mean cross-entropy per character (nats) of ``model`` (in eval mode) over ``batches``."""
    was = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y in batches:
        logits = model(x)
        total += float(F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum"))
        count += y.numel()
    model.train(was)
    return total / count


# ---- the run ------------------------------------------------------------------------------------
def _options(spec: RunSpec) -> dict[str, Any]:
    return merged_options(spec, "language", DATASETS, DEFAULT_OPTIONS, TRAIN_OPTIONS)


def distillation(spec: RunSpec) -> str:
    """Which distillation a quantized run uses: train ``distill``, else "dad" for fdb and "kd" otherwise."""
    choice = spec.train_dict.get("distill") or ("dad" if spec.algorithm == "fdb" else "kd")
    if choice not in DISTILL:
        raise ValueError(f"unknown language train distill={choice!r}; valid: {list(DISTILL)}")
    return choice


def pretrained_path(spec: RunSpec, options: dict[str, Any], corpus: Corpus, cache_dir: Path) -> Path:
    """Cache file of the pretrained FP model: everything its training depends on is in the name."""
    o = options
    name = (f"language-{spec.dataset}-{corpus.sha1[:10]}-d{o['d_model']}-l{o['n_layer']}-h{o['n_head']}"
            f"-c{o['context']}-b{o['batch_size']}-p{o['pretrain_steps']}-s{spec.seed}.pt")
    return Path(cache_dir) / name


def _pretrained(spec: RunSpec, options: dict[str, Any], corpus: Corpus, train: torch.Tensor,
                ctx: Context) -> tuple[CharGPT, dict]:
    """The cached FP model, trained now if absent; and extra fields saying which."""
    o = options
    model = CharGPT(len(corpus.vocab), o["context"], o["d_model"], o["n_layer"], o["n_head"])
    path = pretrained_path(spec, options, corpus, ctx.cache_dir)
    if path.is_file():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model, {"pretrain_cached": True}
    recipe = RunSpec(task=spec.task, dataset=spec.dataset, method="pretrain", algorithm=FP,
                     steps=o["pretrain_steps"], lr=PRETRAIN_LR, optimizer="adamw", seed=spec.seed)

    def loss_fn(step: int) -> torch.Tensor:
        x, y = batch(train, spec.seed, step, 0, o["batch_size"], o["context"])
        return F.cross_entropy(model(x).flatten(0, 1), y.flatten())

    start = time.perf_counter()
    losses = common.train_steps(model, loss_fn, recipe, warmup=min(100, o["pretrain_steps"] // 10),
                                progress=ctx.progress, desc=f"{spec.task}/pretrain")
    seconds = time.perf_counter() - start
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)  # atomic: a killed run never leaves a half-written model for the next one
    return model, {"pretrain_cached": False, "pretrain_s": seconds,
                   "pretrain_loss_last": losses[-1] if losses else None}


def student_for(spec: RunSpec, teacher: CharGPT, example: torch.Tensor) -> nn.Module:
    """The model a run trains: a copy of the FP ``teacher`` (``fp``) or its quantized copy.

    BiPFT's binarized attention operands are on only for ``bipft``; they must be on before
    ``common.quantize`` calibrates, so that the Q/K/V binarizers see their inputs.
    """
    base = set_binarized_attention_(copy.deepcopy(teacher), spec.algorithm == "bipft")
    return common.quantize(base, spec, keep=KEEP, example=example)


def run(spec: RunSpec, ctx: Context) -> RunResult:
    """Train and evaluate one language-modelling run (see the module docstring)."""
    o = _options(spec)
    if spec.algorithm != FP:
        algorithms.preset(spec.algorithm, **spec.quant_dict)  # a bad name or override fails now, not after pretraining
    corpus = load_corpus(spec.dataset, o, spec.seed)
    train, held_out = corpus.split()
    if len(train) < o["context"] + 1:
        raise ValueError(f"the training text has {len(train)} characters, fewer than option context + 1")
    evaluation = eval_batches(held_out, o["eval_batches"], o["batch_size"], o["context"])
    kd = float(spec.train_dict.get("kd", TRAIN_OPTIONS["kd"]))
    temperature = float(spec.train_dict.get("temperature", TRAIN_OPTIONS["temperature"]))
    mode = distillation(spec) if spec.algorithm != FP and kd != 0 else "none"
    # Model initialisation and quantizer set-up draw from the global RNG: seed it, and leave the caller's alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        teacher, extra = _pretrained(spec, o, corpus, train, ctx)
        teacher.eval()  # frozen: only ever run under no_grad (its parameters are not the student's)
        example, _ = batch(train, spec.seed, 0, 1, o["batch_size"], o["context"])

        start = time.perf_counter()
        student = student_for(spec, teacher, example)

        def loss_fn(step: int) -> torch.Tensor:
            x, y = batch(train, spec.seed, step, 1, o["batch_size"], o["context"])
            logits = student(x)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
            if mode != "none":
                with torch.no_grad():
                    target = teacher(x)
                weighting = "entropy" if mode == "dad" else "uniform"
                loss = loss + kd * deviation_aware_distillation(logits, target, temperature, weighting=weighting)
            return loss

        losses = common.train_steps(student, loss_fn, spec, progress=ctx.progress)
        wall_s = time.perf_counter() - start

    ce = mean_ce(student, evaluation)
    return RunResult(
        metric=math.exp(ce), metric_name=METRIC, higher_is_better=HIGHER_IS_BETTER, wall_s=wall_s,
        **common.complexity(student, example[:1]), robustness={},
        extra={"bits_per_char": ce / math.log(2), "train_loss_last": losses[-1] if losses else None,
               "distill": mode,
               "corpus": {"name": corpus.name, "chars": len(corpus.text), "vocab": len(corpus.vocab),
                          "sha1": corpus.sha1[:10]},
               **extra},
    )


__all__ = ["CharGPT", "DATASETS", "DEFAULT_OPTIONS", "HIGHER_IS_BETTER", "METRIC", "TRAIN_OPTIONS", "batch",
           "distillation", "eval_batches", "load_corpus", "mean_ce", "run", "student_for", "synthetic_text"]
