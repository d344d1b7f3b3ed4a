"""Shared by the pipeline tests (test_prepare, test_pipeline, test_run_queue): the shell scripts,
a fake Multi30k corpus, the prepared data and a tiny table config, each built once per test file."""
import gzip
import os
import subprocess

import pytest
import yaml

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


TINY_TRAIN = {**{k.lstrip("-"): v for k, v in zip(TINY[::2], TINY[1::2])}, "max-update": 8, "max-tokens": 1000,
              "warmup-updates": 4, "lr": 0.003, "cpu": True, "no-progress-bar": True, "seed": 1,
              "optimizer": "adam", "lr-scheduler": "inverse_sqrt", "criterion": "label_smoothed_cross_entropy",
              "label-smoothing": 0.1, "share-all-embeddings": True, "source-lang": "de", "target-lang": "en",
              "arch": "floater_transformer_tiny", "task": "translation"}


def write_configs(prepared):
    """A tiny dataset's rows sinusoidal-input and floater-all (warm-started from it), and the
    environment that points the scripts at them; returns that environment."""
    configs = prepared / "configs" / "tiny-de-en"
    configs.mkdir(parents=True)
    for row, flags, warm in (("sinusoidal-input", {"pos-encoder": "sinusoidal", "pos-blocks": "input"}, None),
                             ("floater-all", {"pos-encoder": "floater", "pos-blocks": "all", "floater-dynamics": "paper",
                                              "max-update": 30},
                              {"from": "sinusoidal-input", "lr_scale": 0.5, "max_epoch": 2})):
        config = {"dataset": "tiny-de-en", "data": str(prepared / "data"), "train": {**TINY_TRAIN, **flags},
                  "evaluate": {"average_last": 1, "beam": 2, "lenpen": 1.0}}
        if warm:
            config["warm_start"] = warm
        (configs / f"{row}.yaml").write_text(yaml.safe_dump(config))
    return {"FLOATER_CONFIGS": str(prepared / "configs"), "FLOATER_RESULTS": str(prepared / "results"),
            "CHECKPOINT_ROOT": str(prepared / "checkpoints")}
