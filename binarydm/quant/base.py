"""The quantizer protocol shared by every weight and activation quantizer.

A quantizer is an ``nn.Module`` mapping a tensor to its fake-quantized value. Three rules make it
checkpoint-safe (the research code breaks all three):

1. Initialisation is explicit: :meth:`Quantizer.initialize_` (from a weight, or from a calibration
   batch through :func:`binarydm.calibrate_`). ``forward`` never initialises; an enabled quantizer
   that was never initialised raises instead of silently choosing a scale.
2. The on/off switch, the initialised flag and any structural flag of a subclass (the number of
   bases of LMB, say) are saved in the state dict as one small integer tensor (``_extra_state``),
   so a reload restores exactly the state that was trained, and safetensors can hold it.
3. Loading a state dict restores learned scales and never re-initialises them.
"""

from __future__ import annotations

import contextlib
from typing import ClassVar, Iterator

import torch
from torch import nn


_LOW_PRECISION = (torch.float16, torch.bfloat16)


def keep_float_dtype(fn):
    """``fn`` (an ``nn.Module._apply`` function) that no longer lowers a float32/float64 tensor to fp16 or
    bf16: such a tensor only takes the device ``fn`` would give it. Other conversions (devices, float64) stay."""
    def apply(t: torch.Tensor) -> torch.Tensor:
        out = fn(t)
        if out.dtype in _LOW_PRECISION and t.is_floating_point() and t.dtype not in _LOW_PRECISION:
            return t.to(device=out.device)
        return out

    return apply


class Quantizer(nn.Module):
    """Base class: ``forward(x)`` returns ``x`` when disabled, else ``quantize(x)``.

    Subclasses implement :meth:`quantize`, :meth:`_initialize` and :attr:`bits`, and may list extra
    integer attributes in ``flags`` to have them saved with the state dict.
    """

    flags: ClassVar[tuple[str, ...]] = ("enabled", "initialized")

    def __init__(self) -> None:
        super().__init__()
        self.enabled = True
        self.initialized = False
        # Set by binarydm.calibrate_: forward records statistics and passes x through unchanged.
        self.observing = False

    # ---- the part a subclass writes -------------------------------------------------------
    @property
    def bits(self) -> int:
        """Bits per element of the quantized tensor (storage and OPs accounting)."""
        raise NotImplementedError

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _initialize(self, x: torch.Tensor) -> None:
        """Set the learnable scales from ``x`` (a weight or a calibration activation)."""

    def inference_numel(self) -> int:
        """How many float values (scales, steps) inference needs from this quantizer."""
        return sum(p.numel() for p in self.parameters())

    def derived_numel(self, weight: torch.Tensor) -> int:
        """Float values a weight quantizer computes from the weight (not learned) that inference must store, since
        the latent weight is gone: e.g. XNOR's mean|W| per output channel."""
        return 0

    # ---- shared behaviour ------------------------------------------------------------------
    @torch.no_grad()
    def initialize_(self, x: torch.Tensor) -> "Quantizer":
        """Initialise the scales from ``x`` (explicit, once; never called by forward)."""
        self._initialize(x.detach())
        self.initialized = True
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.initialize_(x.float())
            return x
        if not self.enabled:
            return x
        if not self.initialized:
            raise RuntimeError(
                f"{type(self).__name__} is enabled but was never initialised: call "
                "binarydm.calibrate_(model, *example_inputs) for activation quantizers, or "
                "quantizer.initialize_(weight) for weight quantizers, before the first forward "
                "(or load a state dict that holds trained scales)"
            )
        if x.dtype in _LOW_PRECISION:
            # A half-precision model (.half(), torch_dtype=, autocast): quantize in float32, where the scales
            # and steps are kept (_apply), and hand back the model's dtype; float32 inputs are untouched.
            return self.quantize(x.float()).to(x.dtype)
        return self.quantize(x)

    def _apply(self, fn, recurse=True):
        # .half() / .to(fp16 or bf16) of a model moves a quantizer's tensors to the new device but keeps their float32:
        # an fp16 step or scale would move every rounding boundary (forward quantizes in float32 anyway).
        return super()._apply(keep_float_dtype(fn), recurse)

    def get_extra_state(self) -> torch.Tensor:
        return torch.tensor([int(getattr(self, f)) for f in self.flags], dtype=torch.int64)

    @property
    def _extra_state(self) -> torch.Tensor:
        # diffusers' loader reads every state-dict key as an attribute of its module before handing it
        # to a quantizer plug-in (binarydm.packing.hf): the flags must be readable under that name too.
        return self.get_extra_state()

    def set_extra_state(self, state) -> None:
        values = state.tolist() if isinstance(state, torch.Tensor) else list(state)
        if len(values) != len(self.flags):
            raise ValueError(
                f"{type(self).__name__}: saved quantizer state has {len(values)} flags, expected "
                f"{len(self.flags)} ({', '.join(self.flags)}); the checkpoint was written by a "
                "different quantizer type"
            )
        for name, value in zip(self.flags, values):
            current = getattr(self, name)
            setattr(self, name, type(current)(value))

    def extra_repr(self) -> str:
        state = ", ".join(f"{f}={getattr(self, f)}" for f in self.flags)
        return f"bits={self.bits}, {state}"


def quantizers(model: nn.Module) -> Iterator[tuple[str, Quantizer]]:
    """All quantizers of ``model`` with their qualified names."""
    for name, module in model.named_modules():
        if isinstance(module, Quantizer):
            yield name, module


@contextlib.contextmanager
def observing(modules) -> Iterator[None]:
    """Inside the block, the given quantizers record statistics and return their input unchanged."""
    modules = list(modules)
    for q in modules:
        q.observing = True
    try:
        yield
    finally:
        for q in modules:
            q.observing = False
