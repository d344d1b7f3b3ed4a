"""The experiment pipeline on tiny data: train (with warm start and resume), evaluate, the table,
the length-bucket script and averaging, through the shell scripts. (Preparation: test_prepare.py;
the seeded-run queue: test_run_queue.py.)"""
import json
import os
import subprocess

import pytest

from conftest import REPO
from pipeline_helpers import prepared, script, write_configs  # noqa: F401 (prepared: a fixture)


@pytest.fixture(scope="module")
def table_run(prepared):  # noqa: F811
    env = write_configs(prepared)
    result = script("reproduce-table.sh", "tiny-de-en", "--rows", "floater-all,sinusoidal-input", env=env)
    return prepared, env, result


def test_table_trains_warm_starts_evaluates_and_writes_the_table(table_run):
    root, env, result = table_run
    assert "warm start: training" in result.stdout and "floater_fairseq.cli.migrate" in result.stdout
    assert "--floater-dynamics paper" in result.stdout.split("floater_fairseq.cli.migrate")[1].splitlines()[0]
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
    # the solver-step study: the same model decoded with another solver and step, recorded as such
    overrides = {"floater_method": "rk4", "floater_step_size": 0.3}
    overridden = script("evaluate.sh", root / "checkpoints" / "tiny-de-en" / "floater-all", "--output",
                        tmp_path / "step.json", "--model-overrides", repr(overrides), env=env)
    assert "--model-overrides" in overridden.stdout and "floater_step_size" in overridden.stdout  # to fairseq
    step = json.loads((tmp_path / "step.json").read_text())
    assert step["model_overrides"] == overrides and step["decode_seconds"] > 0


def test_evaluate_scores_each_source_length_bucket(table_run, tmp_path):
    """The short-to-long study's per-bucket BLEU: buckets counted in source subwords; a bucket that
    holds every sentence scores exactly the corpus BLEU."""
    import yaml
    from fairseq.data import data_utils
    from floater_fairseq.cli import experiment
    root, _, _ = table_run
    config = yaml.safe_load((root / "configs" / "tiny-de-en" / "sinusoidal-input.yaml").read_text())
    config["evaluate"]["length_buckets"] = "1-1000,1-4,5-1000"
    (tmp_path / "row.yaml").write_text(yaml.safe_dump(config))
    result = experiment.evaluate(str(root / "checkpoints" / "tiny-de-en" / "sinusoidal-input"),
                                 str(tmp_path / "row.yaml"), output=str(tmp_path / "row.json"))
    sources = data_utils.load_indexed_dataset(str(root / "data" / "test.de-en.de"), None)  # sizes: its mmap
    short = int((sources.sizes - 1 <= 4).sum())
    by_length = json.loads((tmp_path / "row.json").read_text())["length_buckets"]
    assert by_length["buckets"] == ["1-1000", "1-4", "5-1000"] and by_length["unit"] == "source subwords"
    assert by_length["sentences"] == [24, short, 24 - short] and 0 < short < 24
    assert by_length["bleu"][0] == result["bleu"]
    # a run of a config without buckets, scored on that config's buckets (the study's all-lengths reference)
    plain = str(root / "configs" / "tiny-de-en" / "sinusoidal-input.yaml")
    experiment.evaluate(str(root / "checkpoints" / "tiny-de-en" / "sinusoidal-input"), plain,
                        output=str(tmp_path / "like.json"), length_buckets_like=str(tmp_path / "row.yaml"))
    like = json.loads((tmp_path / "like.json").read_text())["length_buckets"]
    assert like == {**by_length, "counted_in": config["data"]}
    with pytest.raises(experiment.ExperimentError, match="its evaluate section has no length_buckets"):
        experiment.evaluate(str(root / "checkpoints" / "tiny-de-en" / "sinusoidal-input"), plain,
                            output=str(tmp_path / "no.json"), length_buckets_like=plain)


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
    (folder / "row-seed2.yaml").write_text("train: {}\n")  # the run's config, kept beside its results
    text = experiment.seed_table("d")
    assert "| row | 38.00 ± 1.00 (n=3) | 39.00 ± 1.00 (n=3) | 1, 2, 3 | 3036 | 20 |" in text
    assert (tmp_path / "d-seeds.md").read_text() == text
    # each run on its own line, linking the files that exist
    assert "| row | 1 | 37.00 | 38.00 | 3036 | 10 | - | - |" in text
    assert "| row | 2 | 38.00 | 39.00 | 3036 | 20 | [yaml](d/seeds/row-seed2.yaml) | - |" in text
    # the command also fills a README's block for the dataset (the tables, without the title or each run)
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- d-seeds -->\nold\n<!-- /d-seeds -->\nrest\n")
    assert experiment.main(["seeds", "d", "--readme", str(readme), "--headline", ""]) == 0
    assert not (tmp_path / "d-by-length.png").exists()  # no length buckets: no plot
    start = text.index("| row |")
    table = text[start:text.index("\n\n", start)]
    shown = f"{table}\n\nsacreBLEU signature: sig\n"  # the notes stay in the results file
    assert "train minutes: fairseq's cumulative" in text
    assert readme.read_text() == "intro\n<!-- d-seeds -->\n" + shown + "<!-- /d-seeds -->\nrest\n"
    assert "a + b updates" not in text
    # ... and README's headline: one line per encoder from both Multi30k studies and the speed files
    headline = tmp_path / "HEADLINE.md"
    headline.write_text("<!-- headline -->\nold\n<!-- /headline -->\n")
    m30k, src12, speed = tmp_path / "multi30k-de-en" / "seeds", tmp_path / "multi30k-de-en-src12" / "seeds", tmp_path / "speed"
    for path in (m30k, src12, speed):
        path.mkdir(parents=True)
    for seed, bleu in ((1, 39.0), (2, 40.0)):
        (m30k / f"rope-seed{seed}.test.json").write_text(json.dumps({"bleu": bleu, "seed": seed, "signature": "sig"}))
        (src12 / f"rope-seed{seed}.test.json").write_text(json.dumps({"bleu": 30.0, "seed": seed, "signature": "sig",
            "length_buckets": {"buckets": ["1-12", "21-1000"], "bleu": [40.0, 10.0 + seed], "sentences": [5, 3]}}))
    header = "# ratios ...: train step on 4096-token batches (mean length {}), ...\nsize   setting  train generate memory extra ops\n"
    (speed / "bench-speed-cpu-headline.txt").write_text(
        header.format(27) + "small  rope              0.910    1.000  1.000         5\n"
        + header.format(256) + "small  rope              0.970    1.000  1.020         5\n"
        + "iwslt  rope              0.994    1.000  1.030         5\n")
    readme_before = open(os.path.join(experiment.REPO, "README.md"), encoding="utf-8").read()
    assert experiment.main(["seeds", "d"]) == 0  # results that are not the repository's: its pages untouched
    assert open(os.path.join(experiment.REPO, "README.md"), encoding="utf-8").read() == readme_before
    assert experiment.main(["seeds", "d", "--readme", "", "--headline", str(headline)]) == 0
    # the CPU step at each sentence length (a range over sizes), the memory at the longer one
    assert "| `rope` | 39.50 ± 0.71 (n=2) | 11.5 ± 0.7 (n=2) | 0.91 / 0.97-0.99 | 1.02-1.03 | - |" in headline.read_text()
    assert "| `rope+floater --floater-no-input-sinusoid` | no result yet | no result yet | - / - | - | - |" \
        in headline.read_text()
    for seed, updates in ((1, 100), (2, 200)):  # runs that trained different numbers of updates: each listed
        (folder / f"uneven-seed{seed}.test.json").write_text(json.dumps({"bleu": 1.0, "seed": seed, "updates": updates, "signature": "sig"}))
    assert "| uneven | 1.00 ± 0.00 (n=2) | - | 1, 2 | 100, 200 | - |" in experiment.seed_table("d")
    # a warm-started row (the paper's protocol): its updates follow the same seed's source run's
    monkeypatch.setattr(experiment, "REPO", str(tmp_path))
    (tmp_path / "warm.yaml").write_text("dataset: d\ndata: x\ntrain: {arch: a}\nevaluate: {}\n"
                                        "warm_start: {from: row}\n")
    (folder / "warm-seed2.test.json").write_text(json.dumps(
        {"bleu": 40.0, "seed": 2, "updates": 1265, "config": "warm.yaml", "signature": "sig"}))
    text = experiment.seed_table("d")
    assert "| warm | 40.00 (n=1) | - | 2 | 3036 + 1265 | - |" in text and "a + b updates:" in text
    assert "by source length" not in text


def test_seed_table_reports_bleu_by_source_length_over_seeds(tmp_path, monkeypatch):
    from floater_fairseq.cli import experiment
    monkeypatch.setattr(experiment, "RESULTS_ROOT", str(tmp_path))
    folder = tmp_path / "d" / "seeds"
    folder.mkdir(parents=True)

    def write(name, bleus, sentences=(5, 3)):
        (folder / name).write_text(json.dumps({"bleu": 30.0, "seed": 1, "updates": 9, "signature": "sig",
                                               "length_buckets": {"unit": "source subwords", "buckets": ["1-12", "13-99"],
                                                                  "bleu": bleus, "sentences": list(sentences)}}))
    write("short-seed1.test.json", [40.0, 10.0])
    write("short-seed2.test.json", [42.0, None])  # an empty bucket is left out of the mean
    write("short-seed1.valid.json", [1.0, 1.0])  # valid: not in the by-length table
    text = experiment.seed_table("d")
    assert "| test BLEU by source length | 1-12 (5) | 13-99 (3) | seeds |" in text
    assert "| short | 41.0 ± 1.4 | 10.0 | 2 |" in text
    for seed, bleus in ((1, [38.0, 5.0]), (2, [39.0, 6.0])):
        write(f"sinusoidal-input-seed{seed}.test.json", bleus)
    text = experiment.seed_table("d")
    assert "| ROW minus sinusoidal-input | 1-12 | 13-99 |" in text and "| short | +2.5, above every seed (chance 0.33) | +4.5, too few seeds |" in text
    write("short-all-lengths-seed1.test.json", [45.0, 30.0])  # a reference: in the table, not compared
    text = experiment.seed_table("d")
    assert "| short-all-lengths | 45.0 | 30.0 | 1 |" in text and "| short-all-lengths | sinu" not in text
    # what short training costs the row: against its own reference, bucket by bucket
    assert "| ROW minus ROW-all-lengths | 1-12 | 13-99 |" in text and "| short | -4.0, too few seeds | -20.0, too few seeds |" in text
    assert "| short-all-lengths | +" not in text and "ROW-all-lengths: ROW's runs trained on all lengths" in text
    shown = experiment.readme_tables(text)  # README's block: every table, none of the notes
    tables = [line for line in text[:text.index("## Each run")].splitlines() if line.startswith("|")]
    assert len(tables) > 10 and all(line in shown for line in tables) and "## Each run" not in shown
    assert "What training only" not in shown and "ROW-all-lengths: ROW's runs" not in shown
    # a reference's files are those of the run it decoded again, kept with that run's dataset
    (tmp_path / "full" / "seeds").mkdir(parents=True)
    (tmp_path / "full" / "seeds" / "short-seed1.train.log").write_text("log\n")
    record = json.loads((folder / "short-all-lengths-seed1.test.json").read_text())
    (folder / "short-all-lengths-seed1.test.json").write_text(json.dumps({**record, "dataset": "full", "row": "short"}))
    text = experiment.seed_table("d")
    assert "| short-all-lengths | 1 | 30.00 | - | 45.0 / 30.0 | 9 | - | - | [train.log](full/seeds/short-seed1.train.log) |" in text
    assert "| short | 1 | 30.00 | 30.00 | 42.0 / - | 9 | - | - | - |" in text  # an empty bucket: -
    write("short-seed3.test.json", [1.0, 1.0], sentences=(4, 4))
    with pytest.raises(experiment.ExperimentError, match="length_buckets differ between runs"):
        experiment.seed_table("d")


def test_seeds_plot_draws_bleu_by_source_length(tmp_path, monkeypatch):
    from floater_fairseq.cli import experiment
    monkeypatch.setattr(experiment, "RESULTS_ROOT", str(tmp_path))
    folder = tmp_path / "d" / "seeds"
    folder.mkdir(parents=True)
    (folder / "plain-seed1.test.json").write_text(json.dumps({"bleu": 30.0, "seed": 1, "signature": "sig"}))
    with pytest.raises(experiment.ExperimentError, match="no test results of d have length_buckets"):
        experiment.plot_by_length("d", str(tmp_path / "p.png"))
    for name, seed, bleus in (("short", 1, [40.0, 10.0]), ("short", 2, [44.0, None]), ("short-all-lengths", 1, [45.0, 30.0])):
        (folder / f"{name}-seed{seed}.test.json").write_text(json.dumps({"bleu": 30.0, "seed": seed, "signature": "sig",
            "length_buckets": {"buckets": ["1-12", "13-99"], "bleu": bleus, "sentences": [5, 3]}}))
    png = tmp_path / "plots" / "by-length.png"
    assert experiment.main(["seeds", "d", "--readme", "", "--headline", "", "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert experiment.main(["seeds", "d", "--readme", "", "--headline", ""]) == 0  # by default beside the table
    assert (tmp_path / "d-by-length.png").read_bytes() == png.read_bytes()
    series = experiment.plot_by_length("d", str(png))
    assert set(series) == {"short", "short-all-lengths"}  # a run without buckets is not drawn
    assert series["short"]["mean"] == [42.0, 10.0] and series["short"]["low"] == [40.0, 10.0]
    assert series["short"]["high"] == [44.0, 10.0] and series["short"]["seeds"] == 2
    assert series["short-all-lengths"]["dashed"] and not series["short"]["dashed"]


def test_a_difference_is_a_result_only_beyond_the_seeds_spread(tmp_path, monkeypatch):
    from floater_fairseq.cli import experiment
    assert experiment.separation([38.5, 39.0, 39.2], [37.4, 38.0, 38.4]) == "above every seed (chance 0.10)"
    assert experiment.separation([36.0, 36.5], [37.4, 38.0, 38.4]) == "below every seed (chance 0.20)"
    assert experiment.separation([38.5, 39.0, 37.9], [37.4, 38.0, 38.4]) == "within the spread"
    assert experiment.separation([45.0], [37.4, 38.0, 38.4]) == "too few seeds"
    monkeypatch.setattr(experiment, "RESULTS_ROOT", str(tmp_path))
    folder = tmp_path / "d" / "seeds"
    folder.mkdir(parents=True)
    for row, scores in (("sinusoidal-input", (37.0, 38.0, 39.0)), ("better", (39.5, 40.0, 40.5)),
                        ("alike", (38.0, 39.5, 36.5))):
        for seed, bleu in enumerate(scores, 1):
            (folder / f"{row}-seed{seed}.test.json").write_text(json.dumps(
                {"bleu": bleu, "seed": seed, "updates": 9, "signature": "sig"}))
    text = experiment.seed_table("d")
    assert "| better | sinusoidal-input | +2.00, above every seed (chance 0.10) | - |" in text
    assert "| alike | sinusoidal-input | +0.00, within the spread | - |" in text
    assert "| sinusoidal-input | sinu" not in text and "probability 2 / C(n + m, n)" in text
    # the warm-started row is compared with its control (the same extra training, no FLOATER) once it exists
    (folder / "floater-all-seed1.test.json").write_text(json.dumps({"bleu": 39.0, "seed": 1, "signature": "sig"}))
    assert "| floater-all | sinusoidal-input | +1.00, too few seeds | - |" in experiment.seed_table("d")
    (folder / "sinusoidal-input-continued-seed1.test.json").write_text(json.dumps({"bleu": 38.5, "seed": 1,
                                                                                   "signature": "sig"}))
    assert "| floater-all | sinusoidal-input-continued | +0.50, too few seeds | - |" in experiment.seed_table("d")
    # seed with seed: floater-all's seed 2 has no control yet, so it is left out of that difference
    (folder / "floater-all-seed2.test.json").write_text(json.dumps({"bleu": 45.0, "seed": 2, "signature": "sig"}))
    assert "| floater-all | sinusoidal-input-continued | +0.50, too few seeds | - |" in experiment.seed_table("d")
    # paired, the verdict asks whether every seed beats its own control (the seeds' levels differ more
    # than FLOATER's share: unpaired, these ranges overlap)
    for seed, (floater, control) in enumerate(((39.0, 38.5), (40.2, 40.0), (38.1, 38.0)), 1):
        for row, bleu in (("floater-all", floater), ("sinusoidal-input-continued", control)):
            (folder / f"{row}-seed{seed}.test.json").write_text(json.dumps({"bleu": bleu, "seed": seed,
                                                                            "signature": "sig"}))
    assert ("| floater-all | sinusoidal-input-continued | +0.27 (+0.50, +0.20, +0.10 by seed), above its control "
            "on every seed (chance 0.25) | - |") in experiment.seed_table("d")
    assert experiment.paired_separation([0.5, -0.1, 0.2]) == "within the spread"
    assert experiment.paired_separation([-0.5, -0.1]) == "below its control on every seed (chance 0.50)"
