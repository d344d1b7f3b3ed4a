"""The benchmarks measure what they say: the accuracy benchmark's reference row is the reference,
coarser steps are further from it, and the op counter sees rk4's launches grow with length while
the parallel solve's do not."""
import contextlib
import os
import types

import torch

from conftest import REPO
from fairseq.data import Dictionary

from benchmarks import bench_solver_accuracy, bench_speed

FIXTURE = os.path.join(REPO, "tests", "fixtures", "checkpoint-2026-11-25", "checkpoint.pt")


@contextlib.contextmanager
def tiny_size(layers):
    """bench_speed's SIZES with a 16-dim model of ``layers`` layers, as "tiny"; yields a dictionary."""
    dictionary = Dictionary()
    for i in range(50):
        dictionary.add_symbol(f"w{i}")
    n = str(layers)
    bench_speed.SIZES["tiny"] = ("transformer", ["--encoder-layers", n, "--decoder-layers", n,
                                                 "--encoder-embed-dim", "16", "--decoder-embed-dim", "16",
                                                 "--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32",
                                                 "--encoder-attention-heads", "2", "--decoder-attention-heads", "2"])
    try:
        yield dictionary
    finally:
        del bench_speed.SIZES["tiny"]


def test_solver_accuracy_against_the_reference():
    signal = bench_solver_accuracy.signal_of(FIXTURE)  # a FLOATER-all checkpoint (paper dynamics)
    rows = bench_solver_accuracy.compare(signal, [("rk4", signal.dt / 10), ("rk4", signal.dt)], [6, 24])
    by_setting = {(setting.split(" ")[0], length): (table, grads) for setting, length, table, grads, _ in rows}
    assert by_setting[("rk4:DT/5", 6)] == (0.0, 0.0)
    finer, coarser = by_setting[(f"rk4:{signal.dt / 10:g}", 24)], by_setting[(f"rk4:{signal.dt:g}", 24)]
    assert 0 < finer[0] < coarser[0] and 0 < finer[1] < coarser[1]


def test_op_counter_sees_rk4_grow_with_length_and_parallel_not_within_a_window():
    """The parallel solve's ops grow with its windows (64 positions by default), not with the positions
    inside one; rk4's with every position. (The fixed iterations and the backward's recomputation cost
    ops: 2,527 at 40 positions here, against ~1,300 for the adaptive form before 2026-12-07; rk4 at DT,
    one autograd node per window since then, 2,817.)"""
    with tiny_size(layers=1) as dictionary:
        rows = bench_speed.op_counts("tiny", ["rk4-dt", "parallel", "no-solve"], [10, 40], dictionary, sentences=2)
    (_, _, short), (_, _, long) = rows
    assert long["rk4-dt"] > 3 * short["rk4-dt"] > 0
    assert abs(long["parallel"] - short["parallel"]) < 0.2 * short["parallel"]
    assert long["rk4-dt"] - short["rk4-dt"] > 3 * abs(long["parallel"] - short["parallel"])
    # without the solve, FLOATER-all's extra ops (the q/k/v biases) hardly depend on the length (67 vs 68)
    assert 0 < long["no-solve"] < short["parallel"] and abs(long["no-solve"] - short["no-solve"]) <= 2


def test_fp16_train_step_goes_through_fairseqs_fp16_optimizer(monkeypatch):
    """--fp16's training step (run on GPUs) trains the half model through fp32 master weights. fairseq
    keys the flat master copy by torch.cuda.current_device(); on this CPU the parameters' device index
    (None) stands in for it."""
    monkeypatch.setattr("torch.cuda.current_device", lambda: None)
    dictionary = Dictionary()
    for i in range(50):
        dictionary.add_symbol(f"w{i}")
    flags = ["--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "16", "--decoder-embed-dim",
             "16", "--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32", "--encoder-attention-heads",
             "2", "--decoder-attention-heads", "2"]
    placement = bench_speed.Placement(device="cpu", fp16=True)
    model = bench_speed.build_floater("transformer", flags, "parallel", dictionary, placement)
    optimizer = placement.optimizer(model)
    assert isinstance(optimizer, bench_speed.FP16Optimizer)
    master = next(iter(optimizer.fp32_params.values()))
    assert master.dtype == torch.float32 and all(p.dtype == torch.float16 for p in model.parameters())
    before = master.detach().clone()
    batch = placement.batches(bench_speed.make_batches(dictionary, 200, 10, 1, seed=1))[0]
    for _ in range(2):
        bench_speed.train_step(model, optimizer, batch)
    # Adam moves every master weight that has a gradient (the pad and unused embedding rows have none)
    assert (master.data != before).float().mean() > 0.5
    offset = 0  # the half model holds the fp32 master weights, rounded
    for p in model.parameters():
        torch.testing.assert_close(p.float(), master.data[offset:offset + p.numel()].view_as(p), atol=2e-3, rtol=1e-3)
        offset += p.numel()


def test_a_training_step_with_the_parallel_solve_synchronises_as_vanilla_does():
    """The accelerator's solver (--floater-method parallel) reads nothing back to the host while it
    solves or differentiates: a FLOATER-all training step has at most 2 more host synchronisations
    than the vanilla step (ours: the padding checks of the encoder's and the decoder's tokens, as RoPE
    has; the decoder reuses the encoder's source positions), whatever the number of windows. (torchdiffeq's
    rk4, the CPU's default, reads the time back at every step: cheap on a CPU, where it runs.)"""
    with tiny_size(layers=2) as dictionary:
        counts = bench_speed.training_sync_counts("tiny", ["parallel"], dictionary, length=150)
    assert counts["parallel"] <= counts["vanilla"] + 2, counts


def test_generation_adds_few_ops_and_no_per_step_synchronisation():
    """FLOATER's per-step position terms are folded into the projections' biases and its cache is
    checked once per generate call: a beam-5 generation has at most a few extra host
    synchronisations (the per-step check cost one per parameter per step) and few extra ops."""
    with tiny_size(layers=2) as dictionary:
        counts = bench_speed.generation_op_counts("tiny", ["default", "rope+floater"], dictionary, 60, 12)
    base_ops, base_syncs = counts["vanilla"]
    ops, syncs = counts["default"]
    assert syncs - base_syncs <= 4 and ops < 1.05 * base_ops, counts


def test_timed_generations_reuse_the_table_that_the_warm_up_solved(monkeypatch):
    """The generation timings measure a decoding step, not the table's growth: every batch is
    generated once before the timed rounds, so FLOATER solves only then (a timed batch that decodes
    further than the warm-up did would extend the table)."""
    solves = []
    generate = bench_speed.generate

    def counted(model, dictionary, batch):
        encoder = getattr(model, "position_encoder", None)  # None: the vanilla model
        before = encoder.signal.num_solves if encoder is not None else None
        generate(model, dictionary, batch)
        if encoder is not None:
            solves.append(encoder.signal.num_solves - before)

    monkeypatch.setattr(bench_speed, "generate", counted)
    args = types.SimpleNamespace(max_tokens=60, gen_tokens=60, mean_len=12, train_reps=1, gen_reps=3)
    with tiny_size(layers=1) as dictionary:
        bench_speed.compare_times("tiny", "default", args, dictionary)
    assert len(solves) == 6 and sum(solves[:3]) > 1 and solves[3:] == [0] * 3, solves
