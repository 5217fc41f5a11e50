"""Quantized layers: the stock ``nn.Conv2d`` / ``nn.Linear`` with two quantizer slots.

``weight_quantizer`` maps the latent full-precision weight to its binarized value; ``act_quantizer``
quantizes the layer's input. Either may be ``None`` (never quantized) or a disabled quantizer
(switched off for now, e.g. before progressive initialisation reaches the layer). Every argument of
the parent class (stride, padding, dilation, groups, bias, padding_mode) is honoured because the
parent's own forward path is used with the quantized tensors.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from .base import Quantizer, keep_float_dtype


class _QuantSlots:
    weight_quantizer: Optional[Quantizer]
    act_quantizer: Optional[Quantizer]

    def _set_quantizers(self, weight_quantizer, act_quantizer) -> None:
        self.weight_quantizer = weight_quantizer
        self.act_quantizer = act_quantizer
        if weight_quantizer is not None and self._parameters.get("bias") is not None:
            # The bias first: diffusers' ModelMixin.dtype is the dtype of a model's first floating parameter, and
            # a half-precision model keeps the latent weight float32 (_apply). Optimizer groups hold weights and
            # biases apart and the EMA is keyed by name, so the order changes nothing else.
            params = dict(self._parameters)
            self._parameters.clear()
            self._parameters["bias"] = params.pop("bias")
            self._parameters.update(params)

    def quantized_weight(self) -> torch.Tensor:
        """The weight the forward pass uses (binarized when the weight quantizer is on)."""
        if self.weight_quantizer is None:
            return self.weight
        return self.weight_quantizer(self.weight)

    def _weight_for(self, x: torch.Tensor) -> torch.Tensor:
        # The latent weight stays float32 in a half-precision model (see _apply): the binarized weight is
        # computed from it in float32 and cast to the input's dtype.
        w = self.quantized_weight()
        return w if w.dtype == x.dtype else w.to(x.dtype)

    def _apply(self, fn, recurse=True):
        # .half() / .to(dtype): a quantized layer's latent weight keeps its float32 (moved, not cast), because
        # the binarized value is a function of it (LMB's second sign, a packed file's latents one float32 ulp
        # from a scale); its bias, and the weight of an unquantized layer, are cast as usual.
        if self.weight_quantizer is None or self.weight.is_meta:
            return super()._apply(fn, recurse)
        # nn.Module._apply replaces tensors rather than writing into them: the float32 values survive its cast.
        latent, grad = self.weight.data, self.weight.grad
        super()._apply(fn, recurse)
        keep = keep_float_dtype(fn)
        self.weight.data = keep(latent)
        if grad is not None:
            self.weight.grad = keep(grad)
        return self

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.act_quantizer is None else self.act_quantizer(x)

    def _output_transform(self):
        """The weight quantizer's ``transform_output(y, x)`` (an algorithm acting on the layer output and
        its raw input, e.g. XNOR++'s Gamma, BiDM's scale map and shortcut), or None: applied to the output
        before the bias, only while the weight quantizer is enabled."""
        q = self.weight_quantizer
        transform = getattr(q, "transform_output", None)
        if transform is None:
            return None
        # Also while calibrate_ observes the output quantizer: it must see the outputs even when the
        # weight quantizer is still off (progressive initialisation calibrates everything in FP).
        out_q = getattr(q, "output_quantizer", None)
        return transform if q.enabled or (out_q is not None and out_q.observing) else None


class QuantConv2d(_QuantSlots, nn.Conv2d):
    """``nn.Conv2d`` computing conv(Q_a(x), Q_w(W)) + b."""

    def __init__(self, *args, weight_quantizer=None, act_quantizer=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._set_quantizers(weight_quantizer, act_quantizer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        transform = self._output_transform()
        if transform is None:
            return self._conv_forward(self.quantized_input(x), self._weight_for(x), self.bias)
        y = transform(self._conv_forward(self.quantized_input(x), self._weight_for(x), None), x)
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, weight_quantizer=None, act_quantizer=None) -> "QuantConv2d":
        """A QuantConv2d with ``conv``'s hyper-parameters and an exact copy of its weight and bias."""
        new = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
            padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
            bias=conv.bias is not None, padding_mode=conv.padding_mode,
            device=conv.weight.device, dtype=conv.weight.dtype,
            weight_quantizer=weight_quantizer, act_quantizer=act_quantizer,
        )
        _copy_params(conv, new)
        return new


class QuantLinear(_QuantSlots, nn.Linear):
    """``nn.Linear`` computing Q_a(x) Q_w(W)^T + b."""

    def __init__(self, *args, weight_quantizer=None, act_quantizer=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._set_quantizers(weight_quantizer, act_quantizer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        transform = self._output_transform()
        if transform is None:
            return F.linear(self.quantized_input(x), self._weight_for(x), self.bias)
        y = transform(F.linear(self.quantized_input(x), self._weight_for(x)), x)
        return y if self.bias is None else y + self.bias

    @classmethod
    def from_float(cls, linear: nn.Linear, weight_quantizer=None, act_quantizer=None) -> "QuantLinear":
        """A QuantLinear with ``linear``'s shape and an exact copy of its weight and bias."""
        new = cls(
            linear.in_features, linear.out_features, bias=linear.bias is not None,
            device=linear.weight.device, dtype=linear.weight.dtype,
            weight_quantizer=weight_quantizer, act_quantizer=act_quantizer,
        )
        _copy_params(linear, new)
        return new


@torch.no_grad()
def _copy_params(src: nn.Module, dst: nn.Module) -> None:
    dst.weight.copy_(src.weight)
    dst.weight.requires_grad_(src.weight.requires_grad)
    if src.bias is not None:
        dst.bias.copy_(src.bias)
        dst.bias.requires_grad_(src.bias.requires_grad)


QUANT_LAYERS = (QuantConv2d, QuantLinear)
