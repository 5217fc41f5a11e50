import pytest
import torch

from binarydm.quant.lmb import LMB


def _lmb(w, n_bases):
    q = LMB(w.shape[0], w.dim(), n_bases=n_bases).double()
    q.initialize_(w)
    return q


def test_initialisation_is_the_mean_absolute_value_per_output_channel():
    w = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    q = _lmb(w, 2)
    s1 = w.abs().mean(dim=(1, 2, 3), keepdim=True)
    s2 = (w - s1 * torch.where(w >= 0, 1.0, -1.0)).abs().mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(q.s1.data, s1, rtol=0, atol=0)
    torch.testing.assert_close(q.s2.data, s2, rtol=0, atol=0)


@pytest.mark.parametrize("n_bases", [1, 2])
def test_outputs_lie_in_the_allowed_set_per_channel(n_bases):
    w = torch.randn(5, 7, dtype=torch.float64)
    q = _lmb(w, n_bases)
    with torch.no_grad():
        q.s1.uniform_(0.1, 1.0)
        q.s2.uniform_(0.05, 0.5)
        y = q(w)
    for c in range(5):
        s1, s2 = q.s1[c].item(), q.s2[c].item()
        allowed = {s1, -s1} if n_bases == 1 else {s1 + s2, s1 - s2, -s1 + s2, -s1 - s2}
        for v in y[c].tolist():
            assert min(abs(v - a) for a in allowed) < 1e-12


def test_exact_zero_weight_binarizes_to_plus():
    w = torch.zeros(1, 4, dtype=torch.float64)
    q = LMB(1, 2, n_bases=2).double()
    with torch.no_grad():
        q.s1.fill_(0.5)
        q.s2.fill_(0.25)
    q.initialized = True
    # sign(0) = +1, residual 0 - 0.5 < 0 -> second sign -1.
    assert q(w).tolist() == [[0.25] * 4]


def test_gradients_equal_the_clipped_ste_formula():
    torch.manual_seed(0)
    w = (torch.randn(3, 4, 2, 2, dtype=torch.float64) * 1.2).requires_grad_()
    q = _lmb(w.detach(), 2)
    with torch.no_grad():  # scales away from their init so the residual term is not trivial
        q.s1.mul_(1.3)
        q.s2.mul_(0.7)
    g = torch.randn_like(w)
    (q(w) * g).sum().backward()

    W, s1, s2 = w.detach(), q.s1.detach(), q.s2.detach()
    b1 = torch.where(W >= 0, 1.0, -1.0).double()
    r = W - s1 * b1
    b2 = torch.where(r >= 0, 1.0, -1.0).double()
    c1, c2 = (W.abs() <= 1).double(), (r.abs() <= 1).double()
    dims = (1, 2, 3)
    grad_s1 = (g * b1).sum(dims, keepdim=True) - s2 * (g * c2 * b1).sum(dims, keepdim=True)
    grad_s2 = (g * b2).sum(dims, keepdim=True)
    grad_w = g * s1 * c1 + g * s2 * c2 * (1 - s1 * c1)
    torch.testing.assert_close(q.s1.grad, grad_s1)
    torch.testing.assert_close(q.s2.grad, grad_s2)
    torch.testing.assert_close(w.grad, grad_w)


def test_single_basis_gradients():
    w = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    q = _lmb(w.detach(), 1)
    g = torch.randn_like(w)
    (q(w) * g).sum().backward()
    b1 = torch.where(w.detach() >= 0, 1.0, -1.0).double()
    torch.testing.assert_close(q.s1.grad, (g * b1).sum(1, keepdim=True))
    torch.testing.assert_close(w.grad, g * q.s1.detach() * (w.detach().abs() <= 1).double())
    assert q.s2.grad is None


def test_ebb_transition_drops_the_second_basis_and_survives_a_reload():
    w = torch.randn(4, 6)
    q = LMB(4, 2, n_bases=2)
    q.initialize_(w)
    assert q.bits == 2 and q.ebb_penalty().item() == pytest.approx(q.s2.mean().item())
    q.drop_second_basis_()
    torch.testing.assert_close(q(w), q.s1 * torch.where(w >= 0, 1.0, -1.0))
    assert q.bits == 1 and q.ebb_penalty().item() == 0.0
    fresh = LMB(4, 2, n_bases=2)
    fresh.load_state_dict(q.state_dict())
    assert fresh.n_bases == 1 and fresh.initialized and not fresh.s2.requires_grad
    assert torch.equal(fresh(w), q(w))


def test_forward_before_initialisation_is_an_error():
    q = LMB(2, 2)
    with pytest.raises(RuntimeError, match="never initialised"):
        q(torch.randn(2, 3))
