"""FDA (Xu et al., "Learning Frequency Domain Approximation for Binary Neural Networks", NeurIPS 2021).

Backward of sign: the derivative of the first n + 1 terms of the square wave's Fourier series,

    sign(x) ~ (4 / pi) sum_{i=0..n} sin((2i+1) w x) / (2i+1)
    d/dx   ~ (4 w / pi) sum_{i=0..n} cos((2i+1) w x),   w = 0.1, and 0 where |x| > 1.

Forward (the spec's reading of the paper and BiBench):

    weights:      W_q = mean|W| * (sign(W) + alpha_t * NA(W))    (mean|W| per output channel, detached)
                  NA(W) = MLP(W flattened per output channel; d -> max(1, d // 64) -> d, ReLU) + 0.1 sin(W)
    activations:  a_q = sign(a) + alpha_t * NA_a(a)

alpha_t = 0.05 (1 + cos(pi (e + 1) / E)) reaches 0 at the end of training, so the trained network is
binary; n = 9 + floor(9 e / E). Both are set by ``set_progress`` and saved (alpha_t as a buffer, n
as a flag). Until a schedule sets them, alpha_t = 0 and n = 9 (a plain binarizer with FDA's gradient). NA_a: an elementwise MLP 1 -> 4 -> 1 (+ 0.1 sin(a)) shared by the layer, created with the
quantizer so the optimiser sees it. BiBench builds its activation noise module inside forward,
after the optimiser exists, so it is never trained; its size also depends on the input, which an
activation factory does not know here.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from binarydm.quant.base import Quantizer
from binarydm.quant.registry import LayerSpec, register_act, register_weight
from binarydm.quant.ste import sign_ste

from ._common import Affine, check_one_bit, out_channel_mean_abs
from .schedule import fda_alpha, fda_terms

OMEGA = 0.1


def fourier_sign_grad(x: torch.Tensor, n: int, omega: float = OMEGA) -> torch.Tensor:
    """(4 w / pi) sum_{i=0..n} cos((2i+1) w x), zero where |x| > 1."""
    total = torch.zeros_like(x)
    for i in range(n + 1):
        total = total + torch.cos((2 * i + 1) * omega * x)
    return (4.0 * omega / math.pi) * total * (x.abs() <= 1).to(x.dtype)


class _FourierScheduled(Quantizer):
    flags = Quantizer.flags + ("n_terms",)

    def __init__(self) -> None:
        super().__init__()
        self.n_terms = fda_terms(0, 1)
        # alpha_t is saved as a buffer; a Python copy lets forward skip the noise branch once it is
        # 0 without reading a device tensor (a GPU sync) on every call.
        self.register_buffer("alpha_t", torch.tensor(fda_alpha(0, 1)))
        self._alpha = float(self.alpha_t)

    @property
    def bits(self) -> int:
        return 1

    def set_progress(self, step: int, total_steps: int) -> None:
        self.n_terms = fda_terms(step, total_steps)
        self._alpha = fda_alpha(step, total_steps)
        self.alpha_t.fill_(self._alpha)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._alpha = float(self.alpha_t)

    def fourier_sign(self, x: torch.Tensor) -> torch.Tensor:
        return sign_ste(x, partial(fourier_sign_grad, n=self.n_terms))


class FDAWeight(_FourierScheduled):
    """mean|W| * (sign(W) + alpha_t * NA(W)) with the Fourier-series gradient of sign."""

    def __init__(self, out_channels: int, filter_size: int) -> None:
        super().__init__()
        hidden = max(1, filter_size // 64)
        self.noise = nn.Sequential(Affine(filter_size, hidden), nn.ReLU(), Affine(hidden, filter_size))
        self.initialized = True  # nothing data-dependent to set: the scale is a detached statistic

    def noise_adaptation(self, w: torch.Tensor) -> torch.Tensor:
        """NA(W) = MLP(W flattened per output channel) + 0.1 sin(W)."""
        return self.noise(w.flatten(1)).view_as(w) + 0.1 * torch.sin(w)

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        core = self.fourier_sign(w)
        if self._alpha != 0.0:
            core = core + self.alpha_t.to(core.dtype) * self.noise_adaptation(w)
        return out_channel_mean_abs(w).detach() * core

    def inference_numel(self) -> int:
        return 0  # after training alpha_t = 0: only the (detached) mean|W| per channel remains


class FDAAct(_FourierScheduled):
    """sign(a) + alpha_t * NA_a(a), NA_a an elementwise MLP 1 -> 4 -> 1 plus 0.1 sin(a)."""

    def __init__(self, hidden: int = 4) -> None:
        super().__init__()
        self.noise = nn.Sequential(Affine(1, hidden), nn.ReLU(), Affine(hidden, 1))
        self.initialized = True

    def noise_adaptation(self, a: torch.Tensor) -> torch.Tensor:
        return self.noise(a.unsqueeze(-1)).squeeze(-1) + 0.1 * torch.sin(a)

    def quantize(self, a: torch.Tensor) -> torch.Tensor:
        core = self.fourier_sign(a)
        if self._alpha != 0.0:
            core = core + self.alpha_t.to(core.dtype) * self.noise_adaptation(a)
        return core

    def inference_numel(self) -> int:
        return 0


@register_weight("fda")
def _weight(layer, spec: LayerSpec) -> FDAWeight:
    return FDAWeight(layer.weight.shape[0], layer.weight[0].numel())


@register_act("fda")
def _act(spec: LayerSpec) -> FDAAct:
    check_one_bit(spec, "fda")
    return FDAAct()
