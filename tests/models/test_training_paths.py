"""fairseq's own training paths as a test matrix: real ``fairseq-train`` runs (in-process
``fairseq_cli.train.main``, tiny model, tiny generated data, a few dozen updates) over the FLOATER
encoders at ``all`` (with the default solver, auto: rk4 on a CPU, and with --floater-method parallel,
what auto runs on accelerators) and ``input`` and
sinusoidal at ``all``, crossed with the options that change how fairseq calls the model or writes
its parameters.

Each cell asserts a real property against a fresh model loaded from the checkpoint the run saved
(``fairseq_cli.validate``, the code path of ``fairseq-validate``), or against the plain run:

* the logged valid loss (what checkpoint_best, --patience and the curves act on) equals a fresh
  validation of the saved checkpoint, to fairseq's logged precision (1e-3);
* activation checkpointing (recomputation during backward) changes no training loss;
* a resumed run is bit-identical to an uninterrupted one.

Cells that fairseq 0.12 itself cannot run on a CPU are listed in ``NOT_ON_CPU`` with the reason;
``--ddp-backend legacy_ddp`` with 2 gloo processes is in tests/models/test_distributed.py.
"""
import json
import logging

import pytest
import torch

from conftest import TINY, USER_DIR, build_model, random_tokens, randomize_floater

from fairseq import options
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from floater_fairseq.modules.position_encoder import POSITION_ENCODER_REGISTRY

ENCODERS = {
    "floater-all": ["--pos-encoder", "floater", "--pos-blocks", "all", "--floater-init-std", "0.3"],
    "floater-input": ["--pos-encoder", "floater", "--pos-blocks", "input", "--floater-init-std", "0.3"],
    # the default (auto) runs rk4 on a CPU; this is what it runs on accelerators: the parallel solve,
    # with its implicit gradients
    "floater-all-parallel": ["--pos-encoder", "floater", "--pos-blocks", "all", "--floater-init-std", "0.3",
                             "--floater-method", "parallel"],
    "sinusoidal-all": ["--pos-encoder", "sinusoidal", "--pos-blocks", "all"],
}
# What changes how the model is called or how its parameters are written (beyond the plain run)
OPTIONS = {
    "update-freq-2": ["--update-freq", "2"],
    "clip-norm": ["--clip-norm", "0.05"],
    "nag": ["--optimizer", "nag", "--lr", "0.05", "--momentum", "0.9"],
    "adafactor": ["--optimizer", "adafactor", "--lr", "0.003"],
    "checkpoint-activations": ["--checkpoint-activations"],
    "offload-activations": ["--offload-activations"],
    "store-ema": ["--store-ema", "--ema-decay", "0.9", "--ema-start-update", "2"],
    "memory-efficient-fp16": ["--memory-efficient-fp16"],  # fp16 weights written in place on CPU
    "amp": ["--amp"],
}
# Measured with fairseq 0.12.3.1 / torch 2.13 on CPU (README lists them with the matrix):
NOT_ON_CPU = {
    "--ddp-backend c10d": "fairseq hands GPU device ids to DistributedDataParallel and its torchrun path "
                          "divides ranks by the GPU count",
    "--fp16": "FP16Optimizer builds its fp32 master copies with .cuda(): 'Torch not compiled with CUDA "
              "enabled'",
    "--bf16 / --memory-efficient-bf16": "fairseq's --bf16 implies --tpu: 'NoneType' object has no attribute "
                                        "'xla_device' without torch_xla",
}

TRAIN = [
    "--user-dir", USER_DIR, "--arch", "floater_transformer_tiny", "--task", "translation",
    "--optimizer", "adam", "--lr", "0.003", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "4",
    "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1", "--max-tokens", "250",
    "--max-epoch", "2", "--seed", "3", "--cpu", "--no-progress-bar", "--log-format", "json",
    "--log-interval", "1", "--num-workers", "0", "--no-epoch-checkpoints",
    *[x for flag, value in zip(TINY[::2], TINY[1::2]) if flag != "--dropout" for x in (flag, value)],
    "--dropout", "0.1",
]


class _Records(logging.Handler):
    """The JSON stats fairseq's progress bar logs (record name = tag: train_inner, valid, ...)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.stats = []

    def emit(self, record):
        try:
            self.stats.append((record.name, json.loads(record.getMessage())))
        except ValueError:
            pass


def _capturing(fn, *args):
    handler = _Records()
    logger = logging.getLogger("fairseq.logging.progress_bar")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    try:
        fn(*args)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return handler.stats


def fairseq_train(data, save_dir, *flags):
    """Run fairseq-train in this process; returns the stats it logged."""
    from fairseq import checkpoint_utils
    from fairseq_cli import train

    # fairseq keeps the best validation score on the function object: a new run must not inherit it
    if hasattr(checkpoint_utils.save_checkpoint, "best"):
        del checkpoint_utils.save_checkpoint.best
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [str(data / "bin"), "--save-dir", str(save_dir), *TRAIN, *flags])
    return _capturing(train.main, convert_namespace_to_omegaconf(args))


def fresh_validate(data, checkpoint, *flags):
    """fairseq-validate of a checkpoint (a new model built from the file); its logged stats."""
    from fairseq_cli import validate

    parser = options.get_validation_parser()
    args = options.parse_args_and_arch(parser, [str(data / "bin"), "--path", str(checkpoint), "--user-dir", USER_DIR,
                                                "--task", "translation", "--max-tokens", "500", "--cpu",
                                                "--no-progress-bar", "--log-format", "json", *flags])
    stats = _capturing(validate.main, convert_namespace_to_omegaconf(args))
    return _numbers([s for tag, s in stats if tag == "valid"][-1])


def _numbers(stats):
    return {key: float(value) for key, value in stats.items()}


def train_losses(stats):
    return [(int(s["num_updates"]), float(s["loss"])) for tag, s in stats if tag == "train_inner"]


def last_valid(stats):
    return _numbers([s for tag, s in stats if tag == "valid"][-1])


def assert_logged_valid_is_fresh(data, stats, checkpoint, metric="loss", *flags):
    logged = last_valid(stats)
    fresh = fresh_validate(data, checkpoint, *flags)
    # the same weights and batches give the same number: equal as logged (rounded to 1e-3)
    assert logged[f"valid_{metric}"] == fresh[f"valid_{metric}"], (logged, fresh)
    # what checkpoint_best and --patience act on is the same number
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)["extra_state"]["val_loss"]
    assert abs(saved - fresh[f"valid_{metric}"]) <= 1e-3, (saved, fresh)


class _PlainRuns(dict):
    """encoder -> (save dir, stats) of its plain run (adam, nothing else), trained when first asked for."""

    def __init__(self, data, tmp_path_factory):
        super().__init__()
        self.data, self.tmp_path_factory = data, tmp_path_factory

    def __missing__(self, encoder):
        save_dir = self.tmp_path_factory.mktemp(f"plain-{encoder}")
        self[encoder] = (save_dir, fairseq_train(self.data, save_dir, *ENCODERS[encoder]))
        return self[encoder]


@pytest.fixture(scope="module")
def plain_runs(synthetic_bin, tmp_path_factory):
    """The plain run of each encoder, shared by the cells of a file that compare to it."""
    return _PlainRuns(synthetic_bin, tmp_path_factory)


# On a CPU the default (auto) solves with torchdiffeq's rk4, which differs from the parallel solve (the
# full matrix) only in how the positions are solved and differentiated: it runs the options that change
# how often and in what precision backward runs (the suite's time is bounded)
REDUCED_CELLS = {"floater-all": ("checkpoint-activations", "memory-efficient-fp16")}


def cells(encoders):
    return [(e, o) for e in encoders for o in OPTIONS if e not in REDUCED_CELLS or o in REDUCED_CELLS[e]]


# This file runs FLOATER-all's cells; test_training_paths_more.py the others (two files, so that
# pytest's two workers share the matrix).
HERE = ("floater-all", "floater-all-parallel")


def check_plain_run(data, plain_runs, encoder):
    save_dir, stats = plain_runs[encoder]
    assert len(train_losses(stats)) >= 20 and len([1 for tag, _ in stats if tag == "valid"]) == 2
    assert_logged_valid_is_fresh(data, stats, save_dir / "checkpoint_last.pt")


@pytest.mark.parametrize("encoder", HERE)
def test_plain_run_logs_the_valid_loss_of_its_checkpoint(synthetic_bin, plain_runs, encoder):
    check_plain_run(synthetic_bin, plain_runs, encoder)


@pytest.mark.parametrize("encoder,option", cells(HERE), ids=[f"{e}-{o}" for e, o in cells(HERE)])
def test_training_option(synthetic_bin, plain_runs, tmp_path, encoder, option):
    check_training_option(synthetic_bin, plain_runs, tmp_path, encoder, option)


def check_training_option(synthetic_bin, plain_runs, tmp_path, encoder, option):
    stats = fairseq_train(synthetic_bin, tmp_path, *ENCODERS[encoder], *OPTIONS[option])
    assert_logged_valid_is_fresh(synthetic_bin, stats, tmp_path / "checkpoint_last.pt")
    if option.endswith("activations"):
        # recomputing layers during backward must not change a training step (the gradients
        # themselves are compared in test_checkpointed_layers_give_the_same_gradients)
        ours, plain = train_losses(stats), train_losses(plain_runs[encoder][1])
        assert [u for u, _ in ours] == [u for u, _ in plain]
        for (update, loss), (_, expected) in zip(ours, plain):
            assert loss == pytest.approx(expected, abs=2e-3), update


ALL_ENCODERS = [(name, blocks) for name, cls in sorted(POSITION_ENCODER_REGISTRY.items())
                for blocks in cls.supported_blocks]


@pytest.mark.parametrize("flag", ["--checkpoint-activations", "--offload-activations"])
@pytest.mark.parametrize("encoder,blocks", ALL_ENCODERS)
def test_checkpointed_layers_give_the_same_gradients(encoder, blocks, flag):
    """fairseq's checkpoint wrapper re-runs each layer during backward: every parameter, position
    parameters included, gets the gradient it gets without it."""
    extra = ["--pos-encoder", encoder, "--pos-blocks", blocks]
    plain, dictionary, _ = build_model(extra=extra)
    if "floater" in encoder.split("+"):
        randomize_floater(plain)
    checkpointed, _, _ = build_model(extra=extra + [flag])
    checkpointed.load_state_dict(plain.state_dict())
    assert all(hasattr(layer, "precheckpoint_forward") for layer in checkpointed.encoder.layers)
    source = random_tokens(dictionary, [7, 5, 6], seed=1, left_pad=True)
    target = random_tokens(dictionary, [6, 4, 5], seed=2)
    weights = torch.randn(3, 6, len(dictionary), generator=torch.Generator().manual_seed(5))
    gradients = []
    for model in (plain, checkpointed):
        model.train()
        out, _ = model(source, torch.tensor([7, 5, 6]), target)
        (out * weights).sum().backward()
        gradients.append({name: p.grad for name, p in model.named_parameters()})
    for name, expected in gradients[0].items():
        assert expected is not None and gradients[1][name] is not None, name
        torch.testing.assert_close(gradients[1][name], expected, atol=1e-6, rtol=1e-4, msg=name)
