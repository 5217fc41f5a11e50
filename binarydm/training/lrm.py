"""Low-rank Representation Mimicking (LRM), BinaryDM Sec. 3.3 (Zheng, Qin et al., arXiv 2404.05662).

For every timestep-embedded block i of the UNet (each down block, the mid block, each up block) the
student's output feature F_s^i is pulled towards the frozen full-precision teacher's F_t^i, in a
low-rank subspace of the channel dimension:

    L_LRM = mean_i  MSE(F_t^i E_i, F_s^i E_i) / v_i

v_i is the mean variance of the teacher's features along E_i (the mean of the kept eigenvalues),
fixed with E_i: each block's term is the student's relative error in that block's principal
subspace, so L_LRM is ~0.01-1 whatever the features' scale and one lambda carries from model to
model. (The paper's lambda = 1e-4 on the raw MSE was tuned for LDM features; on a small pixel UNet
lambda * L_LRM was ~3e-5 against L_simple ~0.05: no effect.) ``normalize=False`` gives the paper's
raw form.

E_i (C x ceil(C / K), K = 4) holds the top principal directions of the teacher's features of the
FIRST training batch, over the CHANNEL dimension: the features are flattened to (N*H*W, C) rows,
centred, and E_i are the eigenvectors of their covariance with the largest eigenvalues. E_i is then
fixed (the paper found recomputing it worse) and stored as a buffer, so it travels with the
checkpoint and is never recomputed after a load. The authors' code runs the PCA over the image
width axis; that is a defect, not the method.

The centring only matters for choosing E_i: in the loss the mean cancels,
(F_t - mu) E - (F_s - mu) E = (F_t - F_s) E, so the loss projects the difference directly.
"""

from __future__ import annotations

import math
import re
from typing import Callable, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

Reduce = Callable[[torch.Tensor], torch.Tensor]


TAPS = ("blocks", "all")


def lrm_block_names(unet: nn.Module, taps: str = "blocks") -> list[str]:
    """The feature taps of LRM on a diffusers UNet, in forward order: down, mid, up.

    ``blocks``: each down block, the mid block, each up block (the paper's text). ``all``: every
    stage the authors' code hooks (each ``TimestepEmbedSequential`` of the LDM UNet), in diffusers'
    names: each resnet of a block, or the attention that follows it, each down/up sampler, the mid block.
    """
    if taps not in TAPS:
        raise ValueError(f"loss.lrm_taps must be one of {list(TAPS)}, got {taps!r}")
    down = list(getattr(unet, "down_blocks", []))
    up = list(getattr(unet, "up_blocks", []))
    if not down and not up and getattr(unet, "mid_block", None) is None:
        raise ValueError("LRM needs a diffusers UNet (down_blocks / mid_block / up_blocks); found none of them")
    if taps == "blocks":
        names = [f"down_blocks.{i}" for i in range(len(down))]
        names += ["mid_block"] if getattr(unet, "mid_block", None) is not None else []
        return names + [f"up_blocks.{i}" for i in range(len(up))]

    def stages(prefix: str, block: nn.Module) -> list[str]:
        attentions = getattr(block, "attentions", None) or []
        out = [f"{prefix}.attentions.{j}" if j < len(attentions) else f"{prefix}.resnets.{j}"
               for j in range(len(getattr(block, "resnets", [])))]
        for sampler in ("downsamplers", "upsamplers"):
            if getattr(block, sampler, None):
                out.append(f"{prefix}.{sampler}.0")
        return out or [prefix]

    names = [n for i, b in enumerate(down) for n in stages(f"down_blocks.{i}", b)]
    names += ["mid_block"] if getattr(unet, "mid_block", None) is not None else []
    return names + [n for i, b in enumerate(up) for n in stages(f"up_blocks.{i}", b)]


class _FeaturesComplete(Exception):
    """Raised by a hook of a ``FeatureTap(stop=True)`` once every block has produced its output."""


class FeatureTap:
    """Forward hooks recording the output hidden state of named blocks.

    diffusers down blocks return ``(hidden_states, res_samples)``: the hidden state is taken.
    Use as a context manager: ``with tap: model(x, t)``, then read ``tap.features`` (block order).
    ``stop=True`` ends the forward pass as soon as the last block has produced its output (the
    frozen teacher's output head is never needed by LRM: at the demo's batch that skips about 5 %
    of its forward); the forward call then returns nothing.
    """

    def __init__(self, model: nn.Module, names: Sequence[str], stop: bool = False):
        self.model = model
        self.names = list(names)
        self.stop = stop
        self.features: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def _hook(self, name: str):
        def record(module, inputs, output):
            self.features[name] = output[0] if isinstance(output, (tuple, list)) else output
            if self.stop and len(self.features) == len(self.names):
                raise _FeaturesComplete

        return record

    def __enter__(self) -> "FeatureTap":
        self.features = {}
        for name in self.names:
            self._handles.append(self.model.get_submodule(name).register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        for h in self._handles:
            h.remove()
        self._handles = []
        return exc_type is _FeaturesComplete  # swallow only our own early stop

    def ordered(self) -> list[torch.Tensor]:
        return self.take(self.names)

    def take(self, names: Sequence[str]) -> list[torch.Tensor]:
        """The recorded outputs of ``names`` (a subset of the tapped blocks), in that order."""
        missing = [n for n in names if n not in self.features]
        if missing:
            raise RuntimeError(f"FeatureTap: blocks {missing} produced no output during the forward pass")
        return [self.features[n] for n in names]


def channel_moments(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sum of rows, sum of outer products, row count) of ``features`` (N, C, ...) as (N*HW, C) rows.

    Sums, not means, so that several processes can add theirs before the PCA (DDP).
    """
    c = features.shape[1]
    rows = features.detach().movedim(1, -1).reshape(-1, c).double()
    return rows.sum(0), rows.T @ rows, torch.tensor(float(rows.shape[0]), dtype=torch.float64,
                                                     device=rows.device)


def principal_directions(total: torch.Tensor, outer: torch.Tensor, count: torch.Tensor,
                         rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``rank`` eigenvectors (C, rank) and their eigenvalues of the covariance given by
    :func:`channel_moments` sums.

    cov = (sum x x^T - n mu mu^T) / (n - 1), mu = sum x / n: the covariance of the centred rows.
    Columns are ordered by decreasing eigenvalue; each column's sign is fixed so that its largest
    component is positive (eigenvectors are defined up to sign; the loss does not depend on it, but a
    fixed convention makes the buffers reproducible).
    """
    n = count.clamp_min(2.0)
    mu = total / n
    cov = (outer - n * torch.outer(mu, mu)) / (n - 1)
    cov = 0.5 * (cov + cov.T)
    values, vectors = torch.linalg.eigh(cov)  # ascending eigenvalues
    top = vectors[:, -rank:].flip(-1)
    idx = top.abs().argmax(dim=0)
    signs = torch.sign(top[idx, torch.arange(top.shape[1], device=top.device)])
    return top * torch.where(signs == 0, torch.ones_like(signs), signs), values[-rank:].flip(-1)


def _buffer_name(block: str, kind: str = "proj") -> str:
    return kind + "_" + re.sub(r"[^0-9a-zA-Z]", "_", block)


class LRM(nn.Module):
    """The LRM loss with its fixed projections E_i as buffers (fitted once, saved, never recomputed).

    Before :meth:`fit_` the buffers are empty (C x 0); :meth:`_load_from_state_dict` resizes them to
    the saved shapes, so a checkpoint written after fitting restores the projections exactly.
    """

    def __init__(self, blocks: Sequence[str], rank_divisor: int = 4, normalize: bool = True):
        super().__init__()
        if rank_divisor < 1:
            raise ValueError(f"LRM rank divisor K must be >= 1, got {rank_divisor}")
        self.blocks = list(blocks)
        self.rank_divisor = rank_divisor
        self.normalize = normalize
        for block in self.blocks:
            self.register_buffer(_buffer_name(block), torch.zeros(0, 0))
            # v_i: mean variance of the teacher's features along E_i (1 until fitted).
            self.register_buffer(_buffer_name(block, "var"), torch.ones(()))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self._fitted_host: Optional[bool] = None

    def projection(self, block: str) -> torch.Tensor:
        return getattr(self, _buffer_name(block))

    def projections(self) -> dict[str, torch.Tensor]:
        return {b: self.projection(b) for b in self.blocks}

    @property
    def is_fitted(self) -> bool:
        # A host copy of the buffer: reading a CUDA bool in every step would make the host wait for the step.
        if self._fitted_host is None:
            self._fitted_host = bool(self.fitted)
        return self._fitted_host

    @torch.no_grad()
    def fit_(self, teacher_features: Sequence[torch.Tensor], all_reduce_sum: Optional[Reduce] = None) -> "LRM":
        """Fix E_i from the teacher's features of one batch (once: fitting twice is an error).

        ``all_reduce_sum`` sums a tensor over processes (DDP): every rank then runs the PCA on the
        moments of the whole global batch and gets the same projections.
        """
        if self.is_fitted:
            raise RuntimeError("LRM projections are already fitted; they are fixed for the whole run")
        if len(teacher_features) != len(self.blocks):
            raise ValueError(f"LRM.fit_: got {len(teacher_features)} feature maps for {len(self.blocks)} blocks")
        for block, feat in zip(self.blocks, teacher_features):
            total, outer, count = channel_moments(feat)
            if all_reduce_sum is not None:
                total, outer, count = all_reduce_sum(total), all_reduce_sum(outer), all_reduce_sum(count)
            rank = math.ceil(feat.shape[1] / self.rank_divisor)
            proj, variances = principal_directions(total, outer, count, rank)
            # Contiguous like a buffer loaded from a checkpoint (eigh returns column-major vectors): the
            # same memory layout makes the projection of a resumed run bit-identical to an uninterrupted one.
            setattr(self, _buffer_name(block), proj.to(device=feat.device, dtype=torch.float32).contiguous())
            # Floor: a block whose teacher features are constant must not divide by zero.
            var = variances.clamp_min(0).mean().clamp_min(1e-8)
            getattr(self, _buffer_name(block, "var")).fill_(float(var))
        self.fitted.fill_(True)
        self._fitted_host = True
        return self

    def forward(self, teacher_features: Sequence[torch.Tensor],
                student_features: Sequence[torch.Tensor]) -> torch.Tensor:
        """mean over blocks of mean((F_t - F_s) E)^2 [/ v], the projection taken over the channel axis."""
        if not self.is_fitted:
            raise RuntimeError("LRM projections are not fitted: call fit_(teacher_features) on the first batch")
        losses = []
        for block, ft, fs in zip(self.blocks, teacher_features, student_features):
            e = self.projection(block).to(fs.dtype)
            diff = ft.detach().to(fs.dtype) - fs
            if diff.dim() == 4:  # a 1x1 convolution: no channels-last copy of the map (einsum makes one)
                projected = F.conv2d(diff, e.T[:, :, None, None])
            else:
                projected = torch.einsum("nc...,cr->nr...", diff, e)
            term = projected.pow(2).mean()
            losses.append(term / getattr(self, _buffer_name(block, "var")) if self.normalize else term)
        return torch.stack(losses).mean()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        self._fitted_host = None  # the loaded buffer decides
        # The buffers' shapes are only known once fitted: take them from the checkpoint.
        for block in self.blocks:
            key = prefix + _buffer_name(block)
            if key in state_dict:
                current = getattr(self, _buffer_name(block))
                setattr(self, _buffer_name(block), current.new_empty(state_dict[key].shape))
            var_key = prefix + _buffer_name(block, "var")
            if key in state_dict and var_key not in state_dict:
                # A checkpoint from before v_i existed: it trained with the raw loss, and keeps it.
                state_dict[var_key] = torch.ones(())
                self.normalize = False
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return f"blocks={len(self.blocks)}, K={self.rank_divisor}, normalize={self.normalize}, fitted={self.is_fitted}"


__all__ = ["LRM", "FeatureTap", "TAPS", "lrm_block_names", "channel_moments", "principal_directions"]
