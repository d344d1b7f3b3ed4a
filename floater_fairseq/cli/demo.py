"""The main job: do learned position dynamics extrapolate beyond the training lengths?

Offline, on a fresh machine: a seeded synthetic translation task whose output order depends on
positions (vocabulary mapping + reversal, see synthetic.py), trained on sentences of at most L
words and tested on length buckets up to 4L. With the stock fairseq tools it trains, for each
of SEEDS seeds, the sinusoidal input encoding, RoPE, FLOATER at all blocks with the paper's
dynamics and with the bounded default (dissipative), and RoPE+FLOATER (--full adds the learned
input encoding, the rotation dynamics and RoPE+FLOATER with the input sinusoid); JOBS runs at a time, one CPU thread each; then reports exact match and sacreBLEU
per length bucket (mean +- std over seeds) and, for FLOATER, how the trajectories' norm grows at
2x and 4x the training length (analyze_trajectories).

Writes OUT/results.{md,json} and OUT/extrapolation.png, copies them to results/demo/ and the
table into docs/results.md (between the demo-results markers).

    python -m floater_fairseq.cli.demo [--quick | --full] [--out demo-out] [--seeds 3] [--jobs 2]
    python -m floater_fairseq.cli.demo --rerun "FLOATER dissipative"   # one row again, keep the others
"""
import argparse
import concurrent.futures
import json
import os
import re
import shutil
import statistics
import time

from .. import USER_DIR
from ..files import copy_file, replace_block, write_json, write_text
from . import common
from .analyze_positions import model_from_checkpoint
from .analyze_trajectories import growth, trajectory_norms
from .length_buckets import bucket_bleu, parse_generate_output
from .synthetic import make_pairs, write_split

SYSTEMS = [  # (label, flags of floater_transformer); the default run trains the rows that answer the question
    ("sinusoidal (input)", ["--pos-encoder", "sinusoidal", "--pos-blocks", "input"]),
    ("learned (input)", ["--pos-encoder", "learned", "--pos-blocks", "input"]),
    ("RoPE", ["--pos-encoder", "rope"]),
    ("FLOATER paper", ["--pos-encoder", "floater", "--floater-dynamics", "paper"]),
    ("FLOATER dissipative", ["--pos-encoder", "floater", "--floater-dynamics", "dissipative"]),
    ("FLOATER rotation", ["--pos-encoder", "floater", "--floater-dynamics", "rotation"]),
    # configs' rope+floater row: RoPE with the bounded ODE biases, no input sinusoid; and with it (--full)
    ("RoPE+FLOATER", ["--pos-encoder", "rope+floater", "--floater-dynamics", "dissipative",
                      "--floater-no-input-sinusoid"]),
    ("RoPE+FLOATER + input sinusoid", ["--pos-encoder", "rope+floater", "--floater-dynamics", "dissipative"]),
]
MAIN_SYSTEMS = ["sinusoidal (input)", "RoPE", "FLOATER paper", "FLOATER dissipative", "RoPE+FLOATER"]
LR = 3e-3
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def settings(quick: bool) -> dict:
    if quick:
        return dict(train=300, max_len=6, dim=16, layers=1, epochs=1, test_per_bucket=5, vocab=10, max_tokens=500)
    return dict(train=4000, max_len=12, dim=64, layers=2, epochs=15, test_per_bucket=50, vocab=20, max_tokens=1500)


def run(name, *args, log=None):
    def summary(line):  # one line per epoch, labelled with the run
        if log and re.search(r"\| valid \| epoch", line):
            return f"    {log}: {line.split(' | ', 2)[-1].strip()[:100]}\n"
        return None
    try:
        return common.run([common.tool(name), *args], quiet=True, show=summary)
    except common.ToolError as e:
        raise SystemExit(f"demo: {e}") from None


def make_data(out: str, cfg: dict) -> list:
    raw = os.path.join(out, "raw")
    length = cfg["max_len"]
    write_split(raw, "train", make_pairs(cfg["train"], 1, length, cfg["vocab"], seed=1))
    write_split(raw, "valid", make_pairs(200, 1, length, cfg["vocab"], seed=2))
    buckets = [(1 + k * length, (k + 1) * length) for k in range(4)]  # up to 4L words
    test = []
    for k, (lo, hi) in enumerate(buckets):
        test += make_pairs(cfg["test_per_bucket"], lo, hi, cfg["vocab"], seed=10 + k)
    write_split(raw, "test", test)
    run("fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt", "--joined-dictionary",
        "--trainpref", f"{raw}/train", "--validpref", f"{raw}/valid", "--testpref", f"{raw}/test",
        "--destdir", os.path.join(out, "bin"), "--workers", "1")
    return buckets


def run_name(label: str, seed: int) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") + f"-seed{seed}"


def train_and_decode(out, label, flags, seed, cfg):
    save_dir = os.path.join(out, "checkpoints", run_name(label, seed))
    dim, layers = str(cfg["dim"]), str(cfg["layers"])
    start = time.time()
    run("fairseq-train", os.path.join(out, "bin"), "--user-dir", USER_DIR, "--arch", "floater_transformer", *flags,
        "--encoder-embed-dim", dim, "--decoder-embed-dim", dim, "--encoder-ffn-embed-dim", str(2 * cfg["dim"]),
        "--decoder-ffn-embed-dim", str(2 * cfg["dim"]), "--encoder-layers", layers, "--decoder-layers", layers,
        "--encoder-attention-heads", "4", "--decoder-attention-heads", "4", "--share-all-embeddings",
        "--dropout", "0.1", "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr", str(LR),
        "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "100", "--clip-norm", "1.0",
        "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
        "--max-tokens", str(cfg["max_tokens"]), "--max-epoch", str(cfg["epochs"]), "--save-dir", save_dir,
        "--no-epoch-checkpoints", "--seed", str(seed), "--no-progress-bar", "--log-interval", "1000", "--cpu",
        log=f"{label}, seed {seed}")
    seconds = time.time() - start
    checkpoint = os.path.join(save_dir, "checkpoint_last.pt")
    output = run("fairseq-generate", os.path.join(out, "bin"), "--user-dir", USER_DIR, "--path", checkpoint,
                 "--beam", "4", "--batch-size", "64", "--required-batch-size-multiple", "1", "--max-len-a", "1.2",
                 "--max-len-b", "5", "--cpu")
    sources, references, hypotheses = parse_generate_output(output)
    return sources, references, hypotheses, checkpoint, seconds


def exact_match(hypotheses, lengths, references, buckets):
    scores = []
    for low, high in buckets:
        ids = [i for i, n in lengths.items() if low <= n <= high]
        scores.append(100.0 * sum(hypotheses.get(i, "") == references[i] for i in ids) / max(len(ids), 1))
    return scores


def mean_std(values):
    values = [v for v in values if v == v]  # drop NaN
    if not values:
        return float("nan"), float("nan")
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def cell(values, digits=1):
    mean, std = mean_std(values)
    return "n/a" if mean != mean else f"{mean:.{digits}f} ± {std:.{digits}f}"


def previous_results(out: str, cfg: dict, seeds: list, rerun: list) -> dict:
    """The runs of OUT/results.json for every system not in ``rerun``; refused unless that file was
    made with the same settings and seeds (rows of different tasks would share one table)."""
    path = os.path.join(out, "results.json")
    try:
        with open(path, encoding="utf-8") as f:
            previous = json.load(f)
    except FileNotFoundError:
        raise SystemExit(f"demo: --rerun keeps the other systems' runs from {path}, which does not exist; "
                         f"run the whole demo first (without --rerun)") from None
    if previous.get("settings") != cfg or previous.get("seeds") != seeds:
        raise SystemExit(f"demo: {path} was made with other settings or seeds ({previous.get('settings')}, "
                         f"seeds {previous.get('seeds')}); --rerun needs the same ones (--quick, --seeds), "
                         f"or run the whole demo")
    return {label: runs for label, runs in previous["results"].items() if label not in rerun}


def render(results, buckets, cfg, seeds):
    names = [f"{lo}-{hi}" for lo, hi in buckets]
    lines = [f"Synthetic reversal task, training sentences of 1-{cfg['max_len']} words, "
             f"{len(seeds)} seeds (mean ± std); beam 4.", "",
             "Exact match (% of sentences) by source length:", "",
             "| system | " + " | ".join(names) + " | train time |", "|---" * (len(names) + 2) + "|"]
    for label, runs in results.items():
        lines.append(f"| {label} | " + " | ".join(cell([r["exact"][k] for r in runs]) for k in range(len(names)))
                     + f" | {statistics.mean(r['seconds'] for r in runs):.0f} s |")
    lines += ["", "sacreBLEU by source length:", "", "| system | " + " | ".join(names) + " |",
              "|---" * (len(names) + 1) + "|"]
    for label, runs in results.items():
        lines.append(f"| {label} | " + " | ".join(cell([r["bleu"][k] for r in runs]) for k in range(len(names))) + " |")
    lines += ["", "FLOATER trajectory norm growth (median over trajectories of |p| at kL / |p| at L, "
              f"L = {cfg['max_len'] + 1} tokens):", "", "| system | 2x | 4x |", "|---|---|---|"]
    for label, runs in results.items():
        if "growth" in runs[0]:
            lines.append(f"| {label} | {cell([r['growth']['2x'] for r in runs], 2)} | "
                         f"{cell([r['growth']['4x'] for r in runs], 2)} |")
    # rows from separate runs of the demo (--rerun): say when each was trained
    started = {label: runs[0].get("started", "in an earlier run") for label, runs in results.items()}
    if len(set(started.values())) > 1:
        lines += ["", "Rows trained in separate runs of the demo (same settings and seeds): "
                  + "; ".join(f"{label} {when}" for label, when in started.items()) + "."]
    return "\n".join(lines) + "\n"


def plot(path, results, buckets, cfg):
    plt = common.pyplot()

    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    x = range(len(buckets))
    for label, runs in results.items():
        for axis, key in zip(axes, ("exact", "bleu")):
            stats = [mean_std([r[key][k] for r in runs]) for k in x]
            axis.errorbar(x, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=3, label=label)
    for axis, name in zip(axes, ("exact match (%)", "sacreBLEU")):
        axis.set_xticks(list(x), [f"{lo}-{hi}" for lo, hi in buckets])
        axis.set_xlabel(f"source length (training: <= {cfg['max_len']})")
        axis.set_ylabel(name)
    axes[1].legend(fontsize=8)
    figure.suptitle("Extrapolation to longer inputs (mean ± std over seeds)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def update_doc(path: str, table: str):
    if not replace_block(path, "demo-results", table):
        raise SystemExit(f"demo: {path} has no <!-- demo-results --> block to update")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tiny run (seconds), for tests")
    parser.add_argument("--full", action="store_true", help="every system (default: "
                        + ", ".join(MAIN_SYSTEMS) + ")")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one CPU thread each (default 2)")
    parser.add_argument("--out", default="demo-out", help="work folder (data, checkpoints, results)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--systems", help="comma-separated labels to run (default: all)")
    parser.add_argument("--rerun", help="comma-separated labels to train again, keeping every other system's "
                                        "runs from OUT/results.json (same settings and seeds), e.g. after a "
                                        "default of that system changed")
    parser.add_argument("--results", default=os.path.join(REPO, "results", "demo"),
                        help="where the results are copied ('' : nowhere)")
    parser.add_argument("--doc", "--readme", dest="doc", default=os.path.join(REPO, "docs", "results.md"),
                        help="page whose <!-- demo-results --> block gets the table (default docs/results.md; '': none)")
    args = parser.parse_args(argv)
    cfg = settings(args.quick)
    seeds = list(range(1, args.seeds + 1))
    labels = [label for label, _ in SYSTEMS]
    if args.jobs < 1:
        raise SystemExit("demo: --jobs must be >= 1")
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"  # JOBS runs share the cores
    chosen = (args.rerun or args.systems or ",".join(labels if args.full else MAIN_SYSTEMS)).split(",")
    unknown = [label for label in chosen if label not in labels]
    if unknown or (args.rerun and args.systems):
        raise SystemExit(f"demo: give --systems or --rerun (not both), with labels from: {', '.join(labels)}"
                         + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    systems = [s for s in SYSTEMS if s[0] in chosen]
    kept = previous_results(args.out, cfg, seeds, chosen) if args.rerun else {}
    # a re-run starts from scratch (fairseq would resume); the data is regenerated from its seeds
    for derived in ["raw", "bin"] + [os.path.join("checkpoints", run_name(label, seed))
                                     for label, _ in systems for seed in seeds]:
        shutil.rmtree(os.path.join(args.out, derived), ignore_errors=True)
    os.makedirs(args.out, exist_ok=True)
    print(f"[1/3] synthetic task: {cfg['train']} training pairs of 1-{cfg['max_len']} words, "
          f"test buckets up to {4 * cfg['max_len']} words", flush=True)
    buckets = make_data(args.out, cfg)
    results, started = dict(kept), time.time()
    started_at = time.strftime("%Y-%m-%d %H:%M:%S")  # to the second: a --rerun within a minute is a separate run
    jobs = [(label, flags, seed) for label, flags in systems for seed in seeds]
    print(f"[2/3] {len(jobs)} runs ({len(systems)} systems x {len(seeds)} seeds, {cfg['epochs']} epochs each), "
          f"{args.jobs} at a time", flush=True)

    def one_run(label, flags, seed):
        sources, refs, hyps, checkpoint, seconds = train_and_decode(args.out, label, flags, seed, cfg)
        lengths = {j: len(src.split()) for j, src in sources.items()}
        run_result = {"seed": seed, "seconds": seconds, "started": started_at,
                      "exact": exact_match(hyps, lengths, refs, buckets),
                      "bleu": [bleu for bleu, _ in bucket_bleu(hyps, lengths, refs, buckets)]}
        if "floater" in " ".join(flags):
            norms = trajectory_norms(model_from_checkpoint(checkpoint), 4 * (cfg["max_len"] + 1))
            run_result["growth"] = {f"{k}x": growth(norms, cfg["max_len"] + 1, k) for k in (2, 4)}
        return run_result

    finished = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(one_run, *job): job for job in jobs}
        for future in concurrent.futures.as_completed(futures):
            label, _, seed = futures[future]
            finished[(label, seed)] = future.result()
            elapsed = time.time() - started
            left = elapsed / len(finished) * (len(jobs) - len(finished))
            print(f"[2/3] {len(finished)}/{len(jobs)} runs done ({label}, seed {seed}); "
                  f"{elapsed / 60:.1f} min so far, about {left / 60:.1f} min left", flush=True)
    for label, _, seed in jobs:  # in the table's order, whatever order they finished in
        results.setdefault(label, []).append(finished[(label, seed)])
    results = {label: results[label] for label in labels if label in results}  # the table's row order
    table = render(results, buckets, cfg, seeds)
    print(f"[3/3] results ({(time.time() - started) / 60:.1f} min)\n\n{table}", flush=True)
    write_text(os.path.join(args.out, "results.md"), table)
    write_json(os.path.join(args.out, "results.json"), {"settings": cfg, "buckets": buckets, "seeds": seeds,
                                                         "results": results})
    plot(os.path.join(args.out, "extrapolation.png"), results, buckets, cfg)
    if args.results:
        for name in ("results.md", "results.json", "extrapolation.png"):
            copy_file(os.path.join(args.out, name), os.path.join(args.results, name))
    if args.doc:
        update_doc(args.doc, table)
    print(f"wrote {args.out}/results.md, results.json, extrapolation.png"
          + (f"; copied to {args.results}" if args.results else "") + (f"; updated {args.doc}" if args.doc else ""))


if __name__ == "__main__":
    main()
