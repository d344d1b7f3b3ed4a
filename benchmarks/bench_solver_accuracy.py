"""How far a FLOATER solver setting is from the reference solve, on a trained checkpoint's dynamics.

Reference: rk4 with step DT/5 (the paper's setting). For each setting, at the training length L
and at FACTOR x L: the relative max error of the position table (max |p - p_ref| / max |p_ref|)
and of every parameter gradient (max |g - g_ref| / max |g_ref|, worst tensor) for a fixed random
cotangent, and the dynamics' evaluations (parallel: batched ones, one per iteration + 2).

    python -m benchmarks.bench_solver_accuracy CHECKPOINT --train-length 13 \\
        --settings rk4:0.1,parallel:0.02,parallel:0.01
"""
import argparse
import copy

import torch

from floater_fairseq.cli.analyze_positions import model_from_checkpoint
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--train-length", type=int, required=True, help="longest training sequence, in tokens")
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--settings", default="rk4:0.1,parallel:0.02,parallel:0.01",
                        help="comma-separated METHOD:STEP_SIZE")
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    main()
