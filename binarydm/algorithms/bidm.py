"""BiDM (Zheng et al., NeurIPS 2024): the Timestep-friendly Binary Structure of a binarized convolution.

    activations:  x_b = sign(x + t_c),  t one learnable threshold per input channel, init 0 (RSign);
                  backward ApproxSign on u = x + t:  d x_b/du = max(0, 2 - 2|u|)
    weights:      a_w * sign(W),  a_w = mean|W| per output channel (detached); clipped STE
    convolution:  y = K(x) * conv(x_b, W_b) + s * shortcut(x) + bias
                  K(x) = box_k(mean_c |x|) + b_K   the local activation scale: one map (B, 1, H', W')
                         shared by every output channel, the channel mean of the RAW input filtered by
                         a learnable 1 -> 1 convolution with the layer's kernel size, stride, padding and
                         dilation (weight initialised to the box filter 1/k^2)
                  shortcut(x) = x (same channels), its s x s average pool (stride s), then a full-
                         precision 1x1 convolution where the channel counts differ; s learnable, init 0
    linear layers (attention projections, feed-forward, time projections): sign and a_w only.
    full precision: the ResBlocks' skip convolutions (``conv_shortcut``), the attention products, and the
                    preset's kept layers (stem, head, embeddings), as in the authors' code.

Read against the public code (``Xingyu-Zheng/BiDM``, docs/results/bidm_public_code.md); where paper and code
differ this file follows the code, with these exceptions, each a defect of the code rather than the method:

* The scale map's bias starts at 0, not at PyTorch's random default, and its filter is a learned parameter
  that a reload keeps (the code resets it to 1/k^2 on every new model object, so a reloaded model samples
  with a filter it was not trained with).
* s starts at 0 and is used as it is (the CIFAR code). The LDM code uses |s| from 0.3, but its zero-
  initialised layers start at s = 0 where |s| has no gradient, so those shortcuts never learn. AdamW moves s
  by about the learning rate per step, so from 0 it stays small in a short training; ``shortcut_init=0.3``
  (the LDM code's start, signed) measured better in 400-step runs with the code's scale map
  (docs/results/w1a1_comparison.md); ``shortcut_zero_conv2=True`` starts the ResBlocks' second convolutions at
  0 as the LDM code does.
* The layer's bias is kept (the code drops it in the binarized mode): it is free, and starts the student
  nearer to its full-precision teacher.
* Every binarized layer, linear ones included, uses the threshold (the code's linear layers drop it in the
  forward pass and keep it in the backward pass).

``BiDMOptions`` switch the scale map and the shortcut off one at a time (the paper's ablation):
``bidm(scale_map=False)``, ``bidm(shortcut=False)``. The cross-timestep connection and Space Patched
Distillation, BiDM's other two parts, are not layer operators: ``binarydm.training.timestep_connection``
and ``binarydm.training.spd``.

The scale map starts as in the code (the box 1/k^2 over a zero-padded window: XNOR-Net's mean |x|), which makes
every binary output 2-4x smaller than its float output at the start; ``scale_border="valid"`` with
``scale_init="unit"`` (a map of mean 1) correct that (measured: docs/results/w1a1_comparison.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from binarydm.quant.registry import LayerSpec, register_act, register_weight

from .reactnet import RSign
from .xnor import XnorWeight


SCALE_BORDERS = ("zeros", "valid")
SCALE_INITS = ("box", "fit", "unit")


@dataclass(frozen=True)
class BiDMOptions:
    """scale_map / shortcut: the two output-side parts of the binary structure; shortcut_init: s at start;
    projection: where the channel counts differ, the shortcut's full-precision 1x1 projection (the code) or,
    False, the input's channels cut or repeated to the output's (no parameters, no multiply-accumulates);
    fp_skip: the ResBlocks' skip convolutions stay full precision (the code) or, False, are binarized too;
    scale_border: how the scale map treats the zero padding: ``"zeros"`` (the code: the padding counts as
    |x| = 0, so K at a border is the box mean times the share of the window inside the image) or ``"valid"``
    (K divided by that share: the mean over the window's pixels inside the image); scale_init: the scale map's
    filter at start, set by ``binarydm.calibrate_``: ``"box"`` (the code: 1/k^2, XNOR-Net's mean |x|), ``"unit"``
    (the box over the map's mean on the calibration batch: a map of mean 1) or ``"fit"`` (the box times the
    least-squares gain of the layer's binary output onto its full-precision output on that batch);
    shortcut_zero_conv2: the ResBlocks' second convolutions start at s = 0 whatever ``shortcut_init`` says (the LDM
    code, whose zero_module initialisation of those convolutions zeroes their s too)."""

    scale_map: bool = True
    shortcut: bool = True
    shortcut_init: float = 0.0
    projection: bool = True
    fp_skip: bool = True
    scale_border: str = "zeros"
    scale_init: str = "box"
    shortcut_zero_conv2: bool = False

    def __post_init__(self) -> None:
        if self.scale_border not in SCALE_BORDERS:
            raise ValueError(f"bidm option scale_border must be one of {list(SCALE_BORDERS)}, got {self.scale_border!r}")
        if self.scale_init not in SCALE_INITS:
            raise ValueError(f"bidm option scale_init must be one of {list(SCALE_INITS)}, got {self.scale_init!r}")


class LocalScale(nn.Module):
    """K(x) = conv(mean_c |x|, w, b) with the layer's kernel size, stride, padding and dilation; w = 1/k^2, b = 0.

    ``border="valid"`` divides the filtered map by the share of each window inside the image. Why: the binary
    convolution it scales already sums over the inside pixels only (sign(x) is padded with zeros too), so a
    zero-padded K shrinks the border outputs twice; on the 8x8 to 2x2 maps of a latent UNet most outputs are
    border outputs (docs/results/w1a1_comparison.md)."""

    def __init__(self, conv: nn.Conv2d, border: str = "zeros") -> None:
        super().__init__()
        kh, kw = conv.kernel_size  # nn.Conv2d keeps its sizes as pairs
        self.weight = nn.Parameter(torch.full((1, 1, kh, kw), 1.0 / (kh * kw)))
        self.bias = nn.Parameter(torch.zeros(1))
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.border = border

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        energy = x.abs().mean(dim=1, keepdim=True)
        if self.border == "zeros":
            return F.conv2d(energy, self.weight.to(x.dtype), self.bias.to(x.dtype), self.stride, self.padding,
                            self.dilation)
        filtered = F.conv2d(energy, self.weight.to(x.dtype), None, self.stride, self.padding, self.dilation)
        return filtered / self.inside_share(x) + self.bias.to(x.dtype)

    def inside_share(self, x: torch.Tensor) -> torch.Tensor:
        """(1, 1, H', W'): the share of each output's window that lies inside the (H, W) input."""
        ones = x.new_ones((1, 1) + tuple(x.shape[-2:]))
        box = x.new_full((1, 1) + tuple(self.weight.shape[-2:]), 1.0 / self.weight[0, 0].numel())
        return F.conv2d(ones, box, None, self.stride, self.padding, self.dilation)


class ScaledShortcut(nn.Module):
    """s * P(pool_s(x)): pool the stride's average pool (identity at stride 1), P a 1x1 full-precision
    projection where the channel counts differ (else the identity)."""

    def __init__(self, conv: nn.Conv2d, init: float, projection: bool = True) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))
        self.stride = conv.stride
        self.out_channels = conv.out_channels
        if conv.in_channels == conv.out_channels or not projection:
            self.projection = None
        else:
            # A bare parameter, not an nn.Conv2d: binarize_ and summary must not take it for a layer to binarize.
            self.projection = nn.Parameter(torch.empty(conv.out_channels, conv.in_channels, 1, 1))
            nn.init.kaiming_uniform_(self.projection, a=math.sqrt(5))

    def forward(self, x: torch.Tensor, size: Optional[tuple[int, int]] = None) -> torch.Tensor:
        """s * P(pool(x)); ``size``: the convolution's output size (H', W'), which the pool must give."""
        u = self.path(x, size)
        return self.scale.to(u.dtype) * u

    def path(self, x: torch.Tensor, size: Optional[tuple[int, int]] = None) -> torch.Tensor:
        """P(pool(x)), the shortcut before its scale s."""
        if self.stride != (1, 1):
            pooled = F.avg_pool2d(x, self.stride, self.stride)
            # The authors' pool (floor) where it gives the convolution's size; an odd side with padding makes
            # the convolution round up, and then the pool covers the input adaptively.
            x = pooled if size is None or tuple(pooled.shape[-2:]) == tuple(size) else F.adaptive_avg_pool2d(x, size)
        if self.projection is not None:
            x = F.conv2d(x, self.projection.to(x.dtype))
        elif x.shape[1] != self.out_channels:  # the first channels, repeated as often as needed
            x = x.repeat(1, -(-self.out_channels // x.shape[1]), 1, 1)[:, :self.out_channels]
        return x

    def extra_macs(self, output: torch.Tensor) -> int:
        """Full-precision multiply-accumulates of the projection for one layer ``output``."""
        return 0 if self.projection is None else output.numel() * self.projection.shape[1]


class BiDMWeight(XnorWeight):
    """XNOR's a_w sign(W) that also owns the layer's output-side parts (scale map, shortcut)."""

    def __init__(self, conv: nn.Conv2d, options: BiDMOptions) -> None:
        super().__init__("clipped", scaled_grad=False)
        self.local_scale: Optional[LocalScale] = LocalScale(conv, options.scale_border) if options.scale_map else None
        self.shortcut: Optional[ScaledShortcut] = (
            ScaledShortcut(conv, options.shortcut_init, options.projection) if options.shortcut else None)
        self.scale_init = options.scale_init if options.scale_map else "box"

    @torch.no_grad()
    def fit_output_(self, layer: nn.Conv2d, x: torch.Tensor) -> None:
        """The scale map's filter at start from a calibration input ``x`` of ``layer`` (``binarydm.calibrate_``
        calls it): the box 1/k^2 times ``"unit"``: 1 / mean K(x), so that the map starts at mean 1;
        ``"fit"``: the gain g minimising |conv(x, W) - g K(x) conv(x_b, W_b)|^2. Nothing with ``"box"``.

        Why: the box gives XNOR-Net's mean |x|, about 0.3 after a GroupNorm and a SiLU; on the Fashion-MNIST UNets
        every binary output then starts 2.2x (pixels) to 4.1x (latents, whose 2 x 2 maps are all border) smaller
        than its float output, where without the map it is about as large, and AdamW, moving the filter by about
        lr per step, spends the training growing it. A map of mean 1 keeps the output's size and adds only the
        map's shape, which measured best; the least-squares gain still starts the output 1.8x too small (a
        least-squares fit shrinks a noisy approximation by its cosine; docs/results/w1a1_comparison.md).
        Idempotent: it starts from the box, not from the current filter."""
        if self.scale_init == "box":
            return
        scale = self.local_scale
        scale.weight.fill_(1.0 / scale.weight.numel())
        k = scale(x)
        if self.scale_init == "unit":
            gain = 1.0 / k.mean()
        else:
            binary, target = binary_and_float_outputs(layer, x)
            y = binary * k
            gain = (target * y).sum() / (y * y).sum().clamp_min(torch.finfo(y.dtype).tiny)
        scale.weight.mul_(gain.to(scale.weight.dtype))

    def transform_output(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """K(x) * y + s * shortcut(x) for the binary convolution's output y (before the bias) and raw input x."""
        if self.local_scale is not None:
            y = y * self.local_scale(x)
        if self.shortcut is not None:
            y = y + self.shortcut(x, y.shape[-2:])
        return y

    def inference_numel(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_macs(self, output: torch.Tensor) -> int:
        """Full-precision multiply-accumulates of the scale map (k x k per output position) and of the
        shortcut's projection for one layer ``output`` (``binarydm.summary`` adds them to the layer's OPs)."""
        macs = 0
        if self.local_scale is not None:
            macs += output.shape[0] * output[0, 0].numel() * self.local_scale.weight.numel()
        if self.shortcut is not None:
            macs += self.shortcut.extra_macs(output)
        return macs


def binary_and_float_outputs(layer: nn.Conv2d, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """conv(x_b, W_b) and conv(x, W) of a binarized ``layer`` on its raw input ``x``, without bias or output-side
    parts, whether or not its quantizers are switched on."""
    x_b = x if layer.act_quantizer is None else layer.act_quantizer.quantize(x)
    binary = layer._conv_forward(x_b, layer.weight_quantizer.quantize(layer.weight).to(x.dtype), None)
    return binary, layer._conv_forward(x, layer.weight.to(x.dtype), None)


def _skip(spec: LayerSpec) -> bool:
    # The ResBlocks' skip convolutions stay full precision in BiDM (both code bases).
    fp_skip = spec.options.fp_skip if spec.options is not None else True
    return fp_skip and spec.name.rsplit(".", 1)[-1] == "conv_shortcut"


@register_weight("bidm", options=BiDMOptions)
def _weight(layer, spec: LayerSpec):
    if _skip(spec):
        return None
    options = spec.options or BiDMOptions()
    if options.shortcut_zero_conv2 and spec.name.rsplit(".", 1)[-1] == "conv2":
        options = replace(options, shortcut_init=0.0)
    if isinstance(layer, nn.Conv2d) and (options.scale_map or options.shortcut):
        return BiDMWeight(layer, options)
    return XnorWeight("clipped", scaled_grad=False)


@register_act("bidm", options=BiDMOptions, one_bit=True)
def _act(spec: LayerSpec) -> Optional[RSign]:
    return None if _skip(spec) else RSign()
