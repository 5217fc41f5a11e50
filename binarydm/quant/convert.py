"""Model surgery: ``binarize_`` (swap layers in place), ``calibrate_`` (explicit activation-step init),
switches, and the UNet structure that BinaryDM's choices are made on (resolution levels, groups).

UNet structure is read from diffusers' stable submodule names (``down_blocks.i``, ``mid_block``,
``up_blocks.j``, ``conv_in``...), never from list positions of modules, so UNet2DModel and
UNet2DConditionModel are handled alike and any other model is simply treated as one flat group.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator, Optional, Union

import torch
from torch import nn

from .attention import QuantAttnProcessor
from .connection import attach as attach_connection
from .connection import connection_of, output_stages
from .base import Quantizer, observing
from .config import QuantConfig, resolve
from .layers import QUANT_LAYERS, QuantConv2d, QuantLinear
from .lsq import LSQ
from .registry import LayerSpec, act_factory, weight_factory

FilterFn = Callable[[nn.Module, str], bool]


def _is_kept(name: str, keep: Iterable[str]) -> bool:
    return any(name == k or name.startswith(k + ".") for k in keep)


def _num_levels(model: nn.Module) -> int:
    down = getattr(model, "down_blocks", None)
    return len(down) if isinstance(down, nn.ModuleList) else 0


def outer_distance(name: str, num_levels: int) -> Optional[int]:
    """How many resolution levels ``name`` lies inside the UNet's outer edge (0 = outermost level).

    down_blocks.i is at distance i, up_blocks.j at num_levels - 1 - j, the mid block at num_levels;
    None for a module outside the blocks (or a model without down_blocks).
    """
    parts = name.split(".")
    if len(parts) >= 2 and parts[0] in ("down_blocks", "up_blocks") and parts[1].isdigit():
        i = int(parts[1])
        return i if parts[0] == "down_blocks" else num_levels - 1 - i
    if parts[0] == "mid_block":
        return num_levels
    return None


def progressive_groups(model: nn.Module) -> list[tuple[str, list[str]]]:
    """BinaryDM's progressive-initialisation order: groups of block-name prefixes, middle outwards.

    ``[("mid_block", ["mid_block"]), ("level_{L-1}", ["down_blocks.{L-1}", "up_blocks.0"]), ...,
    ("level_0", ["down_blocks.0", "up_blocks.{L-1}"])]``; a quantized layer outside every block
    joins the last (outermost) group. A model without UNet blocks is one group, ``("all", [""])``.
    """
    levels = _num_levels(model)
    if levels == 0:
        return [("all", [""])]
    groups: list[tuple[str, list[str]]] = []
    if getattr(model, "mid_block", None) is not None:
        groups.append(("mid_block", ["mid_block"]))
    for d in range(levels - 1, -1, -1):
        groups.append((f"level_{d}", [f"down_blocks.{d}", f"up_blocks.{levels - 1 - d}"]))
    block_prefixes = [p for _, ps in groups for p in ps]
    stray = [n for n, m in model.named_modules() if isinstance(m, QUANT_LAYERS) and not _is_kept(n, block_prefixes)]
    groups[-1][1].extend(stray)
    return groups


def binarize_(
    model: nn.Module,
    config: Union[None, str, dict, QuantConfig] = None,
    filter_fn: Optional[FilterFn] = None,
) -> nn.Module:
    """Convert ``model`` in place to the quantized network described by ``config``; returns it.

    Every ``nn.Conv2d`` / ``nn.Linear`` becomes a QuantConv2d / QuantLinear (weights binarized by
    ``config.weight``, inputs quantized by ``config.act``) unless its name starts with one of
    ``config.keep`` (kept full precision, or 8-bit with ``keep_bits=8``) or ``filter_fn(module, name)``
    returns False. Weight scales are initialised here, from the pretrained weights; activation
    steps are initialised by :func:`calibrate_`. Attention processors of diffusers ``Attention``
    modules are replaced by :class:`QuantAttnProcessor` when ``config.attention`` and ``a_bits < 32``.

    A diffusers model (a ``ConfigMixin``) records what was done in its config,
    ``quantization_config = {"quant_method": "binarydm", "quant_config": ..., "format_version": 1}``
    (plus ``"excluded"``: the names ``filter_fn`` left out), so that ``save_pretrained`` writes it to
    ``config.json`` and ``from_pretrained`` rebuilds the binarized model (``binarydm.packing.hf``).

    A model on the ``meta`` device (diffusers builds one before loading weights) is converted with
    its weight scales left uninitialised: the state dict that follows holds them.
    """
    cfg = resolve(config)
    wfactory, afactory = weight_factory(cfg.weight), act_factory(cfg.act)
    levels = _num_levels(model)
    dual_levels = cfg.dual_levels_for(levels)
    if any(isinstance(m, QUANT_LAYERS) for m in model.modules()):
        raise ValueError("binarize_: the model is already quantized (it holds QuantConv2d/QuantLinear layers)")

    swaps = []
    excluded: list[str] = []
    for name, module in model.named_modules():
        if type(module) not in (nn.Conv2d, nn.Linear):
            continue
        if filter_fn is not None and not filter_fn(module, name):
            excluded.append(name)
            continue
        kept = _is_kept(name, cfg.keep)
        if kept and cfg.keep_bits == 32:
            continue
        distance = outer_distance(name, levels)
        dual = distance is not None and distance < dual_levels
        spec = LayerSpec(name=name, config=cfg, n_bases=2 if dual else 1, kept=kept)
        if kept:
            wq = LSQ(cfg.keep_bits, signed=True, channels=module.weight.shape[0], dim=module.weight.dim())
            aq = LSQ(cfg.keep_bits, signed=True)
        else:
            wq = wfactory(module, spec)
            aq = afactory(spec) if cfg.quantize_activations else None
        cls = QuantConv2d if isinstance(module, nn.Conv2d) else QuantLinear
        swaps.append((name, cls.from_float(module, wq, aq)))

    for name, new in swaps:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
        if new.weight_quantizer is not None and not new.weight.is_meta:
            new.weight_quantizer.initialize_(new.weight)

    if cfg.attention and cfg.quantize_activations:
        for name, module in model.named_modules():
            if _is_attention(module) and not _is_kept(name, cfg.keep):
                if filter_fn is not None and not filter_fn(module, name):
                    excluded.append(name)
                else:
                    operand = None
                    if cfg.a_bits == 1:  # signed LSQ has no 1-bit code: binarize q, k, v like layer inputs
                        operand = lambda name=name: afactory(LayerSpec(name=name, config=cfg))  # noqa: E731
                    module.set_processor(QuantAttnProcessor(cfg.a_bits, operand).to(_device_of(module)))
    if cfg.timestep_connection and output_stages(model):  # a model without an up path has nothing to connect
        attach_connection(model, cfg.timestep_connection)
    record_quantization_config(model, cfg, excluded)
    return model


QUANT_METHOD = "binarydm"
QUANT_FORMAT_VERSION = 1


def quantization_config_dict(cfg: QuantConfig, excluded: Iterable[str] = ()) -> dict:
    """The ``quantization_config`` entry of a binarized diffusers model's config.json."""
    out = {"quant_method": QUANT_METHOD, "quant_config": cfg.to_dict(), "format_version": QUANT_FORMAT_VERSION}
    excluded = sorted(set(excluded))
    if excluded:
        out["excluded"] = excluded
    return out


def record_quantization_config(model: nn.Module, cfg: QuantConfig, excluded: Iterable[str] = ()) -> None:
    """Write ``quantization_config`` into a diffusers model's config (a no-op for other models)."""
    if callable(getattr(model, "register_to_config", None)) and hasattr(model, "config"):
        model.register_to_config(quantization_config=quantization_config_dict(cfg, excluded))


def excluded_filter(excluded: Iterable[str]) -> Optional[FilterFn]:
    """The ``filter_fn`` that leaves exactly the recorded ``excluded`` names out (None: nothing excluded)."""
    names = frozenset(excluded)
    return (lambda module, name: name not in names) if names else None


def _is_attention(module: nn.Module) -> bool:
    return hasattr(module, "set_processor") and hasattr(module, "to_q") and hasattr(module, "heads")


def _device_of(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    # meta: a model diffusers is about to fill; the processor's steps come from the state dict
    return p.device if p is not None and not p.is_meta else torch.device("cpu")


def quant_layers(model: nn.Module, prefixes: Optional[Iterable[str]] = None) -> Iterator[tuple[str, nn.Module]]:
    """QuantConv2d / QuantLinear layers, optionally only those under the given name prefixes."""
    prefixes = None if prefixes is None else list(prefixes)
    for name, m in model.named_modules():
        if isinstance(m, QUANT_LAYERS) and (prefixes is None or _is_kept(name, prefixes) or "" in prefixes):
            yield name, m


def activation_quantizers(model: nn.Module) -> list[Quantizer]:
    """Every activation quantizer: layer inputs and attention operands."""
    out: list[Quantizer] = []
    for m in model.modules():
        if isinstance(m, QUANT_LAYERS):
            if m.act_quantizer is not None:
                out.append(m.act_quantizer)
            # An algorithm acting on the layer output (XNOR++'s Gamma) is calibrated like an activation.
            output_q = getattr(m.weight_quantizer, "output_quantizer", None)
            if output_q is not None:
                out.append(output_q)
        elif isinstance(m, QuantAttnProcessor):
            out.extend(m.quantizers())
    return out


def weight_quantizers(model: nn.Module) -> list[Quantizer]:
    return [m.weight_quantizer for m in model.modules() if isinstance(m, QUANT_LAYERS) and m.weight_quantizer is not None]


@torch.no_grad()
def calibrate_(model: nn.Module, *args, **kwargs) -> nn.Module:
    """Initialise every activation step from one forward pass ``model(*args, **kwargs)``.

    LSQ: a = 2 * mean|x| / sqrt(Qp) per quantizer, from the values that reach it. During the pass
    the activation quantizers return their inputs unchanged (full-precision statistics); weight
    quantizers stay as they are. Call it once after ``binarize_``; a loaded state dict already
    holds trained steps and must not be calibrated again.

    Weight quantizers with a ``fit_output_(layer, x)`` method (BiDM's scale map, ``scale_init="unit"`` or
    ``"fit"``) then set their output-side scales in a second pass, every quantizer acting as it is set: each
    layer is fitted to the input its fitted predecessors give it, before it computes its output.
    """
    calibrate_quantizers_(model, activation_quantizers(model), *args, **kwargs)
    fitted = [m for m in model.modules() if isinstance(m, QUANT_LAYERS) and hasattr(m.weight_quantizer, "fit_output_")]
    if fitted:
        handles = [m.register_forward_pre_hook(lambda m, args: m.weight_quantizer.fit_output_(m, args[0]))
                   for m in fitted]
        try:
            with _calibration_pass(model):
                model(*args, **kwargs)
        finally:
            for h in handles:
                h.remove()
    return model


@torch.no_grad()
def calibrate_quantizers_(model: nn.Module, quantizers, *args, **kwargs) -> nn.Module:
    """:func:`calibrate_` for the given activation quantizers only (the others act as they are set)."""
    with _calibration_pass(model), observing(quantizers):
        model(*args, **kwargs)
    return model


@contextlib.contextmanager
def _calibration_pass(model: nn.Module):
    """The model in eval mode, its timestep connection empty before and after: the calibration batch is no step
    of a trajectory (nothing mixed in, nothing kept)."""
    was_training = model.training
    model.eval()
    connection = connection_of(model)
    if connection is not None:
        connection.reset()
    try:
        yield
    finally:
        model.train(was_training)
        if connection is not None:
            connection.reset()


def set_quant_state_(model: nn.Module, weights: Optional[bool] = None, activations: Optional[bool] = None,
                     prefixes: Optional[Iterable[str]] = None) -> nn.Module:
    """Switch weight and/or activation quantizers on or off (optionally under name prefixes only).

    Attention-operand quantizers count as activations. ``None`` leaves a kind unchanged.
    """
    prefixes = None if prefixes is None else list(prefixes)
    for name, m in model.named_modules():
        if prefixes is not None and not (_is_kept(name, prefixes) or "" in prefixes):
            continue
        if isinstance(m, QUANT_LAYERS):
            if weights is not None and m.weight_quantizer is not None:
                m.weight_quantizer.enabled = weights
            if activations is not None and m.act_quantizer is not None:
                m.act_quantizer.enabled = activations
        elif isinstance(m, QuantAttnProcessor) and activations is not None:
            for q in m.quantizers():
                q.enabled = activations
    return model
