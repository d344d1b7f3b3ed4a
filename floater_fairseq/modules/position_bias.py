"""Position-dependent biases on attention projections (FLOATER's compatibility form, Eqs. 11-13):

    q_i = W_q x_i + b_q + b_q^(n)(t_i),   and the same for k and v.
"""
from typing import Dict, Iterable, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from fairseq.modules import MultiheadAttention


class PositionBiasedLinear(nn.Linear):
    """nn.Linear plus an optional per-position bias, set by the owning encoder/decoder for the
    duration of one forward call. Parameter names equal nn.Linear's, so a vanilla checkpoint
    loads unchanged (the basis of exact warm start)."""

    position_bias: Optional[torch.Tensor] = None  # [T, B or 1, out_features], time-first

    @classmethod
    def replacing(cls, linear: nn.Linear) -> "PositionBiasedLinear":
        if linear._forward_hooks or linear._forward_pre_hooks:
            raise ValueError(
                "FLOATER biases cannot be added to a projection with hooks "
                "(is --quant-noise-pq on? it is not supported with --pos-blocks all)"
            )
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module.in_features, module.out_features = linear.in_features, linear.out_features
        module.weight = linear.weight  # the same Parameter objects: nothing is copied
        module.bias = linear.bias
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if self.position_bias is None:
            return out
        if self.position_bias.size(0) != out.size(0):
            raise RuntimeError(
                f"position bias covers {self.position_bias.size(0)} positions, input has "
                f"{out.size(0)}: the encoder/decoder set the bias for a different input"
            )
        return out + self.position_bias


def add_projection_biases(attention: MultiheadAttention) -> Tuple[PositionBiasedLinear, ...]:
    """Swap q/k/v projections of a fairseq MultiheadAttention for PositionBiasedLinear."""
    if not isinstance(attention, MultiheadAttention):
        raise TypeError(f"expected fairseq MultiheadAttention, got {type(attention).__name__}")
    for name in ("q_proj", "k_proj", "v_proj"):
        setattr(attention, name, PositionBiasedLinear.replacing(getattr(attention, name)))
    # fairseq's fast path hands the projection *weights* to F.multi_head_attention_forward and
    # would skip our modules; this switch (meant for pruning) routes through q_proj/k_proj/v_proj.
    attention._set_skip_embed_dim_check()
    return attention.q_proj, attention.k_proj, attention.v_proj


def real_token_positions(pad_mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Zero-based index of each token among the real tokens of its row ([B, T] long), so that a
    token's position does not depend on left or right padding. Pads map to 0 (they are masked).
    Returns None when there is no padding at all: positions are then simply 0..T-1."""
    if pad_mask is None or not pad_mask.any():
        return None
    real = (~pad_mask).long()
    return ((torch.cumsum(real, dim=1) - 1) * real).clamp_(min=0)


PositionIndex = Union[slice, torch.Tensor]  # a range shared by every row, or [B, T] positions


def position_index(positions: Optional[torch.Tensor], length: int, last_only: bool = False) -> PositionIndex:
    """Which table rows a (possibly incremental) input reads."""
    if positions is None:
        return slice(length - 1, length) if last_only else slice(0, length)
    return positions[:, -1:] if last_only else positions


def rows_at(table: torch.Tensor, index: PositionIndex) -> torch.Tensor:
    """Rows of one trajectory ``table`` [L, d], time-first: [T, B, d], or [T, 1, d] for a slice
    (broadcast over the batch). F.embedding keeps the backward a small [L, d] accumulation."""
    if isinstance(index, slice):
        return table[index].unsqueeze(1)
    return F.embedding(index.t(), table)


class ProjectionBiasSlots:
    """The PositionBiasedLinear modules of one encoder or decoder, each bound to one trajectory of
    the position table and to the positions it reads ('source' or 'target')."""

    def __init__(self):
        self.slots: List[Tuple[PositionBiasedLinear, int, str]] = []

    def add(self, modules: Iterable[PositionBiasedLinear], rows: Iterable[int], kind: str):
        for module, row in zip(modules, rows):
            self.slots.append((module, row, kind))

    def set(self, table: torch.Tensor, indices: Dict[str, Optional[PositionIndex]], dtype: torch.dtype):
        """Bias every slot with its trajectory of ``table`` [L, K, d] at ``indices[kind]``; a kind
        mapped to None leaves its projections unbiased for this call."""
        for module, row, kind in self.slots:
            index = indices[kind]
            module.position_bias = None if index is None else rows_at(table[:, row], index).to(dtype)

    def clear(self):
        for module, _, _ in self.slots:
            module.position_bias = None
