"""Every binarization algorithm of the comparison suite trains through the same runner (`quant=NAME`)."""

import math

import pytest
import torch

from binarydm import algorithms
from binarydm.training import load_config, run
from binarydm.training.runner import quant_config_of


@pytest.mark.parametrize("name", algorithms.available())
def test_each_algorithm_trains_a_few_steps(tmp_path, name):
    cfg = load_config("tiny", [f"out_dir={tmp_path}", f"quant={name}", "trainer.max_steps=3",
                               "sample.num_images=0", "export=false", "report=false"])
    assert quant_config_of(cfg) == algorithms.preset(name)
    out = run(cfg)
    assert out["trainer"].global_step == 3
    losses = {k: float(v) for k, v in out["trainer"].callback_metrics.items() if "loss" in k}
    assert losses and all(math.isfinite(v) for v in losses.values()), losses
    student = out["module"].student
    assert all(torch.isfinite(p).all() for p in student.parameters())
    assert any(q.enabled for q in student.modules() if hasattr(q, "initialized") and hasattr(q, "bits"))


def test_quant_options_override_the_algorithm_and_unknown_names_list_the_choices(tmp_path):
    cfg = load_config("tiny", [f"out_dir={tmp_path}", "quant=xnor", "quant_options={act: lsq, a_bits: 4}"])
    q = quant_config_of(cfg)
    assert (q.weight, q.act, q.a_bits) == ("xnor", "lsq", 4)
    with pytest.raises(ValueError, match="reactnet"):
        quant_config_of(load_config("tiny", [f"out_dir={tmp_path}", "quant=nope"]))
