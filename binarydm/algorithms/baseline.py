"""The BinaryDM paper's baseline (Zheng et al., arXiv 2404.05662, Sec. 4): one learnable basis.

    W_b = s1 * sign(W),  s1 per output channel, learnable, init mean|W|;  clipped STE
    activations: LSQ (4 bits in the W1A4 setting)

It is exactly BinaryDM's LMB with one basis (:class:`binarydm.quant.lmb.LMB`, ``n_bases=1``): the
``baseline`` weight name builds that LMB on every layer whatever ``dual_levels`` says, and the
``baseline`` preset is the core's (``dual_levels=0``).
"""

from __future__ import annotations

from binarydm.quant.lmb import LMB
from binarydm.quant.registry import LayerSpec, register_weight


@register_weight("baseline")
def _weight(layer, spec: LayerSpec) -> LMB:
    return LMB(layer.weight.shape[0], layer.weight.dim(), n_bases=1, surrogate=spec.config.surrogate)


# EBB (ICLR 2025 BinaryDM) is LMB plus a loss term and a transition step: the same quantizer, so
# ``weight='ebb'`` builds the LMB the layer would get under ``weight='lmb'``. The loss term is
# LMB.ebb_penalty (weighted by the config key ebb.tau), the transition LMB.drop_second_basis_, called by
# binarydm.training.callbacks.EBBTransition.
@register_weight("ebb")
def _ebb(layer, spec: LayerSpec) -> LMB:
    return LMB(layer.weight.shape[0], layer.weight.dim(), n_bases=spec.n_bases, surrogate=spec.config.surrogate)
