"""The one interface every position encoder of floater_transformer implements.

A ``PositionEncoder`` is built once per model. fairseq builds its Transformer with the encoder's
choice of fairseq's own input embedding (``configure``); then, on every encoder/decoder call,
the model asks ``layer_positions(call)`` for what each layer adds (see position_aware_layers).
The base class is the null object: ``--pos-encoder none``.
"""
import contextlib
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

from .position_aware_layers import (
    LayerPositions,
    PositionAwareAttention,
    PositionIndex,
    position_index,
    real_token_positions,
    rows_at,
)

SIDES = ("encoder", "decoder")
UNBOUNDED_POSITIONS = sys.maxsize // 2

POSITION_ENCODER_REGISTRY: Dict[str, type] = {}


def register_position_encoder(name: str):
    def register(cls):
        if name in POSITION_ENCODER_REGISTRY:
            raise ValueError(f"position encoder {name!r} is already registered")
        cls.name = name
        POSITION_ENCODER_REGISTRY[name] = cls
        return cls
    return register


class PositionRangeError(ValueError):
    """An input is longer than a fixed-length position encoder can encode."""


@dataclass
class PositionCall:
    """One call of the encoder ('encoder' side, source tokens) or decoder ('decoder', target)."""

    side: str
    index: PositionIndex  # positions of this call's tokens (the last one only when incremental)
    length: int  # tokens so far (the keys of self-attention)
    dtype: torch.dtype
    incremental: bool = False
    source_index: Optional[PositionIndex] = None  # decoder: source positions, None if not needed
    source_length: int = 0
    # incremental decoding: an earlier step of this generate call already checked the encoder's
    # cached inference solution against its parameters, which cannot change within the call
    cache_checked: bool = False
    # incremental decoding: tensors an encoder keeps for the rest of this generate call (fairseq's
    # incremental_state), e.g. FLOATER's projection biases with the position term folded in
    step_cache: Optional[Dict[str, Tensor]] = None

    # the real-token positions of the tokens (None: no padding), which the encoder passes on to the
    # decoder's cross-attention so that it need not check the padding again
    token_positions: Optional[Tensor] = None

    @classmethod
    def for_tokens(cls, side, tokens, padding_idx, dtype, incremental=False, **kwargs):
        # An incremental step is the prefix's last token: its position is the step count, as for
        # fairseq's own positional embeddings (generation never pads the prefix); no padding check,
        # which would cost a host synchronisation per step.
        positions = None if incremental else real_token_positions(tokens.eq(padding_idx))
        length = tokens.size(1)
        call = cls(side, position_index(positions, length, last_only=incremental), length, dtype,
                   incremental, **kwargs)
        call.token_positions = positions
        return call

    @staticmethod
    def source_positions(length: int, positions: Optional[Tensor]) -> dict:
        """The decoder's view of the source: real-token ``positions`` (None: no padding)."""
        return {"source_index": position_index(positions, length), "source_length": length}


class PositionEncoder(nn.Module):
    """No position signal (``--pos-encoder none``); the base of every encoder.

    Subclasses override what they need:
      add_args / set_defaults  -- their flags (defaults only via getattr)
      configure(cfg)           -- fairseq's own input embedding for this encoder
      install(model)           -- after fairseq has built the model (e.g. own input embedding)
      acts_in_attention        -- True if layer_positions sets attention inputs (q/k/v, rotary, logits)
      max_positions(side)      -- None when any length can be encoded
      solving(length)          -- context shared by one model forward (FLOATER: one ODE solve)
      layer_positions(call)    -- per-layer LayerPositions for one call, or None
      position_matrices(n)     -- named positions x dims matrices, for analyze_positions
    """

    name = "none"
    supported_blocks = ("all", "input")
    uses_source_positions = False  # does the decoder need the source positions (cross-attention)?
    acts_in_attention = False  # does it set q/k/v biases, rotations or logit biases?

    def __init__(self, args, num_layers: Dict[str, int]):
        super().__init__()
        if args.pos_blocks not in self.supported_blocks:
            raise ValueError(
                f"--pos-encoder {self.name} does not support --pos-blocks {args.pos_blocks}; "
                f"use one of: {', '.join(self.supported_blocks)}"
            )
        self.blocks = args.pos_blocks
        self.num_layers = dict(num_layers)
        self.embed_dim = args.encoder_embed_dim
        self._coders = None

    @staticmethod
    def add_args(group):
        pass

    @staticmethod
    def set_defaults(args):
        pass

    @classmethod
    def configure(cls, args, cfg):
        cfg.no_token_positional_embeddings = True  # our signal (if any) comes through the hooks

    def install(self, model):
        self._coders = {"encoder": model.encoder, "decoder": model.decoder}  # not registered: no cycle
        if self.acts_in_attention:
            for module in model.modules():
                if isinstance(module, PositionAwareAttention):
                    module.use_position_hooks()

    def part(self, name: str) -> Optional["PositionEncoder"]:
        """This encoder if it is ``name``, a composite's part of that name, else None."""
        return self if self.name == name else None

    def max_positions(self, side: str) -> Optional[int]:
        return None

    def check_length(self, side: str, length: int):
        limit = self.max_positions(side)
        if limit is not None and length > limit:
            which = "--max-source-positions" if side == "encoder" else "--max-target-positions"
            raise PositionRangeError(
                f"the {side} input has {length} positions but the fixed-length '{self.name}' position "
                f"encoder encodes at most {limit} (set by {which} or the encoder's own length flag at "
                f"training time). Shorten or skip the input (fairseq-generate "
                f"--skip-invalid-size-inputs-valid-test), or use an encoder that extrapolates "
                f"(floater, sinusoidal, rope, alibi)."
            )

    def solving(self, length: int):
        return contextlib.nullcontext()

    def layer_positions(self, call: PositionCall) -> Optional[List[LayerPositions]]:
        return None

    def position_matrices(self, length: int) -> Dict[str, Tensor]:
        raise NotImplementedError(
            f"--pos-encoder {self.name} produces no absolute positions x dims matrix to analyse"
        )

    def extra_repr(self) -> str:
        return f"blocks={self.blocks}"


class AbsolutePositionEncoder(PositionEncoder):
    """An encoder defined by a table of vectors per position: ``table(side, n)`` is [n, K, d] with
    one trajectory per block (``--pos-blocks all``: added to the input of every block, Eq. 10) or
    K = 1 (``--pos-blocks input``: added to the token embeddings, through fairseq's
    ``embed_positions`` hook; encoders whose input form is fairseq's own module set
    ``fairseq_input_embedding``)."""

    fairseq_input_embedding = False

    def num_tables(self, side: str) -> int:
        return self.num_layers[side] if self.blocks == "all" else 1

    def table(self, side: str, length: int) -> Tensor:
        raise NotImplementedError

    def install(self, model):
        super().install(model)
        if self.blocks == "input" and not self.fairseq_input_embedding:
            for side, coder in self._coders.items():
                coder.embed_positions = TablePositionalEmbedding(self, side, coder)

    def layer_positions(self, call):
        if self.blocks != "all":
            return None
        table = self.table(call.side, call.length)
        return [LayerPositions(input=rows_at(table[:, n], call.index).to(call.dtype))
                for n in range(table.size(1))]

    def position_matrices(self, length):
        matrices = {}
        for side in SIDES:
            table = self.table(side, length)
            if self.blocks == "input":
                matrices[f"{side} input"] = table[:, 0]
            for n in range(table.size(1) if self.blocks == "all" else 0):
                matrices[f"{side} block {n + 1}"] = table[:, n]
        return matrices


class TablePositionalEmbedding(nn.Module):
    """Row 0 of an encoder's table at the input embeddings, with fairseq's positional-embedding
    interface (forward(input, incremental_state, positions), .max_positions). Real-token positions:
    left or right padding does not change a token's position."""

    def __init__(self, encoder: AbsolutePositionEncoder, side: str, coder: nn.Module):
        super().__init__()
        # references, not submodules: the encoder is registered once, on the model
        self._encoder, self._coder = (encoder,), (coder,)
        self.side = side
        self.padding_idx = coder.padding_idx
        self.max_positions = encoder.max_positions(side) or UNBOUNDED_POSITIONS

    def forward(self, input, incremental_state=None, positions=None):
        pad_mask = input.eq(self.padding_idx)
        if positions is not None:  # fairseq-style positions start at padding_idx + 1
            positions = (positions - self.padding_idx - 1).clamp(min=0)
        else:
            positions = real_token_positions(pad_mask)
        length = input.size(1)
        incremental = incremental_state is not None
        index = position_index(positions, length, last_only=incremental)
        table = self._encoder[0].table(self.side, length)[:, 0]
        signal = rows_at(table, index).transpose(0, 1)  # [B|1, T, d]
        if incremental:
            pad_mask = pad_mask[:, -1:]
        signal = signal * (~pad_mask).unsqueeze(-1)  # zero at pads, like fairseq's embeddings
        return signal.to(self._coder[0].embed_tokens.weight.dtype)


register_position_encoder("none")(PositionEncoder)
