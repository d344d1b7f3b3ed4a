"""A checkpoint saved by fairseq-train with the plugin as it was on 2026-11-25 (before the layout
of issue 13) still loads with fairseq's own loader and computes exactly the same outputs."""
import os

import torch

from conftest import REPO
from fairseq import checkpoint_utils

FIXTURE = os.path.join(REPO, "tests", "fixtures", "checkpoint-2026-11-25")


def test_checkpoint_from_before_the_layout_change_gives_the_same_outputs():
    models, _, task = checkpoint_utils.load_model_ensemble_and_task(
        [os.path.join(FIXTURE, "checkpoint.pt")],
        arg_overrides={"data": FIXTURE, "source_lang": "src", "target_lang": "tgt"})
    expected = torch.load(os.path.join(FIXTURE, "expected.pt"), weights_only=True)
    model = models[0].eval()
    assert model.position_encoder.name == "floater" and model.position_encoder.blocks == "all"
    with torch.no_grad():
        logits, _ = model(expected["src_tokens"], torch.tensor([9, 9]), expected["prev_output_tokens"])
    torch.testing.assert_close(logits, expected["logits"], atol=1e-6, rtol=1e-6)
