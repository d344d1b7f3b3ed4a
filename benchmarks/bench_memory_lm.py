"""Does a language model need long-range memory in every layer? (a benchmark, not a test)

Trains equal-size memory_transformer_lm models (same parameters; only the memory flags differ)
with fairseq-train and scores them with fairseq-eval-lm, on
  * a real English corpus: one sentence per line, run together as one stream (default the English
    side of Multi30k: --multi30k-raw DIR with train.en.gz / val.en.gz), and
  * a generated text with long-range repeats: random 24-token passages, each repeated once at the
    first passage boundary at least 64-96 tokens after it ends (the repeated tokens lie 88-143
    tokens back: beyond the 32-token segment, mostly within the 128-token long memory), so only
    memory can predict a repeat.
Rows: long-range memory in all layers, in 1/6 of the layers (interleaved, last, first; short
memory elsewhere), and no memory. Prints validation perplexity, memory state per stream
(floats) and training tokens/s, and writes results.json / results.md.

    python -m benchmarks.bench_memory_lm --multi30k-raw ../shared/data/multi30k --out-dir results/memory-lm
"""
import argparse
import json
import os
import random
import re
import time

from floater_fairseq import USER_DIR
from floater_fairseq.cli import common
from floater_fairseq.cli.prepare import find, read_lines

MODEL = ["--decoder-layers", "6", "--decoder-embed-dim", "128", "--decoder-ffn-embed-dim", "512",
         "--decoder-attention-heads", "4", "--dropout", "0.1"]
ROWS = {  # name: memory flags
    "LRM in all 6 layers": ["--lrm-layers", "6"],
    "LRM in 1/6 (interleaved)": ["--lrm-layers", "1", "--lrm-placement", "interleaved"],
    "LRM in 1/6 (last)": ["--lrm-layers", "1", "--lrm-placement", "last"],
    "LRM in 1/6 (first)": ["--lrm-layers", "1", "--lrm-placement", "first"],
    "no memory": ["--lrm-layers", "0", "--srm-len", "0"],
}


def repeats_text(tokens: int, seed: int, vocabulary: int = 500):
    """Lines of random words where every 24-word passage comes back once, at the first passage
    boundary at least 64-96 words after it ends."""
    rng = random.Random(seed)
    words, pending = [], []
    while len(words) < tokens:
        due = [p for p in pending if p[0] <= len(words)]
        if due:
            pending.remove(due[0])
            words.extend(due[0][1])
        else:
            passage = [f"w{rng.randrange(vocabulary)}" for _ in range(24)]
            words.extend(passage)
            pending.append((len(words) + rng.randrange(64, 97), passage))
    return [" ".join(words[i:i + 12]) for i in range(0, tokens, 12)]


def run(cmd):
    """Combined stdout and stderr (fairseq-eval-lm reports on stderr), printed nowhere."""
    return common.run(cmd, quiet=True, show=lambda line: None)


def binarize(lines_by_split, out):
    if os.path.exists(os.path.join(out, "bin", "dict.txt")):
        return os.path.join(out, "bin")
    os.makedirs(out, exist_ok=True)
    for split, lines in lines_by_split.items():
        with open(os.path.join(out, f"{split}.txt"), "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in lines)
    run([common.tool("fairseq-preprocess"), "--only-source", "--trainpref", os.path.join(out, "train.txt"),
         "--validpref", os.path.join(out, "valid.txt"), "--destdir", os.path.join(out, "bin"),
         "--nwordssrc", "10000", "--workers", "2"])
    return os.path.join(out, "bin")


def train_and_score(data, save_dir, flags, args):
    task = ["--task", "memory_language_modeling", "--tokens-per-sample", str(args.segment)]
    start = time.time()
    log = run([common.tool("fairseq-train"), data, "--user-dir", USER_DIR, *task,
               "--arch", "memory_transformer_lm", *MODEL, "--lrm-len", str(args.lrm_len), "--srm-len",
               str(args.srm_len), *flags, "--batch-size", str(args.streams), "--optimizer", "adam",
               "--adam-betas", "(0.9,0.98)", "--lr", "0.001", "--lr-scheduler", "inverse_sqrt",
               "--warmup-updates", "200", "--clip-norm", "0.5", "--max-update", str(args.max_update),
               "--criterion", "cross_entropy", "--seed", "1", "--cpu", "--save-dir", save_dir,
               "--no-epoch-checkpoints", "--disable-validation", "--no-progress-bar", "--log-interval", "50"])
    seconds = time.time() - start
    wps = [float(w) for w in re.findall(r"\| train \|.*?\| wps ([0-9.]+)", log)] or \
        [float(w) for w in re.findall(r"wps=([0-9.]+)", log)]
    scored = run([common.tool("fairseq-eval-lm"), data, "--user-dir", USER_DIR, *task, "--path",
                  os.path.join(save_dir, "checkpoint_last.pt"), "--gen-subset", "valid",
                  "--batch-size", str(args.streams), "--cpu"])
    perplexity = float(re.search(r"Perplexity: ([0-9.]+)", scored).group(1))
    return {"perplexity": perplexity, "train_words_per_second": wps[-1] if wps else None,
            "train_seconds": round(seconds, 1)}


def memory_floats(flags, args):
    """Memory state per stream: sum over layers of M_l x d."""
    layers = int(flags[flags.index("--lrm-layers") + 1])
    srm = 0 if "--srm-len" in flags else args.srm_len
    return (layers * args.lrm_len + (6 - layers) * srm) * 128


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--multi30k-raw", help="directory with Multi30k's train.en.gz and val.en.gz")
    parser.add_argument("--train-text", help="or: a plain-text training file (one sentence per line)")
    parser.add_argument("--valid-text")
    parser.add_argument("--out-dir", default="results/memory-lm")
    parser.add_argument("--work-dir", default=".cache/memory-lm")
    parser.add_argument("--segment", type=int, default=32, help="tokens per segment")
    parser.add_argument("--lrm-len", type=int, default=128)
    parser.add_argument("--srm-len", type=int, default=16)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--max-update", type=int, default=800)
    parser.add_argument("--corpora", default="english,repeats")
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows")
    args = parser.parse_args(argv)
    rows = args.rows.split(",")
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; rows: {list(ROWS)}")

    corpora = {}
    if "english" in args.corpora:
        if args.multi30k_raw:
            train, valid = (read_lines(find(args.multi30k_raw, f"{s}.en.gz")) for s in ("train", "val"))
        elif args.train_text and args.valid_text:
            train, valid = read_lines(args.train_text), read_lines(args.valid_text)
        else:
            parser.error("the english corpus needs --multi30k-raw DIR or --train-text/--valid-text")
        corpora["english"] = binarize({"train": train, "valid": valid}, os.path.join(args.work_dir, "english"))
    if "repeats" in args.corpora:
        corpora["repeats"] = binarize({"train": repeats_text(200_000, 1), "valid": repeats_text(20_000, 2)},
                                      os.path.join(args.work_dir, "repeats"))
    results = {}
    for corpus, data in corpora.items():
        for row in rows:
            save_dir = os.path.join(args.work_dir, "checkpoints", corpus, re.sub(r"\W+", "-", row).strip("-"))
            results.setdefault(corpus, {})[row] = {**train_and_score(data, save_dir, ROWS[row], args),
                                                   "memory_floats_per_stream": memory_floats(ROWS[row], args)}
            print(corpus, row, results[corpus][row], flush=True)

    lines = ["| corpus | row | valid perplexity | memory per stream (floats) | train words/s |", "|---|---|---|---|---|"]
    for corpus, by_row in results.items():
        for row, r in by_row.items():
            lines.append(f"| {corpus} | {row} | {r['perplexity']:.2f} | {r['memory_floats_per_stream']} | "
                         f"{r['train_words_per_second']} |")
    table = "\n".join(lines)
    print(table)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "results.json"), "w") as f:
        json.dump({"settings": vars(args), "model": MODEL, "results": results}, f, indent=1)
    with open(os.path.join(args.out_dir, "results.md"), "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()
