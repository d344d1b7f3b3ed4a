"""memory_transformer_lm (long-range memory in some layers) and the memory_language_modeling
task: memory is detached, used, bounded by its length, exact across segments; the CLI end to end."""
import re
import types

import pytest
import torch

from fairseq import options
from fairseq.models import ARCH_MODEL_REGISTRY
from floater_fairseq.models.memory_transformer_lm import long_memory_layers
from floater_fairseq.tasks.memory_language_modeling import StreamSegments

from conftest import make_dictionary, run_cli, USER_DIR

POSITIONS = ["relative", "floater"]


def memory_model(*flags, seed=0):
    d = make_dictionary(20)
    args = options.parse_args_and_arch(options.get_training_parser(), [
        "x", "--user-dir", USER_DIR, "--task", "memory_language_modeling", "--arch", "memory_transformer_lm_tiny",
        "--batch-size", "2", "--dropout", "0", *flags])
    torch.manual_seed(seed)
    task = types.SimpleNamespace(target_dictionary=d, source_dictionary=d, tokens_per_sample=8)
    model = ARCH_MODEL_REGISTRY["memory_transformer_lm_tiny"].build_model(args, task)
    if model.decoder.positions is not None:  # a clearly non-trivial FLOATER signal
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.decoder.positions.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval(), d


def tokens(d, length, batch=2, seed=0):
    return torch.randint(d.nspecial, len(d), (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("positions", POSITIONS)
def test_gradients_never_flow_into_memory(positions):
    model, d = memory_model("--memory-positions", positions, "--lrm-len", "8", "--srm-len", "4")
    model.train()
    first, _ = model(tokens(d, 8))
    assert all(m is not None and not m.requires_grad and m.grad_fn is None for m in model.decoder.memory_state())
    first.sum().backward()  # frees the first segment's graph
    second, _ = model(tokens(d, 8, seed=1))
    second.sum().backward()  # would fail ("backward through the graph a second time") if memory were attached


@pytest.mark.parametrize("positions", POSITIONS)
def test_memory_is_used_and_only_when_enabled(positions):
    def second_segment(flags, first_seed):
        model, d = memory_model("--memory-positions", positions, *flags)
        with torch.no_grad():
            model(tokens(d, 8, seed=first_seed))
            return model(tokens(d, 8, seed=9))[0]
    with_memory = ["--lrm-len", "8", "--srm-len", "4"]
    assert (second_segment(with_memory, 1) - second_segment(with_memory, 2)).abs().max() > 1e-4
    without = ["--lrm-len", "0", "--srm-len", "0"]
    torch.testing.assert_close(second_segment(without, 1), second_segment(without, 2))


@pytest.mark.parametrize("positions", POSITIONS)
def test_a_layer_memory_never_reaches_further_back_than_its_length(positions):
    flags = ["--memory-positions", positions, "--decoder-layers", "1", "--lrm-len", "3"]

    def second_segment(first):
        model, d = memory_model(*flags)
        with torch.no_grad():
            model(first)
            return model(tokens(d, 8, seed=9))[0]
    _, d = memory_model(*flags)
    first = tokens(d, 8, seed=1)
    reference = second_segment(first)
    for position, changes in ((0, False), (4, False), (5, True), (7, True)):  # memory: positions 5, 6, 7
        edited = first.clone()
        edited[:, position] = (edited[:, position] + 1 - d.nspecial) % (len(d) - d.nspecial) + d.nspecial
        moved = (second_segment(edited) - reference).abs().max() > 1e-6
        assert bool(moved) == changes, position


@pytest.mark.parametrize("positions", POSITIONS)
def test_segment_by_segment_equals_one_pass_when_memory_is_long_enough(positions):
    model, d = memory_model("--memory-positions", positions, "--lrm-layers", "2", "--lrm-len", "16",
                            "--srm-len", "6")
    text = tokens(d, 12)
    with torch.no_grad():
        whole, _ = model(text)
        model.reset_memory()
        parts = [model(text[:, :6])[0], model(text[:, 6:])[0]]
    torch.testing.assert_close(torch.cat(parts, dim=1), whole, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("placement,expected", [("first", [0, 1]), ("last", [4, 5]), ("interleaved", [2, 5])])
def test_per_layer_memory_sizes_are_exactly_the_configured_ones(placement, expected):
    assert long_memory_layers(6, 2, placement) == expected
    model, d = memory_model("--lrm-layers", "2", "--lrm-placement", placement, "--lrm-len", "10", "--srm-len", "3")
    lengths = [10 if i in expected else 3 for i in range(6)]
    assert model.decoder.memory_lengths == lengths
    with torch.no_grad():
        for seed in range(3):  # 24 tokens: every memory full
            model(tokens(d, 8, seed=seed))
    assert [m.shape for m in model.decoder.memory_state()] == [torch.Size([2, n, 32]) for n in lengths]
    counts = {memory_model("--lrm-layers", k, "--lrm-placement", placement)[0] for k in ("0", "6")}
    assert len({sum(p.numel() for p in m.parameters()) for m in counts}) == 1  # flags do not change parameters


@pytest.mark.parametrize("positions", POSITIONS)
def test_incremental_generation_equals_full_pass_and_follows_beam_reordering(positions):
    model, d = memory_model("--memory-positions", positions, "--lrm-len", "16", "--srm-len", "16")
    text = tokens(d, 7, batch=3)
    with torch.no_grad():
        full, _ = model(text)
        state = {}
        steps = [model.decoder(text[:, :t + 1], incremental_state=state)[0] for t in range(7)]
        torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
        order = torch.tensor([2, 0, 0])
        model.decoder.reorder_incremental_state_scripting(state, order)
        extra = tokens(d, 1, batch=3, seed=5)
        step, _ = model.decoder(torch.cat([text[order], extra], dim=1), incremental_state=state)
        model.reset_memory()
        reference, _ = model(torch.cat([text[order], extra], dim=1))
    torch.testing.assert_close(step[:, -1], reference[:, -1], atol=1e-5, rtol=1e-5)


def test_streams_are_contiguous_and_memory_resets_at_each_pass():
    blocks = [torch.tensor([i]) for i in range(12)]
    dataset = StreamSegments(blocks, streams=2, rank=0, world_size=1)
    assert [[int(t) for t in dataset[i][1]] for i in range(len(dataset))] == [[0, 6], [1, 7], [2, 8], [3, 9], [4, 10], [5, 11]]
    assert [[int(t) for t in StreamSegments(blocks, 2, 1, 2)[i][1]] for i in range(3)] == [[6, 9], [7, 10], [8, 11]]
    with pytest.raises(ValueError, match="cannot fill 16 streams: lower --batch-size"):
        StreamSegments(blocks, 16, 0, 1)


def test_cli_preprocess_train_and_eval_lm(tmp_path):
    g = torch.Generator().manual_seed(0)
    words = [f"w{i}" for i in range(30)]
    for split, lines in (("train", 400), ("valid", 40), ("test", 40)):
        with open(tmp_path / f"{split}.txt", "w") as f:
            for _ in range(lines):
                f.write(" ".join(words[int(i)] for i in torch.randint(0, 30, (10,), generator=g)) + "\n")
    run_cli("fairseq-preprocess", "--only-source", "--trainpref", str(tmp_path / "train.txt"),
            "--validpref", str(tmp_path / "valid.txt"), "--testpref", str(tmp_path / "test.txt"),
            "--destdir", str(tmp_path / "bin"), "--workers", "1")
    run_cli("fairseq-train", str(tmp_path / "bin"), "--user-dir", USER_DIR, "--task", "memory_language_modeling",
            "--arch", "memory_transformer_lm_tiny", "--lrm-layers", "1", "--lrm-placement", "last",
            "--tokens-per-sample", "16", "--batch-size", "4", "--optimizer", "adam", "--lr", "0.003",
            "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "4", "--max-update", "8", "--cpu",
            "--save-dir", str(tmp_path / "ckpt"), "--no-epoch-checkpoints", "--no-progress-bar")
    result = run_cli("fairseq-eval-lm", str(tmp_path / "bin"), "--user-dir", USER_DIR, "--path",
                     str(tmp_path / "ckpt" / "checkpoint_last.pt"), "--task", "memory_language_modeling",
                     "--gen-subset", "test", "--batch-size", "4",
                     "--tokens-per-sample", "16", "--cpu")
    out = result.stdout + result.stderr
    perplexity = re.search(r"Perplexity: ([0-9.]+)", out)
    # random text over 30 words: 8 updates bring it from ~vocabulary size (34) toward ~31
    assert perplexity and 1 < float(perplexity.group(1)) < 2 * 34, out[-2000:]
    assert re.search(r"Evaluated \d+ tokens", out), out[-2000:]


def test_short_memory_layers_attention_range_limits_what_they_see():
    flags = ["--decoder-layers", "1", "--lrm-layers", "0", "--srm-len", "8", "--srm-attention-range", "3"]
    model, d = memory_model(*flags)
    text = tokens(d, 8)
    with torch.no_grad():
        reference, _ = model(text)
        edited = text.clone()
        edited[:, 2] = (edited[:, 2] + 1 - d.nspecial) % (len(d) - d.nspecial) + d.nspecial
        model.reset_memory()
        changed, _ = model(edited)
    moved = (changed - reference).abs().amax(dim=(0, 2)) > 1e-6
    assert moved.tolist() == [False, False, True, True, True, False, False, False]  # token 2 seen by 2, 3, 4


def test_validation_neither_uses_nor_overwrites_the_training_memory():
    from floater_fairseq.tasks.memory_language_modeling import MemoryLanguageModelingTask

    model, d = memory_model("--lrm-len", "8", "--srm-len", "4")
    model.train()
    model(tokens(d, 8))
    training_memory = model.decoder.memory_state()
    model.eval()
    assert all(m is None for m in model.decoder.memory_state())  # evaluation starts without memory
    with torch.no_grad():
        model(tokens(d, 8, seed=3))
    model.train()
    assert all(torch.equal(a, b) for a, b in zip(model.decoder.memory_state(), training_memory))
    MemoryLanguageModelingTask._reset_at_start({"id": torch.tensor([0, 0])}, model)  # first batch of a pass
    assert all(m is None for m in model.decoder.memory_state())
