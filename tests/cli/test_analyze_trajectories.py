"""scripts/analyze-trajectories.sh on a real FLOATER checkpoint (the saved fixture)."""
import json
import os
import subprocess

import torch

from conftest import REPO
from floater_fairseq.cli.analyze_positions import model_from_checkpoint
from floater_fairseq.cli.analyze_trajectories import growth, trajectory_norms

CHECKPOINT = os.path.join(REPO, "tests", "fixtures", "checkpoint-2026-11-25", "checkpoint.pt")


def test_script_prints_the_growth_line_and_writes_its_outputs(tmp_path):
    result = subprocess.run(["bash", os.path.join(REPO, "scripts", "analyze-trajectories.sh"), CHECKPOINT,
                             "--train-length", "9", "--png", str(tmp_path / "n.png"), "--json", str(tmp_path / "g.json")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    last = result.stdout.strip().splitlines()[-1]
    data = json.loads((tmp_path / "g.json").read_text())
    assert last == f"growth at 2x: {data['growth']['2x']:.3g}, at 4x: {data['growth']['4x']:.3g}"
    assert len(data["norms"]) == 2 * 3 + 2 * 6 and os.path.getsize(tmp_path / "n.png") > 1000


def test_growth_is_the_median_ratio_of_norms():
    model = model_from_checkpoint(CHECKPOINT)
    norms = trajectory_norms(model, 36)
    table = model.position_encoder.signal.table(36)
    first = next(iter(norms.values()))
    torch.testing.assert_close(first, table[:, 0].float().norm(dim=-1))
    ratios = sorted(float(n[17] / n[8]) for n in norms.values())
    assert growth(norms, 9, 2) == (ratios[len(ratios) // 2 - 1] + ratios[len(ratios) // 2]) / 2


def test_refuses_a_checkpoint_without_floater(tmp_path):
    state = torch.load(CHECKPOINT, weights_only=True)
    state["cfg"]["model"].pos_encoder = "sinusoidal"
    state["cfg"]["model"].pos_blocks = "input"
    state["model"] = {k: v for k, v in state["model"].items() if not k.startswith("position_encoder.")}
    torch.save(state, tmp_path / "sinusoidal.pt")
    result = subprocess.run(["bash", os.path.join(REPO, "scripts", "analyze-trajectories.sh"), str(tmp_path / "sinusoidal.pt"),
                             "--train-length", "9"], capture_output=True, text=True)
    assert result.returncode == 2 and "which has no floater part: it has no trajectories" in result.stderr
