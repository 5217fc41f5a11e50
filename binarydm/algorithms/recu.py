"""ReCU (Xu et al., "ReCU: Reviving the Dead Weights in Binary Neural Networks", ICCV 2021).

Weights, as the authors' code and BiBench compute them (mean and variance over each output channel's
filter, the variance with Bessel's correction):

    w1  = (W - mean) / (sqrt(var + 1e-5) / (2 sqrt(2)))        (standardisation; the 1e-5 keeps an
                                                                 all-zero filter finite)
    Q   = -E|w1| * ln(2 - 2 tau),  E|w1| over the WHOLE tensor   (the tau-quantile of a Laplace fit)
    W_b = alpha * sign(clamp(w1, -Q, Q))

    backward: identity STE through sign, the clamp's own gradient 1{|w1| <= Q} (Q detached: the
    original takes it with ``.item()``), and autograd through the standardisation.

Activations (per sample over C, H, W for a feature map; per token over C for [..., C] inputs, as
BiBench's ReCULinear):

    training:  a_n = a / sqrt(var(a) + 1e-5);  eval: a_n = a  (the originals normalise only in training;
               sign(a_n) = sign(a), so only the gradient and the cost differ)
    a_b = sign(a_n),  backward: d a_b / d a_n = max(0, 2 - 2|a_n|) (ApproxSign), then autograd through a_n.

alpha: one learnable scale per output channel, init U[0, 1) as in the paper. The code multiplies the
conv OUTPUT by alpha; a convolution is linear in each output channel's filter, so
alpha * conv(x, B) = conv(x, alpha * B), and alpha lives in the weight quantizer. The bias is added
after alpha (as BiBench's ReCULinear; its ReCUConv2d also scales the bias, which its bias-free
ResNets never have).

tau rises from ``tau_start`` (0.85) to ``tau_end`` (0.99) over training:
:func:`binarydm.algorithms.schedule.recu_tau`, set by :meth:`ReCUWeight.set_progress` (saved as a
buffer); ``recu(tau_start=0.9, tau_end=0.9)`` fixes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from binarydm.quant.base import Quantizer
from binarydm.quant.registry import LayerSpec, register_act, register_weight
from binarydm.quant.ste import sign_ste

from ._common import ParameterFree, out_channel_dims
from .schedule import recu_tau

STANDARD_GAIN = 2.0 * math.sqrt(2.0)
EPS = 1e-5


@dataclass(frozen=True)
class ReCUOptions:
    """tau's schedule: tau_start at the beginning of training, tau_end at its end (0 < tau < 1)."""

    tau_start: float = 0.85
    tau_end: float = 0.99

    def __post_init__(self) -> None:
        if not (0.0 < self.tau_start < 1.0 and 0.0 < self.tau_end < 1.0):
            raise ValueError(f"ReCU's tau must lie in (0, 1), got {self.tau_start}, {self.tau_end}")


def standardize(w: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """w1 = (W - mean) / (sqrt(var + eps) / (2 sqrt(2))) per output channel."""
    dims = out_channel_dims(w)
    centered = w - w.mean(dim=dims, keepdim=True)
    return centered * STANDARD_GAIN / torch.sqrt(centered.var(dim=dims, keepdim=True) + eps)


def clamp_threshold(w1: torch.Tensor, tau) -> torch.Tensor:
    """Q = -E|w1| * ln(2 - 2 tau), E over the whole tensor (detached 0-d tensor)."""
    tau = torch.as_tensor(tau, dtype=w1.dtype, device=w1.device)
    return (-w1.abs().mean() * torch.log(2.0 - 2.0 * tau)).detach()


def activation_dims(a: torch.Tensor) -> tuple[int, ...]:
    """C, H, W of a feature map [B, C, H, W]; the channels of a token input [..., C]."""
    return (1, 2, 3) if a.dim() == 4 else (a.dim() - 1,)


def normalize_activation(a: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """a / sqrt(var(a) + eps), the variance per sample (feature maps) or per token."""
    return a / torch.sqrt(a.var(dim=activation_dims(a), keepdim=True) + eps)


class ReCUWeight(Quantizer):
    """alpha * sign(clamp(w1, -Q, Q)) with the scheduled tau (see the module docstring)."""

    def __init__(self, out_channels: int, weight_dim: int, tau: float = 0.85, tau_end: float = 0.99) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros((out_channels,) + (1,) * (weight_dim - 1)))
        self.register_buffer("tau", torch.tensor(float(tau)))
        self.tau_start, self.tau_end = float(tau), float(tau_end)

    @property
    def bits(self) -> int:
        return 1

    def _initialize(self, w: torch.Tensor) -> None:
        self.alpha.copy_(torch.rand_like(self.alpha))

    def set_progress(self, step: int, total_steps: int) -> None:
        self.tau.fill_(recu_tau(step, total_steps, self.tau_start, self.tau_end))

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        w1 = standardize(w)
        q = clamp_threshold(w1, self.tau)
        return self.alpha * sign_ste(torch.clamp(w1, -q, q), "identity")


class ReCUAct(ParameterFree):
    """sign(a_n) with ApproxSign on a_n; a_n = a / sqrt(var(a) + 1e-5) in training, a in eval."""

    @property
    def bits(self) -> int:
        return 1

    def quantize(self, a: torch.Tensor) -> torch.Tensor:
        return sign_ste(normalize_activation(a) if self.training else a, "approx_sign")


@register_weight("recu", options=ReCUOptions)
def _weight(layer, spec: LayerSpec) -> ReCUWeight:
    o = spec.options
    return ReCUWeight(layer.weight.shape[0], layer.weight.dim(), tau=o.tau_start, tau_end=o.tau_end)


@register_act("recu", one_bit=True)
def _act(spec: LayerSpec) -> ReCUAct:
    return ReCUAct()
