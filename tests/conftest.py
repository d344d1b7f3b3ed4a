import os
import subprocess
import sys
import types

import pytest
import torch

import floater_fairseq  # noqa: F401  (registers models, allow-lists checkpoint types)
from fairseq import options
from fairseq.data import Dictionary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER_DIR = os.path.join(REPO, "floater_fairseq")
BIN = os.path.dirname(sys.executable)

TINY = [
    "--encoder-embed-dim", "16", "--decoder-embed-dim", "16",
    "--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32",
    "--encoder-layers", "2", "--decoder-layers", "2",
    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
    "--dropout", "0", "--attention-dropout", "0",
]


def make_dictionary(num_words=12):
    d = Dictionary()
    for i in range(num_words):
        d.add_symbol(f"w{i}")
    d.finalize(padding_factor=1)
    return d


def build_model(arch="floater_transformer_tiny", extra=(), dictionary=None, seed=0):
    """A tiny model built the way fairseq-train builds it (real argument parser)."""
    dictionary = dictionary or make_dictionary()
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(
        parser, ["unused-data", "--task", "translation", "--arch", arch, "--user-dir", USER_DIR, *TINY, *extra]
    )
    task = types.SimpleNamespace(source_dictionary=dictionary, target_dictionary=dictionary)
    torch.manual_seed(seed)
    from fairseq.models import ARCH_MODEL_REGISTRY
    model = ARCH_MODEL_REGISTRY[arch].build_model(args, task)
    return model, dictionary, args


def randomize_floater(model, scale=0.3, seed=1):
    """Make the position signal clearly non-trivial (fresh models start with h small, b(0)=0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.position_encoder.part("floater").signal.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model


def random_tokens(dictionary, lengths, seed=0, left_pad=False):
    """A padded batch of random real tokens (each row ends with eos), left or right padded."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    batch = torch.full((len(lengths), width), dictionary.pad(), dtype=torch.long)
    for row, n in enumerate(lengths):
        tokens = torch.randint(dictionary.nspecial, len(dictionary), (n,), generator=g)
        tokens[-1] = dictionary.eos()
        if left_pad:
            batch[row, width - n:] = tokens
        else:
            batch[row, :n] = tokens
    return batch


def run_cli(tool, *args, cwd=None, check=True):
    """Run a real fairseq console script from this venv."""
    cmd = [os.path.join(BIN, tool), *args]
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{tool} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="session")
def synthetic_bin(tmp_path_factory):
    """Tiny synthetic parallel text, binarized with fairseq-preprocess (once per session)."""
    from floater_fairseq.cli.synthetic import make_pairs, write_split

    root = tmp_path_factory.mktemp("synthetic")
    raw = root / "raw"
    write_split(str(raw), "train", make_pairs(400, 2, 8, 10, seed=1))
    write_split(str(raw), "valid", make_pairs(40, 2, 8, 10, seed=2))
    write_split(str(raw), "test", make_pairs(20, 2, 8, 10, seed=3))
    run_cli(
        "fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt",
        "--trainpref", str(raw / "train"), "--validpref", str(raw / "valid"), "--testpref", str(raw / "test"),
        "--destdir", str(root / "bin"), "--joined-dictionary", "--workers", "1",
    )
    return root
