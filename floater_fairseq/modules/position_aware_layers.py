"""fairseq Transformer layers with per-call position inputs, shared by every position encoder.

A position encoder never edits fairseq's code: for each forward call of the encoder or decoder it
returns one ``LayerPositions`` per layer:

* ``input``            added to the block input, x^(n) + p^(n)                      (Eqs. 7, 10)
* attention ``q/k/v``  additive projection biases, q_i = W_q x_i + b_q + b^(n)(t_i) (Eqs. 11-13)
* attention ``cos/sin``  rotary q/k (RoPE), applied per head after the projection
* attention ``logit_bias``  added to the attention logits per head (ALiBi)

Per-call data travels with the call, never as module attributes:

1. ``applying(layers, positions)`` binds each layer's positions in a context variable for the
   duration of one encoder/decoder call (fairseq's own layer loop runs unchanged inside it);
2. each layer's ``__call__`` passes its positions to its ``forward`` as keyword *tensor arguments*,
   so fairseq's ``checkpoint_wrapper`` saves them with the other inputs, hands them back when it
   re-runs the layer during backward, and returns their gradients;
3. the layer's ``forward`` binds them for the attention modules that fairseq's layer code calls.

Context variables are per thread and per re-entrant call; a re-run during backward rebuilds them
from the arguments. Parameter names equal fairseq's, so vanilla checkpoints load unchanged.
"""
import contextlib
import contextvars
from dataclasses import dataclass, fields
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fairseq.modules import MultiheadAttention
from fairseq.modules.rotary_positional_embedding import rotate_half
from fairseq.modules.transformer_layer import TransformerDecoderLayerBase, TransformerEncoderLayerBase

ARGUMENT_PREFIX = "position_"


@dataclass
class AttentionPositions:
    """Position inputs of one attention module for one call (time-first tensors)."""

    q: Optional[Tensor] = None  # [T, B|1, d] added to W_q x
    k: Optional[Tensor] = None  # [S, B|1, d]
    v: Optional[Tensor] = None  # [S, B|1, d]
    cos: Optional[Tensor] = None  # rotary q/k: cos and sin [T, B|1, head_dim]
    sin: Optional[Tensor] = None
    logit_bias: Optional[Tensor] = None  # [heads, T, S] added to q.k / sqrt(d)
    # [d]: the projection's own bias with a position bias folded in, used *instead of* it (one
    # incremental step: the position term then costs no kernel of its own)
    q_fused: Optional[Tensor] = None
    k_fused: Optional[Tensor] = None
    v_fused: Optional[Tensor] = None


@dataclass
class LayerPositions:
    input: Optional[Tensor] = None  # [T, B|1, d] added to the block input
    self_attention: Optional[AttentionPositions] = None
    cross_attention: Optional[AttentionPositions] = None

    def as_arguments(self) -> Dict[str, Tensor]:
        """The tensors as flat keyword arguments (what a checkpoint wrapper can save and return
        gradients for): position_input, position_self_attention_q, ..."""
        arguments = {} if self.input is None else {ARGUMENT_PREFIX + "input": self.input}
        for part in ("self_attention", "cross_attention"):
            attention = getattr(self, part)
            for field in fields(AttentionPositions) if attention is not None else ():
                value = getattr(attention, field.name)
                if value is not None:
                    arguments[f"{ARGUMENT_PREFIX}{part}_{field.name}"] = value
        return arguments

    @classmethod
    def from_arguments(cls, kwargs: dict) -> "LayerPositions":
        """Inverse of ``as_arguments``; removes the position arguments from ``kwargs``."""
        names = [name for name in kwargs if name.startswith(ARGUMENT_PREFIX)]
        values = {name[len(ARGUMENT_PREFIX):]: kwargs.pop(name) for name in names}
        positions = cls(input=values.pop("input", None))
        for part in ("self_attention", "cross_attention"):
            found = {f.name: values.pop(f"{part}_{f.name}") for f in fields(AttentionPositions)
                     if f"{part}_{f.name}" in values}
            if found:
                setattr(positions, part, AttentionPositions(**found))
        if values:
            raise TypeError(f"unknown position arguments: {sorted(values)}")
        return positions


# The positions of each layer of the running encoder/decoder call, and of the running layer.
_STACK_POSITIONS: contextvars.ContextVar = contextvars.ContextVar("stack_positions", default=None)
_LAYER_POSITIONS: contextvars.ContextVar = contextvars.ContextVar("layer_positions", default=None)


def _attention_positions(encoder_decoder_attention: bool) -> Optional[AttentionPositions]:
    layer = _LAYER_POSITIONS.get()
    if layer is None:
        return None
    return layer.cross_attention if encoder_decoder_attention else layer.self_attention


class PositionAwareProjection(nn.Linear):
    """nn.Linear (``role`` q, k or v of an attention module) whose output gets, during a layer call
    that carries them, an additive per-position bias and/or a rotary rotation of each head. Same
    parameter names as nn.Linear."""

    @classmethod
    def replacing(cls, linear: nn.Linear, role: str, encoder_decoder_attention: bool) -> "PositionAwareProjection":
        if linear._forward_hooks or linear._forward_pre_hooks:
            raise ValueError(
                "position hooks cannot be added to a projection with hooks "
                "(is --quant-noise-pq on? it is not supported by floater_transformer)"
            )
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module.in_features, module.out_features = linear.in_features, linear.out_features
        module.weight = linear.weight  # the same Parameter objects: nothing is copied
        module.bias = linear.bias
        module.role, module.encoder_decoder_attention = role, encoder_decoder_attention
        return module

    def forward(self, x: Tensor) -> Tensor:
        positions = _attention_positions(self.encoder_decoder_attention)
        fused = None if positions is None else getattr(positions, self.role + "_fused")
        out = super().forward(x) if fused is None else F.linear(x, self.weight, fused.to(x.dtype))
        if positions is None:
            return out
        bias = getattr(positions, self.role)
        if bias is not None:
            _check_length(bias, out)
            out = out + bias
        if positions.cos is not None and self.role != "v":
            cos, sin = positions.cos, positions.sin
            _check_length(cos, out)
            heads = out.view(out.size(0), out.size(1), -1, cos.size(-1))  # [T, B, H, head_dim]
            cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
            out = (heads * cos + rotate_half(heads) * sin).view_as(out)
        return out


def _check_length(position_input: Tensor, out: Tensor):
    if position_input.size(0) != out.size(0):
        raise RuntimeError(
            f"position input covers {position_input.size(0)} positions, the projection input has "
            f"{out.size(0)}: the encoder/decoder set positions for a different input"
        )


class PositionAwareAttention(MultiheadAttention):
    """fairseq MultiheadAttention whose q/k/v projections and logits take the running layer's
    ``AttentionPositions``. ``use_position_hooks()`` (called once, by position encoders that act
    inside attention) turns fairseq's fused path off (it would skip q/k/v_proj); a full-sequence
    call then runs ``_fused_forward`` (SDPA through the hooked projections), and incremental steps
    or calls that return weights fairseq's Python path, which calls q/k/v_proj and
    ``apply_sparse_mask`` (fairseq's hook on the attention logits)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in ("q_proj", "k_proj", "v_proj"):
            setattr(self, name, PositionAwareProjection.replacing(
                getattr(self, name), name[0], self.encoder_decoder_attention))

    def use_position_hooks(self):
        # fairseq's fused path hands the projection *weights* to F.multi_head_attention_forward and
        # would skip the hooks; this switch (meant for pruning) selects the Python path.
        self.skip_embed_dim_check = True

    def forward(self, query, key, value, key_padding_mask=None, incremental_state=None, need_weights=True,
                static_kv=False, attn_mask=None, before_softmax=False, need_head_weights=False):
        """fairseq's attention; with position hooks, a full-sequence call that asks for no weights
        runs ``_fused_forward`` (what fairseq's fused path runs, with the hooks' projections)."""
        if (self.skip_embed_dim_check and incremental_state is None and not (need_weights or need_head_weights)
                and not before_softmax and key is not None and self.bias_k is None and not self.add_zero_attn
                and not self.use_xformers and not self.onnx_trace and query.device.type != "xla"):
            return self._fused_forward(query, key, value, key_padding_mask, attn_mask), None
        return super().forward(query, key, value, key_padding_mask, incremental_state, need_weights, static_kv,
                               attn_mask, before_softmax, need_head_weights)

    def _fused_forward(self, query, key, value, key_padding_mask, attn_mask):
        """softmax(q k^T / sqrt(d_h) + mask) v by F.scaled_dot_product_attention, as fairseq's fused path
        (F.multi_head_attention_forward) does: fairseq's Python path keeps the [B*H, T, S] logits,
        probabilities and dropout output for backward (a third more peak memory than the vanilla
        step at 4 x 1,024 tokens). The mask is fairseq's: additive ``attn_mask`` [T, S] (fairseq's
        layers pass it as floats), the hooks' ``logit_bias`` [H, T, S], ``key_padding_mask`` [B, S] (True = pad)."""
        tgt_len, bsz, embed_dim = query.size()
        heads, head_dim = self.num_heads, self.head_dim
        q, k, v = self.q_proj(query), self.k_proj(key), self.v_proj(value)
        src_len = k.size(0)

        def by_head(x, length):  # [T, B, H * d_h] -> [B, H, T, d_h], fairseq's (b, h) row order
            return x.contiguous().view(length, bsz, heads, head_dim).permute(1, 2, 0, 3)

        mask = None if attn_mask is None else attn_mask.to(q.dtype)
        positions = self.current_positions()
        if positions is not None and positions.logit_bias is not None:
            bias = positions.logit_bias[:, -tgt_len:, -src_len:].to(q.dtype)
            mask = bias if mask is None else mask + bias
        if key_padding_mask is not None and key_padding_mask.dim() > 0:
            pads = torch.zeros(bsz, 1, 1, src_len, dtype=q.dtype, device=q.device).masked_fill(
                key_padding_mask.view(bsz, 1, 1, src_len).to(torch.bool), float("-inf"))
            mask = pads if mask is None else mask + pads
        dropout = self.dropout_module.p if self.training or self.dropout_module.apply_during_inference else 0.0
        attn = F.scaled_dot_product_attention(by_head(q, tgt_len), by_head(k, src_len), by_head(v, src_len),
                                              attn_mask=mask, dropout_p=dropout)
        return self.out_proj(attn.permute(2, 0, 1, 3).reshape(tgt_len, bsz, embed_dim))

    def current_positions(self) -> Optional[AttentionPositions]:
        return _attention_positions(self.encoder_decoder_attention)

    def apply_sparse_mask(self, attn_weights: Tensor, tgt_len: int, src_len: int, bsz: int) -> Tensor:
        positions = self.current_positions()
        if positions is None or positions.logit_bias is None:
            return attn_weights
        bias = positions.logit_bias[:, -tgt_len:, -src_len:].to(attn_weights.dtype)
        return (attn_weights.view(bsz, self.num_heads, tgt_len, src_len) + bias).view_as(attn_weights)


class _LayerPositionHooks:
    """What both layer kinds do with their LayerPositions: take them as keyword arguments, add the
    block-input signal, and bind the rest for the layer's attention modules."""

    def __call__(self, *args, **kwargs):
        bound = _STACK_POSITIONS.get()
        if bound is not None and self in bound:
            kwargs.update(bound[self].as_arguments())
        return super().__call__(*args, **kwargs)

    def forward(self, x, *args, **kwargs):
        positions = LayerPositions.from_arguments(kwargs)
        if positions.input is not None:
            x = x + positions.input
        token = _LAYER_POSITIONS.set(positions)
        try:
            return super().forward(x, *args, **kwargs)
        finally:
            _LAYER_POSITIONS.reset(token)


def _self_attention_class(cfg):
    """The model may put a self-attention factory on the config (--*-self-attention); default
    fairseq's softmax attention with position hooks."""
    return getattr(cfg, "self_attention_module", None) or PositionAwareAttention


class PositionAwareEncoderLayer(_LayerPositionHooks, TransformerEncoderLayerBase):
    def build_self_attention(self, embed_dim, cfg):
        return _self_attention_class(cfg)(
            embed_dim, cfg.encoder.attention_heads, dropout=cfg.attention_dropout, self_attention=True,
            q_noise=self.quant_noise, qn_block_size=self.quant_noise_block_size,
            xformers_att_config=cfg.encoder.xformers_att_config,
        )


class PositionAwareDecoderLayer(_LayerPositionHooks, TransformerDecoderLayerBase):
    def build_self_attention(self, embed_dim, cfg, add_bias_kv=False, add_zero_attn=False):
        attention = _self_attention_class(cfg)
        if attention is not PositionAwareAttention:
            if add_bias_kv or add_zero_attn:
                raise ValueError("kernelized-rpe decoder self-attention does not support "
                                 "add_bias_kv / add_zero_attn")
            return attention(embed_dim, cfg.decoder.attention_heads, dropout=cfg.attention_dropout,
                             q_noise=self.quant_noise, qn_block_size=self.quant_noise_block_size)
        return attention(
            embed_dim, cfg.decoder.attention_heads, dropout=cfg.attention_dropout,
            add_bias_kv=add_bias_kv, add_zero_attn=add_zero_attn, self_attention=not cfg.cross_self_attention,
            q_noise=self.quant_noise, qn_block_size=self.quant_noise_block_size,
            xformers_att_config=cfg.decoder.xformers_att_config,
        )

    def build_encoder_attention(self, embed_dim, cfg):
        return PositionAwareAttention(
            embed_dim, cfg.decoder.attention_heads, kdim=cfg.encoder.embed_dim, vdim=cfg.encoder.embed_dim,
            dropout=cfg.attention_dropout, encoder_decoder_attention=True,
            q_noise=self.quant_noise, qn_block_size=self.quant_noise_block_size,
            xformers_att_config=cfg.encoder.xformers_att_config,
        )


@contextlib.contextmanager
def applying(layers: Sequence[nn.Module], positions: Optional[List[LayerPositions]]):
    """Bind ``positions`` (one per layer) for the duration of one encoder/decoder call."""
    if positions is None:
        yield
        return
    if len(positions) != len(layers):
        raise RuntimeError(f"got positions for {len(positions)} layers, the stack has {len(layers)}")
    token = _STACK_POSITIONS.set(dict(zip(layers, positions)))
    try:
        yield
    finally:
        _STACK_POSITIONS.reset(token)


# --- real-token positions ------------------------------------------------------------------------

def real_token_positions(pad_mask: Optional[Tensor]) -> Optional[Tensor]:
    """Zero-based index of each token among the real tokens of its row ([B, T] long), so that a
    token's position does not depend on left or right padding. Pads map to 0 (they are masked).
    Returns None when there is no padding at all: positions are then simply 0..T-1."""
    if pad_mask is None or not pad_mask.any():
        return None
    real = (~pad_mask).long()
    return ((torch.cumsum(real, dim=1) - 1) * real).clamp_(min=0)


PositionIndex = Union[slice, Tensor]  # a range shared by every row, or [B, T] positions


def position_index(positions: Optional[Tensor], length: int, last_only: bool = False) -> PositionIndex:
    """Which table rows a (possibly incremental) input reads."""
    if positions is None:
        return slice(length - 1, length) if last_only else slice(0, length)
    return positions[:, -1:] if last_only else positions


def rows_at(table: Tensor, index: PositionIndex) -> Tensor:
    """Rows of one table [L, d] at ``index``, time-first: [T, B, d], or [T, 1, d] for a slice
    (broadcast over the batch). F.embedding keeps the backward a small [L, d] accumulation."""
    if isinstance(index, slice):
        return table[index].unsqueeze(1)
    return F.embedding(index.t(), table)
