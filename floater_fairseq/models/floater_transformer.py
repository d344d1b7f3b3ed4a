"""floater_transformer: fairseq's Transformer with a choice of position encoder.

``--pos-encoder`` picks one module behind one interface (modules/position_encoder.py): floater
(default), sinusoidal, learned, none, shifted-basis, rope, alibi; ``--pos-blocks all|input``
says where an absolute encoder injects its signal. ``--encoder-self-attention`` /
``--decoder-self-attention kernelized-rpe`` swap fairseq's softmax self-attention for kernelized
attention with an FFT relative bias (modules/kernelized_attention.py). Only the hooks change: fairseq builds the
Transformer, our layers expose per-call position hooks, and the encoder/decoder ask the position
encoder what to set on each call.
"""
import argparse
import logging

from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import (
    TransformerConfig,
    TransformerDecoderBase,
    TransformerEncoderBase,
    TransformerModel,
    base_architecture,
    tiny_architecture,
    transformer_iwslt_de_en,
    transformer_vaswani_wmt_en_de_big,
    transformer_vaswani_wmt_en_fr_big,
    transformer_wmt_en_de,
)
from fairseq.modules.checkpoint_activations import checkpoint_wrapper
from fairseq.distributed import fsdp_wrap

from ..options import add_options, fill_defaults
from ..modules.kernelized_attention import (
    add_self_attention_args,
    self_attention_defaults,
    self_attention_module,
)
from ..modules.position_aware_layers import PositionAwareDecoderLayer, PositionAwareEncoderLayer, applying
from ..modules.composite import position_encoder_class
from ..modules.position_encoder import POSITION_ENCODER_REGISTRY, PositionCall, PositionEncoder, real_token_positions

logger = logging.getLogger(__name__)

# fairseq's own position flags: here the position encoder decides, so they would silently conflict
FAIRSEQ_POSITION_FLAGS = {
    "no_token_positional_embeddings": "--pos-encoder none",
    "encoder_learned_pos": "--pos-encoder learned --pos-blocks input",
    "decoder_learned_pos": "--pos-encoder learned --pos-blocks input",
}


@register_model("floater_transformer")
class FloaterTransformerModel(TransformerModel):
    """Transformer whose position encoder is chosen by --pos-encoder (FLOATER by default)."""

    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        group = parser.add_argument_group("position encoding (floater_fairseq)")
        add_options(group, "position", parsers={"pos_encoder": _pos_encoder_flag})
        for encoder in POSITION_ENCODER_REGISTRY.values():
            encoder.add_args(group)
        add_self_attention_args(parser.add_argument_group("self-attention (floater_fairseq)"))

    @classmethod
    def build_model(cls, args, task):
        floater_base_architecture(args)
        for flag, replacement in FAIRSEQ_POSITION_FLAGS.items():
            if getattr(args, flag, False):
                raise ValueError(
                    f"--{flag.replace('_', '-')} conflicts with floater_transformer's --pos-encoder; "
                    f"use {replacement} instead"
                )
        if args.encoder_embed_dim != args.decoder_embed_dim:
            raise ValueError(
                "floater_transformer's position encoders serve encoder and decoder from one module: "
                f"--encoder-embed-dim ({args.encoder_embed_dim}) must equal "
                f"--decoder-embed-dim ({args.decoder_embed_dim})"
            )
        if getattr(args, "cross_self_attention", False):
            raise ValueError("floater_transformer does not support --cross-self-attention")
        encoder_class = position_encoder_class(args.pos_encoder)
        if "alibi" in args.pos_encoder.split("+") and "kernelized-rpe" in (args.encoder_self_attention,
                                                                 args.decoder_self_attention):
            raise ValueError("--pos-encoder alibi biases attention logits, which kernelized-rpe "
                             "attention does not form; it learns its own relative bias: use "
                             "--pos-encoder none (or rope, floater, ...) with kernelized-rpe")
        model = super().build_model(args, task)
        num_layers = {"encoder": len(model.encoder.layers), "decoder": len(model.decoder.layers)}
        model.position_encoder = encoder_class(args, num_layers)
        model.position_encoder.install(model)
        model.encoder.attach_position_encoder(model.position_encoder)
        model.decoder.attach_position_encoder(model.position_encoder)
        return model

    @classmethod
    def _layer_config(cls, args, side):
        cfg = TransformerConfig.from_namespace(args)
        position_encoder_class(args.pos_encoder).configure(args, cfg)
        cfg.self_attention_module = self_attention_module(args, side)  # read by the layers
        return cfg

    @classmethod
    def build_encoder(cls, args, src_dict, embed_tokens):
        return FloaterTransformerEncoder(cls._layer_config(args, "encoder"), src_dict, embed_tokens)

    @classmethod
    def build_decoder(cls, args, tgt_dict, embed_tokens):
        return FloaterTransformerDecoder(cls._layer_config(args, "decoder"), tgt_dict, embed_tokens)

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        try:
            return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)
        except RuntimeError as error:
            mismatch = position_parameter_mismatch(self.state_dict(), state_dict)  # keys upgraded in place
            if not mismatch:
                raise
            raise CheckpointMismatchError(mismatch) from error

    def forward(self, src_tokens, src_lengths, prev_output_tokens, **kwargs):
        # FLOATER: one odeint call serves the encoder and the decoder of this forward pass
        length = max(src_tokens.size(1), prev_output_tokens.size(1))
        with self.position_encoder.solving(length):
            return super().forward(src_tokens, src_lengths, prev_output_tokens, **kwargs)


def _pos_encoder_flag(text: str) -> str:
    """argparse type of --pos-encoder: a registered encoder or a '+' composite of them."""
    try:
        position_encoder_class(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error))
    return text


# Parameter names that belong to one position encoder or self-attention kind, and who owns them
POSITION_PARAMETERS = (
    ("position_encoder.signal.", "FLOATER's ODE (--pos-encoder floater)"),
    ("position_encoder.", "a position encoder's own parameters (--pos-encoder learned/shifted-basis --pos-blocks all, ...)"),
    ("embed_positions.weight", "a learned input embedding (--pos-encoder learned --pos-blocks input)"),
    ("embed_positions._float_tensor", "fairseq's input sinusoid (--pos-encoder sinusoidal/floater)"),
    ("embed_positions.", "an input position embedding"),
    ("self_attn.rpe_bias", "kernelized-rpe self-attention (--*-self-attention kernelized-rpe)"),
    ("self_attn.feature_projection", "kernelized-rpe self-attention (--*-self-attention kernelized-rpe)"),
)


def _owner(key: str):
    return next((owner for pattern, owner in POSITION_PARAMETERS if pattern in key), None)


def position_parameter_mismatch(model_state, checkpoint_state) -> str:
    """What differs between a model's and a checkpoint's position parameters ('' if nothing)."""
    lines = []
    for key in sorted(set(checkpoint_state) - set(model_state)):
        if _owner(key):
            lines.append(f"  checkpoint has {key}: {_owner(key)}, which this model does not")
    for key in sorted(set(model_state) - set(checkpoint_state)):
        if _owner(key):
            lines.append(f"  model expects {key}: {_owner(key)}, which the checkpoint lacks")
    for key in sorted(set(model_state) & set(checkpoint_state)):
        if _owner(key) and tuple(model_state[key].shape) != tuple(checkpoint_state[key].shape):
            lines.append(f"  {key}: checkpoint {tuple(checkpoint_state[key].shape)} vs model "
                         f"{tuple(model_state[key].shape)} (max positions / window / features differ)")
    return "\n".join(lines)


class CheckpointMismatchError(RuntimeError):
    def __init__(self, mismatch: str):
        super().__init__(
            "this checkpoint was trained with another position encoder or self-attention than the "
            f"model it is loaded into:\n{mismatch}\nBuild the model with the checkpoint's flags "
            "(fairseq-generate/-interactive/-validate read them from the checkpoint; with "
            "--restore-file or --finetune-from-model pass the same --pos-encoder, --pos-blocks, "
            "--*-self-attention and size flags), or turn a vanilla transformer checkpoint into a "
            "FLOATER one with python -m floater_fairseq.cli.migrate."
        )


def _wrap_layer(layer, cfg):
    """fairseq's activation checkpointing and FSDP wrapping of a layer (as its build_*_layer)."""
    if cfg.checkpoint_activations:
        layer = checkpoint_wrapper(layer, offload_to_cpu=cfg.offload_activations)
    return fsdp_wrap(layer, min_num_params=cfg.min_params_to_wrap if not cfg.checkpoint_activations else 0)


class _PositionAwareStack:
    """Encoder/decoder side: a reference to the model's position encoder, and the max length."""

    side = None

    def attach_position_encoder(self, encoder: PositionEncoder):
        self._position_encoder = (encoder,)  # a reference: registered once, on the model

    @property
    def position_encoder(self) -> PositionEncoder:
        return self._position_encoder[0]

    def max_positions(self):
        limit = self.position_encoder.max_positions(self.side)
        return super().max_positions() if limit is None else min(super().max_positions(), limit)

    def _dtype(self):
        return self.embed_tokens.weight.dtype


SOURCE_POSITIONS = "source_positions"  # encoder_out key: the source tokens' real-token positions


class FloaterTransformerEncoder(_PositionAwareStack, TransformerEncoderBase):
    side = "encoder"

    def build_encoder_layer(self, cfg):
        return _wrap_layer(PositionAwareEncoderLayer(cfg, return_fc=self.return_fc), cfg)

    def forward(self, src_tokens, src_lengths=None, return_all_hiddens: bool = False, token_embeddings=None):
        encoder = self.position_encoder
        encoder.check_length(self.side, src_tokens.size(1))
        call = PositionCall.for_tokens(self.side, src_tokens, self.padding_idx, self._dtype())
        with applying(self.layers, encoder.layer_positions(call)):
            out = super().forward(src_tokens, src_lengths, return_all_hiddens, token_embeddings)
        if encoder.uses_source_positions:  # for the decoder's cross-attention: no second padding check
            out[SOURCE_POSITIONS] = [] if call.token_positions is None else [call.token_positions]
        return out

    def reorder_encoder_out(self, encoder_out, new_order):
        reordered = super().reorder_encoder_out(encoder_out, new_order)
        if SOURCE_POSITIONS in encoder_out:
            reordered[SOURCE_POSITIONS] = [p.index_select(0, new_order) for p in encoder_out[SOURCE_POSITIONS]]
        return reordered


STEP_CACHE = "position_step_cache"  # incremental_state key: see extract_features


class FloaterTransformerDecoder(_PositionAwareStack, TransformerDecoderBase):
    side = "decoder"

    def build_decoder_layer(self, cfg, no_encoder_attn=False):
        return _wrap_layer(PositionAwareDecoderLayer(cfg, no_encoder_attn), cfg)

    def _cross_attention_cached(self, incremental_state) -> bool:
        # After the first step fairseq caches the cross-attention keys/values (with any source
        # position biases already added): source positions are then not needed again.
        if incremental_state is None or not self.layers or self.layers[0].encoder_attn is None:
            return False
        return "prev_key" in self.layers[0].encoder_attn._get_input_buffer(incremental_state)

    def extract_features(self, prev_output_tokens, encoder_out=None, incremental_state=None,
                         full_context_alignment=False, alignment_layer=None, alignment_heads=None):
        encoder = self.position_encoder
        encoder.check_length(self.side, prev_output_tokens.size(1))
        source = {}
        if (encoder.uses_source_positions and encoder_out is not None and encoder_out.get("encoder_out")
                and not self._cross_attention_cached(incremental_state)):
            length = encoder_out["encoder_out"][0].size(0)
            if SOURCE_POSITIONS in encoder_out:  # our encoder's: no second padding check
                positions = (encoder_out[SOURCE_POSITIONS] or [None])[0]
            else:  # an encoder_out from elsewhere
                positions = real_token_positions((encoder_out.get("encoder_padding_mask") or [None])[0])
            source = PositionCall.source_positions(length, positions)
        call = PositionCall.for_tokens(self.side, prev_output_tokens, self.padding_idx, self._dtype(),
                                       incremental=incremental_state is not None, **source)
        if incremental_state is not None:
            # fairseq makes a fresh incremental_state per generate call: one cache check per call,
            # and what the position encoder keeps for the call's later steps (call.step_cache)
            step_cache = self.get_incremental_state(incremental_state, STEP_CACHE)
            call.cache_checked = step_cache is not None
            call.step_cache = {} if step_cache is None else step_cache
            self.set_incremental_state(incremental_state, STEP_CACHE, call.step_cache)
        with applying(self.layers, encoder.layer_positions(call)):
            return super().extract_features(prev_output_tokens, encoder_out, incremental_state,
                                            full_context_alignment, alignment_layer, alignment_heads)


# ---------------------------------------------------------------------------------------------
# Architectures: floater defaults, then fairseq's namesake fills the rest. Defaults only via
# getattr, so every flag given on the command line wins.


@register_model_architecture("floater_transformer", "floater_transformer")
def floater_base_architecture(args):
    fill_defaults(args, "position")
    for encoder in POSITION_ENCODER_REGISTRY.values():
        encoder.set_defaults(args)
    self_attention_defaults(args)
    base_architecture(args)


@register_model_architecture("floater_transformer", "floater_transformer_tiny")
def floater_transformer_tiny(args):
    tiny_architecture(args)
    floater_base_architecture(args)


@register_model_architecture("floater_transformer", "floater_transformer_iwslt_de_en")
def floater_transformer_iwslt_de_en(args):
    transformer_iwslt_de_en(args)
    floater_base_architecture(args)


@register_model_architecture("floater_transformer", "floater_transformer_wmt_en_de")
def floater_transformer_wmt_en_de(args):
    transformer_wmt_en_de(args)
    floater_base_architecture(args)


@register_model_architecture("floater_transformer", "floater_transformer_vaswani_wmt_en_de_big")
def floater_transformer_vaswani_wmt_en_de_big(args):
    transformer_vaswani_wmt_en_de_big(args)
    floater_base_architecture(args)


@register_model_architecture("floater_transformer", "floater_transformer_vaswani_wmt_en_fr_big")
def floater_transformer_vaswani_wmt_en_fr_big(args):
    transformer_vaswani_wmt_en_fr_big(args)
    floater_base_architecture(args)
