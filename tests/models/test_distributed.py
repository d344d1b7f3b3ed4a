"""Distributed data-parallel training on 2 CPU processes (gloo).

* every encoder of the laboratory under torch's DistributedDataParallel -- the class fairseq's
  c10d backend wraps models in -- with find_unused_parameters=False: a parameter that misses a
  gradient in any step would stop it; after the steps both ranks hold identical parameters;
* fairseq-train itself with --distributed-world-size 2 (--ddp-backend legacy_ddp): world size 2
  reported, identical parameters on both ranks at every checkpoint, and the valid loss logged
  during training equals a fresh validation of the saved checkpoint.
"""
import os
import re
import socket
import subprocess
import sys
import textwrap

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import TINY, USER_DIR, build_model, random_tokens
from test_position_encoders import COMBINATIONS, IDS
from test_training_paths import fresh_validate

STEPS = 3
# fairseq 0.12's c10d backend passes device_ids=[rank's GPU] to torch's DDP, which refuses CPU
# modules; its legacy_ddp backend (fairseq's own all-reduce) runs on CPUs. The strict check that
# every parameter gets a gradient (what c10d without --find-unused-parameters needs) is the
# first test, with torch's DDP directly.
DDP_BACKEND = "legacy_ddp"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_worker(rank: int, world: int, port: int, out: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    report = {}
    for (encoder, blocks, attention), name in zip(COMBINATIONS, IDS):
        model, d, _ = build_model(extra=["--pos-encoder", encoder, "--pos-blocks", blocks,
                                         "--encoder-self-attention", attention,
                                         "--decoder-self-attention", attention, "--kernelized-features", "8"],
                                  seed=rank)  # different initial weights: DDP must broadcast rank 0's
        model.train()
        ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=False)
        optimizer = torch.optim.Adam(ddp.parameters(), lr=1e-2)
        initial = torch.cat([p.detach().flatten() for p in model.parameters()]).clone()
        for step in range(STEPS):
            # each rank its own batch, of its own lengths and padding
            lengths = [5 + rank, 3, 7 - step]
            src = random_tokens(d, lengths, seed=100 * rank + step, left_pad=True)
            prev = random_tokens(d, [4 + step, 6, 5], seed=100 * rank + step + 50)
            target = torch.cat([prev[:, 1:], prev[:, :1]], dim=1)
            logits, _ = ddp(src, None, prev)
            loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, ignore_index=d.pad())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat)
        report[name] = {"identical": all(torch.equal(gathered[0], g) for g in gathered),
                        "trained": not torch.equal(flat, initial)}
    if rank == 0:
        torch.save(report, out)
    dist.destroy_process_group()


def test_every_encoder_trains_under_ddp_without_unused_parameters(tmp_path):
    out = tmp_path / "report.pt"
    mp.spawn(ddp_worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    report = torch.load(out, weights_only=True)
    assert set(report) == set(IDS)
    for name, result in report.items():
        assert result["identical"] and result["trained"], (name, result)


DRIVER = textwrap.dedent("""
    # fairseq-train, plus a dump of this rank's parameters at every checkpoint (only rank 0 saves)
    import sys
    import torch
    import torch.distributed as dist
    from fairseq import checkpoint_utils
    from fairseq_cli import train

    save_checkpoint = checkpoint_utils.save_checkpoint

    def save_and_dump(cfg, trainer, epoch_itr, val_loss):
        path = f"{cfg.save_dir}/params-rank{dist.get_rank()}-update{trainer.get_num_updates()}.pt"
        torch.save({n: p.detach().clone() for n, p in trainer.model.named_parameters()}, path)
        return save_checkpoint(cfg, trainer, epoch_itr, val_loss)

    checkpoint_utils.save_checkpoint = save_and_dump
    sys.argv = ["fairseq-train", *sys.argv[1:]]
    train.cli_main()
""")


def test_fairseq_train_with_two_processes(synthetic_bin, tmp_path):
    """fairseq's own distributed training, one process per rank as on a multi-node cluster
    (--distributed-init-method, --distributed-rank). fairseq 0.12's torchrun and single-node
    paths take the rank's device from the GPU count, so on CPUs the ranks are started here."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    save_dir = tmp_path / "checkpoints"
    flags = [str(synthetic_bin / "bin"), "--user-dir", USER_DIR, "--arch", "floater_transformer_tiny",
             "--save-dir", str(save_dir), "--cpu", "--distributed-world-size", "2", "--distributed-backend", "gloo",
             "--distributed-init-method", f"tcp://127.0.0.1:{free_port()}", "--distributed-no-spawn",
             "--ddp-backend", DDP_BACKEND, "--optimizer", "adam", "--lr", "0.003", "--lr-scheduler",
             "inverse_sqrt", "--warmup-updates", "4", "--max-tokens", "300", "--criterion",
             "label_smoothed_cross_entropy", "--max-update", "6", "--save-interval-updates", "3",
             "--validate-interval-updates", "3", "--floater-init-std", "0.3", "--no-epoch-checkpoints", "--no-progress-bar", "--log-interval", "1",
             "--seed", "1", *TINY]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ranks = [subprocess.Popen([sys.executable, str(driver), *flags, "--distributed-rank", str(rank)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for rank in (0, 1)]
    logs = [process.communicate(timeout=600)[0] for process in ranks]
    assert [process.returncode for process in ranks] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert re.search(r"distributed init \(rank 1\)", logs[1]) and "training on 2 devices" in logs[0], logs[0][-3000:]
    for update in (3, 6):
        params = [torch.load(save_dir / f"params-rank{r}-update{update}.pt", weights_only=True) for r in (0, 1)]
        assert params[0].keys() == params[1].keys()
        for name in params[0]:
            assert torch.equal(params[0][name], params[1][name]), (update, name)
    state = torch.load(save_dir / "checkpoint_last.pt", weights_only=True)
    assert state["optimizer_history"][-1]["num_updates"] == 6
    # the valid loss both ranks computed on their shards (what checkpoint_best acts on) is the
    # checkpoint's own, validated afresh in one process (loss sums reduced in another order)
    fresh = fresh_validate(synthetic_bin, save_dir / "checkpoint_last.pt")
    assert abs(state["extra_state"]["val_loss"] - fresh["valid_loss"]) <= 1e-3, (state["extra_state"], fresh)
