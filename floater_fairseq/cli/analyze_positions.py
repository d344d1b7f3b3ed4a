"""Stable rank and distance preservation of a position encoder's positions x dims matrices
(Zheng et al. 2021; docs/other-systems.md part A), for an untrained encoder or a checkpoint:

    SR = ||P||_F^2 / ||P||_2^2
    cr(delta) = mean_i <p_i, p_{i+delta}>   (rows divided by the largest row norm)
    DP = fraction of offsets delta in [0, n) with cr(delta) > 0.1

Usage:
    python -m floater_fairseq.cli.analyze_positions CHECKPOINT.pt [--positions N] [--out-dir DIR]
    python -m floater_fairseq.cli.analyze_positions ENCODER [--positions N] [fairseq model flags ...]
        (ENCODER = a --pos-encoder name, e.g. floater, sinusoidal, shifted-basis --basis gaussian)
Prints one row per matrix (FLOATER: one per block and projection) and saves heatmap.png (cosine
of p_i, p_j) and profile.png (cr(delta)) in --out-dir, plus analysis.json.
"""
import argparse
import json
import os
import sys
import types
from typing import Dict

import torch

from ..models.floater_transformer import FloaterTransformerModel
from ..modules.composite import position_encoder_class
from ..modules.position_encoder import PositionRangeError
from . import common

DP_THRESHOLD = 0.1
MAX_HEATMAPS = 12


def stable_rank(matrix: torch.Tensor) -> float:
    matrix = matrix.double()
    return float(matrix.pow(2).sum() / torch.linalg.matrix_norm(matrix, ord=2) ** 2)


def correlation_profile(matrix: torch.Tensor) -> torch.Tensor:
    """cr(delta) for delta = 0..n-1: mean inner product of rows delta apart, rows scaled by the
    largest row norm (so cr(0) <= 1)."""
    matrix = matrix.double()
    matrix = matrix / matrix.norm(dim=1).max().clamp(min=1e-12)
    gram = matrix @ matrix.t()
    return torch.stack([torch.diagonal(gram, offset).mean() for offset in range(matrix.size(0))])


def distance_preservation(profile: torch.Tensor, threshold: float = DP_THRESHOLD) -> float:
    return float((profile > threshold).double().mean())


def cosine_similarity(matrix: torch.Tensor) -> torch.Tensor:
    matrix = matrix.double()
    matrix = matrix / matrix.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return matrix @ matrix.t()


def analyse(matrices: Dict[str, torch.Tensor]) -> Dict[str, Dict]:
    results = {}
    for name, matrix in matrices.items():
        profile = correlation_profile(matrix)
        sr, dp = stable_rank(matrix), distance_preservation(profile)
        results[name] = {"stable_rank": sr, "distance_preservation": dp, "sr_times_dp": sr * dp,
                         "profile": profile.tolist()}
    return results


def _dictionary(size: int):
    """A fairseq Dictionary of ``size`` entries: only its size matters when rebuilding a model."""
    from fairseq.data import Dictionary

    dictionary = Dictionary()
    for i in range(size - len(dictionary)):
        dictionary.add_symbol(f"<w{i}>")
    return dictionary


def model_from_checkpoint(path: str):
    from fairseq import checkpoint_utils

    state = checkpoint_utils.load_checkpoint_to_cpu(path)
    args = state["cfg"]["model"] if state.get("cfg") is not None else state["args"]
    args = argparse.Namespace(**vars(args)) if isinstance(args, argparse.Namespace) else argparse.Namespace(**args)
    if getattr(args, "_name", getattr(args, "arch", None)) is None or not hasattr(args, "pos_encoder"):
        raise ValueError(f"{path} is not a floater_transformer checkpoint (no --pos-encoder in its config)")
    weights = state["model"]
    source = _dictionary(weights["encoder.embed_tokens.weight"].size(0))
    target = _dictionary(weights["decoder.embed_tokens.weight"].size(0))
    model = FloaterTransformerModel.build_model(args, types.SimpleNamespace(source_dictionary=source, target_dictionary=target))
    model.load_state_dict(weights, strict=True)
    return model.eval()


def model_from_flags(encoder: str, flags):
    from fairseq import options

    try:
        position_encoder_class(encoder)
    except ValueError as error:
        raise ValueError(f"{encoder!r} is neither a checkpoint file nor a position encoder: {error}")
    flags = list(flags)
    if "--arch" not in flags:
        flags = ["--arch", "floater_transformer", *flags]
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, ["unused-data", "--task", "translation", "--pos-encoder", encoder, *flags])
    dictionary = _dictionary(16)
    model = FloaterTransformerModel.build_model(args, types.SimpleNamespace(source_dictionary=dictionary, target_dictionary=dictionary))
    return model.eval()


def save_plots(matrices, results, out_dir):
    plt = common.pyplot()

    names = list(matrices)[:MAX_HEATMAPS]
    cols = min(4, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        ax.axis("on")
        image = ax.imshow(cosine_similarity(matrices[name]).numpy(), vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("position j", fontsize=7)
        ax.set_ylabel("position i", fontsize=7)
    fig.colorbar(image, ax=axes, shrink=0.8, label="cos(p_i, p_j)")
    fig.savefig(os.path.join(out_dir, "heatmap.png"), dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in names:
        ax.plot(results[name]["profile"], label=name, linewidth=1)
    ax.axhline(DP_THRESHOLD, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("offset delta (tokens)")
    ax.set_ylabel("cr(delta)")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "profile.png"), dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("source", metavar="CHECKPOINT_OR_ENCODER")
    parser.add_argument("--positions", type=int, default=None,
                        help="positions to analyse (default 128, or the encoder's maximum if smaller)")
    parser.add_argument("--out-dir", default="position-analysis")
    parser.add_argument("--select", default=None, help="only matrices whose name contains this text")
    args, model_flags = parser.parse_known_args(argv)
    try:
        if os.path.isfile(args.source):
            if model_flags:
                raise ValueError(f"model flags {model_flags} only apply to an encoder name, not a checkpoint")
            model = model_from_checkpoint(args.source)
        else:
            model = model_from_flags(args.source, model_flags)
        encoder = model.position_encoder
        if args.positions is None:
            limits = [n for n in (encoder.max_positions("encoder"), encoder.max_positions("decoder")) if n]
            args.positions = min([128, *limits])
        if args.positions < 2:
            raise ValueError(f"--positions must be at least 2, got {args.positions}")
        with torch.no_grad():
            matrices = {k: v.detach().float().cpu() for k, v in encoder.position_matrices(args.positions).items()
                        if args.select is None or args.select in k}
        if not matrices:
            raise ValueError(f"no matrix name contains {args.select!r}")
    except (PositionRangeError, NotImplementedError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results = analyse(matrices)
    print(f"{'matrix':<32} {'stable rank':>12} {'DP':>8} {'SR x DP':>8}   ({args.positions} positions, "
          f"{next(iter(matrices.values())).size(1)} dims)")
    for name, r in results.items():
        print(f"{name:<32} {r['stable_rank']:>12.3f} {r['distance_preservation']:>8.3f} {r['sr_times_dp']:>8.3f}")
    os.makedirs(args.out_dir, exist_ok=True)
    save_plots(matrices, results, args.out_dir)
    with open(os.path.join(args.out_dir, "analysis.json"), "w") as f:
        json.dump({"source": args.source, "positions": args.positions, "matrices": results}, f)
    print(f"saved {args.out_dir}/heatmap.png, profile.png, analysis.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
