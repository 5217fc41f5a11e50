import math

import pytest
import torch

from binarydm.algorithms.dad import deviation_aware_distillation, teacher_entropy

from .helpers import leaf


def _reference(student, teacher, temperature):
    """Term by term: KL(p_t || p_s) per row, weighted by H(p_t) / mean H, times T^2."""
    rows = []
    entropies = []
    for s, t in zip(student.detach().double(), teacher.double()):
        pt = torch.softmax(t / temperature, 0)
        ps = torch.softmax(s / temperature, 0)
        rows.append(sum(pt[k] * math.log(pt[k] / ps[k]) for k in range(len(pt))))
        entropies.append(-sum(pt[k] * math.log(pt[k]) for k in range(len(pt))))
    mean_h = sum(entropies) / len(entropies)
    return temperature**2 * sum(h / mean_h * kl for h, kl in zip(entropies, rows)) / len(rows)


def test_loss_matches_the_documented_weighting():
    s, t = leaf(6, 5), leaf(6, 5, seed=1) * 2
    loss = deviation_aware_distillation(s, t, temperature=2.0)
    assert math.isclose(loss.item(), float(_reference(s, t.detach(), 2.0)), rel_tol=1e-5)


def test_uniform_weighting_is_plain_kd_and_ambiguous_rows_weigh_more():
    s = leaf(2, 4)
    t = torch.tensor([[8.0, 0.0, 0.0, 0.0], [0.1, 0.0, 0.0, 0.1]])  # confident row, ambiguous row
    h = teacher_entropy(t)
    assert h[1] > h[0]
    per_row = [deviation_aware_distillation(s[i:i + 1], t[i:i + 1], weighting="uniform") for i in range(2)]
    kd = deviation_aware_distillation(s, t, weighting="uniform")
    torch.testing.assert_close(kd, (per_row[0] + per_row[1]) / 2)
    dad = deviation_aware_distillation(s, t)
    w = h / h.mean()
    torch.testing.assert_close(dad, (w[0] * per_row[0] + w[1] * per_row[1]) / 2)


def test_gradient_flows_to_the_student_only_and_vanishes_at_the_teacher():
    t = leaf(4, 3)
    s = t.detach().clone().requires_grad_(True)
    deviation_aware_distillation(s, t).backward()
    assert t.grad is None and s.grad.abs().max() < 1e-6


def test_certain_teacher_falls_back_to_uniform_and_errors_are_clear():
    t = torch.tensor([[100.0, 0.0], [0.0, 100.0]])
    s = leaf(2, 2)
    assert torch.isfinite(deviation_aware_distillation(s, t))
    with pytest.raises(ValueError, match="weighting"):
        deviation_aware_distillation(s, t, weighting="margin")
    with pytest.raises(ValueError, match="same shape"):
        deviation_aware_distillation(s, t[:1])
