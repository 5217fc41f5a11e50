"""BiDM's cross-timestep feature connection (Zheng et al., NeurIPS 2024, Eq. 12).

A denoising step's features resemble those of the step before it, which a binarized UNet can borrow:
each connected stage of the up path mixes its output with the same stage's output at the previously
sampled (noisier) timestep,

    out = (1 - a[t // 10, k]) * out + a[t // 10, k] * cache_k          (cache detached, a learnable)

a one row per 10 timesteps and one column per connected stage, initialised at 0.3 (the authors' LDM
code and the paper; their CIFAR code starts at 0). The connected stages are the last n "output
blocks" of the up path in LDM's sense (a resnet with its attention; the level's upsampler closes the
level's last one): n = ``QuantConfig.timestep_connection``, 8 of 12 in the authors' LDM-4.

Where the cache comes from (``mode``):

* ``carry`` (the default, so diffusers' own pipelines work unchanged): each forward mixes with the
  previous forward's outputs and keeps its own for the next. A call whose timestep is not below the
  previous call's, or whose batch differs in shape or device, starts a new trajectory (no cache): a
  sampler's first step, or a new sampling run. ``binarydm.calibrate_`` starts and leaves a fresh one.
* ``record``: store the outputs, mix nothing (the training step's extra pass at t + 1).
* ``replay``: mix with what ``record`` stored, store nothing (the training step's main pass).

Training (``binarydm.training.module``) records the student's stages at t + 1 with the same x_0 and
noise, then replays them at t, as the authors' code; sampling carries the previous sampled step (t plus
the sampler's stride): the gap between the two is the method's, not binarydm's.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
from torch import nn

ROWS = 100  # timesteps 0..999 in buckets of 10
BUCKET = 10
INIT = 0.3


def output_stages(unet: nn.Module) -> list[str]:
    """The up path's stages in LDM's output-block sense, in forward order: for each up block and each
    resnet j, the attention after it if any, else the resnet; the level's upsampler replaces the last one."""
    names: list[str] = []
    for i, block in enumerate(getattr(unet, "up_blocks", [])):
        attentions = getattr(block, "attentions", None) or []
        stages = [f"up_blocks.{i}.attentions.{j}" if j < len(attentions) else f"up_blocks.{i}.resnets.{j}"
                  for j in range(len(getattr(block, "resnets", [])))]
        if getattr(block, "upsamplers", None) and stages:
            stages[-1] = f"up_blocks.{i}.upsamplers.0"
        names += stages
    return names


class TimestepConnection(nn.Module):
    """The mixing table and the hooks that apply it (attached to a UNet by :func:`attach`)."""

    def __init__(self, stages: list[str]) -> None:
        super().__init__()
        self.stages = list(stages)
        self.alpha = nn.Parameter(torch.full((ROWS, len(self.stages)), INIT))
        self.mode = "carry"
        self._cache: dict[str, torch.Tensor] = {}  # carry: this call's outputs (the next call's source)
        self._recorded: dict[str, torch.Tensor] = {}  # record -> replay
        self._last_t: Optional[torch.Tensor] = None
        # Per call, fixed by before_unet: the mode, the table's rows and what is mixed in. Stage hooks read only
        # these, so a stage recomputed during the backward pass (gradient checkpointing), after the context that
        # set the mode has exited, mixes exactly what its forward mixed.
        self._active = "carry"
        self._rows: Optional[torch.Tensor] = None
        self._source: dict[str, torch.Tensor] = {}

    # ---- hooks ----------------------------------------------------------------------------------
    def before_unet(self, module, args, kwargs) -> None:
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        sample = kwargs.get("sample", args[0] if args else None)
        t = torch.as_tensor(t, device=sample.device).reshape(-1).expand(sample.shape[0])
        self._rows = (t // BUCKET).clamp(0, ROWS - 1).long()
        self._active = self.mode
        if self.mode == "carry":
            last = self._last_t
            fresh = (last is None or last.shape != t.shape or last.device != t.device
                     or bool((t >= last).any()))  # a new trajectory (or the model moved)
            self._source = {} if fresh else self._cache
            self._cache = {}
            self._last_t = t.detach().clone()
        elif self.mode == "record":
            self._source = {}
        else:
            self._source = self._recorded

    def after_stage(self, k: int, module, args, output):
        hidden = output[0] if isinstance(output, (tuple, list)) else output
        name = self.stages[k]
        cached = self._source.get(name)
        if cached is not None and cached.shape == hidden.shape:
            a = self.alpha[self._rows, k].to(hidden.dtype).view(-1, *([1] * (hidden.dim() - 1)))
            hidden = (1 - a) * hidden + a * cached
        if self._active == "record":
            self._recorded[name] = hidden.detach()
        elif self._active == "carry":
            self._cache[name] = hidden.detach()
        if isinstance(output, tuple):
            return (hidden, *output[1:])
        if isinstance(output, list):
            return [hidden, *output[1:]]
        return hidden

    # ---- control --------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every cached output (a new trajectory starts)."""
        self._cache, self._recorded, self._source, self._last_t = {}, {}, {}, None

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Inside: forwards store their stage outputs and mix nothing."""
        with self._in_mode("record"):
            self._recorded = {}
            yield

    @contextlib.contextmanager
    def replaying(self) -> Iterator[None]:
        """Inside: forwards mix with the outputs the last ``recording`` stored."""
        with self._in_mode("replay"):
            yield

    @contextlib.contextmanager
    def _in_mode(self, mode: str) -> Iterator[None]:
        before, self.mode = self.mode, mode
        try:
            yield
        finally:
            self.mode = before

    def extra_repr(self) -> str:
        return f"stages={len(self.stages)}, rows={ROWS}, mode={self.mode}"


def attach(unet: nn.Module, n: int) -> TimestepConnection:
    """Connect the last ``n`` output stages of ``unet`` (all of them if it has fewer); the table is the
    submodule ``unet.timestep_connection`` (saved with the model)."""
    stages = output_stages(unet)
    if not stages:
        raise ValueError("timestep_connection needs a diffusers UNet with an up path (up_blocks); found none")
    connection = TimestepConnection(stages[-n:])
    p = next(unet.parameters(), None)
    if p is not None and not p.is_meta:
        connection.to(p.device)
    unet.add_module("timestep_connection", connection)
    unet.register_forward_pre_hook(connection.before_unet, with_kwargs=True)
    for k, name in enumerate(connection.stages):
        unet.get_submodule(name).register_forward_hook(_StageHook(connection, k))
    return connection


class _StageHook:
    """A picklable, deep-copyable hook: a copied UNet's hooks refer to the copied connection."""

    def __init__(self, connection: TimestepConnection, k: int) -> None:
        self.connection, self.k = connection, k

    def __call__(self, module, args, output):
        return self.connection.after_stage(self.k, module, args, output)


def connection_of(model: nn.Module) -> Optional[TimestepConnection]:
    found = getattr(model, "timestep_connection", None)
    return found if isinstance(found, TimestepConnection) else None


__all__ = ["TimestepConnection", "attach", "connection_of", "output_stages"]
