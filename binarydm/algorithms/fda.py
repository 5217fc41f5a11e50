"""FDA (Xu et al., "Learning Frequency Domain Approximation for Binary Neural Networks", NeurIPS 2021).

Backward of sign: the derivative of the first n + 1 terms of the square wave's Fourier series,

    sign(x) ~ (4 / pi) sum_{i=0..n} sin((2i+1) w x) / (2i+1)
    d/dx   ~ (4 w / pi) sum_{i=0..n} cos((2i+1) w x),   w = 0.1, and 0 where |x| > 1.

Forward (BiBench's FDAConv2d):

    weights:      W_q = mean|W| * (sign(W) + alpha_t * NA(W))    (mean|W| per output channel, detached)
                  NA(W) = fc2(relu(fc1(W flattened per output channel))) + 0.1 sin(W),
                  fc1: d -> d // 64, fc2: d // 64 -> d, no biases (d = the filter size)
    activations:  a_q = sign(a) + alpha_t * NA_a(a)
                  NA_a(a) = the same MLP across the C input channels at every position
                  (C -> C // 64 -> C) + 0.1 sin(a)

For d < 64 the hidden width is 0 and NA is 0.1 sin alone: BiBench's ``except`` branch (k = 4) is
never taken on PyTorch >= 1.6, where ``nn.Linear(0, d)`` initialises with a warning instead of raising.
alpha_t = alpha0 (1 + cos(pi (e + 1) / E)), alpha0 = 0.05, reaches 0 at the end of training, so the
trained network is binary; n = terms + floor(terms e / E), terms = 9. Both are set by ``set_progress``
and saved (alpha_t as a buffer, n as a flag). Until a schedule sets them, alpha_t = 0 and n = terms
(BiBench starts its buffer at 0.1 and overwrites it before the first epoch).

NA_a is sized from the calibration batch (an activation factory does not know C) and created with
the quantizer, so it exists before the optimiser does and trains; BiBench builds it inside the first
forward, after the optimiser, so it never trains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from binarydm.quant.base import Quantizer
from binarydm.quant.registry import LayerSpec, register_act, register_weight
from binarydm.quant.ste import sign_ste

from ._common import Affine, channel_axis, out_channel_mean_abs
from .schedule import fda_alpha, fda_terms

OMEGA = 0.1
REDUCTION = 64


@dataclass(frozen=True)
class FDAOptions:
    """omega: the series' base frequency; terms: n at the start (it rises to 2 terms); alpha0: the
    noise weight's scale; reduction: the noise MLPs' hidden width is d // reduction."""

    omega: float = OMEGA
    terms: int = 9
    alpha0: float = 0.05
    reduction: int = REDUCTION

    def __post_init__(self) -> None:
        if self.omega <= 0 or self.terms < 0 or self.alpha0 < 0 or self.reduction < 1:
            raise ValueError(f"FDA needs omega > 0, terms >= 0, alpha0 >= 0 and reduction >= 1, got {self}")


def fourier_sign_grad(x: torch.Tensor, n: int, omega: float = OMEGA) -> torch.Tensor:
    """(4 w / pi) sum_{i=0..n} cos((2i+1) w x), zero where |x| > 1."""
    total = torch.zeros_like(x)
    for i in range(n + 1):
        total = total + torch.cos((2 * i + 1) * omega * x)
    return (4.0 * omega / math.pi) * total * (x.abs() <= 1).to(x.dtype)


def noise_mlp(d: int, reduction: int = REDUCTION) -> nn.Sequential:
    """BiBench's NoiseAdaption MLP without the sine: d -> d // reduction -> d, ReLU, no biases."""
    hidden = d // reduction
    return nn.Sequential(Affine(d, hidden, bias=False), nn.ReLU(), Affine(hidden, d, bias=False))


class _FourierScheduled(Quantizer):
    flags = Quantizer.flags + ("n_terms",)

    def __init__(self, options: FDAOptions = FDAOptions()) -> None:
        super().__init__()
        self.options = options
        self.n_terms = fda_terms(0, 1, options.terms)
        # alpha_t is saved as a buffer; a Python copy lets forward skip the noise branch once it is
        # 0 without reading a device tensor (a GPU sync) on every call.
        self.register_buffer("alpha_t", torch.tensor(0.0))
        self._alpha = 0.0

    @property
    def bits(self) -> int:
        return 1

    def set_progress(self, step: int, total_steps: int) -> None:
        self.n_terms = fda_terms(step, total_steps, self.options.terms)
        self._alpha = fda_alpha(step, total_steps, self.options.alpha0)
        self.alpha_t.fill_(self._alpha)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._alpha = float(self.alpha_t)

    def fourier_sign(self, x: torch.Tensor) -> torch.Tensor:
        return sign_ste(x, partial(fourier_sign_grad, n=self.n_terms, omega=self.options.omega))

    def inference_numel(self) -> int:
        return 0  # after training alpha_t = 0: only the (detached) mean|W| per channel remains


class FDAWeight(_FourierScheduled):
    """mean|W| * (sign(W) + alpha_t * NA(W)) with the Fourier-series gradient of sign."""

    def __init__(self, out_channels: int, filter_size: int, options: FDAOptions = FDAOptions()) -> None:
        super().__init__(options)
        self.noise = noise_mlp(filter_size, options.reduction)
        self.initialized = True  # nothing data-dependent to set: the scale is a detached statistic

    def noise_adaptation(self, w: torch.Tensor) -> torch.Tensor:
        """NA(W) = MLP(W flattened per output channel) + 0.1 sin(W)."""
        return self.noise(w.flatten(1)).view_as(w) + 0.1 * torch.sin(w)

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        core = self.fourier_sign(w)
        if self._alpha != 0.0:
            core = core + self.alpha_t.to(core.dtype) * self.noise_adaptation(w)
        return out_channel_mean_abs(w).detach() * core


class FDAAct(_FourierScheduled):
    """sign(a) + alpha_t * NA_a(a), NA_a a channel-mixing MLP C -> C // 64 -> C plus 0.1 sin(a)."""

    def __init__(self, options: FDAOptions = FDAOptions()) -> None:
        super().__init__(options)
        # fc1 [C // r, C], fc2 [C, C // r]: sized by initialize_ (binarydm.calibrate_) from C.
        self.fc1 = nn.Parameter(torch.zeros(0, 0))
        self.fc2 = nn.Parameter(torch.zeros(0, 0))

    def _initialize(self, a: torch.Tensor) -> None:
        channels = a.shape[channel_axis(a)]
        if self.fc1.shape[1:] == (channels,):
            return  # sized already (a recalibration): keep the trained MLP
        mlp = noise_mlp(channels, self.options.reduction)  # nn.Linear's initialisation
        self.fc1.data = mlp[0].weight.data.to(self.fc1.device)
        self.fc2.data = mlp[2].weight.data.to(self.fc2.device)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("fc1", "fc2"):  # a fresh, uncalibrated model takes the saved sizes
            saved, p = state_dict.get(prefix + name), getattr(self, name)
            if saved is not None and saved.shape != p.shape:
                p.data = torch.empty(saved.shape, dtype=p.dtype, device=p.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def noise_adaptation(self, a: torch.Tensor) -> torch.Tensor:
        axis = channel_axis(a)
        h = a.movedim(axis, -1)
        h = F.linear(F.relu(F.linear(h, self.fc1.to(a.dtype))), self.fc2.to(a.dtype))
        return h.movedim(-1, axis) + 0.1 * torch.sin(a)

    def quantize(self, a: torch.Tensor) -> torch.Tensor:
        core = self.fourier_sign(a)
        if self._alpha != 0.0:
            core = core + self.alpha_t.to(core.dtype) * self.noise_adaptation(a)
        return core


@register_weight("fda", options=FDAOptions)
def _weight(layer, spec: LayerSpec) -> FDAWeight:
    return FDAWeight(layer.weight.shape[0], layer.weight[0].numel(), spec.options)


@register_act("fda", options=FDAOptions, one_bit=True)
def _act(spec: LayerSpec) -> FDAAct:
    return FDAAct(spec.options)
