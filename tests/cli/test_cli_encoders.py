"""Every other position encoder, and kernelized attention, through the stock fairseq-train and
fairseq-generate in fresh processes (the FLOATER flows are in test_cli.py)."""
import re

import pytest
import torch

from test_cli import generate, train


OTHER_ENCODERS = [("sinusoidal", "all"), ("sinusoidal", "input"), ("learned", "all"), ("learned", "input"),
                  ("shifted-basis", "input"), ("none", "all"), ("rope", "all"), ("alibi", "all")]


@pytest.mark.parametrize("encoder,blocks", OTHER_ENCODERS, ids=[f"{e}-{b}" for e, b in OTHER_ENCODERS])
def test_every_position_encoder_trains_and_generates_through_the_cli(synthetic_bin, tmp_path, encoder, blocks):
    flags = ["--pos-encoder", encoder, "--pos-blocks", blocks, "--max-source-positions", "64", "--max-target-positions", "64"]
    if encoder == "shifted-basis":
        flags += ["--basis-max-positions", "64", "--basis-size", "16"]
    train(synthetic_bin, tmp_path, "floater_transformer_tiny", *flags, "--max-update", "6")
    checkpoint = tmp_path / "checkpoint_last.pt"
    out = generate(synthetic_bin, checkpoint, "--beam", "2", "--scoring", "sacrebleu")
    assert re.search(r"Generate test with beam=2: BLEU = [0-9.]+", out), out[-2000:]
    assert len([line for line in out.splitlines() if line.startswith("H-")]) == 20
    assert torch.load(checkpoint, map_location="cpu")["cfg"]["model"].pos_encoder == encoder


def test_kernelized_rpe_attention_trains_and_generates_through_the_cli(synthetic_bin, tmp_path):
    train(synthetic_bin, tmp_path, "floater_transformer_tiny", "--pos-encoder", "none",
          "--encoder-self-attention", "kernelized-rpe", "--decoder-self-attention", "kernelized-rpe",
          "--kernelized-features", "16", "--kernelized-rpe-window", "32", "--max-update", "6")
    checkpoint = tmp_path / "checkpoint_last.pt"
    out = generate(synthetic_bin, checkpoint, "--beam", "2", "--scoring", "sacrebleu")
    assert re.search(r"Generate test with beam=2: BLEU = [0-9.]+", out), out[-2000:]
    assert len([line for line in out.splitlines() if line.startswith("H-")]) == 20
    state = torch.load(checkpoint, map_location="cpu")["model"]
    assert state["encoder.layers.0.self_attn.rpe_bias"].shape == (2, 65)
    assert state["decoder.layers.0.self_attn.rpe_bias"].shape == (2, 33)
