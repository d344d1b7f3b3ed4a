"""The training-path matrix, continued (split from test_training_paths.py so that the two halves
run in parallel): mid-epoch validation, --eval-bleu, --restore-file resume, --reset-optimizer and
--finetune-from-model, each through fairseq-train itself."""
import shutil

import pytest
import torch

import test_training_paths
from test_training_paths import ENCODERS, _numbers, assert_logged_valid_is_fresh, fairseq_train, fresh_validate, \
    last_valid, train_losses

plain_runs = pytest.fixture(scope="module")(test_training_paths.plain_runs.__wrapped__)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_mid_epoch_validation_logs_the_valid_loss_of_its_checkpoint(synthetic_bin, tmp_path, encoder):
    stats = fairseq_train(synthetic_bin, tmp_path, *ENCODERS[encoder], "--max-epoch", "1",
                          "--validate-interval-updates", "7", "--save-interval-updates", "7")
    valid = [_numbers(s) for tag, s in stats if tag == "valid"]
    assert valid[0]["valid_num_updates"] == 7
    fresh = fresh_validate(synthetic_bin, tmp_path / "checkpoint_1_7.pt")
    assert valid[0]["valid_loss"] == fresh["valid_loss"], (valid[0], fresh)


@pytest.mark.parametrize("encoder", ["floater-all"])  # floater-input learns no n-gram in 5 epochs here
def test_eval_bleu_during_training_is_the_bleu_of_its_checkpoint(synthetic_bin, tmp_path, encoder):
    bleu = ["--eval-bleu", "--eval-bleu-args", '{"beam": 2}', "--best-checkpoint-metric", "bleu",
            "--maximize-best-checkpoint-metric"]
    stats = fairseq_train(synthetic_bin, tmp_path, *ENCODERS[encoder], *bleu, "--lr", "0.01", "--max-epoch", "5",
                          "--max-tokens", "500")
    assert last_valid(stats)["valid_bleu"] > 0  # some n-grams right, so the comparison means something
    # the saved task config asks for BLEU: a fresh validation decodes with the checkpoint's model
    assert_logged_valid_is_fresh(synthetic_bin, stats, tmp_path / "checkpoint_last.pt", "bleu")
    assert (tmp_path / "checkpoint_best.pt").exists()


@pytest.mark.parametrize("encoder", ENCODERS)
def test_restore_file_resume_is_bit_identical(synthetic_bin, plain_runs, tmp_path, encoder):
    # stopped mid-epoch 1 (as a killed run), resumed from checkpoint_last into epoch 2. (fairseq 0.12
    # itself does not resume bit-identically from an end-of-epoch checkpoint written under a smaller
    # --max-epoch: measured for sinusoidal-all as well.)
    fairseq_train(synthetic_bin, tmp_path, *ENCODERS[encoder], "--max-update", "7")
    resumed = fairseq_train(synthetic_bin, tmp_path, *ENCODERS[encoder])
    assert train_losses(resumed)[0][0] == 8
    plain_dir, plain = plain_runs[encoder]
    assert train_losses(resumed) == train_losses(plain)[7:]
    final = torch.load(tmp_path / "checkpoint_last.pt", map_location="cpu", weights_only=True)["model"]
    reference = torch.load(plain_dir / "checkpoint_last.pt", map_location="cpu", weights_only=True)["model"]
    for name, weight in reference.items():
        assert torch.equal(final[name], weight), name
    assert_logged_valid_is_fresh(synthetic_bin, resumed, tmp_path / "checkpoint_last.pt")


@pytest.mark.parametrize("how", ["--reset-optimizer", "--finetune-from-model"])
def test_continued_training_from_a_checkpoint(synthetic_bin, plain_runs, tmp_path, how):
    source = plain_runs["floater-all"][0] / "checkpoint_last.pt"
    if how == "--reset-optimizer":
        shutil.copy(source, tmp_path / "start.pt")
        flags = ["--restore-file", str(tmp_path / "start.pt"), "--reset-optimizer", "--reset-dataloader",
                 "--reset-meters", "--reset-lr-scheduler"]
    else:
        flags = ["--finetune-from-model", str(source)]
    stats = fairseq_train(synthetic_bin, tmp_path / "run", *ENCODERS["floater-all"], *flags, "--max-epoch", "1")
    first_loss = train_losses(stats)[0][1]
    assert first_loss < train_losses(plain_runs["floater-all"][1])[0][1] - 1.0  # it did start from the weights
    assert_logged_valid_is_fresh(synthetic_bin, stats, tmp_path / "run" / "checkpoint_last.pt")
