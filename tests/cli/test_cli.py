"""The stock fairseq command-line tools end to end, each in a fresh process (checkpoints are
loaded under torch's safe loading): preprocess -> train -> generate/interactive/validate/hub."""
import os
import re
import subprocess

import pytest
import torch

from conftest import BIN, TINY, USER_DIR, run_cli

TRAIN = [
    "--user-dir", USER_DIR, "--optimizer", "adam", "--lr", "0.003", "--lr-scheduler", "inverse_sqrt",
    "--warmup-updates", "10", "--max-tokens", "1000", "--criterion", "label_smoothed_cross_entropy",
    "--label-smoothing", "0.1", "--no-progress-bar", "--log-interval", "10", "--seed", "1",
    "--no-epoch-checkpoints", "--cpu", *TINY,
]


def train(data, save_dir, arch, *extra, epochs=1, check=True):
    return run_cli("fairseq-train", str(data / "bin"), "--arch", arch, "--save-dir", str(save_dir),
                   "--max-epoch", str(epochs), *TRAIN, *extra, check=check)


@pytest.fixture(scope="module")
def train_floater(synthetic_bin, tmp_path_factory):
    """Train one floater_transformer_tiny per --pos-blocks mode, once per module."""
    checkpoints = {}

    def get(blocks):
        if blocks not in checkpoints:
            save_dir = tmp_path_factory.mktemp(f"ckpt_{blocks}")
            log = train(synthetic_bin, save_dir, "floater_transformer_tiny", "--pos-blocks", blocks, epochs=2)
            assert "num_updates" in log.stderr + log.stdout
            checkpoints[blocks] = (synthetic_bin, save_dir / "checkpoint_last.pt", blocks)
        return checkpoints[blocks]

    return get


@pytest.fixture(params=["all", "input"])
def trained(request, train_floater):
    return train_floater(request.param)


@pytest.fixture
def trained_compat(train_floater):
    """The compatibility form: the decoding options below share the decoder path of both forms."""
    return train_floater("all")


def generate(data, checkpoint, *extra):
    result = run_cli("fairseq-generate", str(data / "bin"), "--user-dir", USER_DIR, "--path", str(checkpoint),
                     "--batch-size", "8", "--required-batch-size-multiple", "1", "--cpu", *extra)
    return result.stdout + result.stderr


def test_train_generate_and_score_with_sacrebleu(trained):
    data, checkpoint, blocks = trained
    out = generate(data, checkpoint, "--beam", "4", "--scoring", "sacrebleu", "--remove-bpe")
    match = re.search(r"Generate test with beam=4: BLEU = ([0-9.]+)", out)
    assert match, out[-2000:]
    assert 0.0 <= float(match.group(1)) <= 100.0
    hypotheses = [line for line in out.splitlines() if line.startswith("H-")]
    assert len(hypotheses) == 20
    state = torch.load(checkpoint, map_location="cpu")  # safe loading, thanks to the plugin import
    assert state["cfg"]["model"].pos_blocks == blocks


@pytest.mark.parametrize(
    "options",
    [["--sampling", "--beam", "2", "--nbest", "2", "--seed", "3"],
     ["--sampling", "--sampling-topk", "3", "--beam", "1"],
     ["--sampling", "--sampling-topp", "0.9", "--beam", "1"],
     ["--beam", "4", "--diversity-rate", "0.5"],
     ["--beam", "3", "--prefix-size", "1"],
     ["--beam", "2", "--print-alignment"],
     ["--beam", "2", "--retain-dropout"]],
    ids=["sampling", "topk", "topp", "diversity", "prefix", "alignment", "retain-dropout"],
)
def test_generate_options(trained_compat, options):
    data, checkpoint, _ = trained_compat
    out = generate(data, checkpoint, *options)
    assert len([line for line in out.splitlines() if line.startswith("H-")]) >= 20
    if "--print-alignment" in options:
        assert any(line.startswith("A-") for line in out.splitlines())


def test_interactive_and_validate(trained):
    data, checkpoint, _ = trained
    result = subprocess.run(
        [os.path.join(BIN, "fairseq-interactive"), str(data / "bin"), "--user-dir", USER_DIR, "--path", str(checkpoint),
         "--source-lang", "src", "--target-lang", "tgt", "--beam", "2", "--cpu"],
        # a short line, one longer than any training sentence, an empty one, one of unknown words only
        input="s1 s2 s3\ns4 s4 s5 s6 s7 s8 s9 s1 s2 s3 s4 s5 s6 s7 s8 s9 s1 s2 s3 s4 s5\n\nzzz qqq xxx\n",
        capture_output=True, text=True, check=True,
    )
    hypotheses = re.findall(r"^H-(\d+)\t(\S+)", result.stdout, re.M)
    assert [int(i) for i, _ in hypotheses] == [0, 1, 2, 3], result.stdout
    assert all(float(score) == float(score) and float(score) > -1e4 for _, score in hypotheses)  # finite
    assert re.search(r"^S-3\t<unk> <unk> <unk>$", result.stdout, re.M)
    out = run_cli("fairseq-validate", str(data / "bin"), "--user-dir", USER_DIR, "--path", str(checkpoint),
                  "--task", "translation", "--max-tokens", "1000", "--cpu", "--valid-subset", "valid,test")
    assert re.search(r"valid on 'test' subset \| loss [0-9.]+", out.stdout + out.stderr)


def test_hub_interface_in_a_fresh_process(trained):
    data, checkpoint, _ = trained
    script = (
        "from fairseq.models.transformer import TransformerModel\n"
        f"m = TransformerModel.from_pretrained({str(checkpoint.parent)!r}, checkpoint_file='checkpoint_last.pt', "
        f"data_name_or_path={str(data / 'bin')!r}, user_dir={USER_DIR!r})\n"
        "print('OUT', m.translate('s1 s2 s3 s4', beam=2))\n"
    )
    result = subprocess.run([os.path.join(BIN, "python"), "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"^OUT t\d", result.stdout, re.M), result.stdout


def test_generate_without_user_dir_fails_as_the_docs_say(trained_compat):
    data, checkpoint, _ = trained_compat
    result = run_cli("fairseq-generate", str(data / "bin"), "--path", str(checkpoint), "--cpu", check=False)
    assert result.returncode != 0
    # torch's safe loading stops first: the plugin that allow-lists fairseq's pickled Namespace is absent
    error = next(line.strip().split(". Please use")[0] for line in result.stderr.splitlines()
                 if "WeightsUnpickler error" in line)
    with open(os.path.join(os.path.dirname(USER_DIR), "docs", "method.md"), encoding="utf-8") as f:
        page = f.read()
    assert error in page, f"docs/method.md must quote fairseq's error: {error}"
    assert "--user-dir" in page


def test_hub_loader_of_this_package(trained_compat, tmp_path):
    from floater_fairseq.hub import HubLoadError, from_pretrained

    data, checkpoint, _ = trained_compat
    hub = from_pretrained(str(checkpoint.parent), "checkpoint_last.pt", str(data / "bin"))
    assert re.match(r"t\d", hub.translate("s1 s2 s3 s4", beam=2))
    with pytest.raises(HubLoadError, match=r"no checkpoint .*checkpoint9.pt; that directory has .*checkpoint_last.pt"):
        from_pretrained(str(checkpoint.parent), "checkpoint9.pt", str(data / "bin"))
    with pytest.raises(HubLoadError, match="no data directory"):
        from_pretrained(str(checkpoint.parent), "checkpoint_last.pt", str(tmp_path / "missing"))
    foreign = tmp_path / "foreign.pt"
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state["cfg"]["model"].arch = "someone_elses_model"
    torch.save(state, foreign)
    with pytest.raises(HubLoadError, match="'someone_elses_model' checkpoint, which neither fairseq nor floater_fairseq"):
        from_pretrained(str(tmp_path), "foreign.pt", str(data / "bin"))


def test_finetuning_from_a_checkpoint_of_another_encoder_names_the_mismatch(trained_compat, tmp_path):
    data, checkpoint, _ = trained_compat
    result = train(data, tmp_path, "floater_transformer_tiny", "--pos-encoder", "learned", "--pos-blocks", "all",
                   "--finetune-from-model", str(checkpoint), "--max-update", "2", check=False)
    assert result.returncode != 0
    assert "trained with another position encoder" in result.stderr + result.stdout
    assert "FLOATER's ODE (--pos-encoder floater)" in result.stderr + result.stdout
    assert not (tmp_path / "checkpoint_last.pt").exists()


@pytest.fixture(scope="module")
def vanilla_checkpoint(synthetic_bin, tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("vanilla")
    train(synthetic_bin, save_dir, "transformer_tiny")
    return save_dir / "checkpoint_last.pt"


def test_migrated_vanilla_checkpoint_gives_the_same_log_probabilities(synthetic_bin, vanilla_checkpoint, tmp_path):
    from fairseq import checkpoint_utils

    vanilla = vanilla_checkpoint
    migrated = tmp_path / "floater_init.pt"
    run_cli("python", "-m", "floater_fairseq.cli.migrate", str(vanilla), str(migrated))
    losses = []
    for path in (vanilla, migrated):
        out = run_cli("fairseq-validate", str(synthetic_bin / "bin"), "--user-dir", USER_DIR, "--path", str(path),
                      "--task", "translation", "--max-tokens", "1000", "--cpu")
        losses.append(re.search(r"\| loss ([0-9.]+)", out.stdout + out.stderr).group(1))
    assert losses[0] == losses[1]
    (m_vanilla,), _ = checkpoint_utils.load_model_ensemble([str(vanilla)])
    (m_floater,), _ = checkpoint_utils.load_model_ensemble([str(migrated)])
    assert type(m_floater).__name__ == "FloaterTransformerModel"
    src = torch.tensor([[5, 6, 7, 8, 2], [1, 1, 9, 10, 2]])
    prev = torch.tensor([[2, 11, 12, 13], [2, 14, 15, 16]])
    m_vanilla.eval(), m_floater.eval()
    with torch.no_grad():
        a = m_vanilla.get_normalized_probs(m_vanilla(src, None, prev), log_probs=True)
        b = m_floater.get_normalized_probs(m_floater(src, None, prev), log_probs=True)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # ... and it fine-tunes with the stock trainer and the paper's reset flags
    train(synthetic_bin, tmp_path / "finetune", "floater_transformer_tiny", "--restore-file", str(migrated),
          "--reset-optimizer", "--reset-lr-scheduler", "--reset-dataloader", "--reset-meters")


def test_migrate_takes_the_targets_floater_settings_not_the_sources(vanilla_checkpoint):
    """A sinusoidal floater_transformer run saves the FLOATER defaults of its day; the warm start
    must build the row's FLOATER (e.g. the paper's dynamics) or today's defaults, never those."""
    from fairseq import checkpoint_utils

    from floater_fairseq.cli.migrate import migrate_state
    state = checkpoint_utils.load_checkpoint_to_cpu(str(vanilla_checkpoint))
    for key, value in (("floater_dynamics", "paper"), ("floater_method", "rk4"), ("floater_dt", 0.5)):
        setattr(state["cfg"]["model"], key, value)  # stale settings of a source run
    dynamics = "position_encoder.signal.dynamics."
    paper = migrate_state(state, floater={"floater_dynamics": "paper"})
    assert (paper["cfg"]["model"].floater_dynamics, paper["cfg"]["model"].floater_method) == ("paper", "rk4")
    assert paper["model"][dynamics + "input_layer.weight"].shape[1] == 16 + 1  # [p; t]
    default = migrate_state(state)
    model = default["cfg"]["model"]
    assert (model.floater_dynamics, model.floater_method, model.floater_activation, model.floater_dt) == (
        "dissipative", "auto", "softplus", 0.1)
    assert dynamics + "rho" in default["model"]


def test_migrate_refuses_bad_input_and_writes_nothing(trained, tmp_path):
    _, floater_checkpoint, _ = trained
    out = tmp_path / "out.pt"
    result = run_cli("python", "-m", "floater_fairseq.cli.migrate", str(floater_checkpoint), str(out), check=False)
    assert result.returncode == 2 and "not one of fairseq's transformer" in result.stderr
    assert not out.exists()
    result = run_cli("python", "-m", "floater_fairseq.cli.migrate", str(tmp_path / "missing.pt"), str(out), check=False)
    assert result.returncode == 2 and "no such checkpoint" in result.stderr and not out.exists()


def test_migrate_refuses_mismatched_arch(vanilla_checkpoint, tmp_path):
    out = tmp_path / "out.pt"
    result = run_cli("python", "-m", "floater_fairseq.cli.migrate", str(vanilla_checkpoint),
                     str(out), "--arch", "floater_transformer_wmt_en_de", check=False)
    assert result.returncode == 2 and "encoder_embed_dim: checkpoint 16 vs floater_transformer_wmt_en_de 512" in result.stderr
    assert not out.exists() and not list(tmp_path.glob(".migrate-*"))


def test_analyze_positions_on_a_trained_checkpoint(trained_compat, tmp_path):
    _, checkpoint, _ = trained_compat
    result = run_cli("python", "-m", "floater_fairseq.cli.analyze_positions", str(checkpoint), "--positions", "40",
                     "--out-dir", str(tmp_path))
    rows = re.findall(r"^(encoder|decoder) block (\d) (self|cross) ([qkv]) +([0-9.]+) +([0-9.]+)", result.stdout, re.M)
    assert len(rows) == 3 * 2 + 6 * 2  # every trajectory of the tiny model (2 + 2 layers)
    assert all(1.0 <= float(sr) <= 16 and 0 < float(dp) <= 1 for *_, sr, dp in rows)
    assert (tmp_path / "heatmap.png").exists() and (tmp_path / "profile.png").exists()
