"""Warm start (the paper's NMT protocol, App. B.2): turn a vanilla fairseq ``transformer*``
checkpoint into a ``floater_transformer*`` checkpoint that computes exactly the same function.

The compatibility form (Eqs. 11-13) adds b^(n)(t) to the q/k/v projections; with h's output
layer at zero and b(0) = 0 every bias is exactly 0, so the migrated model *is* the vanilla one.
Fine-tune it with half the peak LR and ``--reset-optimizer --reset-lr-scheduler
--reset-dataloader --reset-meters``:

    python -m floater_fairseq.cli.migrate checkpoints/vanilla/checkpoint_last.pt floater_init.pt
    fairseq-train ... --user-dir floater_fairseq --arch floater_transformer_wmt_en_de \\
        --restore-file floater_init.pt --reset-optimizer --reset-lr-scheduler \\
        --reset-dataloader --reset-meters --lr 3.5e-4
"""
import argparse
import copy
import os
import sys


from fairseq import checkpoint_utils
from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_REGISTRY

from ..checkpoints import plain_config, save
from ..models.floater_transformer import FloaterTransformerModel
from ..modules.floater import FloaterPositionEncoder
from ..options import OPTIONS, add_options

# Dimensions that must agree between the checkpoint and an explicitly requested --arch.
ARCH_DIMENSIONS = (
    "encoder_embed_dim", "decoder_embed_dim", "encoder_ffn_embed_dim", "decoder_ffn_embed_dim",
    "encoder_layers", "decoder_layers", "encoder_attention_heads", "decoder_attention_heads",
)


class MigrationError(ValueError):
    """The checkpoint cannot be turned into a FLOATER checkpoint; nothing was written."""


def floater_arch_for(vanilla_arch: str) -> str:
    candidate = "floater_" + vanilla_arch
    return candidate if candidate in ARCH_MODEL_REGISTRY else "floater_transformer"


def migrate_state(state: dict, arch: str = None, floater: dict = None) -> dict:
    """Return a new checkpoint dict; ``state`` is not modified. ``floater``: FLOATER options of the
    target (dest -> value, e.g. {"floater_dynamics": "paper"}); the others take today's defaults."""
    model_args = state.get("cfg", {}).get("model") if state.get("cfg") is not None else None
    if model_args is None:
        raise MigrationError("the checkpoint has no model configuration (cfg.model): is it a fairseq checkpoint?")
    vanilla_arch = model_args.get("arch") if hasattr(model_args, "get") else getattr(model_args, "arch", None)
    args = copy.deepcopy(model_args) if isinstance(model_args, argparse.Namespace) else argparse.Namespace(**dict(model_args))
    model_class = ARCH_MODEL_REGISTRY.get(vanilla_arch)
    # floater_transformer with fairseq's input sinusoid and nothing else is the vanilla model too
    vanilla_floater = model_class is FloaterTransformerModel and (
        getattr(args, "pos_encoder", None), getattr(args, "pos_blocks", None)) == ("sinusoidal", "input")
    if model_class is None or (model_class.__name__ != "TransformerModel" and not vanilla_floater):
        raise MigrationError(
            f"the checkpoint's arch is {vanilla_arch!r}, not one of fairseq's transformer* "
            "architectures (or floater_transformer* with --pos-encoder sinusoidal --pos-blocks input): "
            "only vanilla Transformer checkpoints can be migrated"
        )
    target_arch = arch or (vanilla_arch if vanilla_floater else floater_arch_for(vanilla_arch))
    if target_arch not in ARCH_MODEL_REGISTRY or ARCH_MODEL_REGISTRY[target_arch] is not FloaterTransformerModel:
        floater_archs = sorted(a for a, m in ARCH_MODEL_REGISTRY.items() if m is FloaterTransformerModel)
        raise MigrationError(f"--arch {target_arch!r} is not a floater architecture; choose one of {floater_archs}")
    if arch is not None:
        reference = argparse.Namespace()
        ARCH_CONFIG_REGISTRY[target_arch](reference)
        mismatched = [
            f"{key}: checkpoint {getattr(args, key, None)} vs {target_arch} {getattr(reference, key)}"
            for key in ARCH_DIMENSIONS if getattr(args, key, None) != getattr(reference, key)
        ]
        if mismatched:
            raise MigrationError(
                "the checkpoint's dimensions do not match --arch %s (%s); omit --arch to keep the "
                "checkpoint's own dimensions" % (target_arch, "; ".join(mismatched))
            )
    for flag in ("no_token_positional_embeddings", "encoder_learned_pos", "decoder_learned_pos"):
        if getattr(args, flag, False):
            raise MigrationError(
                f"the checkpoint was trained with --{flag.replace('_', '-')}; FLOATER's compatibility "
                "form (exact warm start) keeps the vanilla sinusoidal input embedding"
            )
    args.arch = target_arch
    args._name = target_arch
    args.pos_encoder, args.pos_blocks = "floater", "all"
    # FLOATER settings the source carries were never used by it (a floater_transformer with the
    # sinusoid saves the defaults of its day): the target's are the ones given, or today's defaults
    for option in OPTIONS.values():
        if option.group == "floater" and hasattr(args, option.dest):
            delattr(args, option.dest)
    for dest, value in (floater or {}).items():
        setattr(args, dest, value)
    args.floater_init_std = 0.0  # h's output layer == 0: every bias is exactly zero
    ARCH_CONFIG_REGISTRY[target_arch](args)
    if args.encoder_embed_dim != args.decoder_embed_dim:
        raise MigrationError(
            f"encoder_embed_dim {args.encoder_embed_dim} != decoder_embed_dim {args.decoder_embed_dim}: "
            "FLOATER shares one ODE between encoder and decoder"
        )

    vanilla_weights = state["model"]
    if any(key.startswith("position_encoder.") for key in vanilla_weights):
        raise MigrationError("the checkpoint already contains position-encoder parameters (position_encoder.*)")
    missing = [k for k in ("encoder.layers.0.self_attn.q_proj.weight", "decoder.layers.0.encoder_attn.k_proj.weight") if k not in vanilla_weights]
    if missing:
        raise MigrationError(f"the checkpoint's weights lack {missing}: not an encoder-decoder transformer")
    encoder = FloaterPositionEncoder(args, {"encoder": args.encoder_layers, "decoder": args.decoder_layers})
    dtype = vanilla_weights["encoder.layers.0.self_attn.q_proj.weight"].dtype
    weights = dict(vanilla_weights)
    weights.update({f"position_encoder.{k}": v.to(dtype) for k, v in encoder.state_dict().items()})

    migrated = dict(state)
    migrated["model"] = weights
    # fairseq saves the config as plain containers (trainer.state_dict); do the same so that
    # every stock tool loads the result under safe loading.
    cfg = copy.deepcopy(plain_config(state)["cfg"])
    cfg["model"] = args
    migrated["cfg"] = cfg
    migrated["last_optimizer_state"] = None  # the parameter set changed: fine-tune with --reset-optimizer
    return migrated


def migrate(source: str, destination: str, arch: str = None, floater: dict = None) -> None:
    if not os.path.isfile(source):
        raise MigrationError(f"no such checkpoint: {source}")
    if os.path.abspath(source) == os.path.abspath(destination):
        raise MigrationError("the output path must differ from the input checkpoint")
    state = checkpoint_utils.load_checkpoint_to_cpu(source)
    migrated = migrate_state(state, arch, floater)
    save(migrated, destination)  # atomic: a reader never sees a half-written checkpoint


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m floater_fairseq.cli.migrate", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("vanilla", help="checkpoint of a fairseq transformer* architecture")
    parser.add_argument("output", help="where to write the floater_transformer* checkpoint")
    parser.add_argument("--arch", help="floater architecture (default: floater_ + the checkpoint's arch)")
    add_options(parser.add_argument_group("FLOATER of the target (default: today's defaults)"), "floater")
    args = parser.parse_args(argv)
    floater = {option.dest: getattr(args, option.dest) for option in OPTIONS.values()
               if option.group == "floater" and getattr(args, option.dest) not in (None, False)}
    try:
        migrate(args.vanilla, args.output, args.arch, floater)
    except MigrationError as error:
        print(f"migrate: error: {error}; nothing was written", file=sys.stderr)
        return 2
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
