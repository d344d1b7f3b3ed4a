"""BLEU by source length for any set of checkpoints (the paper's Figure 2, "S2L").

    python -m floater_fairseq.cli.length_buckets DATA_DIR NAME=CHECKPOINT [NAME=CHECKPOINT ...]
        [--buckets 1-10,11-20,21-40,41-1000] [--subset test] [--beam 4] [--lenpen 0.6]
        [--remove-bpe sentencepiece] [--train-max-len N] [--out-dir DIR]

Decodes the subset once per checkpoint with fairseq-generate, groups sentences by the length of
their source (in words of the raw source when DATA_DIR has SUBSET.raw.SRC, else in tokens),
scores every bucket with sacreBLEU, prints a table and saves bleu_by_length.png (one line per
checkpoint) and bleu_by_length.json.
"""
import argparse
import collections
import json
import os
import sys
from typing import Dict, List, Sequence, Tuple

import sacrebleu

from .. import USER_DIR
from . import common


Bucket = Tuple[int, int]


def parse_generate_output(output: str):
    """fairseq-generate's S-/T-/D- lines -> {id: text} for sources, references, hypotheses
    (D = the hypothesis after --remove-bpe and detokenization)."""
    found = {"S": {}, "T": {}, "D": {}}
    for line in output.splitlines():
        tag, _, rest = line.partition("\t")
        kind, _, index = tag.partition("-")
        if kind in found and index.isdigit():
            found[kind][int(index)] = rest.split("\t", 1)[1] if kind == "D" else rest
    return found["S"], found["T"], found["D"]


def parse_buckets(text: str) -> List[Bucket]:
    buckets = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        if not (low.isdigit() and high.isdigit()) or int(low) > int(high):
            raise ValueError(f"bad bucket {part!r}: write LOW-HIGH, e.g. 1-10,11-20")
        buckets.append((int(low), int(high)))
    return buckets


def bucket_bleu(hypotheses: Dict[int, str], lengths: Dict[int, int], references: Dict[int, str],
                buckets: Sequence[Bucket]) -> List[Tuple[float, int]]:
    """(sacreBLEU, sentences) per bucket; NaN for an empty bucket."""
    grouped = collections.defaultdict(lambda: ([], []))
    for i, n in lengths.items():
        for k, (low, high) in enumerate(buckets):
            if low <= n <= high:
                grouped[k][0].append(hypotheses.get(i, ""))
                grouped[k][1].append(references[i])
    return [(sacrebleu.corpus_bleu(grouped[k][0], [grouped[k][1]]).score, len(grouped[k][0])) if grouped[k][0]
            else (float("nan"), 0) for k in range(len(buckets))]


def plot(path: str, buckets: Sequence[Bucket], scores: Dict[str, List[float]], train_max_len: int = None,
         title: str = "BLEU by source length"):
    plt = common.pyplot()

    labels = [f"{low}-{high}" for low, high in buckets]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in scores.items():
        ax.plot(range(len(buckets)), values, marker="o", label=name)
    ax.set_xticks(range(len(buckets)), labels)
    if train_max_len:
        ax.set_title(f"{title} (training sentences <= {train_max_len})")
    else:
        ax.set_title(title)
    ax.set_xlabel("source length")
    ax.set_ylabel("sacreBLEU")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(buckets, results) -> str:
    lines = ["| checkpoint | " + " | ".join(f"{low}-{high}" for low, high in buckets) + " |",
             "|" + "---|" * (len(buckets) + 1)]
    for name, per_bucket in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{s:.1f}" for s, _ in per_bucket) + " |")
    counts = next(iter(results.values()))
    lines.append("| (sentences) | " + " | ".join(str(n) for _, n in counts) + " |")
    return "\n".join(lines)


def generate(data, checkpoint, subset, beam, lenpen, remove_bpe, extra=()):
    cmd = [common.tool("fairseq-generate"), data, "--user-dir", USER_DIR, "--path", checkpoint,
           "--gen-subset", subset, "--beam", str(beam), "--lenpen", str(lenpen), "--batch-size", "64",
           "--required-batch-size-multiple", "1", "--no-progress-bar", *extra]
    if remove_bpe:
        cmd += ["--remove-bpe", remove_bpe]
    import torch
    if not torch.cuda.is_available():
        cmd.append("--cpu")
    return parse_generate_output(common.run(cmd, capture=True, quiet=True))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data")
    parser.add_argument("checkpoints", nargs="+", metavar="NAME=CHECKPOINT")
    parser.add_argument("--buckets", default="1-10,11-20,21-30,31-1000")
    parser.add_argument("--subset", default="test")
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--lenpen", type=float, default=1.0)
    parser.add_argument("--remove-bpe", default="sentencepiece", help="'' for data without subwords")
    parser.add_argument("--train-max-len", type=int, help="shown in the plot title")
    parser.add_argument("--out-dir", default="length-buckets")
    args = parser.parse_args(argv)
    try:
        buckets = parse_buckets(args.buckets)
        named = [c.split("=", 1) if "=" in c else (os.path.basename(os.path.dirname(c)) or c, c) for c in args.checkpoints]
        for _, path in named:
            if not os.path.isfile(path):
                raise ValueError(f"no such checkpoint: {path}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results, scores = {}, {}
    for name, path in named:
        print(f"decoding {args.subset} with {name} ({path})", flush=True)
        sources, targets, hypotheses = generate(args.data, path, args.subset, args.beam, args.lenpen, args.remove_bpe)
        references, lengths = targets, {i: len(s.split()) for i, s in sources.items()}
        raw_source = os.path.join(args.data, f"{args.subset}.raw.{_lang(args.data, 'source')}")
        raw_target = os.path.join(args.data, f"{args.subset}.raw.{_lang(args.data, 'target')}")
        if os.path.exists(raw_source) and os.path.exists(raw_target):  # words of the raw text, raw references
            with open(raw_source, encoding="utf-8") as f:
                lengths = {i: len(line.split()) for i, line in enumerate(f)}
            with open(raw_target, encoding="utf-8") as f:
                references = dict(enumerate(line.rstrip("\n") for line in f))
        results[name] = bucket_bleu(hypotheses, lengths, references, buckets)
        scores[name] = [s for s, _ in results[name]]
    text = table(buckets, results)
    print(text)
    os.makedirs(args.out_dir, exist_ok=True)
    plot(os.path.join(args.out_dir, "bleu_by_length.png"), buckets, scores, args.train_max_len)
    with open(os.path.join(args.out_dir, "bleu_by_length.json"), "w") as f:
        json.dump({"buckets": buckets, "bleu": scores, "sentences": [n for _, n in next(iter(results.values()))]}, f)
    print(f"saved {args.out_dir}/bleu_by_length.png and bleu_by_length.json")
    return 0


def _lang(data: str, side: str) -> str:
    """Source/target language of a fairseq-preprocess directory (its dict files and split names)."""
    pairs = sorted({name.split(".")[1] for name in os.listdir(data) if name.count(".") >= 3 and "-" in name.split(".")[1]})
    if not pairs:
        return ""
    source, target = pairs[0].split("-")
    return source if side == "source" else target


if __name__ == "__main__":
    sys.exit(main())
