"""The fairseq-train matrix of test_training_paths.py for FLOATER at ``input`` and sinusoidal at
``all`` (its own file, so that pytest's two workers share the matrix)."""
import pytest

import test_training_paths as paths

plain_runs = pytest.fixture(scope="module")(paths.plain_runs.__wrapped__)
HERE = tuple(encoder for encoder in paths.ENCODERS if encoder not in paths.HERE)


@pytest.mark.parametrize("encoder", HERE)
def test_plain_run_logs_the_valid_loss_of_its_checkpoint(synthetic_bin, plain_runs, encoder):
    paths.check_plain_run(synthetic_bin, plain_runs, encoder)


@pytest.mark.parametrize("encoder,option", paths.cells(HERE), ids=[f"{e}-{o}" for e, o in paths.cells(HERE)])
def test_training_option(synthetic_bin, plain_runs, tmp_path, encoder, option):
    paths.check_training_option(synthetic_bin, plain_runs, tmp_path, encoder, option)
