"""The experiment pipeline on tiny data: prepare (and its refusals), train (with warm start and
resume), evaluate, the table, and the length-bucket script, through the shell scripts."""
import gzip
import json
import os
import subprocess

import pytest

from floater_fairseq.cli.synthetic import make_pairs

from conftest import REPO, TINY

SCRIPTS = os.path.join(REPO, "scripts")


def script(name, *args, env=None, check=True):
    result = subprocess.run(["bash", os.path.join(SCRIPTS, name), *map(str, args)], capture_output=True, text=True,
                            env={**os.environ, **(env or {})})
    if check and result.returncode:
        raise AssertionError(f"{name} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def write_multi30k(raw, sizes=(("train", 300), ("val", 30), ("test_2016_flickr", 24)), seed=0):
    """A fake corpus in the layout of Multi30k's official repository (gzipped, one pair per line)."""
    os.makedirs(raw, exist_ok=True)
    for k, (split, n) in enumerate(sizes):
        pairs = make_pairs(n, 2, 9, 12, seed=seed + k)
        for lang, side in (("de", 0), ("en", 1)):
            with gzip.open(os.path.join(raw, f"{split}.{lang}.gz"), "wt", encoding="utf-8") as f:
                f.writelines(pair[side] + "\n" for pair in pairs)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    write_multi30k(root / "raw")
    result = script("prepare-multi30k.sh", "--raw-dir", root / "raw", "--dest", root / "data", "--vocab-size", "20")
    assert "wrote" in result.stdout
    return root


def test_prepare_writes_binarized_data_and_skips_when_done(prepared):
    data = prepared / "data"
    assert {"dict.de.txt", "spm.model", "test.raw.en", "train.de-en.de.bin", "valid.de-en.en.idx"} <= set(os.listdir(data))
    assert len((data / "test.raw.en").read_text().splitlines()) == 24
    again = script("prepare-multi30k.sh", "--raw-dir", prepared / "raw", "--dest", data, "--vocab-size", "20")
    assert "nothing to do" in again.stdout


def test_max_train_len_and_source_len_keep_exactly_the_short_pairs(prepared, tmp_path):
    script("prepare-multi30k.sh", "--raw-dir", prepared / "raw", "--dest", tmp_path / "short", "--vocab-size", "20",
           "--max-train-len", "8", "--max-train-source-len", "6")
    bpe, whole = tmp_path / "short.work" / "bpe", prepared / "data.work" / "bpe"
    kept = list(zip(*((bpe / f"train.{lang}").read_text().splitlines() for lang in ("de", "en"))))
    pairs = zip(*((whole / f"train.{lang}").read_text().splitlines() for lang in ("de", "en")))
    assert kept == [(s, t) for s, t in pairs if len(s.split()) <= 6 and len(t.split()) <= 8]  # exactly those
    assert 0 < len(kept) < 300
    assert (bpe / "test.de").read_text().splitlines() == (whole / "test.de").read_text().splitlines()  # test whole


def corrupt(raw, kind):
    if kind == "missing":
        os.remove(raw / "val.en.gz")
    elif kind == "unequal":
        with gzip.open(raw / "train.en.gz", "at", encoding="utf-8") as f:
            f.write("t1 t2\n")
    elif kind == "empty":
        with gzip.open(raw / "val.de.gz", "wt") as f:
            f.write("")
    elif kind == "undecodable":
        lines = gzip.open(raw / "test_2016_flickr.de.gz", "rb").read().split(b"\n")
        lines[4] = b"s1 \xff\xfe s2"
        with gzip.open(raw / "test_2016_flickr.de.gz", "wb") as f:
            f.write(b"\n".join(lines))


@pytest.mark.parametrize("kind,message", [
    ("missing", "missing file: val.en.gz"),
    ("unequal", "unequal line counts: .*train.de.gz has 300 lines, .*train.en.gz has 301"),
    ("empty", "empty file: .*val.de.gz"),
    ("undecodable", "test_2016_flickr.de.gz, line 5: not valid UTF-8"),
])
def test_prepare_refuses_bad_input_and_leaves_nothing_behind(tmp_path, kind, message):
    import re
    write_multi30k(tmp_path / "raw")
    corrupt(tmp_path / "raw", kind)
    result = script("prepare-multi30k.sh", "--raw-dir", tmp_path / "raw", "--dest", tmp_path / "data", check=False)
    assert result.returncode == 2
    assert re.search(message, result.stderr), result.stderr
    assert not (tmp_path / "data").exists()
    leftovers = [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]
    assert not leftovers and not (tmp_path / "data.work" / "text").exists()


TINY_TRAIN = {**{k.lstrip("-"): v for k, v in zip(TINY[::2], TINY[1::2])}, "max-update": 8, "max-tokens": 1000,
              "warmup-updates": 4, "lr": 0.003, "cpu": True, "no-progress-bar": True, "seed": 1,
              "optimizer": "adam", "lr-scheduler": "inverse_sqrt", "criterion": "label_smoothed_cross_entropy",
              "label-smoothing": 0.1, "share-all-embeddings": True, "source-lang": "de", "target-lang": "en",
              "arch": "floater_transformer_tiny", "task": "translation"}


@pytest.fixture(scope="module")
def table_run(prepared):
    import yaml
    configs = prepared / "configs" / "tiny-de-en"
    configs.mkdir(parents=True)
    for row, flags, warm in (("sinusoidal-input", {"pos-encoder": "sinusoidal", "pos-blocks": "input"}, None),
                             ("floater-all", {"pos-encoder": "floater", "pos-blocks": "all", "max-update": 30},
                              {"from": "sinusoidal-input", "lr_scale": 0.5, "max_epoch": 2})):
        config = {"dataset": "tiny-de-en", "data": str(prepared / "data"), "train": {**TINY_TRAIN, **flags},
                  "evaluate": {"average_last": 1, "beam": 2, "lenpen": 1.0}}
        if warm:
            config["warm_start"] = warm
        (configs / f"{row}.yaml").write_text(yaml.safe_dump(config))
    env = {"FLOATER_CONFIGS": str(prepared / "configs"), "FLOATER_RESULTS": str(prepared / "results"),
           "CHECKPOINT_ROOT": str(prepared / "checkpoints")}
    result = script("reproduce-table.sh", "tiny-de-en", "--rows", "floater-all,sinusoidal-input", env=env)
    return prepared, env, result


def test_table_trains_warm_starts_evaluates_and_writes_the_table(table_run):
    root, env, result = table_run
    assert "warm start: training" in result.stdout and "floater_fairseq.cli.migrate" in result.stdout
    assert "--reset-optimizer" in result.stdout and "--lr 0.0015" in result.stdout
    for row in ("floater-all", "sinusoidal-input"):
        record = json.loads((root / "results" / "tiny-de-en" / f"{row}.json").read_text())
        assert record["sentences"] == 24 and 0 <= record["bleu"] <= 100
        assert record["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
        assert record["train_seconds"] > 0
    table = (root / "results" / "tiny-de-en.md").read_text()
    assert "| floater |" in table and "sacreBLEU signature" in table
    again = script("reproduce-table.sh", "tiny-de-en", "--rows", "floater-all,sinusoidal-input", env=env)
    assert "fairseq-train" not in again.stdout  # rows already done are skipped


def test_run_queue_trains_evaluates_and_skips_what_is_done(table_run, tmp_path):
    root, env, _ = table_run
    queue = tmp_path / "queue.txt"
    queue.write_text("# ROW SEED DATASET EPOCHS FLAGS\nsinusoidal-input 2 tiny-de-en 1\n"
                     "floater-all 2 tiny-de-en 1 --warm-start-from {runs}/tiny-de-en/sinusoidal-input-seed2 "
                     "--max-update 3\n")
    first = script("run-queue.sh", queue, tmp_path / "runs", env=env)
    assert "tiny-de-en sinusoidal-input seed 2, 1 epochs" in first.stdout and "queue done" in first.stdout
    assert "warm start: training" not in first.stdout  # seed 2's run is the source, nothing retrained
    assert str(tmp_path / "runs" / "tiny-de-en" / "sinusoidal-input-seed2" / "checkpoint_last.pt") in first.stdout
    assert (tmp_path / "runs" / "tiny-de-en" / "floater-all-seed2" / "warm_start.pt").exists()
    for row in ("sinusoidal-input", "floater-all"):
        for subset in ("test", "valid"):
            record = json.loads((root / "results" / "tiny-de-en" / "seeds" / f"{row}-seed2.{subset}.json").read_text())
            assert 0 <= record["bleu"] <= 100 and record["seed"] == 2
    assert (tmp_path / "runs" / "tiny-de-en" / "sinusoidal-input-seed2" / "checkpoint_last.pt").exists()
    again = script("run-queue.sh", queue, tmp_path / "runs", env=env)
    assert "===" not in again.stdout and "queue done" in again.stdout


def test_warm_start_from_a_run_that_did_not_finish_is_refused(table_run, tmp_path):
    # a working --warm-start-from is exercised by test_run_queue_trains_evaluates_and_skips_what_is_done
    root, env, _ = table_run
    config = root / "configs" / "tiny-de-en" / "floater-all.yaml"
    missing = script("train.sh", config, "--warm-start-from", tmp_path / "nothing", "--save-dir", tmp_path / "a",
                     env=env, check=False)
    assert missing.returncode != 0 and "no finished training run there" in missing.stderr + missing.stdout
    assert not (tmp_path / "a" / "checkpoint_last.pt").exists()


def test_train_log_has_each_line_once(table_run):
    """fairseq 0.12's --log-file handler is added again every epoch (epoch N's lines N times);
    experiment train writes train.log itself, once per line, across epochs and resumed runs."""
    root, _, _ = table_run
    log = (root / "checkpoints" / "tiny-de-en" / "sinusoidal-input" / "train.log").read_text().splitlines()
    for tag in ("| INFO | train | epoch", "| INFO | valid | epoch"):
        lines = [line for line in log if tag in line]
        assert len(lines) >= 2, log[-20:]
        assert len(lines) == len(set(lines)), tag


def test_train_resumes_from_checkpoint_last(table_run):
    root, env, _ = table_run
    config = root / "configs" / "tiny-de-en" / "sinusoidal-input.yaml"
    result = script("train.sh", config, "--max-update", "10", env=env)
    import re
    loaded = re.search(r"Loaded checkpoint \S+checkpoint_last.pt \(epoch \d+ @ (\d+) updates\)", result.stdout)
    assert loaded and int(loaded.group(1)) >= 8
    assert re.search(r"Saved checkpoint \S+ \(epoch \d+ @ 10 updates", result.stdout)


def test_evaluate_writes_one_json_result(table_run, tmp_path):
    root, env, _ = table_run
    out = tmp_path / "result.json"
    result = script("evaluate.sh", root / "checkpoints" / "tiny-de-en" / "floater-all", "--output", out, env=env)
    assert "sacreBLEU" in result.stdout and "nrefs:1" in result.stdout
    record = json.loads(out.read_text())
    assert record["dataset"] == "tiny-de-en" and record["checkpoint"].endswith("checkpoint_last.pt")
    # the solver-step study: the same model decoded with another solver step, recorded as such
    overridden = script("evaluate.sh", root / "checkpoints" / "tiny-de-en" / "floater-all", "--output",
                        tmp_path / "step.json", "--model-overrides", "{'floater_step_size': 0.3}", env=env)
    assert "--model-overrides" in overridden.stdout and "floater_step_size" in overridden.stdout  # to fairseq
    step = json.loads((tmp_path / "step.json").read_text())
    assert step["model_overrides"] == {"floater_step_size": 0.3} and step["decode_seconds"] > 0


def test_length_buckets_on_a_checkpoint(table_run, tmp_path):
    root, _, _ = table_run
    checkpoint = root / "checkpoints" / "tiny-de-en" / "floater-all" / "checkpoint_last.pt"
    result = subprocess.run([os.path.join(os.path.dirname(__import__("sys").executable), "python"), "-m",
                             "floater_fairseq.cli.length_buckets", str(root / "data"), f"floater={checkpoint}",
                             "--buckets", "1-4,5-9", "--beam", "2", "--out-dir", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| floater |" in result.stdout and "| (sentences) |" in result.stdout
    counts = json.loads((tmp_path / "bleu_by_length.json").read_text())["sentences"]
    assert sum(counts) == 24
    assert (tmp_path / "bleu_by_length.png").stat().st_size > 1000


def test_usage_errors_name_the_fix(tmp_path):
    assert script("train.sh", check=False).returncode == 2
    result = script("train.sh", tmp_path / "missing.yaml", check=False)
    assert result.returncode == 2 and "no such config file" in result.stderr
    (tmp_path / "c.yaml").write_text(f"dataset: x\ndata: {tmp_path}/nothing\ntrain: {{arch: a}}\nevaluate: {{}}\n")
    result = script("train.sh", tmp_path / "c.yaml", check=False)
    assert result.returncode == 2 and "prepare it first" in result.stderr


def test_iwslt14_layout_is_read_like_fairseqs_recipe(tmp_path):
    """train.tags (XML meta lines dropped), every 23rd pair to validation, test = dev2010 + tst2010-2012."""
    from floater_fairseq.cli.prepare import extract_text
    raw = tmp_path / "de-en"
    raw.mkdir()
    for lang in ("de", "en"):
        lines = ["<url>http://x</url>", "<talkid>1</talkid>"] + [f"{lang} sentence {i}" for i in range(46)]
        (raw / f"train.tags.de-en.{lang}").write_text("\n".join(lines) + "\n")
        for name in ("TED.dev2010", "TED.tst2010", "TED.tst2011", "TED.tst2012"):
            segs = "\n".join(f'<seg id="{i}"> {lang} {name} &amp; {i} </seg>' for i in range(2))
            (raw / f"IWSLT14.{name}.de-en.{lang}.xml").write_text(f"<mteval>\n<doc>\n{segs}\n</doc>\n</mteval>\n")
    splits = extract_text("iwslt14", str(tmp_path), "de", "en")
    assert len(splits["train"][0]) == 44 and splits["valid"][0] == ["de sentence 0", "de sentence 23"]
    assert splits["test"][1][:2] == ["en TED.dev2010 & 0", "en TED.dev2010 & 1"] and len(splits["test"][0]) == 8


def test_wmt14_layout_reads_training_corpora_and_sgm_test(tmp_path):
    from floater_fairseq.cli.prepare import extract_text
    for name in ("europarl-v7.de-en", "commoncrawl.de-en", "news-commentary-v12.de-en"):
        for lang in ("de", "en"):
            (tmp_path / f"{name}.{lang}").write_text(f"{name} {lang} a\n\n{name} {lang} b\n")
    for lang in ("de", "en"):
        (tmp_path / f"newstest2013.{lang}").write_text(f"dev {lang}\n")
    (tmp_path / "test-full").mkdir()
    (tmp_path / "test-full" / "newstest2014-deen-src.en.sgm").write_text('<srcset>\n<seg id="1">Hello &quot;world&quot;</seg>\n</srcset>\n')
    (tmp_path / "test-full" / "newstest2014-deen-ref.de.sgm").write_text('<refset>\n<seg id="1">Hallo Welt</seg>\n</refset>\n')
    splits = extract_text("wmt14-en-de", str(tmp_path), "en", "de")
    assert len(splits["train"][0]) == 6  # the empty pair of each corpus is dropped from training only
    assert splits["test"] == (['Hello "world"'], ["Hallo Welt"]) and splits["valid"] == (["dev en"], ["dev de"])


def test_offline_download_failure_names_the_fix(tmp_path, monkeypatch):
    import urllib.request
    from floater_fairseq.cli import prepare

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(prepare.PrepareError, match="without a network, download the files elsewhere and pass --raw-dir"):
        prepare.prepare("multi30k", str(tmp_path / "data"))
    assert not (tmp_path / "data").exists()


def test_averaging_script_gives_the_exact_mean_offline(table_run, tmp_path):
    """scripts/average-checkpoints.sh with fairseq's flag names: no network, no fairseq script."""
    import torch
    root, _, _ = table_run
    run_dir = root / "checkpoints" / "tiny-de-en" / "floater-all"
    out = tmp_path / "avg.pt"
    result = subprocess.run(["bash", os.path.join(REPO, "scripts", "average-checkpoints.sh"), "--inputs", str(run_dir),
                             "--num-epoch-checkpoints", "2", "--output", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    inputs = sorted(run_dir.glob("checkpoint[0-9]*.pt"))[-2:]
    states = [torch.load(p, map_location="cpu", weights_only=True)["model"] for p in inputs]
    averaged = torch.load(out, map_location="cpu", weights_only=True)  # safe loading, plain cfg
    assert isinstance(averaged["cfg"], dict)
    assert averaged["model"].keys() == states[0].keys()
    for key, value in averaged["model"].items():
        expected = ((states[0][key].double() + states[1][key].double()) / 2).to(value.dtype)
        assert torch.equal(value, expected), key
    # fairseq loads it like any checkpoint
    from fairseq import checkpoint_utils
    models, _ = checkpoint_utils.load_model_ensemble([str(out)], arg_overrides={"data": str(root / "data")})
    assert models[0].position_encoder.name == "floater"


def test_averaging_refuses_too_few_checkpoints_and_writes_nothing(tmp_path, capsys):
    from floater_fairseq.cli import average_checkpoints
    (tmp_path / "checkpoint1.pt").write_bytes(b"")
    out = tmp_path / "avg.pt"
    code = average_checkpoints.main(["--inputs", str(tmp_path), "--num-epoch-checkpoints", "5", "--output", str(out)])
    assert code == 2 and "has 1 epoch (checkpointE.pt) checkpoints, 5 asked for" in capsys.readouterr().err
    assert not out.exists()


def test_seed_table_reports_mean_and_spread_per_row(tmp_path, monkeypatch):
    from floater_fairseq.cli import experiment
    monkeypatch.setattr(experiment, "RESULTS_ROOT", str(tmp_path))
    folder = tmp_path / "d" / "seeds"
    folder.mkdir(parents=True)
    for seed, bleu in ((1, 37.0), (2, 38.0), (3, 39.0)):
        for subset, shift in (("test", 0.0), ("valid", 1.0)):
            (folder / f"row-seed{seed}.{subset}.json").write_text(json.dumps(
                {"bleu": bleu + shift, "seed": seed, "updates": 3036, "train_seconds": 600.0 * seed, "signature": "sig"}))
    text = experiment.seed_table("d")
    assert "| row | 38.00 ± 1.00 (n=3) | 39.00 ± 1.00 (n=3) | 1, 2, 3 | 3036, 3036, 3036 | 20 |" in text
    assert (tmp_path / "d-seeds.md").read_text() == text
