"""Train, evaluate and tabulate experiments described by configs/DATASET/ROW.yaml.

    python -m floater_fairseq.cli.experiment train CONFIG [--warm-start-from DIR] [extra fairseq-train flags]
    python -m floater_fairseq.cli.experiment evaluate CHECKPOINT_DIR [CONFIG] [--average-last N]
        [--subset S] [--output FILE] [--model-overrides "{'floater_step_size': 0.1}"]
        [--length-buckets-like CONFIG]
    python -m floater_fairseq.cli.experiment table DATASET [--rows R,...] [extra fairseq-train flags]
    python -m floater_fairseq.cli.experiment seeds DATASET [--doc FILE] [--headline FILE] [--plot PNG]

(scripts/train.sh, evaluate.sh and reproduce-table.sh call these.)

train: fairseq-train with --user-dir and every flag of the config, --save-dir
checkpoints/DATASET/ROW (or $CHECKPOINT_ROOT/DATASET/ROW); a re-run resumes from checkpoint_last.
A config with ``warm_start`` (the paper's protocol, App. B.2) first trains its ``from`` row if
needed, migrates that checkpoint exactly into FLOATER, and fine-tunes with lr x lr_scale,
max_epoch epochs and fresh optimizer, scheduler, data loader and meters. A row without FLOATER
(sinusoidal-input-continued) fine-tunes the source's checkpoint unchanged: the protocol's control,
the same extra training without the new encoder.

evaluate: averages the last N epoch checkpoints with fairseq's averaging script, decodes the test
set with the config's beam and lenpen (subwords removed), scores with sacreBLEU against the raw
references (signature printed; compound-split BLEU for En-De, labelled as such) and writes one
JSON result to results/DATASET/ROW.json (with the decode time, and the model overrides if any: the
solver-step study decodes one model with several --floater-step-size values). A config whose
evaluate section has ``length_buckets`` (the short-to-long study) adds sacreBLEU per bucket of
source length, counted in subwords as prepare's --max-train-source-len counts them;
--length-buckets-like CONFIG scores any run on CONFIG's buckets (the study's reference: models
trained on all lengths).

seeds: results/DATASET/seeds/ROW-seedN.SUBSET.json (scripts/run-queue.sh) -> results/DATASET-seeds.md,
mean ± std over seeds per row, and per length bucket where the results have them; each row against
the sinusoid, a difference called a result only where the seeds' ranges do not overlap (against a
control fine-tuned from the same runs: seed with seed, every seed on one side). The
<!-- DATASET-seeds --> block of docs/results.md (--doc) gets the same tables, and README's
<!-- headline --> block (--headline) the one-line-per-encoder summary of both Multi30k studies and
results/speed/; where results have length buckets, results/DATASET-by-length.png (or --plot PNG)
draws them.

table: train + evaluate every Table-2 row of a dataset (rows with a result are skipped) and
write results/DATASET.md in the paper's layout, with the paper's numbers where it has them.
"""
import argparse
import glob
import json
import os
import re
import shutil
import sys
import time

import sacrebleu

from .. import USER_DIR
from ..files import replace_block, write_json, write_text
from . import common
from .experiment_config import ConfigError, check_train_flags, load, train_args

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# where configs, results and checkpoints live (environment overrides, e.g. for tests)
CONFIG_ROOT = os.environ.get("FLOATER_CONFIGS", os.path.join(REPO, "configs"))
RESULTS_ROOT = os.environ.get("FLOATER_RESULTS", os.path.join(REPO, "results"))
# the row every other row of a seeded table is compared with (the paper's baseline), and the rows
# compared with a control trained the same way instead (the warm start's 5 extra epochs)
BASELINE_ROW = "sinusoidal-input"
CONTROL_ROWS = {"floater-all": "sinusoidal-input-continued"}
# rows named ROW-all-lengths in the short-to-long table: ROW's 12-epoch runs on all lengths, scored on
# the study's buckets (evaluate --length-buckets-like): references, not compared
REFERENCE_SUFFIX = "-all-lengths"
TABLE2_ROWS = ["floater-all", "floater-input", "sinusoidal-all", "sinusoidal-input", "learned-all", "learned-input"]
# Table 2 of the paper (WMT14 BLEU)
PAPER = {
    "wmt14-en-de-base": {"floater-all": 28.6, "floater-input": 28.3, "sinusoidal-all": 28.2, "sinusoidal-input": 27.9,
                         "learned-all": 26.9, "learned-input": 27.8},
    "wmt14-en-fr-base": {"floater-all": 41.6, "floater-input": 41.1, "sinusoidal-all": 40.6, "sinusoidal-input": 40.4,
                         "learned-all": 40.9, "learned-input": 40.9},
    "wmt14-en-de-big": {"floater-all": 29.2, "floater-input": 29.1, "sinusoidal-all": 28.4, "sinusoidal-input": 28.4,
                        "learned-all": 28.3, "learned-input": 28.5},
    "wmt14-en-fr-big": {"floater-all": 42.7, "floater-input": 42.4, "sinusoidal-all": 42.0, "sinusoidal-input": 41.8,
                        "learned-all": 42.0, "learned-input": 42.4},
}


class ExperimentError(RuntimeError):
    pass


def repo_path(path: str) -> str:
    return path if os.path.isabs(path) or os.path.exists(path) else os.path.join(REPO, path)


def portable_path(path: str, save_dir: str) -> str:
    """``path`` as a result file records it: relative to the repository when inside it, else as
    ``{runs}/DATASET/RUN/...`` relative to the runs directory (the save dir's grandparent, as
    scripts/run-queue.sh lays it out): never a machine's home."""
    path = os.path.abspath(path)
    if path.startswith(REPO + os.sep):
        return os.path.relpath(path, REPO)
    runs = os.path.dirname(os.path.dirname(os.path.abspath(save_dir)))
    return "{runs}/" + os.path.relpath(path, runs)


def row_of(config_path: str):
    return os.path.basename(os.path.dirname(os.path.abspath(config_path))), os.path.splitext(os.path.basename(config_path))[0]


def checkpoint_dir(config_path: str) -> str:
    dataset, row = row_of(config_path)
    return os.path.join(os.environ.get("CHECKPOINT_ROOT", os.path.join(REPO, "checkpoints")), dataset, row)


def run(cmd, log=None):
    try:
        return common.run(cmd, log=log)
    except common.ToolError as e:
        raise ExperimentError(str(e)) from None


def _save_dir(extra):
    return extra[extra.index("--save-dir") + 1] if "--save-dir" in extra else None


def train(config_path: str, extra=(), warm_start_from: str = None):
    config = load(config_path)
    data = repo_path(config["data"])
    if not os.path.isdir(data):
        raise ExperimentError(f"{config_path}: data directory {config['data']} does not exist; prepare it first "
                              f"(scripts/prepare-*.sh)")
    check_train_flags(config, config_path, extra)
    save_dir = _save_dir(extra) or checkpoint_dir(config_path)
    os.makedirs(save_dir, exist_ok=True)
    flags = train_args(config)
    resume = os.path.exists(os.path.join(save_dir, "checkpoint_last.pt"))
    warm = config.get("warm_start")
    if warm_start_from and not warm:
        raise ExperimentError(f"--warm-start-from: {config_path} has no warm_start section")
    if warm and not resume:
        flags = warm_start_flags(config_path, config, save_dir, flags, extra, warm_start_from)
    with open(os.path.join(save_dir, "config.yaml"), "w") as f, open(config_path) as source:
        f.write(source.read())  # evaluate reads the run's own copy
    done = False
    try:
        # fairseq's output goes to the terminal and to train.log beside the checkpoints. (Not
        # fairseq's --log-file: fairseq 0.12 adds one more file handler for it every epoch, so
        # epoch N's lines would appear N times.)
        run([common.tool("fairseq-train"), data, "--user-dir", USER_DIR, *flags, "--save-dir", save_dir, *extra],
            log=os.path.join(save_dir, "train.log"))
        done = True
    finally:  # a failed or interrupted resume marks the run unfinished (the training time is
        # fairseq's own, in the checkpoint: see training_state)
        write_json(os.path.join(save_dir, "train_time.json"), {"finished": done})
    return save_dir


def finished(save_dir: str) -> bool:
    """fairseq-train exited cleanly for this run (a re-run would resume and take one more update)."""
    timing = os.path.join(save_dir, "train_time.json")
    return os.path.exists(timing) and json.load(open(timing)).get("finished", False)


def warm_start_flags(config_path, config, save_dir, flags, extra, source_dir=None):
    source_config = os.path.join(os.path.dirname(os.path.abspath(config_path)), config["warm_start"]["from"] + ".yaml")
    source_extra = [x for i, x in enumerate(extra) if x != "--save-dir" and (i == 0 or extra[i - 1] != "--save-dir")]
    if source_dir is not None:  # a given run of the source row (e.g. the same seed's)
        if not finished(source_dir):
            raise ExperimentError(f"--warm-start-from {source_dir}: no finished training run there (train.sh "
                                  f"writes train_time.json with finished: true); train it first")
    else:
        source_dir = checkpoint_dir(source_config)
    if not finished(source_dir):
        print(f"warm start: training {source_config} first", flush=True)
        train(source_config, source_extra)
    initial = os.path.join(save_dir, "warm_start.pt")
    if not os.path.exists(initial):
        source = os.path.join(source_dir, "checkpoint_last.pt")
        if config["train"].get("pos-encoder") == "floater":
            # the target row's FLOATER settings (e.g. the paper's dynamics), not the source run's
            floater = train_args({"train": {k: v for k, v in config["train"].items() if k.startswith("floater-")}})
            run([sys.executable, "-m", "floater_fairseq.cli.migrate", source, initial, *floater])
        else:  # the protocol's control: the same fine-tuning of the unchanged model
            shutil.copyfile(source, initial)
    lr = float(config["train"]["lr"]) * float(config["warm_start"].get("lr_scale", 0.5))
    flags = flags + ["--restore-file", initial, "--reset-optimizer", "--reset-lr-scheduler", "--reset-dataloader",
                     "--reset-meters", "--lr", str(lr)]
    if config["warm_start"].get("max_epoch"):
        flags += ["--max-epoch", str(config["warm_start"]["max_epoch"])]
    return flags


def average(save_dir: str, last: int) -> str:
    epochs = sorted(glob.glob(os.path.join(save_dir, "checkpoint[0-9]*.pt")),
                    key=lambda p: int(re.search(r"checkpoint(\d+)\.pt$", p).group(1)))
    if last <= 1 or len(epochs) < 2:
        path = os.path.join(save_dir, "checkpoint_last.pt")
        if not os.path.exists(path):
            raise ExperimentError(f"{save_dir} has no checkpoint_last.pt: train first")
        return path
    last = min(last, len(epochs))
    output = os.path.join(save_dir, f"averaged_last{last}.pt")
    run([sys.executable, "-m", "floater_fairseq.cli.average_checkpoints", "--inputs", save_dir,
         "--num-epoch-checkpoints", str(last), "--output", output])
    return output


def compound_split(lines):
    """Split hyphenated compounds (Vaswani et al.'s En-De convention: a-b -> a ##AT##-##AT## b)."""
    return [re.sub(r"(\S)-(\S)", r"\1 ##AT##-##AT## \2", line) for line in lines]


def decode(data, checkpoint, config, subset="test", model_overrides=None):
    train_flags, evaluation = config["train"], config["evaluate"]
    cmd = [common.tool("fairseq-generate"), data, "--user-dir", USER_DIR, "--path", checkpoint,
           "--gen-subset", subset, "--source-lang", str(train_flags["source-lang"]), "--target-lang",
           str(train_flags["target-lang"]), "--beam", str(evaluation.get("beam", 5)), "--lenpen",
           str(evaluation.get("lenpen", 1.0)), "--batch-size", str(evaluation.get("batch_size", 64)),
           "--required-batch-size-multiple", "1", "--remove-bpe", "sentencepiece", "--no-progress-bar"]
    if model_overrides:
        cmd += ["--model-overrides", repr(model_overrides)]
    import torch
    if not torch.cuda.is_available():
        cmd.append("--cpu")
    try:
        output = common.run(cmd, capture=True)
    except common.ToolError as e:
        raise ExperimentError(str(e)) from None
    hypotheses = {}
    for line in output.splitlines():
        if line.startswith("D-"):
            tag, _, text = line.split("\t", 2)
            hypotheses[int(tag[2:])] = text
    return hypotheses


def training_state(save_dir: str) -> dict:
    """Seed, updates, epoch and training seconds of the run's checkpoint_last (what a result must
    state). The seconds are fairseq's own cumulative training time, which the checkpoint carries
    across resumes and kills, less the warm start's."""
    import torch
    path = os.path.join(save_dir, "checkpoint_last.pt")
    if not os.path.exists(path):
        return {}
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    cfg = state.get("cfg") or {}
    result = {"seed": cfg.get("common", {}).get("seed"),
              "updates": state["optimizer_history"][-1]["num_updates"],
              "epoch": state["extra_state"]["train_iterator"]["epoch"]}
    seconds = state["extra_state"].get("previous_training_time")
    if seconds is not None:
        warm_start, before = os.path.join(save_dir, "warm_start.pt"), 0.0
        if os.path.exists(warm_start):  # the source run's time, which the warm start carries in
            source = torch.load(warm_start, map_location="cpu", weights_only=True, mmap=True)
            before = (source.get("extra_state") or {}).get("previous_training_time", 0.0)
        result["train_seconds"] = round(seconds - before, 1)
    return result


def evaluate(save_dir: str, config_path: str = None, average_last: int = None, output: str = None,
             subset: str = None, model_overrides: dict = None, length_buckets_like: str = None):
    config_path = config_path or os.path.join(save_dir, "config.yaml")
    config = load(config_path)
    evaluation = config["evaluate"]
    data = repo_path(config["data"])
    buckets_from = load(length_buckets_like) if length_buckets_like else config
    if length_buckets_like and not buckets_from["evaluate"].get("length_buckets"):
        raise ExperimentError(f"--length-buckets-like {length_buckets_like}: its evaluate section has no length_buckets")
    start = time.time()
    checkpoint = average(save_dir, average_last or evaluation.get("average_last", 1))
    subset = subset or evaluation.get("subset", "test")
    decode_start = time.time()
    hypotheses = decode(data, checkpoint, config, subset, model_overrides)
    decode_seconds = time.time() - decode_start
    target = str(config["train"]["target-lang"])
    references_path = os.path.join(data, f"{subset}.raw.{target}")
    with open(references_path, encoding="utf-8") as f:
        references = [line.rstrip("\n") for line in f]
    if len(hypotheses) != len(references):
        raise ExperimentError(f"{len(hypotheses)} hypotheses for {len(references)} references in {references_path}")
    hyps = [hypotheses[i] for i in range(len(references))]
    with open(os.path.join(save_dir, f"{subset}.hyp.{target}"), "w", encoding="utf-8") as f:
        f.writelines(h + "\n" for h in hyps)
    bleu = sacrebleu.metrics.BLEU()
    score = bleu.corpus_score(hyps, [references])
    result = {"dataset": config["dataset"], "config": os.path.relpath(os.path.abspath(config_path), REPO),
              "row": row_of(config_path)[1] if config_path != os.path.join(save_dir, "config.yaml") else os.path.basename(save_dir),
              "bleu": round(score.score, 2), "signature": str(bleu.get_signature()),
              "checkpoint": portable_path(checkpoint, save_dir),
              "subset": subset, "sentences": len(hyps), "evaluate_seconds": round(time.time() - start, 1),
              "decode_seconds": round(decode_seconds, 1)}
    if model_overrides:
        result["model_overrides"] = model_overrides
    result.update(training_state(save_dir))
    print(f"sacreBLEU {score.score:.2f}  ({result['signature']})")
    if buckets_from["evaluate"].get("length_buckets"):
        # another config's buckets are counted in its data's subwords: the same sentences per bucket
        result["length_buckets"] = bleu_by_source_length(repo_path(buckets_from["data"]), config, subset, hyps,
                                                         references, str(buckets_from["evaluate"]["length_buckets"]))
        if length_buckets_like:
            result["length_buckets"]["counted_in"] = buckets_from["data"]
        by_length = result["length_buckets"]
        print("sacreBLEU by source length (subwords): " + ", ".join(
            f"{bucket}: {'-' if bleu is None else f'{bleu:.2f}'} ({n} sentences)"
            for bucket, bleu, n in zip(by_length["buckets"], by_length["bleu"], by_length["sentences"])))
    if evaluation.get("compound_split"):
        split = sacrebleu.metrics.BLEU()
        result["compound_split_bleu"] = round(split.corpus_score(compound_split(hyps), [compound_split(references)]).score, 2)
        print(f"compound-split sacreBLEU {result['compound_split_bleu']:.2f}  (hyphens split as ##AT##-##AT##)")
    output = output or os.path.join(RESULTS_ROOT, config["dataset"], f"{result['row']}.json")
    write_json(output, result)
    print(f"wrote {output}")
    return result


def bleu_by_source_length(data, config, subset, hyps, references, buckets_text) -> dict:
    """sacreBLEU per bucket of source length, counted in the subwords the model saw (EOS excluded:
    the unit of prepare's --max-train-source-len), for the short-to-long study."""
    from fairseq.data import data_utils
    from .length_buckets import bucket_bleu, parse_buckets
    source, target = str(config["train"]["source-lang"]), str(config["train"]["target-lang"])
    prefix = os.path.join(data, f"{subset}.{source}-{target}.{source}")
    sources = data_utils.load_indexed_dataset(prefix, None)
    if sources is None or len(sources) != len(hyps):
        raise ExperimentError(f"length_buckets: no binarized source of {len(hyps)} sentences at {prefix}.bin")
    buckets = parse_buckets(buckets_text)
    scores = bucket_bleu(dict(enumerate(hyps)), {i: int(n) - 1 for i, n in enumerate(sources.sizes)},
                         dict(enumerate(references)), buckets)
    return {"unit": "source subwords", "buckets": [f"{low}-{high}" for low, high in buckets],
            "bleu": [None if n == 0 else round(score, 2) for score, n in scores],
            "sentences": [n for _, n in scores]}


def table(dataset: str, rows=None, extra=()):
    rows = rows or TABLE2_ROWS
    config_dir = os.path.join(CONFIG_ROOT, dataset)
    if not os.path.isdir(config_dir):
        raise ExperimentError(f"no {config_dir}; datasets: {sorted(os.listdir(CONFIG_ROOT))}")
    results = {}
    for row in rows:
        result_path = os.path.join(RESULTS_ROOT, dataset, f"{row}.json")
        if not os.path.exists(result_path):
            config_path = os.path.join(config_dir, f"{row}.yaml")
            save_dir = checkpoint_dir(config_path)
            if not finished(save_dir):
                train(config_path, list(extra))
            evaluate(save_dir, config_path, output=result_path)
        with open(result_path) as f:
            results[row] = json.load(f)
    path = os.path.join(RESULTS_ROOT, f"{dataset}.md")
    text = render_table(dataset, results)
    write_text(path, text)
    print(text)
    return path


def _seed_runs(dataset: str) -> dict:
    """results/DATASET/seeds/ROW-seedN.SUBSET.json as {ROW: {SUBSET: [result, ...]}}."""
    folder = os.path.join(RESULTS_ROOT, dataset, "seeds")
    runs = {}
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        match = re.fullmatch(r"(.+)-seed(\d+)\.(\w+)\.json", name)
        if match:
            with open(os.path.join(folder, name)) as f:
                runs.setdefault(match.group(1), {}).setdefault(match.group(3), []).append(json.load(f))
    if not runs:
        raise ExperimentError(f"no per-seed results in {folder}")
    return runs


def _bucketed(runs) -> dict:
    """{ROW: [the length_buckets of each test result]} for the rows whose test results have them."""
    rows = {row: [r["length_buckets"] for r in subsets.get("test", []) if "length_buckets" in r]
            for row, subsets in runs.items()}
    return {row: records for row, records in rows.items() if records}


def _bucket_scores(records, k) -> list:
    """Bucket k's BLEU over the runs, an empty bucket (None) left out."""
    return [r["bleu"][k] for r in records if r["bleu"][k] is not None]


def plot_by_length(dataset: str, path: str) -> dict:
    """Test BLEU per source-length bucket, one line per row (mean over seeds, bars: min to max),
    each ROW-all-lengths reference dashed in its row's colour. Returns the plotted series."""
    import statistics
    series = {}
    for row, records in _bucketed(_seed_runs(dataset)).items():
        values = [_bucket_scores(records, k) for k in range(len(records[0]["bleu"]))]
        series[row] = {"buckets": [f"{b}\n({n})" for b, n in zip(records[0]["buckets"], records[0]["sentences"])],
                       "mean": [statistics.mean(v) if v else None for v in values],
                       "low": [min(v) if v else None for v in values],
                       "high": [max(v) if v else None for v in values], "seeds": len(records),
                       "dashed": row.endswith(REFERENCE_SUFFIX)}
    if not series:
        raise ExperimentError(f"no test results of {dataset} have length_buckets: nothing to plot (the "
                              "short-to-long configs' evaluate section sets them)")
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = {}
    for row, line in sorted(series.items(), key=lambda item: item[1]["dashed"]):
        base = row[:-len(REFERENCE_SUFFIX)] if line["dashed"] else row
        x = [k for k, m in enumerate(line["mean"]) if m is not None]
        mean = [line["mean"][k] for k in x]
        error = [[m - line["low"][k] for m, k in zip(mean, x)], [line["high"][k] - m for m, k in zip(mean, x)]]
        drawn = ax.errorbar(x, mean, yerr=error, marker="o", capsize=3, linestyle="--" if line["dashed"] else "-",
                            color=colours.get(base), label=f"{row} ({line['seeds']} seed{'s' * (line['seeds'] > 1)})")
        colours.setdefault(base, drawn.lines[0].get_color())
    first = next(iter(series.values()))
    ax.set_xticks(range(len(first["buckets"])), first["buckets"])
    ax.set_xlabel("source length in subwords (test sentences)")
    ax.set_ylabel("sacreBLEU, test")
    ax.set_title(f"{dataset}: mean over seeds, bars min to max; dashed: trained on all lengths", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return series


def seed_table(dataset: str) -> str:
    """results/DATASET/seeds/ROW-seedN.SUBSET.json -> results/DATASET-seeds.md: BLEU mean +- std over
    seeds per row and subset, with the seeds, updates and training time behind each row."""
    import statistics
    runs = _seed_runs(dataset)

    def cell(records):
        scores = [r["bleu"] for r in records]
        spread = f" ± {statistics.stdev(scores):.2f}" if len(scores) > 1 else ""
        return f"{statistics.mean(scores):.2f}{spread} (n={len(scores)})"

    def warm_start_source(record):
        path = os.path.join(REPO, record.get("config", ""))
        return (load(path).get("warm_start") or {}).get("from") if os.path.isfile(path) else None

    def updates_of(record):
        """A warm-started run's updates follow its source's: "3036 + 1265" (the same seed's run)."""
        source = warm_start_source(record)
        before = [r.get("updates") for r in runs.get(source, {}).get("test", []) if r.get("seed") == record.get("seed")]
        return f"{before[0]} + {record.get('updates')}" if source and before else str(record.get("updates"))

    lines = [f"# {dataset}: BLEU over seeds (mean ± std; checkpoint_last, sacreBLEU)", "",
             "| row | test | valid | seeds | updates per run | train minutes (mean) |", "|---|---|---|---|---|---|"]
    warm = False
    for row, subsets in runs.items():
        test = subsets.get("test", [])
        minutes = [r["train_seconds"] / 60 for r in test if "train_seconds" in r]
        valid = subsets.get("valid", [])
        seeds = ", ".join(str(r.get("seed")) for r in test) or "-"
        per_run = [updates_of(r) for r in test]
        # one value when every run trained as many updates
        updates = (per_run[0] if len(set(per_run)) == 1 else ", ".join(per_run)) if per_run else "-"
        warm = warm or "+" in updates
        minutes = f"{statistics.mean(minutes):.0f}" if minutes else "-"
        lines.append(f"| {row} | {cell(test) if test else '-'} | {cell(valid) if valid else '-'} | {seeds} | "
                     f"{updates} | {minutes} |")
    lines += _comparison_table(runs, BASELINE_ROW)
    lines += _length_bucket_table(runs)
    signatures = sorted({r["signature"] for subsets in runs.values() for rs in subsets.values() for r in rs})
    notes = ["", "train minutes: fairseq's cumulative training time (kept across resumes) on whatever machine "
             "and load the runs had: a record, not a speed comparison (benchmarks/ measure speed)."]
    notes += ["", "a + b updates: b updates fine-tuned from the same seed's run of the warm-start row (a "
              "updates; the paper's protocol), so the row has trained a + b updates in all; its minutes are "
              "the fine-tuning's."] if warm else []
    text = "\n".join(lines + notes + ["", f"sacreBLEU signature: {', '.join(signatures)}", ""]
                     + _run_table(dataset, runs, updates_of))
    write_text(os.path.join(RESULTS_ROOT, f"{dataset}-seeds.md"), text)
    return text


RUN_TABLE_TITLE = "## Each run"


def _run_table(dataset: str, runs, updates_of) -> list:
    """One line per run: its seed, BLEU (and test BLEU per length bucket), updates, training time,
    and the config and training log kept beside its results (a reference row's are those of the run
    it decoded again, kept with that run's dataset)."""
    bucketed = bool(_bucketed(runs))
    lines = [RUN_TABLE_TITLE, "", "Every run behind the tables above, with the config and training log kept "
             "beside its results.", "",
             "| row | seed | test | valid |" + (" test by source length |" if bucketed else "")
             + " updates | train minutes | config | log |",
             "|---|---|---|---|" + ("---|" if bucketed else "") + "---|---|---|---|"]
    for row, subsets in runs.items():
        valid = {r.get("seed"): r["bleu"] for r in subsets.get("valid", [])}
        for record in subsets.get("test", []):
            seed = record.get("seed")
            stem = f"{record.get('dataset', dataset)}/seeds/{record.get('row', row)}-seed{seed}"
            files = [f"[{suffix}]({stem}.{suffix})" if os.path.isfile(os.path.join(RESULTS_ROOT, f"{stem}.{suffix}"))
                     else "-" for suffix in ("yaml", "train.log")]
            buckets = record.get("length_buckets", {}).get("bleu")
            by_length = (" " + (" / ".join("-" if b is None else f"{b:.1f}" for b in buckets) if buckets else "-")
                         + " |") if bucketed else ""
            minutes = f"{record['train_seconds'] / 60:.0f}" if "train_seconds" in record else "-"
            lines.append(f"| {row} | {seed} | {record['bleu']:.2f} | "
                         f"{f'{valid[seed]:.2f}' if seed in valid else '-'} |{by_length} {updates_of(record)} | "
                         f"{minutes} | {files[0]} | {files[1]} |")
    return lines + [""]


def readme_tables(seed_table_text: str) -> str:
    """The part of a seeded table that README shows: its tables (whose first column says what each
    holds) and the sacreBLEU signature; the title, the notes and the list of each run stay in the
    results file, which README links."""
    start = seed_table_text.index("| row |")
    end = seed_table_text.find(RUN_TABLE_TITLE)
    body = seed_table_text[start:end if end >= 0 else None]
    shown = [block.strip("\n") for block in body.split("\n\n")
             if block.startswith("|") or block.startswith("sacreBLEU signature")]
    return "\n\n".join(shown) + "\n"


# README's headline: one line per encoder a reader chooses between. (row, how to ask for it, the
# bench_speed setting that measures its cost). Its cells come from the same result files as the tables.
HEADLINE_ROWS = [
    ("sinusoidal-input", "`sinusoidal --pos-blocks input` (vanilla)", "sinusoidal-input"),
    ("rope", "`rope`", "rope"),
    ("floater-all-scratch", "`floater --floater-dynamics paper`", "paper"),
    ("floater-all-dissipative", "`floater` (default: bounded)", "default"),
    ("floater-all-dissipative-period8", "`floater --floater-fastest-period 8`", "period8"),
    ("rope+floater", "`rope+floater --floater-no-input-sinusoid`", "rope+floater"),
]
HEADLINE_DATASETS = ("multi30k-de-en", "multi30k-de-en-src12")
# the CPU file measures every row at both sentence lengths in one run; the GPU one is the lent H100's
HEADLINE_SPEED = {"cpu": "bench-speed-cpu-headline.txt", "gpu": "bench-speed-gpu-h100.txt"}
HEADLINE_LENGTHS = (27, 256)  # mean sentence lengths (tokens) of the CPU columns
SPEED_ROW = re.compile(r"^(\w+)\s+(\S+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)\b")
SPEED_LENGTH = re.compile(r"mean length (\d+)")


def speed_ratios(path: str) -> dict:
    """{(setting, mean sentence length): [(train-step ratio, peak-memory ratio), ...]} of a
    benchmarks.bench_speed output file (every size and run; the length is its section header's)."""
    ratios, length = {}, None
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                found = SPEED_LENGTH.search(line)
                length = int(found.group(1)) if found else length
                match = SPEED_ROW.match(line)
                if match:
                    ratios.setdefault((match.group(2), length), []).append((float(match.group(3)),
                                                                            float(match.group(5))))
    return ratios


def ratio_range(values) -> str:
    """One ratio, or the range of several (sizes, runs); "-" for none."""
    if not values:
        return "-"
    low, high = min(values), max(values)
    return f"{low:.2f}" if f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f}-{high:.2f}"


def headline_table() -> str:
    """README's headline: per encoder, Multi30k test BLEU over seeds, short-to-long BLEU past 20
    subwords, and the training step's cost against vanilla (results/speed/): on a CPU at 27- and
    256-token sentences with the peak memory at 256, and on the lent GPU."""
    import statistics

    def spread(values, digits):
        if not values:
            return "no result yet"
        text = f"{statistics.mean(values):.{digits}f}"
        return text + (f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else "") + f" (n={len(values)})"

    runs = {}
    for dataset in HEADLINE_DATASETS:
        try:
            runs[dataset] = _seed_runs(dataset)
        except ExperimentError:
            runs[dataset] = {}
    speed = {device: speed_ratios(os.path.join(RESULTS_ROOT, "speed", name)) for device, name in HEADLINE_SPEED.items()}
    short, long = HEADLINE_LENGTHS
    lines = ["| encoder (`--pos-encoder`) | Multi30k test BLEU | trained on <= 12 subwords: BLEU at 21+ | "
             f"CPU step vs vanilla, {short} / {long} tokens | CPU memory, {long} | GPU (older solve) |",
             "|---|---|---|---|---|---|"]
    for row, flags, setting in HEADLINE_ROWS:
        test = [r["bleu"] for r in runs["multi30k-de-en"].get(row, {}).get("test", [])]
        past = [r["length_buckets"]["bleu"][-1] for r in runs["multi30k-de-en-src12"].get(row, {}).get("test", [])
                if r.get("length_buckets") and r["length_buckets"]["bleu"][-1] is not None]
        cpu = {length: speed["cpu"].get((setting, length), []) for length in HEADLINE_LENGTHS}
        gpu = [train for (name, _), values in speed["gpu"].items() if name == setting for train, _ in values]
        step = " / ".join(ratio_range([train for train, _ in cpu[length]]) for length in HEADLINE_LENGTHS)
        lines.append(f"| {flags} | {spread(test, 2)} | {spread(past, 1)} | {step} | "
                     f"{ratio_range([memory for _, memory in cpu[long]])} | {ratio_range(gpu)} |")
    return "\n".join(lines) + "\n"


def separation(scores, baseline) -> str:
    """The rule for calling a difference a result: every seed of one row scores above every seed
    of the other (their ranges do not overlap). Under exchangeable seeds that happens by chance
    with probability 2 / C(n + m, n): 0.10 for 3 seeds against 3."""
    import math
    if len(scores) < 2 or len(baseline) < 2:
        return "too few seeds"
    chance = f"(chance {2 / math.comb(len(scores) + len(baseline), len(scores)):.2f})"
    if min(scores) > max(baseline):
        return f"above every seed {chance}"
    if max(scores) < min(baseline):
        return f"below every seed {chance}"
    return "within the spread"


def paired_separation(differences) -> str:
    """The same rule for a control fine-tuned from the same seed's run, seed with seed: every seed
    above (or below) its control. Under exchangeable rows that happens by chance with probability
    2 / 2^n: 0.25 for 3 seeds."""
    if len(differences) < 2:
        return "too few seeds"
    chance = f"(chance {2 / 2 ** len(differences):.2f})"
    if all(d > 0 for d in differences):
        return f"above its control on every seed {chance}"
    if all(d < 0 for d in differences):
        return f"below its control on every seed {chance}"
    return "within the spread"


def paired_difference(pairs, digits: int) -> str:
    """A control's cell: the mean of the seed-with-seed differences, each, and the paired verdict."""
    import statistics
    if not pairs:
        return "-"
    differences = [score - control for score, control in pairs]
    each = f" ({', '.join(f'{d:+.{digits}f}' for d in differences)} by seed)" if len(differences) > 1 else ""
    return f"{statistics.mean(differences):+.{digits}f}{each}, {paired_separation(differences)}"


def difference(scores, reference, digits: int) -> str:
    """A comparison table's cell: the difference of the means and the separation verdict."""
    import statistics
    if not scores or not reference:
        return "-"
    return f"{statistics.mean(scores) - statistics.mean(reference):+.{digits}f}, {separation(scores, reference)}"


def _compared(rows) -> list:
    """The rows a comparison table lists: not the ROW-all-lengths references."""
    return [row for row in rows if not row.endswith(REFERENCE_SUFFIX)]


def _comparison_table(runs, baseline_row) -> list:
    """Every row's mean BLEU minus its baseline's (baseline_row, or the row's control in
    CONTROL_ROWS once that has results), per subset, with the separation verdict."""
    if baseline_row not in runs or len(_compared(runs)) < 2:
        return []
    lines = ["", "Against the baseline (difference of the means; a difference is a result only where every "
             "seed of one row is above every seed of the other; with exchangeable seeds that happens by chance "
             "with probability 2 / C(n + m, n), e.g. 0.10 for 3 seeds against 3, 0.20 for 2 against 3). Against a "
             "control fine-tuned from the same runs: seed with seed, every seed above (or below) its control, "
             "by chance 2 / 2^n, e.g. 0.25 for 3 seeds:", "",
             "| row | against | test | valid |", "|---|---|---|---|"]
    for row in _compared(runs):
        subsets = runs[row]
        against = CONTROL_ROWS.get(row) if CONTROL_ROWS.get(row) in runs else baseline_row
        if row == baseline_row:
            continue
        cells = []
        for subset in ("test", "valid"):
            records, reference_records = subsets.get(subset, []), runs[against].get(subset, [])
            if against != baseline_row:  # a control is fine-tuned from the same seed's run: compare seed with seed
                control = {r.get("seed"): r["bleu"] for r in reference_records}
                cells.append(paired_difference([(r["bleu"], control[r.get("seed")]) for r in records
                                                if r.get("seed") in control], 2))
            else:
                cells.append(difference([r["bleu"] for r in records], [r["bleu"] for r in reference_records], 2))
        lines.append(f"| {row} | {against} | " + " | ".join(cells) + " |")
    return lines


def _length_bucket_table(runs) -> list:
    """Rows whose test results carry length_buckets: BLEU per source-length bucket, mean ± std."""
    import statistics
    rows = _bucketed(runs)
    if not rows:
        return []
    layouts = {(tuple(b["buckets"]), tuple(b["sentences"])) for records in rows.values() for b in records}
    if len(layouts) > 1:
        raise ExperimentError(f"length_buckets differ between runs (buckets, sentences): {sorted(layouts)}; "
                              f"evaluate them all with the same config")
    buckets, counts = layouts.pop()

    def cell(values):
        if not values:
            return "-"
        spread = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
        return f"{statistics.mean(values):.1f}{spread}"

    lines = ["", "BLEU on test by source length in subwords (mean ± std over the seeds; sentences per bucket "
             "in brackets):", "", "| test BLEU by source length | " + " | ".join(f"{b} ({n})" for b, n in zip(buckets, counts))
             + " | seeds |",
             "|---|" + "---|" * (len(buckets) + 1)]
    for row, records in rows.items():
        per_bucket = [cell(_bucket_scores(records, k)) for k in range(len(buckets))]
        lines.append(f"| {row} | " + " | ".join(per_bucket) + f" | {len(records)} |")

    def header(minus):
        return [f"| ROW minus {minus} | " + " | ".join(buckets) + " |", "|---|" + "---|" * len(buckets)]
    if any(row.endswith(REFERENCE_SUFFIX) for row in rows):
        lines += ["", f"ROW{REFERENCE_SUFFIX}: ROW's runs trained on all lengths (the 12-epoch table), scored on "
                  "these buckets: what the same encoder reaches when long sources are in training."]
    short_and_all = [row for row in _compared(rows) if row + REFERENCE_SUFFIX in rows]
    if short_and_all:
        lines += ["", f"What training only on short sources costs each encoder: ROW minus ROW{REFERENCE_SUFFIX} per "
                  "bucket (difference of the means, and the rule above):", "", *header(f"ROW{REFERENCE_SUFFIX}")]
        for row in short_and_all:
            cells = [difference(_bucket_scores(rows[row], k), _bucket_scores(rows[row + REFERENCE_SUFFIX], k), 1)
                     for k in range(len(buckets))]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
    if BASELINE_ROW not in rows or len(_compared(rows)) < 2:
        return lines
    lines += ["", f"Against {BASELINE_ROW} per bucket (difference of the means, and whether the seeds' ranges "
              "separate, the rule above):", "", *header(BASELINE_ROW)]
    for row in _compared(rows):
        if row == BASELINE_ROW:
            continue
        cells = [difference(_bucket_scores(rows[row], k), _bucket_scores(rows[BASELINE_ROW], k), 1)
                 for k in range(len(buckets))]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines


def render_table(dataset, results):
    paper = PAPER.get(dataset, {})
    lines = [f"# {dataset}: BLEU by position encoder (paper's Table 2 layout)", "",
             "| position encoder | at all blocks | at the input block only |", "|---|---|---|"]
    for encoder in ("floater", "sinusoidal", "learned"):
        cells = []
        for blocks in ("all", "input"):
            row = f"{encoder}-{blocks}"
            ours = f"{results[row]['bleu']:.2f}" if row in results else "not run"
            if row in results and "compound_split_bleu" in results[row]:
                ours += f" (compound-split {results[row]['compound_split_bleu']:.2f})"
            cells.append(ours + (f" (paper {paper[row]})" if row in paper else ""))
        lines.append(f"| {encoder} | {cells[0]} | {cells[1]} |")
    others = [r for r in results if r not in TABLE2_ROWS]
    for row in others:
        lines.append(f"| {row} | {results[row]['bleu']:.2f} | |")
    lines += ["", "Each row: " + "; ".join(
        f"{row}: {r['sentences']} sentences, train {r.get('train_seconds', float('nan')) / 60:.0f} min, {r['checkpoint'].rsplit('/', 1)[-1]}"
        for row, r in results.items()), ""]
    signatures = sorted({r["signature"] for r in results.values()})
    lines += [f"sacreBLEU signature: {', '.join(signatures)}", ""]
    return "\n".join(lines)


def _overrides(text: str) -> dict:
    import ast
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"--model-overrides must be a Python dict literal such as "
                                         f"\"{{'floater_step_size': 0.1}}\", got {text!r}")
    return value


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("train")
    p.add_argument("config")
    p.add_argument("--warm-start-from", metavar="DIR", help="for a config with warm_start: the finished run of "
                   "its source row to start from (default: the source row's own checkpoint dir, trained if needed)")
    p = commands.add_parser("evaluate")
    p.add_argument("checkpoint_dir")
    p.add_argument("config", nargs="?")
    p.add_argument("--average-last", type=int)
    p.add_argument("--output")
    p.add_argument("--subset", help="split to decode and score (default: the config's, else test)")
    p.add_argument("--model-overrides", type=_overrides, metavar="DICT",
                   help="fairseq-generate's --model-overrides, e.g. \"{'floater_step_size': 0.1}\" (recorded in "
                        "the result)")
    p.add_argument("--length-buckets-like", metavar="CONFIG",
                   help="also score per source-length bucket as CONFIG does, counted in its data's subwords (a "
                        "model trained on all lengths, scored on the short-to-long study's buckets)")
    p = commands.add_parser("seeds", help="the per-seed results of a dataset as mean ± std")
    p.add_argument("dataset")
    p.add_argument("--doc", "--readme", dest="doc",
                   help="also put the tables in this file's <!-- DATASET-seeds --> block, where it has one "
                        "('': no file; default docs/results.md when the results are the repository's)")
    p.add_argument("--headline",
                   help="also rebuild this file's <!-- headline --> block from the result files ('': none; "
                        "default README.md when the results are the repository's)")
    p.add_argument("--plot", metavar="PNG", help="where results have length buckets (the short-to-long study), "
                   "draw test BLEU by source length here (default: results/DATASET-by-length.png; '': no plot)")
    p = commands.add_parser("table")
    p.add_argument("dataset")
    p.add_argument("--rows", help="comma-separated rows (default: the six Table-2 rows)")
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "evaluate":
        parser.error(f"unknown arguments: {extra}")
    try:
        if args.command == "train":
            train(args.config, extra, args.warm_start_from)
        elif args.command == "evaluate":
            evaluate(args.checkpoint_dir, args.config, args.average_last, args.output, args.subset,
                     args.model_overrides, args.length_buckets_like)
        elif args.command == "seeds":
            # results elsewhere (FLOATER_RESULTS, a test's) never rewrite the repository's pages
            own = os.path.abspath(RESULTS_ROOT) == os.path.join(REPO, "results")
            if args.doc is None:
                args.doc = os.path.join(REPO, "docs", "results.md") if own else ""
            if args.headline is None:
                args.headline = os.path.join(REPO, "README.md") if own else ""
            text = seed_table(args.dataset)
            if args.doc and replace_block(args.doc, f"{args.dataset}-seeds", readme_tables(text)):
                print(f"updated the {args.dataset}-seeds block of {args.doc}")
            if args.headline and replace_block(args.headline, "headline", headline_table()):
                print(f"updated the headline block of {args.headline}")
            print(text)
            plot = os.path.join(RESULTS_ROOT, f"{args.dataset}-by-length.png") if args.plot is None else args.plot
            if plot and (args.plot or _bucketed(_seed_runs(args.dataset))):
                plot_by_length(args.dataset, plot)
                print(f"wrote {plot}")
        else:
            table(args.dataset, args.rows.split(",") if args.rows else None, extra)
    except (ExperimentError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
