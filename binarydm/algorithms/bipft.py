"""BiPFT (Xing et al., "BiPFT: Binary Pre-trained Foundation Transformer with Low-rank Estimation of
Binarization Residual Polynomials", AAAI 2024). Public code: Xingrun-Xing/BiPFT,
``binary_finetune/utils_quant.py`` (``BwnQuantizer``, ``ElasticQuantBinarizerSigned``).

Weights (BWN):   W_b = mean|W| * sign(W - mean(W)), mean(W) over the whole tensor (``BwnQuantizer``'s
                 ``input.mean()``), mean|W| per output channel (its per-row branch), both detached;
                 backward: identity STE without the scale, dW = g (``grad_input = grad_output``).
Activations:     x_b = a * sign(x - beta),  beta a learnable shift per input channel (init 0, sized
                 from the calibration batch; the code's ``LearnableBias`` adds -beta), a a learnable
                 scalar (init 2 mean|x|, LSQ's init at Qp = 1, as the code), floored at 1e-5 as the code;
                 backward (LSQ at 1 bit): dx = g * 1{|x - beta| <= a}, dbeta = -sum of the same,
                 da = sum g * sign(x - beta) / sqrt(N).

Attention (:class:`BiPFTSelfAttention`, for transformers built from it). Binarizing Q, K, V leaves
residuals R = X - B(X); BiPFT estimates the residual polynomial of the attention with rank-1 terms:

    scores  = (B(Q) B(K)^T + q_m k_p^T + q_p k_m^T + q_p k_p^T) / sqrt(d)
    context = B(P) B(V) + B(P) v_p,      P = softmax(scores)

each of q_m, q_p, k_m, k_p, v_p a Linear(hidden, 1) per head of the attention INPUT (rank 1 in the
sequence), v_p broadcast over the head dimension. B(P) is BiBERT's Boolean attention: H(P - 1/L)
(1 for a key weighted above the uniform 1/L, else 0), with a straight-through gradient.

Causal attention (``causal=True``, for language models): the scores of future keys (j > i) are -inf
before the softmax, so row i spreads over n_i = i + 1 visible keys; the Boolean threshold becomes
the uniform weight of that row, B(P)_ij = H(P_ij - 1/n_i) for j <= i, and masked entries stay 0.

What is not applied to diffusers: diffusers ``Attention`` modules keep their own processor
(``QuantAttnProcessor``, LSQ on q, k, P, v); the rank-1 estimators need extra parameters inside the
attention computation, which only :class:`BiPFTSelfAttention` has. ``weight='bipft'`` /
``act='bipft'`` binarize the Linear and Conv2d layers of any model, diffusers UNets included.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from binarydm.quant.base import Quantizer, observing
from binarydm.quant.convert import calibrate_ as _calibrate_layers
from binarydm.quant.registry import LayerSpec, register_act, register_weight
from binarydm.quant.ste import grad_scale, scaled_sign_ste, sign_ste

from ._common import (
    Affine, ChannelSized, ParameterFree, channel_axis, empty_param, out_channel_dims, view_along,
)


SCALE_FLOOR = 1e-5  # ElasticQuantBinarizerSigned's eps: a <= eps is used as eps


class BWNWeight(ParameterFree):
    """mean|W| * sign(W - mean(W)) (statistics detached); identity STE without the scale."""

    @property
    def bits(self) -> int:
        return 1

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        scale = w.abs().mean(dim=out_channel_dims(w), keepdim=True)
        return scaled_sign_ste(w - w.mean().detach(), scale, "identity")


class BiPFTAct(ChannelSized):
    """a * sign(x - beta_c): learnable per-channel shift and scalar scale; LSQ's 1-bit gradient."""

    channel_params = ("beta",)

    def __init__(self, channels: Optional[int] = None) -> None:
        super().__init__()
        self.beta = nn.Parameter(torch.zeros(channels)) if channels is not None else empty_param()
        self.scale = nn.Parameter(torch.ones(()))

    @property
    def bits(self) -> int:
        return 1

    def _initialize(self, x: torch.Tensor) -> None:
        channels = x.shape[channel_axis(x)]
        if self.beta.numel() != channels:
            self._size_channels(channels, 0.0)
        else:
            self.beta.zero_()
        self.scale.fill_(float(2 * x.abs().mean().clamp_min(1e-8)))

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        beta = view_along(self.beta.to(x.dtype), x, channel_axis(x))
        scale = self.scale.to(x.dtype)
        scale = torch.where(scale > SCALE_FLOOR, scale, torch.full_like(scale, SCALE_FLOOR))
        a = grad_scale(scale, 1.0 / math.sqrt(x.numel()))
        # a * sign(u / a) with a detached inside: value a sign(u); du = g a (1/a) 1{|u/a| <= 1} = g 1{|u| <= a}.
        return a * sign_ste((x - beta) / scale.detach(), "clipped")


def _two(u: torch.Tensor) -> torch.Tensor:
    return torch.full_like(u, 2.0)


def heaviside_ste(u: torch.Tensor) -> torch.Tensor:
    """Forward H(u) = (sign(u) + 1) / 2, exactly 0 or 1 (H(0) = 1); backward identity (sign's surrogate 2, halved)."""
    return (sign_ste(u, _two) + 1) / 2


class BiPFTSelfAttention(nn.Module):
    """Multi-head self-attention on [B, L, hidden] with BiPFT's binarized operands and rank-1 estimators.

    to_q, to_k, to_v, to_out are ordinary nn.Linear layers: ``binarize_`` binarizes them like any other.
    The Q, K, V binarizers are initialised by :func:`calibrate_`; ``binarize_operands=False`` gives the
    full-precision attention (the teacher's, with the estimators unused). ``causal=True`` lets each
    position attend only to itself and earlier positions (module docstring).
    """

    def __init__(self, hidden: int, heads: int, causal: bool = False) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden={hidden} is not divisible by heads={heads}")
        self.heads, self.head_dim = heads, hidden // heads
        self.causal = causal
        self.to_q, self.to_k, self.to_v = (nn.Linear(hidden, hidden) for _ in range(3))
        self.to_out = nn.Linear(hidden, hidden)
        self.q_quantizer, self.k_quantizer, self.v_quantizer = (BiPFTAct(hidden) for _ in range(3))
        # Rank-1 estimators of the binarization residuals, one output per head: full precision (not
        # nn.Linear, so binarize_ leaves them alone). Zero-initialised: the binarized attention
        # starts from B(Q)B(K)^T and the terms grow only as training needs them.
        self.q_m, self.q_p, self.k_m, self.k_p, self.v_p = (Affine(hidden, heads) for _ in range(5))
        for lin in (self.q_m, self.q_p, self.k_m, self.k_p, self.v_p):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.binarize_operands = True

    def quantizers(self) -> tuple[Quantizer, Quantizer, Quantizer]:
        return self.q_quantizer, self.k_quantizer, self.v_quantizer

    def matmuls(self, hidden_states: torch.Tensor) -> list[tuple[str, int, int, int]]:
        """The activation products of one forward, for ``binarydm.summary``: (label, MACs over the
        batch, bits of one operand, bits of the other). Causal masking still computes every score."""
        b, length, hidden = hidden_states.shape
        heads, on = self.heads, self.binarize_operands
        bq, bk, bv = (q.bits if on and q.enabled else 32 for q in self.quantizers())
        bp = 1 if on else 32  # B(P) is Boolean while the operands are binarized
        products = [("qk", b * length * length * hidden, bq, bk), ("pv", b * length * length * hidden, bp, bv)]
        if on:
            products += [
                ("estimators", 5 * b * length * hidden * heads, 32, 32),  # q_m, q_p, k_m, k_p, v_p of the input
                ("qk_rank1", 3 * b * length * length * heads, 32, 32),  # q_m k_p^T + q_p k_m^T + q_p k_p^T
                ("pv_rank1", b * length * length * heads, bp, 32),  # B(P) v_p
            ]
        return products

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, length, _ = x.shape
        return x.view(b, length, self.heads, -1).transpose(1, 2)  # [B, heads, L, d or 1]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        b, length, _ = hidden_states.shape
        q, k, v = self.to_q(hidden_states), self.to_k(hidden_states), self.to_v(hidden_states)
        on = self.binarize_operands
        if on:
            q, k, v = self.q_quantizer(q), self.k_quantizer(k), self.v_quantizer(v)
        q, k, v = self._split(q), self._split(k), self._split(v)
        scores = q @ k.transpose(-1, -2)
        if on:
            estimators = (self.q_m, self.q_p, self.k_m, self.k_p, self.v_p)
            qm, qp, km, kp, vp = (self._split(e(hidden_states)) for e in estimators)
            scores = scores + qm @ kp.transpose(-1, -2) + qp @ km.transpose(-1, -2) + qp @ kp.transpose(-1, -2)
        scores = scores / math.sqrt(self.head_dim)
        if self.causal:  # key j > query i: -inf, so softmax gives it exactly 0
            future = torch.ones(length, length, dtype=torch.bool, device=scores.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        probs = scores.softmax(dim=-1)
        if on and not any(qz.observing for qz in self.quantizers()):
            # Threshold: the uniform weight over each row's visible keys, 1/L, or 1/(i + 1) for causal
            # row i. Masked keys have P = 0 < 1/(i + 1), so they stay 0 (and softmax's backward gives
            # them no gradient, since dP_ij/dscores = 0 where P_ij = 0).
            visible = (torch.arange(1, length + 1, device=probs.device, dtype=probs.dtype).unsqueeze(-1)
                       if self.causal else length)
            probs = heaviside_ste(probs - 1.0 / visible)
            context = probs @ v + probs @ vp
        else:
            context = probs @ v
        return self.to_out(context.transpose(1, 2).reshape(b, length, -1))


@torch.no_grad()
def calibrate_(model: nn.Module, *args, **kwargs) -> nn.Module:
    """``binarydm.calibrate_`` plus the Q, K, V binarizers of every BiPFTSelfAttention."""
    extra = [q for m in model.modules() if isinstance(m, BiPFTSelfAttention) for q in m.quantizers()]
    with observing(extra):
        _calibrate_layers(model, *args, **kwargs)
    return model


@register_weight("bipft")
def _weight(layer, spec: LayerSpec) -> BWNWeight:
    return BWNWeight()


@register_act("bipft", one_bit=True)
def _act(spec: LayerSpec) -> BiPFTAct:
    return BiPFTAct()
