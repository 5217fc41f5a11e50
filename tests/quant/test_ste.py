import torch

from binarydm.quant.ste import binary_sign, get_surrogate, grad_scale, round_ste, sign_ste, window_grad
import pytest


def test_binary_sign_of_zero_is_plus_one_and_values_are_binary():
    x = torch.tensor([-2.0, -1e-30, 0.0, -0.0, 1e-30, 3.0])
    assert binary_sign(x).tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0, 1.0]
    y = binary_sign(torch.randn(1000, dtype=torch.float64))
    assert y.dtype == torch.float64 and set(y.unique().tolist()) <= {-1.0, 1.0}


@pytest.mark.parametrize(
    "name, expected",
    [
        ("clipped", lambda x: (x.abs() <= 1).double()),
        ("identity", lambda x: torch.ones_like(x)),
        ("approx_sign", lambda x: torch.where(x.abs() <= 1, 2 - 2 * x.abs(), torch.zeros_like(x))),
    ],
)
def test_ste_gradient_equals_the_analytic_surrogate(name, expected):
    x = torch.linspace(-2, 2, 41, dtype=torch.float64).requires_grad_()
    g = torch.randn(41, dtype=torch.float64)
    y = sign_ste(x, name)
    assert torch.equal(y, binary_sign(x.detach()))
    (y * g).sum().backward()
    torch.testing.assert_close(x.grad, g * expected(x.detach()), rtol=0, atol=0)


def test_ste_does_not_modify_the_incoming_gradient():
    x = torch.tensor([0.5, 2.0], requires_grad=True)
    g = torch.tensor([1.0, 1.0])
    y = sign_ste(x)
    y.backward(g)
    assert g.tolist() == [1.0, 1.0] and x.grad.tolist() == [1.0, 0.0]


def test_custom_surrogate_callable_and_unknown_name():
    x = torch.tensor([0.3], requires_grad=True)
    sign_ste(x, lambda v: 7 * torch.ones_like(v)).sum().backward()
    assert x.grad.item() == 7.0
    with pytest.raises(ValueError, match="valid names"):
        get_surrogate("nope")


def test_round_ste_and_grad_scale():
    x = torch.tensor([0.4, 1.5, 2.5, -1.6], requires_grad=True)
    y = round_ste(x)
    assert y.tolist() == [0.0, 2.0, 2.0, -2.0]  # half to even, as torch.round
    y.sum().backward()
    assert x.grad.tolist() == [1.0] * 4
    z = torch.tensor([3.0], requires_grad=True)
    out = grad_scale(z, 0.25)
    assert out.item() == 3.0
    out.backward()
    assert z.grad.item() == 0.25


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_window_grad_is_the_closed_interval_in_every_dtype(dtype):
    lo, hi = torch.tensor(-8.0, dtype=dtype), torch.tensor(7.0, dtype=dtype)
    below = torch.nextafter(lo, torch.tensor(-float("inf"), dtype=dtype))
    above = torch.nextafter(hi, torch.tensor(float("inf"), dtype=dtype))
    inner = torch.nextafter(lo, hi)
    x = torch.stack([below, lo, inner, torch.tensor(0.0, dtype=dtype), hi, above])
    g = torch.arange(1, 7, dtype=dtype)
    assert window_grad(g, x, -8, 7).tolist() == [0.0, 2.0, 3.0, 4.0, 5.0, 0.0]


def test_clipped_ste_passes_the_gradient_at_exactly_plus_and_minus_one():
    x = torch.tensor([-1.0000001, -1.0, 1.0, 1.0000001], requires_grad=True)
    sign_ste(x, "clipped").sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]


def test_scaled_sign_ste_keeps_the_scale_out_of_the_gradient():
    from binarydm.quant.ste import scaled_sign_ste

    x = torch.tensor([-2.0, -0.5, 0.0, 0.7, 1.0, 3.0], requires_grad=True)
    scale = torch.tensor(0.25, requires_grad=True)
    y = scaled_sign_ste(x, scale)
    assert y.tolist() == [-0.25, -0.25, 0.25, 0.25, 0.25, 0.25]  # sign(0) = +1
    g = torch.arange(1.0, 7.0)
    y.backward(g)
    assert x.grad.tolist() == [0.0, 2.0, 3.0, 4.0, 5.0, 0.0]  # g * 1{|x| <= 1}, no 0.25
    assert scale.grad is None  # a statistic: detached
