"""BiPer (Vargas et al., "BiPer: Binary Neural Networks using a Periodic Function", CVPR 2024).

Weights (omega fixed, 20 by default as in the authors' scripts; the paper uses 20 to 30):

    stage 1:  W_q = alpha * sin(omega W)              (real-valued, with binary activations)
    stage 2:  W_b = alpha * sign(sin(omega W))        (a square wave of the latent weight)
    backward (stage 2): d sign(sin(omega W)) / dW := omega cos(omega W), the derivative of the
    sine of the same period (identity STE on the sign, the sine's true derivative by autograd).
    optional regulariser: tau * mean(sin^2(omega W)) (:func:`biper_penalty`).

Activations: ReCU's, sign(a / sqrt(var + 1e-5)) with max(0, 2 - 2|a_n|) backward, normalised in
training only as in the authors' code (:class:`binarydm.algorithms.recu.ReCUAct`).

alpha: one learnable scale per output channel. The paper multiplies the conv output by alpha; a
conv is linear in each output filter, so alpha * conv(x, B) = conv(x, alpha * B) and alpha lives in
the weight quantizer. Its init is mean|W| per channel (``alpha_init="mean_abs"``): the optimal
scale of the stage-2 binary weight for a pretrained W, so a fine-tuned model starts at XNOR's
reconstruction error instead of a random one. The authors' code (which trains from scratch) draws
U[0, 1): ``biper(alpha_init='uniform')``.

Options (:class:`BiPerOptions`, e.g. ``algorithms.preset("biper", omega=10)``): omega,
stage1_fraction, alpha_init.

Stages: :func:`binarydm.algorithms.schedule.biper_stage` (stage 1 for the first
``stage1_fraction`` of training), set by :meth:`BiPerWeight.set_progress`; the stage is saved.
Without a schedule driving it the quantizer stays in stage 2 (binary weights).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from binarydm.quant.base import Quantizer
from binarydm.quant.layers import QUANT_LAYERS
from binarydm.quant.registry import LayerSpec, register_act, register_weight
from binarydm.quant.ste import sign_ste

from ._common import out_channel_mean_abs
from .recu import ReCUAct
from .schedule import biper_stage

DEFAULT_OMEGA = 20.0
ALPHA_INITS = ("mean_abs", "uniform")


@dataclass(frozen=True)
class BiPerOptions:
    """omega: the square wave's frequency; stage1_fraction: the share of training in stage 1;
    alpha_init: ``mean_abs`` (mean|W| per channel) or ``uniform`` (U[0, 1), the authors' code)."""

    omega: float = DEFAULT_OMEGA
    stage1_fraction: float = 0.5
    alpha_init: str = "mean_abs"

    def __post_init__(self) -> None:
        if self.omega <= 0 or not 0.0 <= self.stage1_fraction <= 1.0 or self.alpha_init not in ALPHA_INITS:
            raise ValueError(f"BiPer needs omega > 0, stage1_fraction in [0, 1] and alpha_init in {ALPHA_INITS}, "
                             f"got {self}")


class BiPerWeight(Quantizer):
    """alpha * sin(omega W) in stage 1, alpha * sign(sin(omega W)) in stage 2."""

    flags = Quantizer.flags + ("stage",)

    def __init__(self, out_channels: int, weight_dim: int, omega: float = DEFAULT_OMEGA,
                 stage: int = 2, stage1_fraction: float = 0.5, alpha_init: str = "mean_abs") -> None:
        super().__init__()
        if stage not in (1, 2):
            raise ValueError(f"BiPer has stages 1 and 2, got stage={stage}")
        self.omega = float(omega)
        self.stage = stage
        self.stage1_fraction = stage1_fraction
        self.alpha_init = alpha_init
        self.alpha = nn.Parameter(torch.zeros((out_channels,) + (1,) * (weight_dim - 1)))

    @property
    def bits(self) -> int:
        return 1

    def _initialize(self, w: torch.Tensor) -> None:
        init = out_channel_mean_abs(w) if self.alpha_init == "mean_abs" else torch.rand_like(self.alpha)
        self.alpha.copy_(init)

    def set_progress(self, step: int, total_steps: int) -> None:
        self.stage = biper_stage(step, total_steps, self.stage1_fraction)

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        wave = torch.sin(self.omega * w)
        if self.stage == 1:
            return self.alpha * wave
        return self.alpha * sign_ste(wave, "identity")

    def penalty(self, w: torch.Tensor) -> torch.Tensor:
        """mean(sin^2(omega W)) of this layer's latent weight (times tau outside)."""
        return torch.sin(self.omega * w).pow(2).mean()

    def extra_repr(self) -> str:
        return f"omega={self.omega}, " + super().extra_repr()


def biper_penalty(model: nn.Module, tau: float) -> torch.Tensor:
    """BiPer's optional regulariser: tau * sum over BiPer layers of mean(sin^2(omega W))."""
    terms = [m.weight_quantizer.penalty(m.weight) for m in model.modules()
             if isinstance(m, QUANT_LAYERS) and isinstance(m.weight_quantizer, BiPerWeight)]
    if not terms:
        raise ValueError("biper_penalty: the model has no BiPer weight quantizer (binarize_ with weight='biper')")
    return tau * sum(terms)


@register_weight("biper", options=BiPerOptions)
def _weight(layer, spec: LayerSpec) -> BiPerWeight:
    o = spec.options
    return BiPerWeight(layer.weight.shape[0], layer.weight.dim(), omega=o.omega, stage1_fraction=o.stage1_fraction,
                       alpha_init=o.alpha_init)


@register_act("biper", one_bit=True)
def _act(spec: LayerSpec) -> ReCUAct:
    return ReCUAct()
