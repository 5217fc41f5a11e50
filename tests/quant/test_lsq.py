import math

import pytest
import torch

from binarydm.quant.lsq import LSQ, lsq_range


def test_ranges():
    assert lsq_range(4, True) == (-8, 7)
    assert lsq_range(4, False) == (0, 15)
    assert lsq_range(8, True) == (-128, 127)
    with pytest.raises(ValueError):
        lsq_range(1, True)


def test_initialisation_from_a_calibration_batch():
    x = torch.randn(16, 8, 5, 5, dtype=torch.float64)
    q = LSQ(4).double().initialize_(x)
    assert q.step.item() == pytest.approx(2 * x.abs().mean().item() / math.sqrt(7), rel=1e-12)
    w = torch.randn(6, 3, 3, 3, dtype=torch.float64)
    qw = LSQ(2, channels=6, dim=4).double().initialize_(w)
    torch.testing.assert_close(qw.step.data, 2 * w.abs().mean((1, 2, 3), keepdim=True) / math.sqrt(1))


@pytest.mark.parametrize("signed", [True, False])
def test_forward_values_are_integer_multiples_of_the_step_in_range(signed):
    x = torch.randn(1000, dtype=torch.float64) * 3
    q = LSQ(4, signed=signed).double()
    with torch.no_grad():
        q.step.fill_(0.3)
    q.initialized = True
    y = q(x)
    codes = y / 0.3
    torch.testing.assert_close(codes, codes.round(), rtol=0, atol=1e-9)
    assert codes.min() >= q.qn - 1e-9 and codes.max() <= q.qp + 1e-9
    torch.testing.assert_close(y, torch.round(torch.clamp(x / 0.3, q.qn, q.qp)) * 0.3)


@pytest.mark.parametrize("per_channel", [False, True])
def test_gradients_equal_the_lsq_formula(per_channel):
    torch.manual_seed(0)
    x = (torch.randn(4, 3, 5, 5, dtype=torch.float64) * 2).requires_grad_()
    q = LSQ(4, signed=True, channels=4 if per_channel else None, dim=4).double()
    with torch.no_grad():
        q.step.copy_(torch.rand(q.step.shape, dtype=torch.float64) * 0.3 + 0.2)
    q.initialized = True
    g = torch.randn_like(x)
    (q(x) * g).sum().backward()

    a = q.step.detach()
    v = x.detach() / a
    inside = (v >= -8) & (v <= 7)
    expect_x = g * inside.double()
    local = torch.where(inside, torch.round(v) - v, torch.clamp(v, -8, 7).round())
    n_per_step = x.numel() // a.numel()
    scale = 1 / math.sqrt(n_per_step * 7)
    expect_a = (g * local).sum(dim=(1, 2, 3), keepdim=True) if per_channel else (g * local).sum()
    torch.testing.assert_close(x.grad, expect_x)
    torch.testing.assert_close(q.step.grad, expect_a * scale)


def test_input_gradient_includes_both_ends_of_the_range():
    # v = x / a exactly Qn or Qp is inside [Qn, Qp] (gradient 1); the next float beyond is not.
    q = LSQ(4, signed=True)
    with torch.no_grad():
        q.step.fill_(0.5)
    q.initialized = True
    x = torch.tensor([-4.0000005, -4.0, 3.5, 3.5000002], requires_grad=True)
    q(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]


def test_disabled_is_identity_and_codes():
    q = LSQ(4)
    q.enabled = False
    x = torch.randn(10)
    assert torch.equal(q(x), x)
    with torch.no_grad():
        q.step.fill_(0.5)
    assert q.codes(torch.tensor([0.26, -10.0, 10.0])).tolist() == [1, -8, 7]
