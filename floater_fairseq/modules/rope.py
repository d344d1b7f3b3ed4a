"""Rotary position embedding (RoPE, Su et al. 2021) in every self-attention block.

q and k of each head are rotated by their token's position i: pairs (x_j, x_{j+h/2}) turn by the
angle i * base^(-2j/h), so q_i . k_j depends on i - j only. fairseq's rotate_half layout. Keys are
rotated before fairseq caches them, so incremental decoding rotates only the new step.
Cross-attention has no relative position between source and target and is left alone.
"""
from typing import Tuple

import torch

from ..options import add_options, fill_defaults
from .position_aware_layers import AttentionPositions, LayerPositions, PositionIndex
from .position_encoder import PositionEncoder, register_position_encoder


@register_position_encoder("rope")
class RotaryPositionEncoder(PositionEncoder):
    acts_in_attention = True
    supported_blocks = ("all",)

    def __init__(self, args, num_layers):
        super().__init__(args, num_layers)
        self.base = args.rope_base
        self.head_dims = {"encoder": args.encoder_embed_dim // args.encoder_attention_heads,
                          "decoder": args.decoder_embed_dim // args.decoder_attention_heads}
        for side, head_dim in self.head_dims.items():
            if head_dim % 2:
                raise ValueError(f"rope rotates pairs of dimensions: the {side} head dimension ({head_dim}) must be even")

    @staticmethod
    def add_args(group):
        add_options(group, "rope")

    @staticmethod
    def set_defaults(args):
        fill_defaults(args, "rope")

    def rotation(self, index: PositionIndex, head_dim: int, device) -> Tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) [T, B|1, head_dim] in float32 for the positions ``index``."""
        if isinstance(index, slice):
            positions = torch.arange(index.start, index.stop, device=device).unsqueeze(1)
        else:
            positions = index.t()
        inverse_frequency = self.base ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
        angles = positions.to(torch.float32).unsqueeze(-1) * inverse_frequency
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos(), angles.sin()

    def layer_positions(self, call):
        device = call.index.device if torch.is_tensor(call.index) else None
        cos, sin = self.rotation(call.index, self.head_dims[call.side], device)
        attention = AttentionPositions(cos=cos.to(call.dtype), sin=sin.to(call.dtype))
        return [LayerPositions(self_attention=attention) for _ in range(self.num_layers[call.side])]

    def extra_repr(self):
        return f"base={self.base:g}"
