"""Small pieces shared by the algorithm files: per-channel statistics and channel-sized parameters.

Nothing here decides an algorithm; each algorithm file states its own formula.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from binarydm.quant.base import Quantizer


def out_channel_dims(w: torch.Tensor) -> tuple[int, ...]:
    """Every dimension of a weight but the output channel (dim 0)."""
    return tuple(range(1, w.dim()))


def out_channel_mean_abs(w: torch.Tensor) -> torch.Tensor:
    """mean|W| over each output channel's filter, shaped to broadcast against W."""
    return w.abs().mean(dim=out_channel_dims(w), keepdim=True)


def per_sample_mean_abs(x: torch.Tensor) -> torch.Tensor:
    """XNOR-Net's activation scale: mean|x| per sample, shaped to broadcast against ``x``.

    A feature map [B, C, H, W] averages over C, H, W. Token inputs [..., C] average over the
    channels of each token only: a scale over the whole sequence would let position i see later
    positions (a causal language model would read the future through it).
    """
    dims = tuple(range(1, 4)) if x.dim() == 4 else (x.dim() - 1,)
    return x.abs().mean(dim=dims, keepdim=True)


def channel_axis(x: torch.Tensor) -> int:
    """The channel axis of a layer input: 1 for a conv feature map [B, C, H, W], the last for tokens."""
    return 1 if x.dim() == 4 else x.dim() - 1


def view_along(p: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    """A per-channel vector ``p`` reshaped to broadcast along ``axis`` of ``x``."""
    shape = [1] * x.dim()
    shape[axis] = p.numel()
    return p.view(shape)


class ParameterFree(Quantizer):
    """A quantizer with nothing to initialise: it is initialised by construction."""

    def __init__(self) -> None:
        super().__init__()
        self.initialized = True

    def inference_numel(self) -> int:
        return 0


class ChannelSized(Quantizer):
    """An activation quantizer whose per-input-channel parameters are sized from its first input.

    An activation factory receives only the layer's :class:`~binarydm.quant.registry.LayerSpec`,
    not the number of input channels, so the vectors listed in ``channel_params`` start empty and
    :meth:`initialize_` (``binarydm.calibrate_``) sizes them from the calibration batch. Loading a
    state dict resizes them to the saved shape first, so a freshly converted, uncalibrated model
    accepts a trained checkpoint and nothing is re-initialised.
    """

    channel_params: tuple[str, ...] = ()

    def _size_channels(self, channels: int, fill: float = 0.0) -> None:
        for name in self.channel_params:
            p = getattr(self, name)
            p.data = torch.full((channels,), fill, dtype=p.dtype, device=p.device)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in self.channel_params:
            saved = state_dict.get(prefix + name)
            p = getattr(self, name)
            if saved is not None and saved.shape != p.shape:
                p.data = torch.empty(saved.shape, dtype=p.dtype, device=p.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def empty_param() -> nn.Parameter:
    return nn.Parameter(torch.zeros(0))


class Affine(nn.Module):
    """y = x A^T + b, as nn.Linear (same init), but NOT an nn.Linear.

    For the small full-precision pieces an algorithm adds (FDA's noise MLP, BiPFT's rank-1
    estimators): ``binarize_`` swaps every nn.Linear and ``summary`` counts every nn.Linear as a
    layer, and neither must happen to these.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight.numel():  # a zero-width layer (FDA's d < 64) has nothing to draw (and torch warns)
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            in_features = self.weight.shape[1]
            bound = 1 / math.sqrt(in_features) if in_features > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)
