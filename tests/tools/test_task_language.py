"""The suite's language-modelling task on tiny configurations (a few seconds on one thread)."""

import math

import pytest
import torch

from binarydm import algorithms
from binarydm.algorithms.bipft import BiPFTSelfAttention
from binarydm.quant.layers import QuantLinear
from suite.tasks import language
from suite.tasks.base import Context, RunSpec

TINY = dict(batch_size=16, context=16, d_model=32, n_layer=1, n_head=2, eval_batches=4, pretrain_steps=200,
            synthetic_chars=20_000)


def spec(algorithm="fp", steps=20, dataset="synthetic", options=None, **kw):
    return RunSpec.make(task="language", dataset=dataset, method=algorithm, algorithm=algorithm, steps=steps,
                        lr=1e-3, options={**TINY, **(options or {})}, **kw)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    """One cache for the module: the tiny FP model is pretrained once and reused by every run."""
    return Context(work_dir=tmp_path_factory.mktemp("work"), cache_dir=tmp_path_factory.mktemp("cache"),
                   progress=False)


def test_fp_perplexity_falls_far_below_the_uniform_one(ctx):
    vocab = len(language.load_corpus("synthetic", TINY, 0).vocab)
    untrained = language.run(spec(steps=0, options={"pretrain_steps": 0}), ctx)
    trained = language.run(spec(steps=100), ctx)
    # An untrained model predicts about uniformly (perplexity ~ vocab); the grammar's entropy is
    # ~0.3 bit/char, so a model that learns the words gets several times below it.
    assert untrained.metric > 0.7 * vocab
    assert trained.metric < vocab / 4
    assert trained.metric_name == "perplexity" and trained.higher_is_better is False
    assert trained.extra["bits_per_char"] == pytest.approx(math.log2(trained.metric))
    assert trained.extra["corpus"] == {"name": "synthetic", "chars": 20_000, "vocab": vocab,
                                       "sha1": trained.extra["corpus"]["sha1"]}
    assert trained.storage_bytes == trained.fp_storage_bytes and trained.wall_s > 0
    assert trained.extra["distill"] == "none" and trained.robustness == {}


@pytest.mark.parametrize("algorithm", ["bipft", "fdb", "xnor"])
def test_quantized_runs_are_finite_and_smaller(ctx, algorithm):
    result = language.run(spec(algorithm), ctx)
    assert math.isfinite(result.metric) and result.metric > 1
    assert result.storage_bytes < result.fp_storage_bytes and result.ops < result.fp_ops
    assert result.extra["distill"] == ("dad" if algorithm == "fdb" else "kd")
    assert math.isfinite(result.extra["train_loss_last"])


def test_student_binarizes_attention_operands_only_for_bipft():
    teacher = language.CharGPT(vocab=10, context=8, d_model=16, n_layer=2, n_head=2)
    tokens = torch.randint(10, (4, 8), generator=torch.Generator().manual_seed(0))
    for algorithm in ("bipft", "xnor", "fdb", "fp"):
        student = language.student_for(spec(algorithm), teacher, tokens)
        attns = [m for m in student.modules() if isinstance(m, BiPFTSelfAttention)]
        assert len(attns) == 2 and all(a.binarize_operands == (algorithm == "bipft") for a in attns)
        assert type(student.head) is torch.nn.Linear  # kept full precision
        assert isinstance(student.blocks[0].attn.to_q, QuantLinear) == (algorithm != "fp")
        assert isinstance(student.blocks[1].mlp[2], QuantLinear) == (algorithm != "fp")
        assert torch.isfinite(student(tokens)).all()
    assert not any(a.binarize_operands for a in teacher.modules() if isinstance(a, BiPFTSelfAttention))


@pytest.mark.parametrize("algorithm", ["fp", *algorithms.available()])
def test_students_are_causal(algorithm):
    """A language model must not see the future: output i is unchanged when characters after i change."""
    teacher = language.CharGPT(vocab=12, context=10, d_model=16, n_layer=1, n_head=2)
    x = torch.randint(12, (2, 10), generator=torch.Generator().manual_seed(1))
    later = x.clone()
    later[:, 6:] = (later[:, 6:] + 5) % 12
    student = language.student_for(spec(algorithm), teacher, x)
    with torch.no_grad():
        y, y_later = student(x), student(later)
    torch.testing.assert_close(y[:, :6], y_later[:, :6], rtol=0, atol=0)
    assert (y[:, 6:] - y_later[:, 6:]).abs().max() > 0


def test_distillation_choice():
    assert language.distillation(spec("fdb")) == "dad"
    assert language.distillation(spec("bipft")) == "kd"
    assert language.distillation(spec("fdb", train={"distill": "kd"})) == "kd"
    assert language.distillation(spec("xnor", train={"distill": "none"})) == "none"
    with pytest.raises(ValueError, match="distill.*'dad', 'kd', 'none'"):
        language.distillation(spec("xnor", train={"distill": "soft"}))


def test_pydoc_corpus_loads_deterministically():
    corpus = language.load_corpus("pydoc", language.DEFAULT_OPTIONS)
    assert len(corpus.text) > 400_000 and 60 < len(corpus.vocab) < 200
    assert corpus.vocab == "".join(sorted(set(corpus.text)))
    assert language.load_corpus("pydoc", language.DEFAULT_OPTIONS) == corpus
    train, held_out = corpus.split()
    assert len(held_out) == len(corpus.text) - int(0.9 * len(corpus.text))
    assert "".join(corpus.vocab[i] for i in held_out[-50:].tolist()) == corpus.text[-50:]  # the last 10%


def test_synthetic_corpus_depends_on_the_seed_only():
    a, b = language.synthetic_text(0, 5000), language.synthetic_text(0, 5000)
    assert a == b and len(a) == 5000 and a != language.synthetic_text(1, 5000)


def test_text_corpus(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("héllo wörld\n" * 100, encoding="utf-8")
    corpus = language.load_corpus("text", {"corpus": str(path)})
    assert corpus.vocab == "".join(sorted(set("héllo wörld\n"))) and len(corpus.text) == 1200
    with pytest.raises(ValueError, match="option 'corpus'"):
        language.load_corpus("text", {"corpus": None})
    with pytest.raises(FileNotFoundError, match="option corpus="):
        language.load_corpus("text", {"corpus": str(tmp_path / "missing.txt")})


def test_batches_are_deterministic_next_character_windows():
    data = torch.arange(1000)
    x, y = language.batch(data, seed=3, step=7, stream=1, size=8, context=16)
    x2, y2 = language.batch(data, seed=3, step=7, stream=1, size=8, context=16)
    assert torch.equal(x, x2) and torch.equal(y, y2) and x.shape == (8, 16)
    assert torch.equal(y, x + 1)  # targets are the inputs shifted by one character
    assert not torch.equal(x, language.batch(data, seed=3, step=8, stream=1, size=8, context=16)[0])
    assert not torch.equal(x, language.batch(data, seed=3, step=7, stream=0, size=8, context=16)[0])
    windows = language.eval_batches(data, n_batches=3, size=4, context=16)
    assert len(windows) == 3 and windows[-1][1][-1, -1] == 999  # evenly spaced, reaching the end


def test_pretrained_model_is_cached_and_reused(ctx, monkeypatch):
    first = language.run(spec("fp", steps=5), ctx)
    files = sorted(p.name for p in ctx.cache_dir.iterdir())
    assert any(p.startswith("language-synthetic-") for p in files) and not any(p.endswith(".tmp") for p in files)

    trained = []  # the recipes common.train_steps is called with
    train_steps = language.common.train_steps
    monkeypatch.setattr(language.common, "train_steps", lambda model, fn, recipe, **kw: (
        trained.append(recipe.method), train_steps(model, fn, recipe, **kw))[1])
    second = language.run(spec("fp", steps=5), ctx)
    assert trained == ["fp"]  # the run's fine-tuning only: the FP model was loaded, not pretrained again
    assert second.extra["pretrain_cached"] and second.metric == first.metric  # same spec, same result
    assert sorted(p.name for p in ctx.cache_dir.iterdir()) == files
    language.run(spec("fp", steps=5, seed=1), ctx)  # another seed is another pretrained model
    assert trained == ["fp", "pretrain", "fp"] and len(list(ctx.cache_dir.iterdir())) == len(files) + 1


def test_clear_errors(ctx):
    with pytest.raises(ValueError, match=r"unknown language dataset 'wiki'.*'pydoc', 'text', 'synthetic'"):
        language.run(spec(dataset="wiki"), ctx)
    with pytest.raises(ValueError, match=r"unknown language option\(s\) \['width'\]; valid: .*'d_model'"):
        language.run(spec(options={"width": 2}), ctx)
    with pytest.raises(ValueError, match=r"unknown language train key\(s\) \['lrm'\]; valid: .*'kd'"):
        language.run(spec("xnor", train={"lrm": 1.0}), ctx)
    with pytest.raises(FileNotFoundError, match="option corpus="):
        language.run(spec(dataset="text", options={"corpus": "/nonexistent/wiki.train.raw"}), ctx)
    with pytest.raises(ValueError, match="unknown binarization algorithm 'xnr'"):
        language.run(spec("xnr", options={"pretrain_steps": 10_000}), ctx)  # fails before pretraining
