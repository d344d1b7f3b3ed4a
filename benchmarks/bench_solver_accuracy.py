"""How far a FLOATER solver setting is from the reference solve, on a trained checkpoint's dynamics.

Reference: rk4 with step DT/5 (the paper's setting). For each setting, at the training length L
and at FACTOR x L: the relative max error of the position table (max |p - p_ref| / max |p_ref|)
and of every parameter gradient (max |g - g_ref| / max |g_ref|, worst tensor) for a fixed random
cotangent, and the dynamics' evaluations (parallel: batched ones, one per iteration + 2).

    python -m benchmarks.bench_solver_accuracy CHECKPOINT --train-length 13 \\
        --settings rk4:0.1,parallel:0.02,parallel:0.01 [--decode DATA_BIN --subset test]

With ``--decode``, each setting also decodes DATA_BIN's subset with fairseq-generate (beam 5) and
the share of sentences whose hypothesis is identical to the reference solver's is printed.
"""
import argparse
import copy
import os
import re

import torch

from floater_fairseq.cli import common
from floater_fairseq.cli.analyze_positions import model_from_checkpoint

USER_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "floater_fairseq")
from floater_fairseq.modules.floater import FloaterPositionSignal


def signal_of(checkpoint: str) -> FloaterPositionSignal:
    model = model_from_checkpoint(checkpoint)
    signals = [m for m in model.modules() if isinstance(m, FloaterPositionSignal)]
    if not signals:
        raise SystemExit(f"{checkpoint} has no FLOATER position signal (not a FLOATER checkpoint)")
    return signals[0]


def with_solver(signal: FloaterPositionSignal, method: str, step_size: float) -> FloaterPositionSignal:
    other = copy.deepcopy(signal)
    other.method, other.step_size = method, step_size
    return other


def table_and_gradients(signal: FloaterPositionSignal, length: int, seed: int = 0):
    signal.zero_grad(set_to_none=True)
    evaluations = signal.dynamics.num_evaluations
    table = signal.solve(length)
    cotangent = torch.randn(table.shape, generator=torch.Generator().manual_seed(seed), dtype=table.dtype)
    (table * cotangent).sum().backward()
    return table.detach(), {n: p.grad.clone() for n, p in signal.named_parameters()}, \
        signal.dynamics.num_evaluations - evaluations


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def compare(signal, settings, lengths):
    """Rows (setting, length, table error, gradient error, evaluations) against rk4 DT/5."""
    reference = with_solver(signal, "rk4", signal.dt / 5)
    rows = []
    for length in lengths:
        ref_table, ref_grads, ref_evals = table_and_gradients(reference, length)
        rows.append(("rk4:DT/5 (reference)", length, 0.0, 0.0, ref_evals))
        for method, step in settings:
            table, grads, evals = table_and_gradients(with_solver(signal, method, step), length)
            rows.append((f"{method}:{step:g}", length, relative(table, ref_table),
                         max(relative(grads[n], ref_grads[n]) for n in ref_grads), evals))
    return rows


def hypotheses(checkpoint, data, subset, method, step_size, extra=()):
    overrides = repr({"floater_method": method, "floater_step_size": step_size})
    output = common.run([common.tool("fairseq-generate"), data, "--path", checkpoint, "--user-dir", USER_DIR,
                         "--gen-subset", subset, "--beam", "5", "--batch-size", "64", "--cpu",
                         "--model-overrides", overrides, *extra], capture=True, quiet=True)
    return dict(re.findall(r"^H-(\d+)\t\S+\t(.*)$", output, flags=re.M))


def decode_agreement(checkpoint, data, subset, settings, extra=()):
    """Share of sentences decoded identically to rk4 DT/5, per setting."""
    dt = signal_of(checkpoint).dt
    reference = hypotheses(checkpoint, data, subset, "rk4", dt / 5, extra)
    shares = {}
    for method, step in settings:
        ours = hypotheses(checkpoint, data, subset, method, step, extra)
        shares[f"{method}:{step:g}"] = sum(ours.get(k) == v for k, v in reference.items()) / len(reference)
    return shares, len(reference)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--train-length", type=int, required=True, help="longest training sequence, in tokens")
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--settings", default="rk4:0.1,parallel:0.02,parallel:0.01",
                        help="comma-separated METHOD:STEP_SIZE")
    parser.add_argument("--decode", metavar="DATA_BIN", help="also decode this binarized data with each setting")
    parser.add_argument("--subset", default="test")
    parser.add_argument("--generate-args", default="", help="more fairseq-generate flags, e.g. '--source-lang de'")
    args = parser.parse_args(argv)
    missing = [c for c in args.checkpoints if not os.path.isfile(c)]
    if missing:
        parser.error(f"no such checkpoint: {', '.join(missing)} (train one, e.g. make demo, or give its path)")
    settings = [(s.split(":")[0], float(s.split(":")[1])) for s in args.settings.split(",")]
    lengths = [args.train_length, args.factor * args.train_length]
    print(f"# error against rk4 with step DT/5 (relative max), at L = {lengths[0]} and {args.factor}L; "
          f"gradients: worst parameter tensor")
    print(f"{'checkpoint':40} {'setting':24} {'length':>6} {'table':>9} {'gradients':>9} {'evals':>6}")
    for checkpoint in args.checkpoints:
        signal = signal_of(checkpoint)
        for setting, length, table_error, grad_error, evals in compare(signal, settings, lengths):
            print(f"{checkpoint[-40:]:40} {setting:24} {length:6d} {table_error:9.1e} {grad_error:9.1e} {evals:6d}",
                  flush=True)
        if args.decode:
            shares, count = decode_agreement(checkpoint, args.decode, args.subset, settings, args.generate_args.split())
            for setting, share in shares.items():
                print(f"{checkpoint[-40:]:40} {setting:24} identical hypotheses to rk4:DT/5 on {count} "
                      f"{args.subset} sentences: {100 * share:.1f}%", flush=True)


if __name__ == "__main__":
    main()
