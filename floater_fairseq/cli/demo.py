"""The main job: does a learned, continuous position encoding extrapolate to longer inputs?

Offline, on a fresh machine: a seeded synthetic translation task whose output order depends on
positions (vocabulary mapping + reversal, see synthetic.py), trained on sentences of at most L
words and tested on length buckets up to 4L. Trains fairseq's transformer (sinusoidal at the
input), a learned absolute embedding, and floater_transformer (compatibility form and input form)
with the stock fairseq tools, then prints sacreBLEU per length bucket and saves a plot.

    python -m floater_fairseq.cli.demo [--quick] [--out demo-out]
"""
import argparse
import os
import re
import shutil
import time

from .. import USER_DIR
from . import common
from .length_buckets import bucket_bleu, parse_generate_output, plot
from .synthetic import make_pairs, write_split


SINUSOIDAL = "sinusoidal (input)"
WARM_START = "FLOATER (all blocks), warm start"
CONTINUED = "sinusoidal (input), continued"
SYSTEMS = [  # (label, arch, extra flags)
    (SINUSOIDAL, "transformer", []),
    ("learned (input)", "floater_transformer", ["--pos-encoder", "learned", "--pos-blocks", "input"]),
    ("FLOATER (all blocks)", "floater_transformer", ["--pos-blocks", "all"]),
    # the paper's protocol (App. B.2): the sinusoidal model migrated exactly, fine-tuned at half LR ...
    (WARM_START, "floater_transformer", ["--pos-blocks", "all"]),
    # ... and its control: the same extra epochs, LR and resets without FLOATER
    (CONTINUED, "transformer", []),
]
LR = 2e-3


def settings(quick: bool) -> dict:
    if quick:
        return dict(train=300, max_len=6, dim=16, layers=1, epochs=1, warm_epochs=1, test_per_bucket=5, vocab=10)
    return dict(train=8000, max_len=12, dim=64, layers=2, epochs=25, warm_epochs=8, test_per_bucket=100, vocab=20)


def run(name, *args, log=None):
    def summary(line):  # one line per epoch, labelled with the run
        if log and re.search(r"\| (train|valid) \| epoch", line):
            return f"    {log}: {line.split(' | ', 2)[-1].strip()[:110]}\n"
        return None
    try:
        return common.run([common.tool(name), *args], quiet=True, show=summary)
    except common.ToolError as e:
        raise SystemExit(f"demo: {e}") from None


def make_data(out: str, cfg: dict) -> list:
    raw = os.path.join(out, "raw")
    length = cfg["max_len"]
    write_split(raw, "train", make_pairs(cfg["train"], 1, length, cfg["vocab"], seed=1))
    write_split(raw, "valid", make_pairs(max(50, cfg["train"] // 20), 1, length, cfg["vocab"], seed=2))
    buckets = [(1 + k * length, (k + 1) * length) for k in range(4)]  # up to 4L words
    test = []
    for k, (lo, hi) in enumerate(buckets):
        test += make_pairs(cfg["test_per_bucket"], lo, hi, cfg["vocab"], seed=10 + k)
    write_split(raw, "test", test)
    run("fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt", "--joined-dictionary",
        "--trainpref", f"{raw}/train", "--validpref", f"{raw}/valid", "--testpref", f"{raw}/test",
        "--destdir", os.path.join(out, "bin"), "--workers", "1")
    return buckets


def save_dir_of(out, label):
    return os.path.join(out, "checkpoints", re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-"))


def train_and_decode(out, label, arch, extra, cfg):
    save_dir = save_dir_of(out, label)
    dim, layers = str(cfg["dim"]), str(cfg["layers"])
    start = time.time()
    epochs, lr = cfg["epochs"], LR
    if label in (WARM_START, CONTINUED):  # start from the trained vanilla model, fine-tune at half the LR
        os.makedirs(save_dir, exist_ok=True)
        initial = os.path.join(save_dir_of(out, SINUSOIDAL), "checkpoint_last.pt")
        if label == WARM_START:
            initial = os.path.join(save_dir, "warm_start.pt")
            run("python", "-m", "floater_fairseq.cli.migrate", os.path.join(save_dir_of(out, SINUSOIDAL), "checkpoint_last.pt"),
                initial)
        extra = [*extra, "--restore-file", initial, "--reset-optimizer", "--reset-lr-scheduler",
                 "--reset-dataloader", "--reset-meters"]
        epochs, lr = cfg["warm_epochs"], LR / 2
    run("fairseq-train", os.path.join(out, "bin"), "--user-dir", USER_DIR, "--arch", arch, *extra,
        "--encoder-embed-dim", dim, "--decoder-embed-dim", dim, "--encoder-ffn-embed-dim", str(2 * cfg["dim"]),
        "--decoder-ffn-embed-dim", str(2 * cfg["dim"]), "--encoder-layers", layers, "--decoder-layers", layers,
        "--encoder-attention-heads", "4", "--decoder-attention-heads", "4", "--share-all-embeddings",
        "--dropout", "0.1", "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr", str(lr),
        "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "200", "--clip-norm", "1.0",
        "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1", "--max-tokens", "4000",
        "--max-epoch", str(epochs), "--save-dir", save_dir, "--no-epoch-checkpoints", "--seed", "1",
        "--no-progress-bar", "--log-interval", "1000", "--cpu", log=label)
    train_seconds = time.time() - start
    output = run("fairseq-generate", os.path.join(out, "bin"), "--user-dir", USER_DIR,
                 "--path", os.path.join(save_dir, "checkpoint_last.pt"), "--beam", "4", "--batch-size", "64",
                 "--required-batch-size-multiple", "1", "--max-len-a", "1.2", "--max-len-b", "5", "--cpu")
    sources, references, hypotheses = parse_generate_output(output)
    return hypotheses, sources, references, train_seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tiny run (seconds), for tests")
    parser.add_argument("--out", default="demo-out")
    args = parser.parse_args(argv)
    cfg = settings(args.quick)
    for derived in ("raw", "bin", "checkpoints"):  # a re-run starts from scratch (fairseq would resume)
        shutil.rmtree(os.path.join(args.out, derived), ignore_errors=True)
    os.makedirs(args.out, exist_ok=True)
    print(f"[1/3] synthetic task: {cfg['train']} training pairs of 1-{cfg['max_len']} words, "
          f"test buckets up to {4 * cfg['max_len']} words", flush=True)
    buckets = make_data(args.out, cfg)
    results = {}
    for i, (label, arch, extra) in enumerate(SYSTEMS):
        epochs = (f"{cfg['warm_epochs']} epochs after {SINUSOIDAL}" if label in (WARM_START, CONTINUED)
                  else f"{cfg['epochs']} epochs")
        print(f"[2/3] training {label} ({i + 1}/{len(SYSTEMS)}), {epochs}", flush=True)
        hyps, srcs, refs, seconds = train_and_decode(args.out, label, arch, extra, cfg)
        lengths = {i: len(src.split()) for i, src in srcs.items()}
        results[label] = ([bleu for bleu, _ in bucket_bleu(hyps, lengths, refs, buckets)], seconds)
    print("[3/3] sacreBLEU by source length (training sentences have at most "
          f"{cfg['max_len']} words)\n", flush=True)
    header = "| system | " + " | ".join(f"{lo}-{hi}" for lo, hi in buckets) + " | train time |"
    lines = [header, "|" + "---|" * (len(buckets) + 2)]
    for label, (scores, seconds) in results.items():
        lines.append(f"| {label} | " + " | ".join(f"{s:.1f}" for s in scores) + f" | {seconds:.0f} s |")
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table + "\n")
    plot(os.path.join(args.out, "bleu_by_length.png"), buckets, {label: scores for label, (scores, _) in results.items()},
         train_max_len=cfg["max_len"], title="Synthetic reversal task: BLEU by source length")
    print(f"\nwrote {args.out}/results.md and {args.out}/bleu_by_length.png")


if __name__ == "__main__":
    main()
