"""Activation quantization of the two attention matmuls inside diffusers' ``Attention``.

BinaryDM quantizes q, k, the softmax output P and v to the activation bit width, so that both
products ``Q K^T`` and ``P V`` run on low-bit operands. The linear projections (to_q, to_k, to_v,
to_out) are ordinary :class:`~binarydm.quant.layers.QuantLinear` layers converted by ``binarize_``;
this processor handles what happens between them.

The processor is an ``nn.Module``, so diffusers registers it as ``attn.processor`` and its four LSQ
steps live in the state dict. With every quantizer off it hands the call to diffusers' own
``AttnProcessor2_0``, so a converted model with quantization switched off is bit-exact.
"""

from __future__ import annotations

import torch
from torch import nn

from .lsq import LSQ


class QuantAttnProcessor(nn.Module):
    """Attention with LSQ-quantized q, k, softmax probabilities (unsigned) and v."""

    def __init__(self, bits: int = 4, operand_quantizer=None):
        super().__init__()
        # q, k, v: signed LSQ; at 1 bit (no signed 1-bit LSQ code) a factory gives the algorithm's
        # own activation binarizer (e.g. XNOR's b * sign(x)).
        make = operand_quantizer or (lambda: LSQ(bits, signed=True))
        self.q_quantizer = make()
        self.k_quantizer = make()
        # The probabilities lie in [0, 1]: an unsigned code spends no level on negative values.
        self.p_quantizer = LSQ(bits, signed=False)
        self.v_quantizer = make()
        from diffusers.models.attention_processor import AttnProcessor2_0

        self._fallback = AttnProcessor2_0()

    def quantizers(self) -> tuple[LSQ, LSQ, LSQ, LSQ]:
        return self.q_quantizer, self.k_quantizer, self.p_quantizer, self.v_quantizer

    def _active(self) -> bool:
        return any(q.enabled or q.observing for q in self.quantizers())

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        # diffusers reads the processor's __call__ signature to decide which keyword arguments
        # (temb, ...) to pass; nn.Module's generic (*args, **kwargs) would make it drop them.
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)

    def forward(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        if not self._active():
            return self._fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, seq_len, _ = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        query, key, value = self.q_quantizer(query), self.k_quantizer(key), self.v_quantizer(value)
        # The softmax scale multiplies q (seq x d) rather than the scores (seq x seq): on the CPU every
        # pass over the scores is memory-bound and costs about as much as the product itself.
        scores = torch.matmul(query * attn.scale, key.transpose(-1, -2))
        if attention_mask is not None:
            scores = scores + attention_mask
        probs = self.p_quantizer(scores.softmax(dim=-1))
        hidden_states = torch.matmul(probs, value)

        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor
