"""tools/prompt_accuracy.py: the judge of text-to-image samples (a Fashion-MNIST classifier) on a tiny pipeline."""

import json
from pathlib import Path

import pytest

import prompt_accuracy
from binarydm.errors import UsageError
from binarydm.training.data import FASHION_MNIST_DIR
from latent_helpers import make_pipeline


def test_prompts_cycle_classes_then_templates():
    prompts, classes = prompt_accuracy.prompts_and_classes(25)
    assert classes[:12] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert prompts[0] == "a photo of a t-shirt" and prompts[9] == "a photo of an ankle boot"
    assert prompts[10] == "a black and white picture of a t-shirt"


def test_refuses_what_it_cannot_score(tmp_path):
    with pytest.raises(UsageError, match="models="):
        prompt_accuracy.run(prompt_accuracy.PromptAccuracyArgs())
    with pytest.raises(UsageError, match="no such directory"):
        prompt_accuracy.run(prompt_accuracy.PromptAccuracyArgs(models=[str(tmp_path / "nope")]))


@pytest.mark.skipif(not any(Path(FASHION_MNIST_DIR, f).exists() for f in
                            ("train-labels-idx1-ubyte", "train-labels-idx1-ubyte.gz")),
                    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
def test_scores_a_text_pipeline_and_resumes(tmp_path):
    pipe = make_pipeline(tmp_path / "sd", "sd")
    args = prompt_accuracy.PromptAccuracyArgs(models=[str(pipe)], guidance=[1.0, 2.0], num=10, steps=2, batch=10,
                                              out=str(tmp_path / "out"), cache=str(tmp_path / "cache"),
                                              classifier_steps=2)
    rows = prompt_accuracy.run(args)
    assert [r["guidance"] for r in rows] == [1.0, 2.0]
    assert all(0 <= r["accuracy"] <= 100 and len(r["per_class"]) == 10 for r in rows)
    saved = json.loads((tmp_path / "out" / "prompt_accuracy.json").read_text())
    assert saved["rows"] == rows and (tmp_path / "out" / "sd_g2.png").is_file()
    assert "chance 10 %" in (tmp_path / "out" / "prompt_accuracy.md").read_text()
    # A second call scores nothing again: the rows are read back.
    assert prompt_accuracy.run(args) == rows
