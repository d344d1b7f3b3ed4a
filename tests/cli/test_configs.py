"""configs/: generated, complete (every Table-2 row for every dataset), parseable by fairseq-train."""
import glob
import importlib.util
import os

import pytest

from fairseq import options
from floater_fairseq.cli.experiment_config import ConfigError, load, main, train_args

from conftest import REPO, USER_DIR, build_model

CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*", "*.yaml")))
TABLE2_ROWS = {f"{e}-{b}" for e in ("floater", "sinusoidal", "learned") for b in ("all", "input")}


def generator():
    spec = importlib.util.spec_from_file_location("make_configs", os.path.join(REPO, "scripts", "make-configs.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_checked_in_configs_equal_the_generator_output():
    make = generator()
    expected = {os.path.join(REPO, "configs", d, f"{r}.yaml"): make.render(d, r) for d in make.DATASETS for r in make.ROWS}
    assert sorted(expected) == CONFIGS
    for path, text in expected.items():
        with open(path, encoding="utf-8") as f:
            assert f.read() == text, f"{path} differs from scripts/make-configs.py: re-run it"
    datasets = {"multi30k-de-en", "multi30k-de-en-src12", "iwslt14-de-en", "wmt14-en-de-base", "wmt14-en-de-big", "wmt14-en-fr-base", "wmt14-en-fr-big"}
    assert set(make.DATASETS) == datasets
    assert TABLE2_ROWS | {"none", "shifted-basis-gaussian", "rope", "alibi", "kernelized-rpe",
                          "floater-all-dissipative", "floater-all-dissipative-dt5", "floater-all-dissipative-rk4",
                          "floater-all-dissipative-parallel", "floater-all-scratch", "sinusoidal-input-continued",
                          "rope+floater", "floater-all-dissipative-period8"} == set(make.ROWS)


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.relpath(p, os.path.join(REPO, "configs")) for p in CONFIGS])
def test_every_config_parses_as_fairseq_train_flags(path):
    config = load(path)
    args = options.parse_args_and_arch(options.get_training_parser(),
                                       [config["data"], "--user-dir", USER_DIR, *train_args(config)])
    row = os.path.splitext(os.path.basename(path))[0]
    assert args.arch.startswith("floater_transformer")
    assert args.pos_encoder == config["train"]["pos-encoder"]
    if config.get("warm_start"):
        assert os.path.exists(os.path.join(os.path.dirname(path), config["warm_start"]["from"] + ".yaml"))
    if row == "kernelized-rpe":
        assert args.encoder_self_attention == args.decoder_self_attention == row and args.pos_encoder == "none"
    else:
        assert row.split("-")[0] in args.pos_encoder and args.encoder_self_attention == "softmax"


@pytest.mark.parametrize("path", [p for p in CONFIGS if "multi30k" in p])
def test_cpu_configs_build_their_model(path):
    config = load(path)
    flags = train_args(config)
    flags = flags[flags.index("--pos-encoder"):]  # the model flags after --arch
    model, _, args = build_model(arch=config["train"]["arch"], extra=flags)
    assert args.encoder_layers == 3 and args.encoder_embed_dim == 256


def test_train_args_flags_and_booleans(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("dataset: x\ndata: d\ntrain: {arch: a, fp16: true, cpu: false, max-tokens: 10}\nevaluate: {beam: 4}\n")
    assert train_args(load(str(path))) == ["--arch", "a", "--fp16", "--max-tokens", "10"]


@pytest.mark.parametrize("text,message", [
    ("dataset: x\ndata: d\ntrain: {}\nevaluate: {beam: 4}\nwarmstart: {}\n", r"unknown key\(s\) \['warmstart'\]"),
    ("dataset: x\ndata: d\ntrain: {}\nevaluate: {bean: 4}\n", r"unknown key\(s\) \['bean'\] in evaluate"),
    ("dataset: x\ntrain: {}\nevaluate: {}\n", r"missing key\(s\) \['data'\]"),
    ("dataset: x\ndata: d\ntrain: {max_tokens: 3}\nevaluate: {}\n", "must be a fairseq flag without dashes"),
    ("dataset: [x\n", "not valid YAML"),
    ("dataset: x\ndata: d\ntrain: {}\nevaluate: {length_buckets: '1-12,20'}\n",
     "evaluate: length_buckets: bad bucket '20': write LOW-HIGH"),
])
def test_bad_configs_name_the_problem(tmp_path, text, message, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load(str(path))
    assert main([str(path), "train-args"]) == 2
    assert "error:" in capsys.readouterr().err


QUEUES = sorted(glob.glob(os.path.join(REPO, "configs", "queue-*.txt")))


@pytest.mark.parametrize("queue", QUEUES, ids=[os.path.basename(q) for q in QUEUES])
def test_the_queues_name_existing_configs_and_warm_start_sources(queue):
    """scripts/run-queue.sh stops at a line without its config: a typo would halt the long runs. (A
    reference may name a run of a queue that runs beside it.)"""
    seen = set()
    for other in QUEUES:
        with open(other, encoding="utf-8") as f:
            seen |= {f"{(l.split()[2:3] or ['multi30k-de-en'])[0]}/{l.split()[0]}-seed{l.split()[1]}"
                     for l in f if l.strip() and not l.startswith("#") and not l.split()[0].endswith("-all-lengths")}
    with open(queue, encoding="utf-8") as f:
        for line in f:
            if not line.strip() or line.startswith("#"):
                continue
            row, seed, *rest = line.split()
            dataset = rest[0] if rest else "multi30k-de-en"
            if row.endswith("-all-lengths"):  # a reference: the 4th field's run of ROW, on DATASET's buckets
                row, source = row[:-len("-all-lengths")], rest[1]
                assert os.path.isfile(os.path.join(REPO, "configs", dataset, f"{row}.yaml")), line
                assert f"{source}/{row}-seed{seed}" in seen, line  # its run is queued before it
                continue
            assert os.path.isfile(os.path.join(REPO, "configs", dataset, f"{row}.yaml")), line
            assert seed.isdigit() and (len(rest) < 2 or rest[1].isdigit()), line
            if "--warm-start-from" in rest:  # the source run is queued before it
                source = rest[rest.index("--warm-start-from") + 1].split("/", 1)[-1]
                assert source in seen, line
            seen.add(f"{dataset}/{row}-seed{seed}")
