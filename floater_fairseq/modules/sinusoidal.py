"""Sinusoidal position encoding (Vaswani et al. 2017) at the input, or at every block (Eq. 7).

``--pos-blocks input``: fairseq's own SinusoidalPositionalEmbedding (the vanilla Transformer).
``--pos-blocks all``: block n (1-based, in each of encoder and decoder) adds to its input

    p_i^(n) = S(i) + S(n),                                                          (Eq. 7)

S fairseq's sinusoid (sin | cos halves, timescales up to 1e4), i the token's real position
(0-based). This is the paper's block-dependent offset, not the same vector re-added at every
block as the authors' code did.
"""
import torch

from fairseq.modules import SinusoidalPositionalEmbedding

from .position_encoder import AbsolutePositionEncoder, register_position_encoder


@register_position_encoder("sinusoidal")
class SinusoidalPositionEncoder(AbsolutePositionEncoder):
    fairseq_input_embedding = True
    def __init__(self, args, num_layers):
        super().__init__(args, num_layers)
        self.register_buffer("_sinusoid", torch.empty(0, self.embed_dim), persistent=False)

    @classmethod
    def configure(cls, args, cfg):
        # input: fairseq's vanilla embedding; all: only the per-block signals of Eq. 7
        cfg.no_token_positional_embeddings = args.pos_blocks == "all"

    def sinusoid(self, length: int) -> torch.Tensor:
        """S(0..length-1) [length, d], float32; extended lazily, never stored in checkpoints."""
        if self._sinusoid.size(0) < length:
            table = SinusoidalPositionalEmbedding.get_embedding(max(length, 2 * self._sinusoid.size(0)), self.embed_dim)
            self._sinusoid = table.to(self._sinusoid.device)
        return self._sinusoid[:length]

    def table(self, side, length):
        if self.blocks == "input":  # what fairseq adds: S at positions padding_idx + 1 + i
            first = self._coders[side].padding_idx + 1
            return self.sinusoid(first + length)[first:].unsqueeze(1)
        blocks = self.sinusoid(self.num_layers[side] + 1)[1:]
        return self.sinusoid(length).unsqueeze(1) + blocks.unsqueeze(0)
