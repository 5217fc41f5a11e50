"""W1A4 inference mode: a binarized UNet whose quantized convolutions run through the W1A4 kernel.

:func:`w1a4_inference_` swaps every eligible ``QuantConv2d`` (an enabled LMB weight quantizer, an
enabled per-tensor LSQ input quantizer of at most 4 bits, groups = 1, dilation = 1, zero padding)
for a :class:`W1A4Conv2d`, which holds the packed weight (bits, per-channel scales, row sums, bias)
and, at each call, quantizes its input into the operand of the kernel that runs on the device (one
kernel on the GPU: ``cuda.quantize_planes`` for the bit-plane kernel, ``cuda.quantize_bytes`` for the
s8 x s8 one, ``cuda.quantize_pack`` for the CUDA-core one) and runs the convolution. Everything else
(kept 8-bit layers, linear layers, attention, norms) stays as it is: run the rest of the model in fp16 on the
GPU (``model.half()`` before the swap) for the fp16-vs-W1A4 comparison of ``tools/bench_kernel.py``.

The output of a swapped layer equals the fake-quantized layer's up to float summation order (the
kernel sums integers exactly, then applies the scales; the fake-quantized conv sums float products),
so the whole model agrees with its fake-quantized self to float rounding, not bit for bit.
On a machine without CUDA or CuPy the reference runs instead (one warning): slow, but the same numbers.

:func:`fuse_norm_silu_` (done by ``w1a4_inference_`` unless ``fuse=False``) makes each diffusers
``ResnetBlock2D`` whose conv1 and conv2 were swapped hand its GroupNorm to the conv: on the GPU with
the s8 x s8 kernel, one fused kernel pair (``cuda.groupnorm_silu_bytes``) turns the block's input into
the conv's s8 codes of SiLU(GroupNorm(x)) without writing the normalized tensor (with the bit-plane
kernel ``cuda.groupnorm_silu_planes``); elsewhere the conv runs on ``F.silu(norm(x))`` exactly as the
unfused block does. A nearest 2x upsampling before a conv (an ``Upsample2D``, a ResNet block that
upsamples) is done on the codes instead (``packing.upsample_nearest``: the same codes, a quarter of the
quantization); a ResNet block that pools runs its first norm unfused.

``w1a4_inference_(model, cuda_graph=True)`` replays the whole forward from a CUDA graph (:class:`GraphedForward`):
at batch 1 a UNet forward is a few hundred small kernels whose launches, not their work, set the time
of a sampling step.
"""

from __future__ import annotations

import functools
import types
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from ..quant.layers import QuantConv2d
from . import cuda
from .packing import pack_activation, pack_quant_conv, upsample_nearest


class _PackedConv(nn.Module):
    """What the kernel-mode convolutions share: plain-tensor operands that follow the model's device but keep
    their dtypes, and the output dtype of a call."""

    _moved: tuple[str, ...] = ()  # attributes (tensors or None) moved with ``packed``

    def _apply(self, fn, recurse=True):
        # .to(device) / .cuda() / .half() of the model: move the packed operands but keep their dtypes
        # (bits and codes are integers; the kernel's epilogue scales are float32 whatever the model's dtype).
        # Probe fn with a tensor on the operands' own device: a dtype-only fn (.half()) leaves it there.
        device = fn(torch.empty(0, device=self.packed.bits.device)).device
        self.packed = self.packed.to(device)
        for name in self._moved:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device))
        return super()._apply(fn, recurse)

    def _out_dtype(self, x: torch.Tensor) -> torch.dtype:
        return self.out_dtype or (torch.float16 if x.dtype == torch.float16 else torch.float32)


class W1A4Conv2d(_PackedConv):
    """Inference-only replacement of a W1A4 ``QuantConv2d``: y = W1A4conv(pack(quantize(x)), packed W)."""

    _moved = ("step", "scale")

    def __init__(self, layer: QuantConv2d, out_dtype: Optional[torch.dtype] = None):
        super().__init__()
        self.packed = pack_quant_conv(layer)
        aq = layer.act_quantizer
        self.step = aq.step.detach().reshape(()).to(torch.float32).clone()
        self.qn, self.qp = aq.qn, aq.qp
        self.out_dtype = out_dtype
        self.out_channels = layer.out_channels
        # The kernel's epilogue scales s_b = fl32(alpha_b * d), made once here rather than per call.
        self.scale = (self.packed.alpha.to(torch.float32) * self.step).contiguous()

    def _variant(self, x: torch.Tensor, factor: int = 1) -> Optional[str]:
        """The kernel this call runs (:func:`cuda.choose_variant` for its output pixels; ``factor``: the
        input's upsampling), None off the GPU."""
        if not (x.is_cuda and cuda.is_available()):
            return None
        n, _, h, w = x.shape
        return cuda.choose_variant(x.device, self.packed, cuda.output_pixels(self.packed, n, factor * h, factor * w))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)

    def normed(self, x: torch.Tensor, norm: nn.GroupNorm, upsample: bool = False) -> torch.Tensor:
        """This conv applied to SiLU(norm(x)) (``upsample``: to its nearest 2x upsampling): the norm fused into
        the activation quantization where the s8 x s8 or the bit-plane kernel runs, else the unfused ops."""
        return self._run(x, norm, upsample)

    def upsampled(self, x: torch.Tensor) -> torch.Tensor:
        """This conv applied to ``interpolate(x, scale_factor=2, mode="nearest")`` (an Upsample2D)."""
        return self._run(x, upsample=True)

    def _run(self, x: torch.Tensor, norm: Optional[nn.GroupNorm] = None, upsample: bool = False) -> torch.Tensor:
        """conv(up(SiLU(norm(x)))), each part optional. The input is quantized at its own size and its codes
        are upsampled (:func:`packing.upsample_nearest`: the same codes, a quarter of the quantization)."""
        out_dtype = self._out_dtype(x)
        variant = self._variant(x, 2 if upsample else 1)
        fused = norm is not None and variant in ("mma", "bmma") and norm.num_groups <= cuda.GN_MAX_GROUPS
        if norm is not None and not fused:
            x = F.silu(norm(x))
        args = (self.step, self.qn, self.qp)
        if variant == "mma":
            # The s8 x s8 kernel: quantize straight into s8 codes (one kernel), then the conv.
            codes = cuda.groupnorm_silu_bytes(x, norm, *args) if fused else cuda.quantize_bytes(x, *args)
            codes = upsample_nearest(codes) if upsample else codes
            return cuda.launch(codes, self.packed, out_dtype, "mma", scale=self.scale).to(x.dtype)
        if variant == "bmma":
            # The bit-plane kernel: quantize straight into bit-planes (one kernel), then the conv.
            planar = cuda.groupnorm_silu_planes(x, norm, *args) if fused else cuda.quantize_planes(x, *args)
            planar = upsample_nearest(planar) if upsample else planar
            return cuda.launch_bmma(planar, self.packed, out_dtype, scale=self.scale).to(x.dtype)
        packed_x = cuda.quantize_pack(x, *args) if variant is not None else pack_activation(x, *args)
        packed_x = upsample_nearest(packed_x) if upsample else packed_x
        return cuda.w1a4_conv2d(packed_x, self.packed, out_dtype, scale=self.scale).to(x.dtype)

    def extra_repr(self) -> str:
        p = self.packed
        return (f"{p.in_channels}, {self.out_channels}, kernel_size={p.kernel_size}, stride={p.stride}, "
                f"padding={p.padding}, bases={p.n_bases}, codes=[{self.qn}, {self.qp}]")


class W1A1Conv2d(_PackedConv):
    """Inference-only replacement of a W1A1 ``QuantConv2d`` (XNOR-type weights a_w sign(W), inputs
    sign(x + beta) of ReActNet's or BiDM's binarizer): the kernel's arithmetic with codes x_b + 1, zero
    point 1 and step 1 (``binarydm.kernels.packing``), then the weight quantizer's output-side parts
    (BiDM's scale map and shortcut, in PyTorch: they read the layer's raw input) and the bias."""

    _moved = ("scale", "beta", "bias")

    def __init__(self, layer: QuantConv2d, out_dtype: Optional[torch.dtype] = None):
        super().__init__()
        wq = layer.weight_quantizer
        self.transform = wq if callable(getattr(wq, "transform_output", None)) else None  # BiDM's K(x), shortcut
        self.packed = pack_quant_conv(layer, bias=self.transform is None)
        self.bias = None if self.transform is None or layer.bias is None else layer.bias.detach().clone()
        beta = getattr(layer.act_quantizer, "beta", None)
        self.beta = None if beta is None or beta.numel() == 0 else beta.detach().clone()
        self.out_dtype = out_dtype
        self.out_channels = layer.out_channels
        self.scale = self.packed.alpha.to(torch.float32).contiguous()  # s = fl32(alpha * 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_dtype = torch.float32 if self.transform is not None else self._out_dtype(x)
        y = cuda.w1a1_conv2d(x, self.beta, self.packed, out_dtype, scale=self.scale).to(x.dtype)
        if self.transform is not None:
            y = self.transform.transform_output(y, x)
            if self.bias is not None:
                y = y + self.bias.to(y.dtype).view(1, -1, 1, 1)
        return y

    def extra_repr(self) -> str:
        p = self.packed
        return (f"{p.in_channels}, {self.out_channels}, kernel_size={p.kernel_size}, stride={p.stride}, "
                f"padding={p.padding}, W1A1, output_parts={self.transform is not None}")


def _conv_arguments_supported(layer: QuantConv2d) -> bool:
    return layer.groups == 1 and tuple(layer.dilation) == (1, 1) and layer.padding_mode == "zeros" \
        and not isinstance(layer.padding, str)


def eligible_w1a1(layer: nn.Module) -> Optional[str]:
    """None if ``layer`` can run as a :class:`W1A1Conv2d`, else why not."""
    from ..algorithms.bnn import SignBinarizer
    from ..algorithms.reactnet import RSign
    from ..algorithms.xnor import XnorWeight

    if not isinstance(layer, QuantConv2d):
        return "not a QuantConv2d"
    wq, aq = layer.weight_quantizer, layer.act_quantizer
    if not (isinstance(wq, XnorWeight) and wq.enabled):
        return "weights not binarized by an enabled XNOR-type quantizer"
    if not (isinstance(aq, (RSign, SignBinarizer)) and aq.enabled and aq.initialized):
        return "input not binarized by an enabled sign(x + beta) binarizer"
    if not _conv_arguments_supported(layer):
        return "groups, dilation or padding the kernel does not support"
    return None


def eligible(layer: nn.Module) -> Optional[str]:
    """None if ``layer`` can run on the W1A4 kernel, else why not."""
    from ..quant.lmb import LMB
    from ..quant.lsq import LSQ

    if not isinstance(layer, QuantConv2d):
        return "not a QuantConv2d"
    wq, aq = layer.weight_quantizer, layer.act_quantizer
    if not (isinstance(wq, LMB) and wq.enabled and wq.initialized):
        return "weights not binarized by an enabled LMB (a kept layer, or another algorithm)"
    if not (isinstance(aq, LSQ) and aq.enabled and aq.initialized):
        return "input not quantized by an enabled LSQ"
    if aq.bits > 4 or aq.step.numel() != 1:
        return f"input quantizer has {aq.bits} bits or a per-channel step (the kernel takes 4-bit per-tensor codes)"
    if not _conv_arguments_supported(layer):
        return "groups, dilation or padding the kernel does not support"
    return None


def _nearest_2x(resample) -> bool:
    """Whether a ResnetBlock2D's ``upsample`` is diffusers' plain nearest 2x upsampling (the default and
    "sde_vp" kernels), the one resampling that commutes with the elementwise norm-SiLU-quantize."""
    if isinstance(resample, functools.partial):
        return resample.func is F.interpolate and resample.keywords == {"scale_factor": 2.0, "mode": "nearest"}
    return _plain_upsample(resample) and not resample.use_conv


def _plain_upsample(module) -> bool:
    """A diffusers Upsample2D that is nearest 2x interpolation (then its conv, if any): no norm, no transpose."""
    return (type(module).__name__ == "Upsample2D" and module.interpolate and not module.use_conv_transpose
            and module.norm is None)


def _fusable(block: nn.Module) -> bool:
    """A diffusers ResnetBlock2D of the form norm1 -> SiLU -> [resample] -> conv1 (+ temb) -> norm2 -> SiLU ->
    dropout -> conv2 with both convs swapped and the "default" time-embedding norm."""
    return (type(block).__name__ == "ResnetBlock2D" and isinstance(getattr(block, "conv1", None), W1A4Conv2d)
            and isinstance(getattr(block, "conv2", None), W1A4Conv2d)
            and isinstance(block.norm1, nn.GroupNorm) and isinstance(block.norm2, nn.GroupNorm)
            and isinstance(block.nonlinearity, nn.SiLU) and getattr(block, "time_embedding_norm", None) == "default")


def _fused_resnet_forward(self, input_tensor: torch.Tensor, temb: Optional[torch.Tensor], *args, **kwargs):
    """diffusers' ResnetBlock2D.forward for the blocks :func:`_fusable` accepts, with each norm -> SiLU ->
    conv done by :meth:`W1A4Conv2d.normed`; a nearest 2x upsampling in between goes to the conv too (its
    codes are upsampled), any other resampling (average pool, FIR) runs unfused before conv1. In training
    mode (dropout) the original forward runs."""
    if self.training:
        return type(self).forward(self, input_tensor, temb, *args, **kwargs)
    if self.upsample is not None and _nearest_2x(self.upsample):
        hidden = self.conv1.normed(input_tensor, self.norm1, upsample=True)
        input_tensor = self.upsample(input_tensor)
    elif self.upsample is not None or self.downsample is not None:
        resample = self.upsample if self.upsample is not None else self.downsample
        hidden = self.conv1(resample(self.nonlinearity(self.norm1(input_tensor))))
        input_tensor = resample(input_tensor)
    else:
        hidden = self.conv1.normed(input_tensor, self.norm1)
    if self.time_emb_proj is not None:
        if not self.skip_time_act:
            temb = self.nonlinearity(temb)
        temb = self.time_emb_proj(temb)[:, :, None, None]
    if temb is not None:
        hidden = hidden + temb
    hidden = self.conv2.normed(hidden, self.norm2)  # dropout is the identity in eval mode
    if self.conv_shortcut is not None:
        input_tensor = self.conv_shortcut(input_tensor)
    return (input_tensor + hidden) / self.output_scale_factor


def _fused_upsample_forward(self, hidden_states: torch.Tensor, output_size=None, *args, **kwargs):
    """diffusers' Upsample2D.forward with its swapped conv quantizing the input before the nearest 2x
    upsampling (:meth:`W1A4Conv2d.upsampled`); another output size runs the original forward."""
    h, w = hidden_states.shape[-2:]
    if output_size is not None and tuple(output_size) != (2 * h, 2 * w):
        return type(self).forward(self, hidden_states, output_size, *args, **kwargs)
    return _upsample_conv(self).upsampled(hidden_states)


def _upsample_conv(module: nn.Module):
    """An Upsample2D's conv (diffusers names it ``conv`` or, in older checkpoints' layout, ``Conv2d_0``)."""
    return getattr(module, "conv" if module.name == "conv" else "Conv2d_0", None)


def _upsample_fusable(module: nn.Module) -> bool:
    return _plain_upsample(module) and module.use_conv and isinstance(_upsample_conv(module), W1A4Conv2d)


def fuse_norm_silu_(model: nn.Module) -> list[str]:
    """Give every fusable ResnetBlock2D of ``model`` (after :func:`w1a4_inference_` swapped its convs) a
    forward that hands each GroupNorm + SiLU to the following W1A4 conv, and every Upsample2D with a swapped
    conv one that hands the conv its input before the nearest upsampling. Returns the modules' names."""
    fused = []
    for name, module in model.named_modules():
        if _fusable(module):
            module.forward = types.MethodType(_fused_resnet_forward, module)
            fused.append(name)
        elif _upsample_fusable(module):
            module.forward = types.MethodType(_fused_upsample_forward, module)
            fused.append(name)
    return fused


class GraphedForward:
    """A UNet's ``forward(sample, timestep, return_dict=...)`` replayed from CUDA graphs, one per (sample
    shape, dtype, device, timestep dtype): the first call of a signature runs the forward three times on a
    side stream (lazy initialisation: cuDNN's algorithm choice, the bit-plane kernel's self-check, CuPy's
    module loads), captures a fourth into a graph with static input buffers, and every call copies its
    inputs into them, replays and returns a copy of the output. CPU tensors, other arguments (class labels,
    text embeddings), a call inside another capture or with autograd on run the plain forward. Each graph
    keeps its buffers and memory pool until the model is freed: meant for a sampler's fixed batch."""

    def __init__(self, forward):
        self.forward = forward
        self.graphs: dict[tuple, tuple] = {}

    def __call__(self, sample, timestep, *args, return_dict: bool = True, **kwargs):
        if (args or kwargs or not torch.is_tensor(sample) or not sample.is_cuda or torch.is_grad_enabled()
                or torch.cuda.is_current_stream_capturing()):
            return self.forward(sample, timestep, *args, return_dict=return_dict, **kwargs)
        t = torch.as_tensor(timestep, device=sample.device)
        t = t.reshape(-1).expand(sample.shape[0]) if t.numel() == 1 else t
        key = (tuple(sample.shape), sample.dtype, sample.device, t.dtype, tuple(t.shape))
        if key not in self.graphs:
            self.graphs[key] = self._capture(sample, t)
        graph, x_in, t_in, out = self.graphs[key]
        x_in.copy_(sample)
        t_in.copy_(t)
        graph.replay()
        result = out.clone()
        if not return_dict:
            return (result,)
        from diffusers.models.unets.unet_2d import UNet2DOutput

        return UNet2DOutput(sample=result)

    def _capture(self, sample, t):
        x_in, t_in = sample.clone(), t.clone()
        side = torch.cuda.Stream(sample.device)
        side.wait_stream(torch.cuda.current_stream(sample.device))
        with torch.cuda.stream(side):
            for _ in range(3):
                self.forward(x_in, t_in, return_dict=False)
        torch.cuda.current_stream(sample.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.forward(x_in, t_in, return_dict=False)[0]
        return graph, x_in, t_in, out


@torch.no_grad()
def w1a4_inference_(model: nn.Module, out_dtype: Optional[torch.dtype] = None, fuse: bool = True,
                    cuda_graph: bool = False) -> dict[str, str]:
    """Swap every eligible QuantConv2d of ``model`` for a :class:`W1A4Conv2d` (LMB weights, 4-bit LSQ
    inputs) or a :class:`W1A1Conv2d` (XNOR-type weights, sign inputs: BiDM, ReActNet, Bi-Real), in place,
    and (``fuse``) let ResNet blocks hand their GroupNorm + SiLU to swapped W1A4 convs (:func:`fuse_norm_silu_`).
    ``cuda_graph``: the model's forward replays CUDA graphs on the GPU (:class:`GraphedForward`; a UNet
    called as ``model(sample, timestep)``, as diffusers' unconditional pipelines do).

    Returns {layer name: "w1a4", "w1a1" or the reason it was left on the fake-quantized path}. The model
    is for inference only afterwards (the packed layers have no trainable weights).
    """
    report: dict[str, str] = {}
    swaps = []
    for name, module in model.named_modules():
        if isinstance(module, QuantConv2d):
            why = eligible(module)
            if why is None:
                report[name] = "w1a4"
                swaps.append((name, W1A4Conv2d, module))
            elif eligible_w1a1(module) is None:
                report[name] = "w1a1"
                swaps.append((name, W1A1Conv2d, module))
            else:
                report[name] = why
    for name, cls, module in swaps:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, cls(module, out_dtype).to(module.weight.device))
    if fuse:
        fuse_norm_silu_(model)
    if cuda_graph and not isinstance(model.forward, GraphedForward):
        model.forward = GraphedForward(model.forward)
    return report


__all__ = ["GraphedForward", "W1A1Conv2d", "W1A4Conv2d", "eligible", "eligible_w1a1", "fuse_norm_silu_",
           "w1a4_inference_"]
