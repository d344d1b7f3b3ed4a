"""memory_transformer_lm: a Transformer-XL-style decoder-only language model whose layers keep
long-range memory, short-range memory or none, each its own length (Rae & Razavi 2020, "Do
Transformers Need Deep Long-Range Memory?").

Layer l attends over [memory_l ; segment] (memory_l: the last M_l inputs of layer l from earlier
segments, detached), with a causal mask offset by the memory length:

    query i (window position M + i) sees keys j <= M + i (and j > M + i - R with an attention range R)

Positions (--memory-positions):
  relative  Transformer-XL's: a_ij = (q_i + u)^T k_j + (q_i + v)^T W_r s(M + i - j), s sinusoidal
  floater   FLOATER trajectories p^(l)(t) (one per layer, Eq. 10's block-input form) at *window*
            positions t = 0 .. M_l + T - 1, recomputed for every segment: memory slot j gets
            position j, current token i gets M_l + i, so every offset inside a window is exact
            and the ODE is solved only as far as the longest window, however long the stream.

Parameter count does not depend on the memory flags. Memory lives on the decoder between
forward calls (truncated BPTT over the ordered streams of the memory_language_modeling task),
one per train/eval mode so that validation never overwrites the training memory; during
generation it lives in fairseq's incremental_state and is reordered with the beams.
"""
import math
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fairseq.models import FairseqIncrementalDecoder, FairseqLanguageModel, register_model, register_model_architecture
from fairseq.modules import LayerNorm

from ..modules.floater import FloaterPositionEncoder, FloaterPositionSignal
from ..options import add_options, fill_defaults



def long_memory_layers(num_layers: int, count: int, placement: str) -> List[int]:
    """Indices of the --lrm-layers layers: the first K, the last K, or K evenly spaced (every
    N/K-th layer, ending with the last)."""
    if not 0 <= count <= num_layers:
        raise ValueError(f"--lrm-layers must be in [0, --decoder-layers={num_layers}], got {count}")
    if placement == "first":
        return list(range(count))
    if placement == "last":
        return list(range(num_layers - count, num_layers))
    return sorted({round((i + 1) * num_layers / count) - 1 for i in range(count)})


def sinusoid(positions: Tensor, dim: int) -> Tensor:
    """Transformer-XL's relative encoding s(d) = [sin(d w), cos(d w)], w_k = 10000^(-2k/dim)."""
    inverse = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) * -(math.log(10000.0) / dim))
    angles = positions.float().unsqueeze(1) * inverse.unsqueeze(0)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class MemoryAttentionLayer(nn.Module):
    """Pre-norm Transformer layer attending over [memory ; segment]."""

    def __init__(self, dim, heads, ffn_dim, dropout, attention_dropout, attention_range, relative):
        super().__init__()
        if dim % heads:
            raise ValueError(f"--decoder-embed-dim {dim} must be divisible by --decoder-attention-heads {heads}")
        self.heads, self.head_dim, self.attention_range = heads, dim // heads, attention_range
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.relative = relative
        if relative:  # Transformer-XL's W_r, u, v
            self.position_proj = nn.Linear(dim, dim, bias=False)
            self.content_bias = nn.Parameter(torch.zeros(heads, self.head_dim))
            self.position_bias = nn.Parameter(torch.zeros(heads, self.head_dim))
        self.attention_norm, self.ffn_norm = LayerNorm(dim), LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim))
        self.dropout, self.attention_dropout = nn.Dropout(dropout), nn.Dropout(attention_dropout)

    def forward(self, x: Tensor, memory: Optional[Tensor], position_signal: Optional[Tensor]) -> Tensor:
        """x [B, T, d]; memory [B, M, d] or None; position_signal [M + T, d] (floater) or None."""
        batch, length, dim = x.shape
        window = x if memory is None else torch.cat([memory.to(x.dtype), x], dim=1)
        offset = window.size(1) - length  # M
        h = self.attention_norm(window)
        if position_signal is not None:
            h = h + position_signal.to(h.dtype)
        q, k, v = self.qkv(h).view(batch, -1, 3, self.heads, self.head_dim).unbind(2)  # [B, K, H, dh]
        q = q[:, offset:]
        scores_q = q + self.content_bias if self.relative else q
        scores = torch.einsum("bihd,bjhd->bhij", scores_q, k)
        rows = torch.arange(length, device=x.device).unsqueeze(1) + offset  # window position of query i
        distance = rows - torch.arange(window.size(1), device=x.device).unsqueeze(0)  # M + i - j
        if self.relative:
            r = self.position_proj(sinusoid(torch.arange(window.size(1), device=x.device), dim).to(h.dtype))
            by_distance = torch.einsum("bihd,khd->bhik", q + self.position_bias,
                                       r.view(-1, self.heads, self.head_dim))  # [B, H, T, K] over d = 0..K-1
            scores = scores + by_distance.gather(-1, distance.clamp(min=0).expand(batch, self.heads, -1, -1))
        masked = distance < 0
        if self.attention_range:
            masked = masked | (distance >= self.attention_range)
        scores = (scores / math.sqrt(self.head_dim)).masked_fill(masked, float("-inf"))
        attention = self.attention_dropout(torch.softmax(scores.float(), dim=-1).to(v.dtype))
        context = torch.einsum("bhij,bjhd->bihd", attention, v).reshape(batch, length, dim)
        x = x + self.dropout(self.out(context))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class MemoryTransformerDecoder(FairseqIncrementalDecoder):
    def __init__(self, args, dictionary):
        super().__init__(dictionary)
        dim = args.decoder_embed_dim
        self.embed_tokens = nn.Embedding(len(dictionary), dim, padding_idx=dictionary.pad())
        nn.init.normal_(self.embed_tokens.weight, std=dim ** -0.5)
        self.embed_scale = math.sqrt(dim)
        self.dropout = nn.Dropout(args.dropout)
        long_layers = set(long_memory_layers(args.decoder_layers, args.lrm_layers, args.lrm_placement))
        self.memory_lengths = [args.lrm_len if i in long_layers else args.srm_len for i in range(args.decoder_layers)]
        relative = args.memory_positions == "relative"
        self.layers = nn.ModuleList(
            MemoryAttentionLayer(dim, args.decoder_attention_heads, args.decoder_ffn_embed_dim, args.dropout,
                                 args.attention_dropout, 0 if i in long_layers else args.srm_attention_range, relative)
            for i in range(args.decoder_layers))
        self.positions = None if relative else FloaterPositionSignal(
            args.decoder_layers, dim, dt=args.floater_dt, method=args.floater_method,
            step_size=args.floater_step_size, rtol=args.floater_rtol, atol=args.floater_atol,
            adjoint=args.floater_adjoint, hidden_dim=args.floater_hidden_dim, init_std=args.floater_init_std,
            dynamics=args.floater_dynamics, parallel_tol=args.floater_parallel_tol,
            activation=args.floater_activation, parallel_iterations=args.floater_parallel_iterations,
            parallel_window=args.floater_parallel_window, parallel_compile=args.floater_parallel_compile,
            fastest_period=args.floater_fastest_period)
        self.final_norm = LayerNorm(dim)
        self.max_target_positions = args.tokens_per_sample
        self._memory: Dict[bool, Optional[List[Optional[Tensor]]]] = {True: None, False: None}

    def reset_memory(self):
        """Forget every layer's memory (new epoch, new evaluation split)."""
        self._memory = {True: None, False: None}

    def memory_state(self) -> List[Optional[Tensor]]:
        return list(self._memory[self.training] or [None] * len(self.layers))

    def forward(self, prev_output_tokens, encoder_out=None, incremental_state=None, features_only=False, **kwargs):
        x, extra = self.extract_features(prev_output_tokens, incremental_state=incremental_state)
        return (x if features_only else self.output_layer(x)), extra

    def extract_features(self, prev_output_tokens, incremental_state=None, **kwargs):
        if incremental_state is not None:  # generation: one new token per step, memory in the state
            memory = self.get_incremental_state(incremental_state, "memory") or [None] * len(self.layers)
            tokens = prev_output_tokens[:, -1:]
        else:
            memory = self.memory_state()
            tokens = prev_output_tokens
            if any(m is not None and m.size(0) != tokens.size(0) for m in memory):
                memory = [None] * len(self.layers)  # a batch of other streams: no memory applies
        x = self.dropout(self.embed_scale * self.embed_tokens(tokens))
        table = None
        if self.positions is not None:
            longest = max((0 if m is None else m.size(1)) for m in memory) + x.size(1)
            table = self.positions.table(longest)  # [K, layers, d]
        new_memory, states = [], [x]
        for index, (layer, layer_memory, keep) in enumerate(zip(self.layers, memory, self.memory_lengths)):
            window = x.size(1) + (0 if layer_memory is None else layer_memory.size(1))
            x_in = x
            x = layer(x, layer_memory, None if table is None else table[:window, index])
            new_memory.append(self._kept(layer_memory, x_in, keep))
            states.append(x)
        if incremental_state is not None:
            self.set_incremental_state(incremental_state, "memory", new_memory)
        else:
            self._memory[self.training] = new_memory
        return self.final_norm(x), {"attn": [None], "inner_states": states}

    @staticmethod
    def _kept(memory: Optional[Tensor], layer_input: Tensor, length: int) -> Optional[Tensor]:
        """The last ``length`` inputs of the layer, detached: no gradient ever reaches memory."""
        if length == 0:
            return None
        joined = layer_input if memory is None else torch.cat([memory, layer_input], dim=1)
        return joined[:, -length:].detach()

    def output_layer(self, features):
        return F.linear(features, self.embed_tokens.weight)

    def max_positions(self):
        return self.max_target_positions

    def reorder_incremental_state(self, incremental_state, new_order):
        memory = self.get_incremental_state(incremental_state, "memory")
        if memory is not None:
            self.set_incremental_state(incremental_state, "memory",
                                       [None if m is None else m.index_select(0, new_order) for m in memory])


@register_model("memory_transformer_lm")
class MemoryTransformerLanguageModel(FairseqLanguageModel):
    """Decoder-only LM with per-layer memory (see the module docstring)."""

    @staticmethod
    def add_args(parser):
        parser.add_argument("--decoder-embed-dim", type=int, metavar="D")
        parser.add_argument("--decoder-ffn-embed-dim", type=int, metavar="D")
        parser.add_argument("--decoder-layers", type=int, metavar="N")
        parser.add_argument("--decoder-attention-heads", type=int, metavar="H")
        parser.add_argument("--dropout", type=float, metavar="P")
        parser.add_argument("--attention-dropout", type=float, metavar="P")
        add_options(parser, "memory-lm")
        add_options(parser, "floater")  # the solver of --memory-positions floater

    @classmethod
    def build_model(cls, args, task):
        memory_lm_base(args)
        if not hasattr(args, "tokens_per_sample"):
            args.tokens_per_sample = getattr(task, "tokens_per_sample", 512)
        return cls(MemoryTransformerDecoder(args, task.target_dictionary))

    def reset_memory(self):
        self.decoder.reset_memory()


def _fill(args, **values):
    """Architecture sizes: set only what the user did not give."""
    for name, value in values.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)


@register_model_architecture("memory_transformer_lm", "memory_transformer_lm")
def memory_lm_base(args):
    _fill(args, decoder_embed_dim=512, decoder_ffn_embed_dim=2048, decoder_layers=6, decoder_attention_heads=8,
          dropout=0.1, attention_dropout=0.0)
    fill_defaults(args, "memory-lm")
    FloaterPositionEncoder.set_defaults(args)  # the floater flags, the method resolved as FLOATER's
    if args.lrm_layers is None:
        args.lrm_layers = args.decoder_layers


@register_model_architecture("memory_transformer_lm", "memory_transformer_lm_tiny")
def memory_lm_tiny(args):
    _fill(args, decoder_embed_dim=32, decoder_ffn_embed_dim=64, decoder_layers=6, decoder_attention_heads=2,
          lrm_len=32, srm_len=8)
    memory_lm_base(args)
