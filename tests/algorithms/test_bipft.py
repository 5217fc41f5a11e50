import math

import torch
from torch import nn

from binarydm.algorithms import preset
from binarydm.algorithms.bipft import BiPFTAct, BiPFTSelfAttention, BWNWeight, calibrate_, heaviside_ste
from binarydm.quant.layers import QuantLinear

from .helpers import TinyResNet, check_conv_arguments, check_round_trip, leaf, resnet_input, surrogate_ref, upstream, vjp

CONFIG = preset("bipft")


class TinyBiPFT(nn.Module):
    """A one-block pre-norm transformer built on BiPFTSelfAttention."""

    def __init__(self, dim=16, heads=2, causal=False):
        super().__init__()
        self.embed = nn.Linear(6, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = BiPFTSelfAttention(dim, heads, causal=causal)
        self.ff = nn.Sequential(nn.Linear(dim, 32), nn.GELU(), nn.Linear(32, dim))
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        h = self.embed(x)
        h = h + self.attn(self.norm1(h))
        h = h + self.ff(self.norm2(h))
        return self.head(h)


def tokens(seed=0):
    return torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(seed))


def test_bwn_weight_matches_the_public_bwn_quantizer():
    """BwnQuantizer (per-row branch): (W - W.mean()).sign() * mean|W| per row; backward grad_input = g."""
    w = leaf(5, 3, 3, 3)
    y = BWNWeight()(w)
    wd = w.detach()
    scale = wd.abs().flatten(1).mean(1).view(-1, 1, 1, 1)
    torch.testing.assert_close(y.detach(), (wd - wd.mean()).sign() * scale, rtol=0, atol=0)
    g = upstream(w.shape)
    (dw,) = vjp(y, w, g)
    torch.testing.assert_close(dw, g, rtol=0, atol=0)


def elastic_binarizer(x, alpha):
    """ElasticQuantBinarizerSigned at num_bits = 1, written from its forward and backward."""
    eps = 1e-5
    a = torch.where(alpha > eps, alpha, torch.tensor(eps))
    q = x / a
    middle = 1.0 - (q < -1).float() - (q > 1).float()
    grad_scale = 1.0 / math.sqrt(x.numel())  # Qp = 1
    value = x.detach().sign() * a.detach()
    # backward: grad_input = middle * g;  grad_alpha = sum(sign(x) * g * grad_scale)
    return surrogate_ref(x, value, middle) + (a - a.detach()) * (x.detach().sign() * grad_scale)


def test_activation_matches_the_public_elastic_binarizer():
    x = leaf(3, 4, 5, 5, scale=2.0)
    q = BiPFTAct().initialize_(x)
    torch.testing.assert_close(q.scale.detach(), 2 * x.detach().abs().mean(), rtol=1e-6, atol=0)  # LSQ init, Qp = 1
    with torch.no_grad():
        q.beta.copy_(torch.tensor([0.3, -0.2, 0.0, 0.5]))
        q.scale.mul_(0.5)  # some |x - beta| > a: the window is exercised
    y = q(x)
    # The code's LearnableBias adds its bias: bias = -beta.
    bias = (-q.beta.detach()).view(1, -1, 1, 1).clone().requires_grad_(True)
    x2, alpha = x.detach().clone().requires_grad_(True), q.scale.detach().clone().requires_grad_(True)
    ref = elastic_binarizer(x2 + bias, alpha)
    torch.testing.assert_close(y, ref, rtol=1e-6, atol=1e-6)
    g = upstream(x.shape)
    dx, dbeta, dscale = vjp(y, (x, q.beta, q.scale), g)
    rx, rbias, ralpha = vjp(ref, (x2, bias, alpha), g)
    assert ((x.detach() + bias.detach()).abs() > q.scale.detach()).any()
    torch.testing.assert_close(dx, rx, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dbeta, -rbias.sum(dim=(0, 2, 3)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dscale, ralpha, rtol=1e-5, atol=1e-6)


def test_heaviside_ste():
    u = leaf(10)
    y = heaviside_ste(u)
    assert torch.equal(y.detach(), (u.detach() >= 0).float())
    assert heaviside_ste(torch.zeros(1)).item() == 1.0
    g = upstream(u.shape)
    (du,) = vjp(y, u, g)
    torch.testing.assert_close(du, g)


def _attention_reference(attn, h, causal=False):
    """The spec's formula written out, head by head (operands already binarized by the module's quantizers).

    causal: row i sees keys 0..i only; its Boolean threshold is the uniform weight 1/(i + 1) of those keys.
    """
    b, length, _ = h.shape
    visible = torch.ones(length, length).tril().bool() if causal else torch.ones(length, length).bool()
    q, k, v = attn.q_quantizer(attn.to_q(h)), attn.k_quantizer(attn.to_k(h)), attn.v_quantizer(attn.to_v(h))
    out = torch.zeros(b, length, attn.heads * attn.head_dim)
    d = attn.head_dim
    for i in range(attn.heads):
        qi, ki, vi = (t[..., i * d:(i + 1) * d] for t in (q, k, v))
        qm, qp, km, kp, vp = (e(h)[..., i:i + 1] for e in (attn.q_m, attn.q_p, attn.k_m, attn.k_p, attn.v_p))
        scores = qi @ ki.transpose(1, 2) + qm @ kp.transpose(1, 2) + qp @ km.transpose(1, 2) + qp @ kp.transpose(1, 2)
        p = torch.softmax((scores / math.sqrt(d)).masked_fill(~visible, float("-inf")), dim=-1)
        bp = ((p >= 1.0 / visible.sum(-1, keepdim=True)) & visible).float()
        out[..., i * d:(i + 1) * d] = bp @ vi + bp @ vp
    return attn.to_out(out)


def _calibrated_attention(causal: bool = False):
    """The attention of a calibrated TinyBiPFT with non-zero estimators, and its input."""
    model = TinyBiPFT(causal=causal)
    x = tokens()
    calibrate_(model, x)
    attn = model.attn
    with torch.no_grad():
        for e in (attn.q_m, attn.q_p, attn.k_m, attn.k_p, attn.v_p):
            e.weight.normal_(0, 0.3)
        h = model.norm1(model.embed(x))
    return attn, h


def test_attention_matches_the_formula_and_estimators_are_rank_one():
    attn, h = _calibrated_attention()
    with torch.no_grad():
        torch.testing.assert_close(attn(h), _attention_reference(attn, h), rtol=1e-5, atol=1e-5)
        for t in (attn.q_quantizer(attn.to_q(h)), attn.v_quantizer(attn.to_v(h))):
            assert (t.abs() - t.abs()[0, 0, 0]).abs().max() < 1e-6  # a * sign: one magnitude
        assert attn.q_m(h).shape == (2, 5, 2)  # one rank-1 estimator output per head and token
    y = attn(h.requires_grad_(True))
    y.sum().backward()
    assert all(e.weight.grad is not None and e.weight.grad.abs().sum() > 0 for e in (attn.q_m, attn.k_p, attn.v_p))


def test_causal_attention_matches_the_formula():
    attn, h = _calibrated_attention(causal=True)
    with torch.no_grad():
        torch.testing.assert_close(attn(h), _attention_reference(attn, h, causal=True), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(attn(h), _attention_reference(attn, h, causal=False), rtol=1e-3, atol=1e-3)


def test_causal_attention_ignores_later_tokens():
    """Output i of a causal block must not depend on tokens after i, in the binarized and the FP attention."""
    x = tokens()
    later = x.clone()
    later[:, 3:] = torch.randn(2, 2, 6, generator=torch.Generator().manual_seed(5))
    for binarized in (True, False):
        model = TinyBiPFT(causal=True)
        calibrate_(model, x)
        model.attn.binarize_operands = binarized
        with torch.no_grad():
            for e in (model.attn.q_m, model.attn.q_p, model.attn.k_m, model.attn.k_p, model.attn.v_p):
                e.weight.normal_(0, 0.3)
            y, y_later = model(x), model(later)
        torch.testing.assert_close(y[:, :3], y_later[:, :3], rtol=0, atol=0)
        assert (y[:, 3:] - y_later[:, 3:]).abs().max() > 1e-3  # the later positions do see the change
        xg = x.clone().requires_grad_(True)  # nor does any gradient flow from output i to later tokens
        model(xg)[:, :3].sum().backward()
        assert xg.grad[:, 3:].abs().max() == 0 and xg.grad[:, :3].abs().max() > 0
    # without the mask the earlier positions change too (the test can fail)
    model = TinyBiPFT(causal=False)
    calibrate_(model, x)
    with torch.no_grad():
        assert (model(x)[:, :3] - model(later)[:, :3]).abs().max() > 1e-4


def test_binarize_and_round_trip_on_a_bipft_transformer():
    def make():
        return TinyBiPFT()

    fresh = check_round_trip(CONFIG, make, (tokens(),), calibrate=calibrate_)
    assert isinstance(fresh.attn.to_q, QuantLinear) and isinstance(fresh.ff[0].act_quantizer, BiPFTAct)
    # the rank-1 estimators stay full precision (binarize_ swaps only nn.Linear / nn.Conv2d)
    assert not any(isinstance(e, QuantLinear) for e in (fresh.attn.q_m, fresh.attn.k_p, fresh.attn.v_p))


def test_conv_arguments_honoured():
    check_conv_arguments(CONFIG)


def test_state_dict_round_trip_resnet():
    check_round_trip(CONFIG, TinyResNet, (resnet_input(),))
