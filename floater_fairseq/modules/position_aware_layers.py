"""fairseq Transformer layers with per-call position hooks, shared by every position encoder.

A position encoder never edits fairseq's code: for each forward call of the encoder or decoder it
returns one ``LayerPositions`` per layer, which ``applying`` sets on these layers and clears after:

* ``input``            added to the block input, x^(n) + p^(n)                      (Eqs. 7, 10)
* attention ``q/k/v``  additive projection biases, q_i = W_q x_i + b_q + b^(n)(t_i) (Eqs. 11-13)
* attention ``rotation``  rotary q/k (RoPE), applied per head after the projection
* attention ``logit_bias``  added to the attention logits per head (ALiBi)

Parameter names equal fairseq's, so vanilla checkpoints load unchanged (exact warm start).
"""
import contextlib
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fairseq.modules import MultiheadAttention
from fairseq.modules.rotary_positional_embedding import rotate_half
from fairseq.modules.transformer_layer import TransformerDecoderLayerBase, TransformerEncoderLayerBase


@dataclass
class AttentionPositions:
    """Position inputs of one attention module for one call (time-first tensors)."""

    q: Optional[Tensor] = None  # [T, B|1, d] added to W_q x
    k: Optional[Tensor] = None  # [S, B|1, d]
    v: Optional[Tensor] = None  # [S, B|1, d]
    rotation: Optional[Tuple[Tensor, Tensor]] = None  # (cos, sin) [T, B|1, head_dim] for q and k
    logit_bias: Optional[Tensor] = None  # [heads, T, S] added to q.k / sqrt(d)


@dataclass
class LayerPositions:
    input: Optional[Tensor] = None  # [T, B|1, d] added to the block input
    self_attention: Optional[AttentionPositions] = None
    cross_attention: Optional[AttentionPositions] = None


class PositionAwareProjection(nn.Linear):
    """nn.Linear whose output can get, for one call, an additive per-position bias and/or a rotary
    rotation of each head. Same parameter names as nn.Linear."""

    position_bias: Optional[Tensor] = None
    rotation: Optional[Tuple[Tensor, Tensor]] = None

    @classmethod
    def replacing(cls, linear: nn.Linear) -> "PositionAwareProjection":
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
        return module

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)
        if self.position_bias is not None:
            _check_length(self.position_bias, out)
            out = out + self.position_bias
        if self.rotation is not None:
            cos, sin = self.rotation
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
    """fairseq MultiheadAttention with the hooks of ``AttentionPositions``. Without positions set
    it takes fairseq's own (fused) path; with them, the Python path that calls q/k/v_proj and
    ``apply_sparse_mask`` (fairseq's hook on the attention logits)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in ("q_proj", "k_proj", "v_proj"):
            setattr(self, name, PositionAwareProjection.replacing(getattr(self, name)))
        self._skip_embed_dim_check_default = self.skip_embed_dim_check
        self.logit_bias: Optional[Tensor] = None

    def set_positions(self, positions: Optional[AttentionPositions]):
        positions = positions or AttentionPositions()
        self.q_proj.position_bias, self.k_proj.position_bias, self.v_proj.position_bias = (
            positions.q, positions.k, positions.v)
        self.q_proj.rotation = self.k_proj.rotation = positions.rotation
        self.logit_bias = positions.logit_bias
        hooked = any(x is not None for x in (positions.q, positions.k, positions.v, positions.rotation,
                                             positions.logit_bias))
        # fairseq's fused path hands the projection *weights* to F.multi_head_attention_forward and
        # would skip the hooks; this switch (meant for pruning) selects the Python path.
        self.skip_embed_dim_check = self._skip_embed_dim_check_default or hooked

    def apply_sparse_mask(self, attn_weights: Tensor, tgt_len: int, src_len: int, bsz: int) -> Tensor:
        if self.logit_bias is None:
            return attn_weights
        bias = self.logit_bias[:, -tgt_len:, -src_len:].to(attn_weights.dtype)
        return (attn_weights.view(bsz, self.num_heads, tgt_len, src_len) + bias).view_as(attn_weights)


class _LayerPositionHooks:
    """What both layer kinds do with their LayerPositions (set per call, cleared after)."""

    input_signal: Optional[Tensor] = None

    def set_positions(self, positions: Optional[LayerPositions]):
        positions = positions or LayerPositions()
        self.input_signal = positions.input
        self.self_attn.set_positions(positions.self_attention)
        if getattr(self, "encoder_attn", None) is not None:
            self.encoder_attn.set_positions(positions.cross_attention)

    def forward(self, x, *args, **kwargs):
        if self.input_signal is not None:
            x = x + self.input_signal
        return super().forward(x, *args, **kwargs)


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
    """Set ``positions`` (one per layer) for the duration of one encoder/decoder call."""
    if positions is None:
        yield
        return
    if len(positions) != len(layers):
        raise RuntimeError(f"got positions for {len(positions)} layers, the stack has {len(layers)}")
    try:
        for layer, layer_positions in zip(layers, positions):
            layer.set_positions(layer_positions)
        yield
    finally:
        for layer in layers:
            layer.set_positions(None)


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
