"""``summary(model, *example_inputs)``: bits, storage and OPs per layer, as the BinaryDM paper counts.

OPs (Zheng et al. 2024, Sec. 4; BiBench's theoretical-complexity track; Liu et al. 2018):
    OPs = MACs * min(1, b_x * b_y / 64) per product of two operands of b_x and b_y bits:
    a 1-bit x 1-bit MAC is 1/64 OP, a W1A4 MAC 4/64, a W2A4 MAC (two binary bases) 8/64, a W8A8 MAC 1,
    a full-precision MAC (FLOPs) 1. BOPs / 64 + FLOPs in the papers' words.
Products counted: every Conv2d / Linear (b_x = weight bits, b_y = input bits), and the
activation-by-activation products of attention, each at its own operands' widths:
Q K^T at b_q x b_k and P V at b_p x b_v in a diffusers ``Attention`` (``QuantAttnProcessor``), and
those a module lists itself through a ``matmuls(*inputs)`` method (BiPFT's self-attention:
B(Q) B(K)^T, the rank-1 estimator terms, B(P) B(V), B(P) v_p and the estimator maps).
Normalisations, activations, additions and per-channel scalings are not counted (as in the papers).
A weight quantizer with full-precision parts of its own on the layer output (BiDM's scale map and
shortcut projection) reports their multiply-accumulates through ``extra_macs(output)``: they are
added to the layer's OPs at full precision (and not to the full-precision model's, which has none).

Storage: a quantized weight takes numel * bits (bits = the number of binary bases for LMB), its
scales and steps take their dtype's width; every other tensor (biases, norms, kept layers) takes
the width of its dtype. The reference is the same model with every parameter in float32.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from .attention import QuantAttnProcessor
from .base import Quantizer
from .layers import QUANT_LAYERS


def _enabled_bits(q: Optional[Quantizer]) -> int:
    return q.bits if q is not None and q.enabled else 32


def ops_per_mac(bits_x: int, bits_y: int) -> float:
    """OPs of one multiply-accumulate of a b_x-bit by a b_y-bit operand: b_x b_y / 64, at most 1."""
    return min(1.0, bits_x * bits_y / 64)


def _bits_of(t: torch.Tensor) -> int:
    return torch.finfo(t.dtype).bits if t.dtype.is_floating_point else torch.iinfo(t.dtype).bits


@dataclass
class LayerRow:
    name: str
    kind: str
    w_bits: int
    a_bits: int
    params: int
    storage_bits: int
    macs: int
    ops: float


@dataclass
class Summary:
    rows: list[LayerRow]
    other_params: int  # parameters outside conv/linear layers (norms, embeddings...)
    other_storage_bits: int
    fp_storage_bits: int  # the whole model in float32
    fp_ops: float  # every MAC of every counted layer at full precision
    params: int = field(init=False)
    storage_bits: int = field(init=False)
    ops: float = field(init=False)

    def __post_init__(self) -> None:
        self.params = sum(r.params for r in self.rows) + self.other_params
        self.storage_bits = sum(r.storage_bits for r in self.rows) + self.other_storage_bits
        self.ops = sum(r.ops for r in self.rows)

    @property
    def storage_bytes(self) -> float:
        return self.storage_bits / 8

    @property
    def fp_storage_bytes(self) -> float:
        return self.fp_storage_bits / 8

    @property
    def storage_ratio(self) -> float:
        return self.fp_storage_bits / self.storage_bits

    @property
    def ops_ratio(self) -> float:
        return self.fp_ops / self.ops if self.ops else float("inf")

    def breakdown(self) -> dict[str, tuple[int, float]]:
        """MACs and OPs per operand-width class: ``{"W1A4": (macs, ops), "matmul 4x4": ..., ...}``,
        the classes sorted by OPs (largest first): where the OPs ratio comes from."""
        out: dict[str, list] = {}
        for r in self.rows:
            key = f"matmul {r.w_bits}x{r.a_bits}" if r.kind == "matmul" else f"W{r.w_bits}A{r.a_bits}"
            acc = out.setdefault(key, [0, 0.0])
            acc[0] += r.macs
            acc[1] += r.ops
        return {k: (m, o) for k, (m, o) in sorted(out.items(), key=lambda kv: -kv[1][1])}

    def __str__(self) -> str:
        head = f"{'layer':<48} {'kind':<10} {'W':>3} {'A':>3} {'params':>10} {'bytes':>11} {'MACs':>13} {'OPs':>13}"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append(
                f"{r.name[-48:]:<48} {r.kind:<10} {r.w_bits:>3} {r.a_bits:>3} {r.params:>10,} "
                f"{r.storage_bits / 8:>11,.0f} {r.macs:>13,} {r.ops:>13,.0f}"
            )
        lines.append(f"{'other (norms, embeddings)':<48} {'':<10} {'':>3} {'':>3} {self.other_params:>10,} "
                     f"{self.other_storage_bits / 8:>11,.0f}")
        lines.append("-" * len(head))
        lines.append(
            f"total: {self.params:,} params, {self.storage_bytes / 2**20:.3f} MiB "
            f"(FP32 {self.fp_storage_bytes / 2**20:.3f} MiB, {self.storage_ratio:.2f}x smaller), "
            f"{self.ops / 1e9:.4f} GOPs (FP {self.fp_ops / 1e9:.4f}, {self.ops_ratio:.2f}x fewer)"
        )
        lines.append("OPs by operand widths: " + ", ".join(
            f"{k} {100 * m / max(self.fp_ops, 1):.1f}% of MACs -> {100 * o / max(self.ops, 1e-30):.1f}% of OPs"
            for k, (m, o) in self.breakdown().items()))
        return "\n".join(lines)


def _is_attention(m: nn.Module) -> bool:
    return hasattr(m, "set_processor") and hasattr(m, "to_q") and hasattr(m, "heads")


@torch.no_grad()
def summary(model: nn.Module, *example_inputs, **example_kwargs) -> Summary:
    """Per-layer bits, parameters, storage and OPs of ``model`` for one forward of the example inputs.

    OPs are per sample: MACs are measured on the example batch and divided by its batch size (the
    first dimension of the first tensor input).
    """
    first = next((t for t in list(example_inputs) + list(example_kwargs.values()) if torch.is_tensor(t)), None)
    batch = first.shape[0] if first is not None and first.dim() > 0 else 1
    macs: dict[str, int] = {}
    extra: dict[str, int] = {}  # full-precision MACs of a weight quantizer's output-side parts
    handles = []
    names = {m: n for n, m in model.named_modules()}

    def layer_hook(mod, inputs, output):
        if isinstance(mod, nn.Conv2d):
            per_out = (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
        else:
            per_out = mod.in_features
        macs[names[mod]] = macs.get(names[mod], 0) + output.numel() * per_out
        wq = getattr(mod, "weight_quantizer", None)
        if wq is not None and wq.enabled and callable(getattr(wq, "extra_macs", None)):
            extra[names[mod]] = extra.get(names[mod], 0) + wq.extra_macs(output)

    def attn_hook(mod, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        enc = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        lq = hidden.shape[2] * hidden.shape[3] if hidden.dim() == 4 else hidden.shape[1]
        lk = lq if enc is None else enc.shape[1]
        inner = mod.to_q.out_features
        proc = mod.processor if isinstance(mod.processor, QuantAttnProcessor) else None
        bq, bk, bp, bv = (_enabled_bits(q) for q in proc.quantizers()) if proc is not None else (32,) * 4
        # Q K^T and P V: each Lq * Lk * inner multiply-accumulates per sample.
        for label, bx, by in (("qk", bq, bk), ("pv", bp, bv)):
            _add_product(names[mod], label, hidden.shape[0] * lq * lk * inner, bx, by)

    def listed_hook(mod, args, kwargs):
        for label, count, bx, by in mod.matmuls(*args, **kwargs):
            _add_product(names[mod], label, count, bx, by)

    products: dict[str, dict[str, list]] = {}  # module name -> label -> [MACs over the batch, b_x, b_y]

    def _add_product(owner: str, label: str, count: int, bx: int, by: int) -> None:
        products.setdefault(owner, {}).setdefault(label, [0, bx, by])[0] += count

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            handles.append(m.register_forward_hook(layer_hook))
        elif _is_attention(m):
            handles.append(m.register_forward_pre_hook(attn_hook, with_kwargs=True))
        elif callable(getattr(m, "matmuls", None)):
            handles.append(m.register_forward_pre_hook(listed_hook, with_kwargs=True))
    was_training = model.training
    model.eval()
    try:
        model(*example_inputs, **example_kwargs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()

    rows: list[LayerRow] = []
    counted: set[int] = set()
    fp_ops = 0.0
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            wq = m.weight_quantizer if isinstance(m, QUANT_LAYERS) else None
            aq = m.act_quantizer if isinstance(m, QUANT_LAYERS) else None
            w_bits, a_bits = _enabled_bits(wq), _enabled_bits(aq)
            storage = 0
            for pname, p in m.named_parameters():
                counted.add(id(p))
                if pname == "weight":
                    storage += p.numel() * (w_bits if wq is not None and wq.enabled else _bits_of(p))
                elif pname == "bias":
                    storage += p.numel() * _bits_of(p)
            for q in (wq, aq):
                if q is not None and q.enabled:
                    storage += q.inference_numel() * 32
            if wq is not None and wq.enabled:
                storage += wq.derived_numel(m.weight) * 32
            layer_macs = macs.get(name, 0) // batch
            quantized = wq is not None and wq.enabled
            ops = layer_macs * ops_per_mac(w_bits, a_bits) if quantized else float(layer_macs)
            ops += extra.get(name, 0) // batch
            fp_ops += layer_macs
            kind = type(m).__name__.replace("Quant", "Q")
            params = m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
            rows.append(LayerRow(name, kind, w_bits, a_bits, params, storage, layer_macs, ops))
        if name in products:  # activation-by-activation products; the operand steps stored with the first
            proc = getattr(m, "processor", None)
            storage = (sum(q.inference_numel() * 32 for q in proc.quantizers() if q.enabled)
                       if isinstance(proc, QuantAttnProcessor) else 0)
            for label, (count, bx, by) in products[name].items():
                layer_macs = count // batch
                rows.append(LayerRow(f"{name}.{label}", "matmul", bx, by, 0, storage, layer_macs,
                                     layer_macs * ops_per_mac(bx, by)))
                fp_ops += layer_macs
                storage = 0
        if isinstance(m, Quantizer):  # its own parts too (BiDM's scale map, shortcut): in inference_numel
            counted.update(id(p) for p in m.parameters())

    other = [p for p in model.parameters() if id(p) not in counted]
    fp_storage = 32 * sum(r.params for r in rows) + 32 * sum(p.numel() for p in other)
    return Summary(
        rows=rows,
        other_params=sum(p.numel() for p in other),
        other_storage_bits=sum(p.numel() * _bits_of(p) for p in other),
        fp_storage_bits=fp_storage,
        fp_ops=fp_ops,
    )
