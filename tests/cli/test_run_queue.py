"""scripts/run-queue.sh, the seeded runs of issue 16: trains and evaluates each queued job, warm-starts
a row from the same seed's run of its source row, and skips what is done; reproduce-table.sh --seeds
runs one dataset's jobs of it and writes the seeded table."""
import json

import pytest
import yaml

from pipeline_helpers import prepared, script, write_configs  # noqa: F401 (prepared: a fixture)


@pytest.fixture(scope="module")
def configured(prepared):  # noqa: F811
    return prepared, write_configs(prepared)


def test_run_queue_trains_evaluates_and_skips_what_is_done(configured, tmp_path):
    root, env = configured
    short = write_short_study(root)
    queue = tmp_path / "queue.txt"
    queue.write_text("# ROW SEED DATASET EPOCHS FLAGS\nsinusoidal-input 2 tiny-de-en 1\n"
                     "sinusoidal-input-all-lengths 2 tiny-de-en-short tiny-de-en\n"
                     "floater-all 2 tiny-de-en 1 --warm-start-from {runs}/tiny-de-en/sinusoidal-input-seed2 "
                     "--max-update 3\n")
    first = script("run-queue.sh", queue, tmp_path / "runs", env=env)
    # the short-to-long reference: the run trained on all lengths, scored on the study's buckets, not retrained
    assert first.stdout.count("===") == 3 and "tiny-de-en's run scored on tiny-de-en-short's length buckets" in first.stdout
    reference = json.loads((root / "results" / "tiny-de-en-short" / "seeds" / "sinusoidal-input-all-lengths-seed2.test.json"
                            ).read_text())
    trained = json.loads((root / "results" / "tiny-de-en" / "seeds" / "sinusoidal-input-seed2.test.json").read_text())
    assert reference["bleu"] == trained["bleu"] and reference["seed"] == 2
    assert reference["length_buckets"]["buckets"] == short and reference["length_buckets"]["sentences"][0] == 24
    assert "tiny-de-en sinusoidal-input seed 2, 1 epochs" in first.stdout and "queue done" in first.stdout
    assert "warm start: training" not in first.stdout  # seed 2's run is the source, nothing retrained
    assert str(tmp_path / "runs" / "tiny-de-en" / "sinusoidal-input-seed2" / "checkpoint_last.pt") in first.stdout
    assert (tmp_path / "runs" / "tiny-de-en" / "floater-all-seed2" / "warm_start.pt").exists()
    for row in ("sinusoidal-input", "floater-all"):
        for subset in ("test", "valid"):
            record = json.loads((root / "results" / "tiny-de-en" / "seeds" / f"{row}-seed2.{subset}.json").read_text())
            assert 0 <= record["bleu"] <= 100 and record["seed"] == 2
        log = (root / "results" / "tiny-de-en" / "seeds" / f"{row}-seed2.train.log").read_text()
        assert "done training" in log and "seed': 2" in log  # fairseq's own log of that run, with its cfg
        assert (root / "results" / "tiny-de-en" / "seeds" / f"{row}-seed2.yaml").read_text() == (
            root / "configs" / "tiny-de-en" / f"{row}.yaml").read_text()
    assert (tmp_path / "runs" / "tiny-de-en" / "sinusoidal-input-seed2" / "checkpoint_last.pt").exists()
    again = script("run-queue.sh", queue, tmp_path / "runs", env=env)
    assert "===" not in again.stdout and "queue done" in again.stdout
    # the seeded table's command: only DATASET's jobs (the other dataset has no config: run, it would fail)
    with open(queue, "a") as f:
        f.write("sinusoidal-input 1 no-such-dataset 1\n")
    table = script("reproduce-table.sh", "tiny-de-en", "--seeds", queue, tmp_path / "runs", env=env)
    assert "===" not in table.stdout and "queue done" in table.stdout
    text = (root / "results" / "tiny-de-en-seeds.md").read_text()
    assert "| sinusoidal-input |" in text and "| floater-all |" in text
    wrong = script("reproduce-table.sh", "tiny-de-en", "--seeds", env=env, check=False)
    assert wrong.returncode == 2 and "--seeds QUEUE_FILE" in wrong.stderr


def test_a_reference_before_its_run_or_without_its_dataset_is_refused(configured, tmp_path):
    root, env = configured
    write_short_study(root)
    queue = tmp_path / "queue.txt"
    queue.write_text("sinusoidal-input-all-lengths 3 tiny-de-en-short tiny-de-en\n")
    early = script("run-queue.sh", queue, tmp_path / "runs", env=env, check=False)
    assert early.returncode == 1 and "queue 'sinusoidal-input 3 tiny-de-en' before it" in early.stderr
    queue.write_text("sinusoidal-input-all-lengths 3 tiny-de-en-short\n")
    unnamed = script("run-queue.sh", queue, tmp_path / "runs", env=env, check=False)
    assert unnamed.returncode == 2 and "the 4th field of a reference names the dataset" in unnamed.stderr
    assert not (root / "results" / "tiny-de-en-short" / "seeds" / "sinusoidal-input-all-lengths-seed3.test.json").exists()


def write_short_study(root):
    """tiny-de-en-short: sinusoidal-input's config with the short-to-long study's buckets; returns them."""
    config = yaml.safe_load((root / "configs" / "tiny-de-en" / "sinusoidal-input.yaml").read_text())
    config["dataset"], config["evaluate"]["length_buckets"] = "tiny-de-en-short", "1-1000,1-4,5-1000"
    (root / "configs" / "tiny-de-en-short").mkdir(exist_ok=True)
    (root / "configs" / "tiny-de-en-short" / "sinusoidal-input.yaml").write_text(yaml.safe_dump(config))
    return ["1-1000", "1-4", "5-1000"]


def test_warm_start_from_a_run_that_did_not_finish_is_refused(configured, tmp_path):
    # a working --warm-start-from is exercised by test_run_queue_trains_evaluates_and_skips_what_is_done
    root, env = configured
    config = root / "configs" / "tiny-de-en" / "floater-all.yaml"
    missing = script("train.sh", config, "--warm-start-from", tmp_path / "nothing", "--save-dir", tmp_path / "a",
                     env=env, check=False)
    assert missing.returncode != 0 and "no finished training run there" in missing.stderr + missing.stdout
    assert not (tmp_path / "a" / "checkpoint_last.pt").exists()


def test_the_warm_start_control_fine_tunes_the_unchanged_source(tmp_path):
    """sinusoidal-input-continued: the paper's protocol without FLOATER, i.e. the source's checkpoint
    itself (not migrated) with the same resets and the same halved learning rate."""
    from floater_fairseq.cli import experiment
    source = tmp_path / "sinusoidal-input-seed1"
    source.mkdir()
    (source / "checkpoint_last.pt").write_bytes(b"the source's weights")
    (source / "train_time.json").write_text(json.dumps({"seconds": 1.0, "finished": True}))
    config = {"train": {"pos-encoder": "sinusoidal", "pos-blocks": "input", "lr": 0.001},
              "warm_start": {"from": "sinusoidal-input", "lr_scale": 0.5, "max_epoch": 5}}
    save_dir = tmp_path / "sinusoidal-input-continued-seed1"
    save_dir.mkdir()
    flags = experiment.warm_start_flags(str(tmp_path / "sinusoidal-input-continued.yaml"), config, str(save_dir),
                                        [], [], str(source))
    assert (save_dir / "warm_start.pt").read_bytes() == b"the source's weights"
    assert flags[flags.index("--restore-file") + 1] == str(save_dir / "warm_start.pt")
    assert {"--reset-optimizer", "--reset-lr-scheduler", "--reset-dataloader", "--reset-meters"} <= set(flags)
    assert float(flags[flags.index("--lr") + 1]) == 0.0005 and flags[flags.index("--max-epoch") + 1] == "5"


def test_training_time_is_fairseqs_own_less_the_warm_start(tmp_path):
    """A run killed mid-way (the session ends) never writes train_time.json; the checkpoint still
    carries fairseq's cumulative training time, and a warm-started run's excludes its source's."""
    import torch
    from floater_fairseq.cli import experiment

    def checkpoint(path, seconds):
        torch.save({"cfg": {"common": {"seed": 3}}, "optimizer_history": [{"num_updates": 7}],
                    "extra_state": {"train_iterator": {"epoch": 2}, "previous_training_time": seconds}}, path)
    checkpoint(tmp_path / "checkpoint_last.pt", 100.0)
    assert experiment.training_state(str(tmp_path)) == {"seed": 3, "updates": 7, "epoch": 2, "train_seconds": 100.0}
    checkpoint(tmp_path / "warm_start.pt", 40.0)
    assert experiment.training_state(str(tmp_path))["train_seconds"] == 60.0
