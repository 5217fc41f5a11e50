"""DBNet's differentiable binarization as a surrogate gradient for sign (the ``db_sigmoid`` surrogate).

DBNet (Liao et al., "Real-time Scene Text Detection with Differentiable Binarization", AAAI 2020)
thresholds a segmentation map P with a soft step B = 1 / (1 + exp(-k (P - T))), k = 50. It is not a
weight binarizer. Here it only supplies the BACKWARD of sign: forward stays sign(x) (exactly +-1,
sign(0) = +1), and backward uses the derivative of the same step rescaled to sign's range [-1, 1]:

    sign(x) ~ 2 sigma(k x) - 1   =>   d/dx := 2 k sigma(k x) (1 - sigma(k x)),   k = 50

(The spec writes "the derivative of this sigmoid"; the factor 2 maps DBNet's {0, 1} step onto
sign's {-1, +1}, so the surrogate integrates to 2 like the clipped STE and ApproxSign.)

Use it with any binarizer that takes a surrogate name: ``QuantConfig(weight='lmb',
surrogate='db_sigmoid')`` (the ``db-sigmoid`` preset), or ``sign_ste(x, db_sigmoid_grad)``.
"""

from __future__ import annotations

import torch

from binarydm.quant import ste

K = 50.0


def db_sigmoid_grad(x: torch.Tensor, k: float = K) -> torch.Tensor:
    """2 k sigma(k x) (1 - sigma(k x)): the derivative of 2 sigma(k x) - 1."""
    # sigma(u) (1 - sigma(u)) = sigma(u) sigma(-u): no cancellation where sigma(u) is close to 1.
    return 2.0 * k * torch.sigmoid(k * x) * torch.sigmoid(-k * x)


def _register_surrogate(name: str, fn) -> None:
    # binarydm.quant.ste keeps its surrogates in one table that QuantConfig validates against; the
    # algorithms add theirs to it so ``surrogate='db_sigmoid'`` works wherever a name is accepted.
    current = ste.SURROGATES.get(name)
    if current is not None and current is not fn:
        raise ValueError(f"surrogate {name!r} is already registered to {current!r}")
    ste.SURROGATES[name] = fn


_register_surrogate("db_sigmoid", db_sigmoid_grad)
