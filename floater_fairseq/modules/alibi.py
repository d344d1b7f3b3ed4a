"""ALiBi (Press et al. 2022): attention with linear biases in every self-attention block.

    logits_h(i, j) = q_i . k_j / sqrt(d) - m_h |i - j|

with the head slopes m_h of the paper (a geometric sequence 2^(-8h/H), interleaved for H not a
power of two). |i - j| covers the encoder (bidirectional) and the causal decoder alike: future
keys are masked anyway. Distances between columns equal distances between real tokens whatever
the padding, so no position index is needed; incremental decoding biases the last query only.
"""
import math

import torch

from .position_aware_layers import AttentionPositions, LayerPositions
from .position_encoder import PositionEncoder, register_position_encoder


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """m_h for h = 1..H (Press et al., Sec. 3)."""
    closest = 2 ** math.floor(math.log2(num_heads))
    slopes = [2 ** (-8 * h / closest) for h in range(1, closest + 1)]
    if closest < num_heads:  # the odd-numbered slopes of the next power of two
        slopes += [2 ** (-8 * h / (2 * closest)) for h in range(1, 2 * closest + 1, 2)][: num_heads - closest]
    return torch.tensor(slopes)


@register_position_encoder("alibi")
class ALiBiPositionEncoder(PositionEncoder):
    acts_in_attention = True
    supported_blocks = ("all",)

    def __init__(self, args, num_layers):
        super().__init__(args, num_layers)
        self.register_buffer("encoder_slopes", alibi_slopes(args.encoder_attention_heads), persistent=False)
        self.register_buffer("decoder_slopes", alibi_slopes(args.decoder_attention_heads), persistent=False)

    def logit_bias(self, side: str, num_queries: int, num_keys: int) -> torch.Tensor:
        """[heads, num_queries, num_keys]: the queries are the last ``num_queries`` positions."""
        slopes = self.encoder_slopes if side == "encoder" else self.decoder_slopes
        keys = torch.arange(num_keys, device=slopes.device)
        queries = keys[num_keys - num_queries:]
        distance = (queries.unsqueeze(1) - keys.unsqueeze(0)).abs()
        return -slopes.view(-1, 1, 1) * distance

    def layer_positions(self, call):
        num_queries = 1 if call.incremental else call.length
        bias = self.logit_bias(call.side, num_queries, call.length).to(call.dtype)
        attention = AttentionPositions(logit_bias=bias)
        return [LayerPositions(self_attention=attention) for _ in range(self.num_layers[call.side])]
