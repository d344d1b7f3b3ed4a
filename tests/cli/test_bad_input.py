"""Bad input stops with a message that names the problem and the fix (in-process checks; the
CLI ones are in test_cli.py, preparation in test_pipeline.py)."""
import re

import pytest
import torch

from fairseq import options
from floater_fairseq.cli.experiment import main as experiment_main
from floater_fairseq.cli.experiment_config import ConfigError, check_train_flags, load
from floater_fairseq.models.floater_transformer import CheckpointMismatchError
from floater_fairseq.modules.floater import FloaterNumericalError

from conftest import USER_DIR, build_model, random_tokens


@pytest.mark.parametrize("flags,message", [
    (["--arch", "floater_transformer_tiny", "--pos-encoder", "fourier"],
     r"--pos-encoder: unknown --pos-encoder 'fourier'; choose one of alibi, floater, .*join several with '\+'"),
    (["--arch", "floater_transformer_tiny", "--floater-method", "rk5"],
     r"--floater-method: invalid choice: 'rk5' \(choose from .*'rk4'"),
    (["--arch", "floater_transformer_tinyy"], r"--arch/-a: invalid choice: 'floater_transformer_tinyy'"),
    (["--arch", "floater_transformer_tiny", "--encoder-self-attention", "linear"],
     r"--encoder-self-attention: invalid choice: 'linear' \(choose from 'softmax', 'kernelized-rpe'\)"),
    # ranges come from floater_fairseq.options and are checked when the flag is parsed
    (["--arch", "floater_transformer_tiny", "--floater-dt", "0"], r"--floater-dt must be in \(0, inf\), got 0"),
    (["--arch", "floater_transformer_tiny", "--kernelized-rpe-window", "-1"],
     r"--kernelized-rpe-window must be in \[0, inf\), got -1"),
    (["--arch", "memory_transformer_lm_tiny", "--task", "language_modeling", "--lrm-len", "-3"],
     r"--lrm-len must be in \[0, inf\), got -3"),
])
def test_unknown_choices_are_refused_with_the_choices(flags, message, capsys):
    with pytest.raises(SystemExit) as exit:
        options.parse_args_and_arch(options.get_training_parser(), ["data", "--user-dir", USER_DIR,
                                                                    "--task", "translation", *flags])
    assert exit.value.code == 2
    assert re.search(message, capsys.readouterr().err)


CONFIG = """dataset: multi30k-de-en
data: {data}
train: {{arch: floater_transformer_tiny, task: translation, pos-encodr: floater, max-tokens: 100}}
evaluate: {{beam: 4}}
"""


def test_a_typo_in_a_config_train_flag_stops_before_training(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    path = tmp_path / "row.yaml"
    path.write_text(CONFIG.format(data=tmp_path / "data"))
    with pytest.raises(ConfigError, match=r"row.yaml: train: unrecognized arguments: --pos-encodr floater "
                                          r"\(pos-encodr -> did you mean pos-encoder\?\)"):
        check_train_flags(load(str(path)), str(path))
    assert experiment_main(["train", str(path)]) == 2
    assert "did you mean pos-encoder?" in capsys.readouterr().err
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("trained,loaded,expected", [
    (["--pos-encoder", "floater"], ["--pos-encoder", "learned", "--pos-blocks", "all"],
     r"(?s)checkpoint has position_encoder.signal.* FLOATER's ODE \(--pos-encoder floater\)"
     r".*model expects position_encoder.tables.encoder"),
    (["--pos-encoder", "none"], ["--pos-encoder", "none", "--encoder-self-attention", "kernelized-rpe"],
     r"model expects encoder.layers.0.self_attn.rpe_bias: kernelized-rpe"),
    (["--pos-encoder", "learned", "--pos-blocks", "input", "--max-source-positions", "32"],
     ["--pos-encoder", "learned", "--pos-blocks", "input", "--max-source-positions", "64"],
     r"encoder.embed_positions.weight: checkpoint \(34, 16\) vs model \(66, 16\)"),
])
def test_a_checkpoint_of_another_encoder_is_refused_with_the_fix(trained, loaded, expected):
    source, _, _ = build_model(extra=trained)
    target, _, _ = build_model(extra=loaded)
    with pytest.raises(CheckpointMismatchError, match=expected) as error:
        target.load_state_dict(source.state_dict())
    assert "Build the model with the checkpoint's flags" in str(error.value)


def test_unrelated_load_errors_are_left_to_pytorch():
    model, _, _ = build_model()
    state = model.state_dict()
    state["encoder.layers.0.fc1.weight"] = torch.zeros(3, 3)
    with pytest.raises(RuntimeError, match="size mismatch for encoder.layers.0.fc1.weight") as error:
        model.load_state_dict(state)
    assert not isinstance(error.value, CheckpointMismatchError)


def test_a_blown_up_ode_stops_with_the_floater_error_not_nan_losses():
    model, d, _ = build_model(extra=["--pos-encoder", "floater"])
    model.train()
    with torch.no_grad():  # what a huge learning-rate step leaves in the dynamics
        for p in model.position_encoder.signal.parameters():
            p.fill_(1e4)
    with pytest.raises(FloaterNumericalError, match="lower the learning rate"):
        model(random_tokens(d, [6, 3], left_pad=True), None, random_tokens(d, [4, 4]))


@pytest.mark.parametrize("encoder,blocks", [("floater", "all"), ("sinusoidal", "input"), ("rope", "all"),
                                            ("alibi", "all"), ("learned", "input")])
def test_an_empty_source_and_a_source_of_unknown_words_decode(encoder, blocks):
    model, d, _ = build_model(extra=["--pos-encoder", encoder, "--pos-blocks", blocks])
    model.eval()
    from fairseq.sequence_generator import SequenceGenerator
    src = torch.tensor([[d.pad(), d.pad(), d.eos()], [d.unk(), d.unk(), d.eos()]])  # "" and "zzz qqq"
    generator = SequenceGenerator([model], d, beam_size=2, max_len_b=5)
    with torch.no_grad():
        hypos = generator.generate([model], {"net_input": {"src_tokens": src, "src_lengths": torch.tensor([1, 3])}})
    assert all(torch.isfinite(h[0]["positional_scores"]).all() and len(h[0]["tokens"]) >= 1 for h in hypos)
