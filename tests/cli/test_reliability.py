"""A run left overnight: killed with SIGKILL and restarted, repeated with the same seed, killed
while a checkpoint is being copied. Real fairseq-train processes and real signals."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import torch

from conftest import BIN, TINY, USER_DIR

# ~25 updates per epoch on the synthetic corpus: a kill after update 8 is mid-epoch
CRASH_TRAIN = [
    "--user-dir", USER_DIR, "--arch", "floater_transformer_tiny", "--optimizer", "adam", "--lr", "0.003",
    "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "4", "--max-tokens", "200",
    "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1", "--dropout", "0.1",
    "--no-progress-bar", "--log-format", "json", "--log-interval", "1", "--seed", "3", "--cpu",
    "--save-interval-updates", "4", "--max-update", "14", "--no-epoch-checkpoints", "--disable-validation",
    *[x for flag, value in zip(TINY[::2], TINY[1::2]) if flag != "--dropout" for x in (flag, value)],
]


def fairseq_train(data, save_dir):
    return [os.path.join(BIN, "fairseq-train"), str(data / "bin"), "--save-dir", str(save_dir), *CRASH_TRAIN]


def train_losses(output: str):
    """(num_updates, loss) of every train_inner log line (json format)."""
    losses = []
    for line in output.splitlines():
        if "| train_inner |" in line:
            stats = json.loads(line.split("| train_inner |", 1)[1])
            losses.append((int(stats["num_updates"]), stats["loss"]))
    return losses


def run_to_end(cmd):
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_sigkill_mid_epoch_then_the_same_command_resumes_exactly(synthetic_bin, tmp_path):
    reference = run_to_end(fairseq_train(synthetic_bin, tmp_path / "reference"))
    assert len(train_losses(reference)) == 14

    save_dir = tmp_path / "killed"
    cmd = fairseq_train(synthetic_bin, save_dir)
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in process.stdout:
        seen.append(line)
        if "Saved checkpoint" in line and "@ 8 updates" in line:
            process.send_signal(signal.SIGKILL)
            break
    process.wait()
    assert process.returncode == -signal.SIGKILL, "".join(seen[-30:])
    # same seed, data and flags on the CPU: identical losses, update by update
    assert train_losses("".join(seen)) == train_losses(reference)[:8]
    state = load(save_dir / "checkpoint_last.pt")
    iterator = state["extra_state"]["train_iterator"]
    assert state["optimizer_history"][-1]["num_updates"] == 8
    assert iterator["epoch"] == 1 and 0 < iterator["iterations_in_epoch"] < 20  # mid-epoch

    resumed = run_to_end(cmd)
    assert "Loaded checkpoint" in resumed and "(epoch 1 @ 8 updates)" in resumed, resumed[-3000:]
    assert [u for u, _ in train_losses(resumed)] == list(range(9, 15))
    # the resumed run continues the same trajectory: its losses and final weights are the reference's
    assert train_losses(resumed) == train_losses(reference)[8:]
    final, expected = load(save_dir / "checkpoint_last.pt"), load(tmp_path / "reference" / "checkpoint_last.pt")
    assert final["optimizer_history"][-1]["num_updates"] == 14
    for name, weight in expected["model"].items():
        assert torch.equal(final["model"][name], weight), name


KILL_DURING_COPY = textwrap.dedent("""
    import shutil, sys, time
    import floater_fairseq  # noqa: F401  (what fairseq-train --user-dir imports)
    from fairseq import checkpoint_utils

    def copy_half_then_hang(src, dst, length=0):
        dst.write(src.read(1000))
        dst.flush()
        print("copying", flush=True)
        time.sleep(600)

    shutil.copyfileobj = copy_half_then_hang
    # the call fairseq's save_checkpoint makes to write checkpoint_last.pt
    checkpoint_utils.PathManager.copy(sys.argv[1], sys.argv[2], overwrite=True)
""")


def test_a_kill_while_fairseq_copies_checkpoint_last_leaves_the_previous_one_loadable(tmp_path):
    previous, new = tmp_path / "checkpoint_last.pt", tmp_path / "checkpoint_1_8.pt"
    torch.save({"model": {"w": torch.zeros(50_000)}, "num_updates": 4}, previous)
    torch.save({"model": {"w": torch.ones(50_000)}, "num_updates": 8}, new)
    process = subprocess.Popen([sys.executable, "-c", KILL_DURING_COPY, str(new), str(previous)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "copying", process.stderr.read()
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert load(previous)["num_updates"] == 4  # whole, not a truncated copy of the new one
    assert torch.equal(load(previous)["model"]["w"], torch.zeros(50_000))

    from floater_fairseq.compat import atomic_copy
    assert atomic_copy(str(new), str(previous), overwrite=True)
    assert load(previous)["num_updates"] == 8
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".tmp")) == [
        "checkpoint_1_8.pt", "checkpoint_last.pt"]
