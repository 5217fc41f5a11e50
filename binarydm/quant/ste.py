"""The project's one sign function and its straight-through estimators.

Every binarizer in binarydm (BinaryDM's LMB, and every algorithm of the comparison suite) calls
:func:`binary_sign` for the forward value and :func:`sign_ste` when it needs a gradient. Only the
surrogate derivative used in the backward pass differs between algorithms, so it is a parameter.

Conventions
-----------
* ``binary_sign(0) = +1`` (``torch.sign`` gives 0, which is not a binary value).
* A surrogate is a function ``d(x) -> tensor`` giving the derivative used in place of sign's
  (zero almost everywhere) true derivative: backward returns ``grad_output * d(x)``. A surrogate
  that is the indicator of a closed interval says so with a ``window = (lo, hi)`` attribute and is
  applied in one pass (:func:`window_grad`).
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Union

import torch

Surrogate = Callable[[torch.Tensor], torch.Tensor]


def binary_sign(x: torch.Tensor) -> torch.Tensor:
    """sign(x) with sign(0) = +1 (also for -0.0): the values are exactly {-1, +1}, in x's dtype."""
    one = torch.ones((), dtype=x.dtype, device=x.device)
    # copysign(1, x + 0) rather than where(x >= 0, 1, -1): the same values (x + 0.0 turns -0.0 into
    # +0.0), but where() with a bool mask runs element by element on the CPU, 8x slower on weights.
    return torch.copysign(one, x + 0.0)


@functools.lru_cache(maxsize=None)
def _open_bounds(lo: float, hi: float, dtype: torch.dtype) -> tuple[float, float]:
    """The next values of ``dtype`` outside [lo, hi]: lo' < x < hi'  <=>  lo <= x <= hi."""
    def step_out(bound: float, direction: float) -> float:
        return torch.nextafter(torch.tensor(float(bound), dtype=dtype), torch.tensor(direction, dtype=dtype)).item()
    return step_out(lo, -math.inf), step_out(hi, math.inf)


def window_grad(grad: torch.Tensor, x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """grad * 1{lo <= x <= hi} (closed interval), in one vectorised pass.

    ``hardtanh_backward`` passes the gradient strictly inside its bounds, hence the bounds moved
    out by one representable value. Multiplying by a bool mask, or ``torch.where`` on it, runs
    element by element on the CPU: 4-40x slower (more where the mask is irregular).
    """
    lo_open, hi_open = _open_bounds(lo, hi, x.dtype)
    return torch.ops.aten.hardtanh_backward(grad, x, lo_open, hi_open)


def clipped(x: torch.Tensor) -> torch.Tensor:
    """Clipped STE (Courbariaux et al. 2016, BNN): d/dx = 1{|x| <= 1}."""
    return (x.abs() <= 1).to(x.dtype)


clipped.window = (-1.0, 1.0)  # the STE backward applies it as window_grad(grad, x, -1, 1)


def identity(x: torch.Tensor) -> torch.Tensor:
    """Identity STE (Bengio et al. 2013): d/dx = 1."""
    return torch.ones_like(x)


def approx_sign(x: torch.Tensor) -> torch.Tensor:
    """Bi-Real Net's ApproxSign (Liu et al. 2018): d/dx = 2 - 2|x| on [-1, 1], 0 elsewhere."""
    return (2 - 2 * x.abs()).clamp_min(0)


SURROGATES: dict[str, Surrogate] = {"clipped": clipped, "identity": identity, "approx_sign": approx_sign}


def get_surrogate(name_or_fn: Union[str, Surrogate]) -> Surrogate:
    """A surrogate by name (``clipped``, ``identity``, ``approx_sign``) or the callable itself."""
    if callable(name_or_fn):
        return name_or_fn
    try:
        return SURROGATES[name_or_fn]
    except KeyError:
        raise ValueError(
            f"unknown surrogate gradient {name_or_fn!r}; valid names: {sorted(SURROGATES)}"
        ) from None


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, surrogate: Surrogate) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return binary_sign(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (x,) = ctx.saved_tensors
        # A new tensor, never an in-place edit of grad_output (BiBench's STE edits it in place,
        # which corrupts the gradient of any other consumer of the same tensor).
        window = getattr(ctx.surrogate, "window", None)
        if window is not None:  # an indicator derivative: one pass instead of three
            return window_grad(grad_output, x, *window), None
        return grad_output * ctx.surrogate(x), None


def sign_ste(x: torch.Tensor, surrogate: Union[str, Surrogate] = "clipped") -> torch.Tensor:
    """Forward ``binary_sign(x)``; backward ``grad * surrogate(x)`` (default: clipped STE)."""
    return _SignSTE.apply(x, get_surrogate(surrogate))


class _ScaledSignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor, surrogate: Surrogate) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return binary_sign(x) * scale

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_x, _ = _SignSTE.backward(ctx, grad_output)
        return grad_x, None, None


def scaled_sign_ste(x: torch.Tensor, scale: torch.Tensor, surrogate: Union[str, Surrogate] = "clipped") -> torch.Tensor:
    """Forward ``scale * binary_sign(x)``; backward ``grad * surrogate(x)``: the scale (a statistic, no
    gradient) is in the value but not in the gradient.

    This is what BiBench's XNOR, DoReFa, Bi-Real and ReAct convolutions compute with
    ``(scale * sign(w)).detach() - clamp(w, -1, 1).detach() + clamp(w, -1, 1)``.
    ``scale.detach() * sign_ste(x)`` is the other reading (the scale also multiplies the gradient).
    """
    return _ScaledSignSTE.apply(x, scale.detach(), get_surrogate(surrogate))


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Forward ``round(x)`` (half to even, as torch.round); backward identity."""
    return x + (torch.round(x) - x).detach()


def grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Forward ``x``; backward ``grad * scale`` (LSQ's step-size gradient scaling)."""
    y = x * scale
    return (x - y).detach() + y
