"""Shared pieces of the algorithm tests: tiny models of three families, and the checks every
algorithm goes through (conv arguments, state-dict round trip)."""

from __future__ import annotations

import copy
from typing import Callable, Optional

import torch
from torch import nn
from torch.nn import functional as F

import binarydm
import binarydm.algorithms  # noqa: F401  (registers the algorithms)
from binarydm.quant.layers import QuantConv2d


# ---- tiny models --------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock: conv3x3-bn-relu-conv3x3-bn + shortcut (1x1 conv when strided)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + identity)


class TinyResNet(nn.Module):
    def __init__(self, classes: int = 5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = BasicBlock(8, 8)
        self.layer2 = BasicBlock(8, 16, stride=2)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(x.mean(dim=(2, 3)))


class TinyTransformer(nn.Module):
    """Token classifier on nn.TransformerEncoderLayer (batch first).

    SiLU, not ReLU/GELU: with those, PyTorch's inference fast path (eval + no_grad) computes the
    whole layer in one fused op from linear1.weight / linear2.weight directly, bypassing the
    binarized modules' forward (so calibration and inference would see the float weights).
    """

    def __init__(self, dim: int = 16, classes: int = 5):
        super().__init__()
        self.embed = nn.Linear(6, dim)
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(dim, 2, dim_feedforward=32, dropout=0.0, activation=F.silu, batch_first=True),
            num_layers=1, enable_nested_tensor=False,
        )
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)))


def resnet_input(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def transformer_input(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(seed))


# ---- checks -------------------------------------------------------------------------------------
# nn.Conv2d with every argument away from its default: groups, dilation, stride, padding, bias.
CONV_KW = dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=2, dilation=2, groups=2, bias=True)


def check_conv_arguments(config, quantized_weight: Optional[Callable] = None, seed: int = 0) -> None:
    """A binarized conv equals F.conv2d on the quantized input with the dequantized weight and every argument."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(**CONV_KW))
    with torch.no_grad():
        model[0].bias.normal_()
    x = torch.randn(2, 4, 9, 9)
    binarydm.binarize_(model, config)
    binarydm.calibrate_(model, x)
    layer = model[0]
    assert isinstance(layer, QuantConv2d)
    assert (layer.stride, layer.padding, layer.dilation, layer.groups) == ((2, 2), (2, 2), (2, 2), 2)
    with torch.no_grad():
        w = layer.quantized_weight() if quantized_weight is None else quantized_weight(layer)
        qx = layer.quantized_input(x)
        expected = F.conv2d(qx, w, layer.bias, stride=2, padding=2, dilation=2, groups=2)
        torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-6)
        assert w.shape == (6, 2, 3, 3)


def train_step(model: nn.Module, inputs: tuple, lr: float = 0.05) -> None:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    out = model(*inputs)
    out = out.sample if hasattr(out, "sample") else out
    out.square().mean().backward()
    opt.step()
    opt.zero_grad()


def check_round_trip(config, make_model: Callable[[], nn.Module], inputs: tuple,
                     prepare: Optional[Callable] = None, calibrate: Callable = binarydm.calibrate_,
                     forward: Optional[Callable] = None) -> nn.Module:
    """Binarize, calibrate, train one step, save; load into a fresh converted model: identical outputs.

    The fresh model is converted but NOT calibrated (a checkpoint must be enough)."""
    forward = forward or (lambda m: m(*inputs))
    model = binarydm.binarize_(make_model(), config)
    calibrate(model, *inputs)
    if prepare is not None:
        prepare(model, *inputs)
    train_step(model, inputs)
    model.eval()
    state = copy.deepcopy(model.state_dict())
    fresh = binarydm.binarize_(make_model(), config).eval()
    fresh.load_state_dict(state)
    with torch.no_grad():
        a, b = forward(model), forward(fresh)
    a = a.sample if hasattr(a, "sample") else a
    b = b.sample if hasattr(b, "sample") else b
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    return fresh


def leaf(*shape, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).requires_grad_(True)


def upstream(shape, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def vjp(y: torch.Tensor, inputs, g: torch.Tensor):
    """The gradients of sum(g * y) with respect to ``inputs``."""
    return torch.autograd.grad(y, inputs, grad_outputs=g)


# ---- the originals' straight-through forms, for references written from their formulas -----------
def clamp_ste_ref(u: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """BiBench's form ``value.detach() - clamp(u, -1, 1).detach() + clamp(u, -1, 1)``: forward ``value``,
    gradient 1{|u| <= 1} (the clamp's), whatever scale ``value`` carries."""
    clipped = torch.clamp(u, -1.0, 1.0)
    return value.detach() - clipped.detach() + clipped


def surrogate_ref(u: torch.Tensor, value: torch.Tensor, derivative: torch.Tensor) -> torch.Tensor:
    """Forward ``value``; gradient with respect to ``u``: ``derivative`` (an autograd.Function's
    ``grad_input = derivative * grad_output``, as the originals write their binarizers)."""
    d = derivative.detach()
    return value.detach() + u * d - (u * d).detach()


def torch_sign_nonzero(x: torch.Tensor) -> torch.Tensor:
    """The originals' torch.sign; the tests draw continuous values, so sign(0) = 0 never occurs."""
    assert (x != 0).all()
    return torch.sign(x)
