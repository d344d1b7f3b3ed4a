"""Learned fixed-length position embedding (Gehring et al. 2017), at the input or every block.

``--pos-blocks input``: fairseq's own LearnedPositionalEmbedding (``--encoder-learned-pos``), so a
vanilla learned-position checkpoint is this model.
``--pos-blocks all``: block n adds its own learned vector P^(n)[i] to its input (Eq. 10 with a
table per block instead of an ODE).
Both encode at most --max-source-positions / --max-target-positions tokens: longer inputs get a
PositionRangeError (fairseq-generate reports them as invalid sizes before that).
"""
import torch
from torch import nn

from .position_encoder import AbsolutePositionEncoder, register_position_encoder


@register_position_encoder("learned")
class LearnedPositionEncoder(AbsolutePositionEncoder):
    fairseq_input_embedding = True
    def __init__(self, args, num_layers):
        super().__init__(args, num_layers)
        self.lengths = {"encoder": args.max_source_positions, "decoder": args.max_target_positions}
        if self.blocks == "all":
            # one [max_positions, blocks, d] table per side, initialised like fairseq's
            self.tables = nn.ParameterDict({
                side: nn.Parameter(torch.randn(self.lengths[side], self.num_layers[side], self.embed_dim)
                                   * self.embed_dim ** -0.5)
                for side in self.lengths
            })

    @classmethod
    def configure(cls, args, cfg):
        cfg.no_token_positional_embeddings = args.pos_blocks == "all"
        cfg.encoder.learned_pos = cfg.decoder.learned_pos = args.pos_blocks == "input"

    def max_positions(self, side):
        return self.lengths[side]

    def table(self, side, length):
        self.check_length(side, length)
        if self.blocks == "input":  # fairseq's rows for positions padding_idx + 1 + i
            embedding = self._coders[side].embed_positions
            first = embedding.padding_idx + 1
            return embedding.weight[first:first + length].unsqueeze(1)
        return self.tables[side][:length]
