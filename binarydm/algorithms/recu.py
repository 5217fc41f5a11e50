"""ReCU (Xu et al., "ReCU: Reviving the Dead Weights in Binary Neural Networks", ICCV 2021).

Weights, per output channel (mean and std over the channel's filter, std with Bessel's correction):

    w1  = (W - mean) * 2 sqrt(2) / std                         (standardisation)
    Q   = -E|w1| * ln(2 - 2 tau)                               (the tau-quantile of a Laplace fit)
    W_b = alpha * sign(clamp(w1, -Q, Q))

    backward: identity STE through sign, the clamp's own gradient 1{|w1| <= Q} (Q detached: a
    threshold, not a trained quantity), and autograd through the standardisation.

Activations (per sample, variance over every non-batch dimension, with Bessel's correction):

    a_n = a / sqrt(var(a) + 1e-5);  a_b = sign(a_n)  (= sign(a): the forward value is the same),
    backward: d a_b / d a_n = max(0, 2 - 2|a_n|) (ApproxSign), then autograd through a_n.

alpha: one learnable scale per output channel, init U[0, 1) as in the paper. The paper multiplies
the conv OUTPUT by alpha; because a convolution is linear in each output channel's filter,
alpha * conv(x, B) = conv(x, alpha * B), so alpha lives in the weight quantizer (the bias is added
after either way), and no output hook is needed.

tau rises from 0.85 to 0.99 over training: :func:`binarydm.algorithms.schedule.recu_tau`, set by
:meth:`ReCUWeight.set_progress` (saved as a buffer).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from binarydm.quant.base import Quantizer
from binarydm.quant.registry import LayerSpec, register_act, register_weight
from binarydm.quant.ste import sign_ste

from ._common import ParameterFree, check_one_bit, out_channel_dims
from .schedule import recu_tau

STANDARD_GAIN = 2.0 * math.sqrt(2.0)


def standardize(w: torch.Tensor) -> torch.Tensor:
    """w1 = (W - mean) * 2 sqrt(2) / std per output channel."""
    dims = out_channel_dims(w)
    centered = w - w.mean(dim=dims, keepdim=True)
    return centered * STANDARD_GAIN / centered.std(dim=dims, keepdim=True)


def clamp_threshold(w1: torch.Tensor, tau) -> torch.Tensor:
    """Q = -E|w1| * ln(2 - 2 tau) per output channel (detached); tau a float or a 0-d tensor."""
    tau = torch.as_tensor(tau, dtype=w1.dtype, device=w1.device)
    return (-w1.abs().mean(dim=out_channel_dims(w1), keepdim=True) * torch.log(2.0 - 2.0 * tau)).detach()


def normalize_activation(a: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """a / sqrt(var(a) + eps), the variance per sample over every non-batch dimension."""
    return a / torch.sqrt(a.var(dim=tuple(range(1, a.dim())), keepdim=True) + eps)


class ReCUWeight(Quantizer):
    """alpha * sign(clamp(w1, -Q, Q)) with the scheduled tau (see the module docstring)."""

    def __init__(self, out_channels: int, weight_dim: int, tau: float = 0.85) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros((out_channels,) + (1,) * (weight_dim - 1)))
        self.register_buffer("tau", torch.tensor(float(tau)))

    @property
    def bits(self) -> int:
        return 1

    def _initialize(self, w: torch.Tensor) -> None:
        self.alpha.copy_(torch.rand_like(self.alpha))

    def set_progress(self, step: int, total_steps: int) -> None:
        self.tau.fill_(recu_tau(step, total_steps))

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        w1 = standardize(w)
        q = clamp_threshold(w1, self.tau)
        return self.alpha * sign_ste(torch.clamp(w1, -q, q), "identity")


class ReCUAct(ParameterFree):
    """sign(a / sqrt(var(a) + 1e-5)) with ApproxSign on the normalised input; no parameters."""

    @property
    def bits(self) -> int:
        return 1

    def quantize(self, a: torch.Tensor) -> torch.Tensor:
        return sign_ste(normalize_activation(a), "approx_sign")


@register_weight("recu")
def _weight(layer, spec: LayerSpec) -> ReCUWeight:
    return ReCUWeight(layer.weight.shape[0], layer.weight.dim())


@register_act("recu")
def _act(spec: LayerSpec) -> ReCUAct:
    check_one_bit(spec, "recu")
    return ReCUAct()
