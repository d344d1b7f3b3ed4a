"""Time and memory of one self-attention layer against sequence length (a benchmark, not a test).

Forward + backward of one layer (batch 1, 8 heads, head dim 64 by default) for each length, with:
  softmax          PyTorch's scaled_dot_product_attention
  softmax-rpe      the same with a dense relative bias b_{j-i} per head ([H, n, n] logit bias)
  random-features  Performer attention (positive random features, L2-normalised q/k), no position
  kernelized-rpe   this package's kernelized attention with FFT relative bias (Luo et al. 2021)

Each (method, length) runs in its own process under an address-space limit, so a run that would
exhaust memory fails cleanly ("out of memory") and its peak RSS is its own. Prints a table with the
fitted growth exponents (slope of log time / log memory against log n), writes results.json and a
log-log plot.

    python -m benchmarks.bench_kernelized --out-dir results/kernelized-attention
"""
import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from floater_fairseq.modules.kernelized_attention import (
    kernelized_rpe_attention,
    orthogonal_gaussian_features,
    positive_random_features,
)

METHODS = ("softmax", "softmax-rpe", "random-features", "kernelized-rpe")
DEFAULT_LENGTHS = ",".join(str(256 * 2 ** k) for k in range(7))  # 256 .. 16384


def relative_bias_matrix(rpe: torch.Tensor, n: int) -> torch.Tensor:
    """[H, n, n] dense bias B_ij = b_{j-i} from [H, 2n-1] (offsets -(n-1)..n-1): windows
    W[a, j] = b[a + j - (n-1)], B_ij = W[n-1-i, j]."""
    return rpe.unfold(1, n, 1).flip(1)


def random_feature_attention(q, k, v, projection):
    """Performer: phi(q) (phi(k)^T v) / phi(q) (phi(k)^T 1), O(n m d), no position."""
    phi_q = positive_random_features(F.normalize(q, dim=-1), projection)
    phi_k = positive_random_features(F.normalize(k, dim=-1), projection)
    numerator = phi_q @ (phi_k.transpose(-1, -2) @ v)
    return numerator / (phi_q @ phi_k.sum(-2).unsqueeze(-1))


def attention_step(method, n, heads, head_dim, features):
    """A closure running forward + backward of one layer at length n."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, n, head_dim, generator=g).requires_grad_() for _ in range(3))
    rpe = torch.zeros(heads, 2 * n - 1).normal_(0, 0.1, generator=g).requires_grad_()
    projection = orthogonal_gaussian_features(features, head_dim, generator=g)

    def run():
        if method == "softmax":
            out = F.scaled_dot_product_attention(q, k, v)
        elif method == "softmax-rpe":
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=relative_bias_matrix(rpe, n).unsqueeze(0))
        elif method == "random-features":
            out = random_feature_attention(q, k, v, projection)
        else:
            out = kernelized_rpe_attention(q, k, v, rpe, projection)
        out.sum().backward()
        for x in (q, k, v, rpe):
            x.grad = None
    return run


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def worker(args):
    """One (method, length) measurement in this process; prints one JSON line."""
    run = attention_step(args.method, args.length, args.heads, args.head_dim, args.features)
    baseline = max_rss_mib()
    times = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
        # the first run warms up unless it alone is long; stop after `repeats` timed runs or 60 s
        timed = times[1:] if times[0] < 5 or len(times) > 1 else times
        if len(timed) >= args.repeats or (timed and time.perf_counter() - start > 60):
            break
    print(json.dumps({"time_s": statistics.median(timed), "runs": len(timed),
                      "peak_mib": max_rss_mib() - baseline}))


def measure(method, n, args) -> dict:
    limit = int(args.memory_limit_gib * 2 ** 30)

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    cmd = [sys.executable, "-m", "benchmarks.bench_kernelized", "--worker", "--method", method,
           "--length", str(n), "--heads", str(args.heads), "--head-dim", str(args.head_dim),
           "--features", str(args.features), "--repeats", str(args.repeats)]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=limit_memory,
                                timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"over {args.timeout} s"}
    if result.returncode != 0:
        memory = any(s in result.stderr for s in ("can't allocate memory", "MemoryError", "out of memory",
                                                    "std::bad_alloc"))
        if memory or result.returncode in (-9, 137):
            return {"status": f"out of memory (> {args.memory_limit_gib:g} GiB)"}
        raise RuntimeError(f"{method} at n={n} failed:\n{result.stderr[-2000:]}")
    return {"status": "ok", **json.loads(result.stdout.strip().splitlines()[-1])}


def growth_exponent(points):
    """Least-squares slope of log y against log n."""
    if len(points) < 2:
        return float("nan")
    xs = [math.log(n) for n, _ in points]
    ys = [math.log(max(y, 1e-9)) for _, y in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def plot(results, lengths, path):
    import logging

    import matplotlib
    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib.pyplot as plt

    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(11, 4.2))
    for method, rows in results.items():
        ok = [(n, rows[str(n)]) for n in lengths if rows.get(str(n), {}).get("status") == "ok"]
        if not ok:
            continue
        ax_time.plot([n for n, _ in ok], [r["time_s"] for _, r in ok], "o-", label=method)
        ax_mem.plot([n for n, _ in ok], [max(r["peak_mib"], 1) for _, r in ok], "o-", label=method)
    for ax, label in ((ax_time, "forward + backward time (s)"), (ax_mem, "peak memory above baseline (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length n")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    ax_time.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default=DEFAULT_LENGTHS, help="comma-separated sequence lengths")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {', '.join(METHODS)}")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--features", type=int, default=64, help="random features m")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per point (median)")
    parser.add_argument("--memory-limit-gib", type=float, default=20.0, help="address-space limit per run")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per (method, length)")
    parser.add_argument("--fit-from", type=int, default=1024, help="fit exponents on lengths >= this")
    parser.add_argument("--out-dir", help="write results.json and scaling.png here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)

    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    lengths = [int(n) for n in args.lengths.split(",")]
    print(f"one layer, batch 1, {args.heads} heads, head dim {args.head_dim}, m = {args.features}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, limit {args.memory_limit_gib:g} GiB",
          flush=True)
    results = {}
    for method in methods:
        results[method] = {}
        for n in lengths:
            if any(r["status"] != "ok" for r in results[method].values()):
                results[method][str(n)] = {"status": "skipped (a shorter length failed)"}
                continue
            results[method][str(n)] = row = measure(method, n, args)
            shown = f"{row['time_s']:.4f} s, {row['peak_mib']:.0f} MiB" if row["status"] == "ok" else row["status"]
            print(f"  {method:16s} n={n:6d}: {shown}", flush=True)

    exponents = {}
    for method, rows in results.items():
        ok = [(n, rows[str(n)]) for n in lengths if rows[str(n)]["status"] == "ok" and n >= args.fit_from]
        exponents[method] = {"time": growth_exponent([(n, r["time_s"]) for n, r in ok]),
                             "memory": growth_exponent([(n, r["peak_mib"]) for n, r in ok])}
    print("\n| n | " + " | ".join(methods) + " |")
    print("|---|" + "---|" * len(methods))
    for n in lengths:
        cells = []
        for method in methods:
            row = results[method][str(n)]
            cells.append(f"{row['time_s']:.3f} s / {row['peak_mib']:.0f} MiB" if row["status"] == "ok"
                         else row["status"])
        print(f"| {n} | " + " | ".join(cells) + " |")
    print(f"| exponent (n >= {args.fit_from}), time / memory | " + " | ".join(
        f"{exponents[m]['time']:.2f} / {exponents[m]['memory']:.2f}" for m in methods) + " |")
    if "kernelized-rpe" in results and "softmax-rpe" in results:
        ratios = [(n, results["softmax-rpe"][str(n)]["time_s"] / results["kernelized-rpe"][str(n)]["time_s"])
                  for n in lengths if results["softmax-rpe"][str(n)]["status"] == "ok"
                  and results["kernelized-rpe"][str(n)]["status"] == "ok"]
        print("softmax-rpe time / kernelized-rpe time: " + ", ".join(f"n={n}: {r:.2f}" for n, r in ratios))
    if args.out_dir:
        os.makedirs(args.out_dir, exist_ok=True)
        with open(os.path.join(args.out_dir, "results.json"), "w") as f:
            json.dump({"settings": {k: v for k, v in vars(args).items() if k not in ("worker", "method", "length")},
                       "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "results": results, "exponents": exponents}, f, indent=1)
        plot(results, lengths, os.path.join(args.out_dir, "scaling.png"))
        print(f"wrote {args.out_dir}/results.json and scaling.png")


if __name__ == "__main__":
    main()
