"""How FLOATER's position trajectories behave past the training length.

For a FLOATER checkpoint, the norm |p(t_i)| of every trajectory (each block's q/k/v bias at
--pos-blocks all, the input signal at --pos-blocks input) for positions i up to FACTOR x the
training length L, and its growth: |p| at kL over |p| at L (the L-th position), median over the
trajectories. Prints a table, optionally plots the norms, and ends with the line
``growth at 2x: A, at 4x: B``.

    python -m floater_fairseq.cli.analyze_trajectories CHECKPOINT --train-length L [--factor 4]
        [--png norms.png] [--json growth.json]
"""
import argparse
import statistics
import sys
from typing import Dict

import torch

from ..files import write_json
from . import common
from .analyze_positions import model_from_checkpoint


def trajectory_norms(model, length: int) -> Dict[str, torch.Tensor]:
    """Name -> [length] norms of each trajectory of the model's FLOATER encoder (or FLOATER part of
    a composite such as rope+floater)."""
    encoder = model.position_encoder.part("floater")
    if encoder is None:
        raise ValueError(f"the checkpoint's position encoder is {model.position_encoder.name!r}, which has no "
                         f"floater part: it has no trajectories")
    with torch.no_grad():
        return {name: matrix.float().norm(dim=-1) for name, matrix in encoder.position_matrices(length).items()}


def growth(norms: Dict[str, torch.Tensor], train_length: int, factor: int) -> float:
    """Median over trajectories of |p| at factor x L over |p| at L (trajectories still at 0 skipped)."""
    ratios = [float(n[factor * train_length - 1] / n[train_length - 1]) for n in norms.values()
              if n[train_length - 1] > 1e-8]
    return statistics.median(ratios) if ratios else float("nan")


def plot(norms, train_length: int, path: str, title: str):
    plt = common.pyplot()

    figure, axis = plt.subplots(figsize=(7, 4))
    for name, values in norms.items():
        axis.plot(range(1, len(values) + 1), values.tolist(), linewidth=0.8, alpha=0.6)
    axis.axvline(train_length, color="black", linestyle="--", linewidth=1, label=f"training length {train_length}")
    axis.set_yscale("log")
    axis.set_xlabel("position")
    axis.set_ylabel("|p(t)| per trajectory")
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--train-length", type=int, required=True, help="L: the longest (or 99th-percentile) training length")
    parser.add_argument("--factor", type=int, default=4, help="analyse positions up to FACTOR x L (default 4, at least 2)")
    parser.add_argument("--png", help="plot the norms against position")
    parser.add_argument("--json", help="write the norms at L, 2L, ..., and the growth")
    args = parser.parse_args(argv)
    if args.train_length < 1 or args.factor < 2:
        parser.error("--train-length must be >= 1 and --factor >= 2")
    try:
        model = model_from_checkpoint(args.checkpoint)
        norms = trajectory_norms(model, args.factor * args.train_length)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    multiples = list(range(1, args.factor + 1))
    print("| trajectory | " + " | ".join(f"|p| at {k}L" for k in multiples) + " |")
    print("|---|" + "---|" * len(multiples))
    for name, values in norms.items():
        print(f"| {name} | " + " | ".join(f"{values[k * args.train_length - 1]:.3g}" for k in multiples) + " |")
    result = {"train_length": args.train_length, "growth": {f"{k}x": growth(norms, args.train_length, k)
                                                            for k in multiples[1:]},
              "norms": {name: [float(values[k * args.train_length - 1]) for k in multiples]
                        for name, values in norms.items()}}
    if args.png:
        plot(norms, args.train_length, args.png, f"{args.checkpoint}: FLOATER trajectories")
    if args.json:
        write_json(args.json, result)
    print(f"growth at 2x: {result['growth']['2x']:.3g}, at 4x: {result['growth'].get('4x', float('nan')):.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
