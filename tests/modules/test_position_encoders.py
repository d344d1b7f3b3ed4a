"""Every --pos-encoder x --pos-blocks combination of floater_transformer, on a tiny model:
forward/backward, padding invariance, incremental == full decoding, beam search scores, save ->
load, and the properties that define each encoder."""
import math

import pytest
import torch

from fairseq.sequence_generator import SequenceGenerator
from floater_fairseq.modules.alibi import alibi_slopes
from floater_fairseq.modules.position_encoder import PositionRangeError
from floater_fairseq.modules.shifted_basis import shifted_basis

from conftest import build_model, random_tokens

SOFTMAX, KERNELIZED = "softmax", "kernelized-rpe"
COMBINATIONS = [
    ("floater", "all", SOFTMAX), ("floater", "input", SOFTMAX),
    ("sinusoidal", "all", SOFTMAX), ("sinusoidal", "input", SOFTMAX),
    ("learned", "all", SOFTMAX), ("learned", "input", SOFTMAX),
    ("shifted-basis", "all", SOFTMAX), ("shifted-basis", "input", SOFTMAX),
    ("none", "all", SOFTMAX), ("rope", "all", SOFTMAX), ("alibi", "all", SOFTMAX),
    ("rope+floater", "all", SOFTMAX), ("alibi+floater", "all", SOFTMAX), ("rope+shifted-basis", "all", SOFTMAX),
    # kernelized attention with relative position (Luo et al. 2021), alone and with absolute/rotary positions
    ("none", "all", KERNELIZED), ("floater", "all", KERNELIZED), ("rope", "all", KERNELIZED),
]
IDS = [f"{e}-{b}" + ("" if a == SOFTMAX else f"-{a}") for e, b, a in COMBINATIONS]
PARAMETERS = "encoder,blocks,attention"


def position_model(encoder, blocks, attention=SOFTMAX, extra=(), seed=0):
    model, d, args = build_model(extra=["--pos-encoder", encoder, "--pos-blocks", blocks,
                                        "--encoder-self-attention", attention, "--decoder-self-attention", attention,
                                        "--kernelized-features", "32", *extra], seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # a clearly non-trivial position signal (FLOATER starts with h small)
        position_parameters = [p for n, p in model.named_parameters() if n.endswith("rpe_bias")]
        for p in [*model.position_encoder.parameters(), *position_parameters]:
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval(), d


def encode(model, src):
    return model.encoder(src, src_lengths=src.ne(model.encoder.padding_idx).sum(1))


@pytest.mark.parametrize(PARAMETERS, COMBINATIONS, ids=IDS)
def test_forward_backward_reaches_every_parameter(encoder, blocks, attention):
    model, d = position_model(encoder, blocks, attention)
    model.train()
    src = random_tokens(d, [6, 3], left_pad=True)
    prev = random_tokens(d, [5, 4], seed=2)
    logits, _ = model(src, None, prev)
    assert torch.isfinite(logits).all()
    logits.logsumexp(-1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)
               and not n.startswith(("encoder.embed_positions", "decoder.embed_positions", "position_encoder.tables"))]
    assert not missing, f"parameters without gradient: {missing}"
    position_parameters = list(model.position_encoder.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in position_parameters)


@pytest.mark.parametrize(PARAMETERS, COMBINATIONS, ids=IDS)
def test_left_and_right_padding_do_not_change_outputs(encoder, blocks, attention):
    model, d = position_model(encoder, blocks, attention)
    lengths = [7, 4, 2]
    left = random_tokens(d, lengths, left_pad=True)
    right = random_tokens(d, lengths, left_pad=False)
    prev = random_tokens(d, [5, 3, 6], seed=3)
    with torch.no_grad():
        out_left, _ = model(left, None, prev)
        out_right, _ = model(right, None, prev)
        for row, n in enumerate(lengths):
            alone = left[row:row + 1, -n:]  # the same sentence with no padding at all
            out_alone, _ = model(alone, None, prev[row:row + 1])
            enc_alone = encode(model, alone)["encoder_out"][0][:, 0]
            enc_left = encode(model, left[row:row + 1])["encoder_out"][0][-n:, 0]
            torch.testing.assert_close(enc_left, enc_alone, atol=1e-5, rtol=1e-5)
            real = prev[row].ne(d.pad())
            torch.testing.assert_close(out_left[row][real], out_alone[0][real], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out_right[row][real], out_alone[0][real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(PARAMETERS, COMBINATIONS, ids=IDS)
def test_incremental_decoding_equals_full_decoding(encoder, blocks, attention):
    model, d = position_model(encoder, blocks, attention)
    src = random_tokens(d, [6, 3], left_pad=True)
    prev = random_tokens(d, [7, 7], seed=5)
    with torch.no_grad():
        enc = encode(model, src)
        full, _ = model.decoder(prev, encoder_out=enc)
        state = {}
        steps = [model.decoder(prev[:, :t + 1], encoder_out=enc, incremental_state=state)[0] for t in range(prev.size(1))]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(PARAMETERS, COMBINATIONS, ids=IDS)
def test_beam_search_scores_equal_scoring_the_full_sequence(encoder, blocks, attention):
    model, d = position_model(encoder, blocks, attention)
    src = random_tokens(d, [6, 4, 3], left_pad=True)
    generator = SequenceGenerator([model], d, beam_size=3, max_len_b=10)
    sample = {"net_input": {"src_tokens": src, "src_lengths": src.ne(d.pad()).sum(1)}}
    with torch.no_grad():
        hypos = generator.generate([model], sample)
        for row in range(src.size(0)):
            target = hypos[row][0]["tokens"].unsqueeze(0)
            prev = torch.cat([target.new_full((1, 1), d.eos()), target[:, :-1]], dim=1)
            logits, _ = model(src[row:row + 1], None, prev)
            lprobs = torch.log_softmax(logits, dim=-1)[0].gather(1, target[0].unsqueeze(1)).squeeze(1)
            torch.testing.assert_close(hypos[row][0]["positional_scores"], lprobs, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(PARAMETERS, COMBINATIONS, ids=IDS)
def test_save_and_load_into_a_fresh_model_gives_the_same_outputs(encoder, blocks, attention, tmp_path):
    model, d = position_model(encoder, blocks, attention)
    src, prev = random_tokens(d, [6, 3], left_pad=True), random_tokens(d, [5, 5], seed=4)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    fresh, _ = position_model(encoder, blocks, attention, seed=7)
    fresh.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh(src, None, prev)[0], model(src, None, prev)[0])


FIXED_LENGTH = ("learned", "shifted-basis")
INDUCTIVE = [(c, i) for c, i in zip(COMBINATIONS, IDS) if not set(c[0].split("+")) & set(FIXED_LENGTH)]


@pytest.mark.parametrize(PARAMETERS, [c for c, _ in INDUCTIVE], ids=[i for _, i in INDUCTIVE])
def test_inductive_encoders_decode_inputs_longer_than_any_seen(encoder, blocks, attention):
    # (FLOATER with one solver step per position: what is tested is that there is no maximum length)
    solver = ["--floater-step-size", "0.1"] if "floater" in encoder.split("+") else []
    model, d = position_model(encoder, blocks, attention, extra=["--max-source-positions", "4096", *solver])
    long = random_tokens(d, [300, 120], left_pad=True, seed=9)
    generator = SequenceGenerator([model], d, beam_size=2, max_len_a=0, max_len_b=4)
    with torch.no_grad():
        hypos = generator.generate([model], {"net_input": {"src_tokens": long, "src_lengths": long.ne(d.pad()).sum(1)}})
    assert all(torch.isfinite(h[0]["positional_scores"]).all() for h in hypos)


@pytest.mark.parametrize("encoder,blocks,flags", [
    ("learned", "all", ["--max-source-positions", "16"]),
    ("learned", "input", ["--max-source-positions", "16"]),
    ("shifted-basis", "input", ["--basis-max-positions", "16", "--basis-size", "8"]),
    ("rope+shifted-basis", "all", ["--basis-max-positions", "16", "--basis-size", "8"]),  # a composite: its parts' limit
])
def test_fixed_length_encoders_refuse_longer_inputs_clearly(encoder, blocks, flags):
    model, d = position_model(encoder, blocks, extra=flags)
    assert model.max_positions()[0] == 16  # what fairseq-generate filters by
    with torch.no_grad():
        model(random_tokens(d, [16]), None, random_tokens(d, [3]))
        with pytest.raises(PositionRangeError, match="encodes at most 16.*skip-invalid-size-inputs-valid-test"):
            model(random_tokens(d, [17]), None, random_tokens(d, [3]))


def test_sinusoidal_all_blocks_adds_eq7_block_offsets():
    model, _ = position_model("sinusoidal", "all")
    table = model.position_encoder.table("encoder", 5)  # [5, layers, 16]
    d = table.size(-1)
    half = d // 2
    frequency = torch.exp(torch.arange(half) * -(math.log(10000) / (half - 1)))
    for n in (1, 2):
        for i in (0, 4):
            expected = torch.cat([torch.sin(i * frequency) + torch.sin(n * frequency),
                                  torch.cos(i * frequency) + torch.cos(n * frequency)])
            torch.testing.assert_close(table[i, n - 1], expected)
    assert model.encoder.embed_positions is None  # the block signals replace the input sinusoid


def test_sinusoidal_input_and_none_are_fairseq_own_configurations():
    sinusoidal, _ = position_model("sinusoidal", "input")
    learned, _ = position_model("learned", "input")
    none, _ = position_model("none", "all")
    assert type(sinusoidal.encoder.embed_positions).__name__ == "SinusoidalPositionalEmbedding"
    assert type(learned.encoder.embed_positions).__name__ == "LearnedPositionalEmbedding"
    assert none.encoder.embed_positions is None and none.decoder.embed_positions is None


def test_none_encoder_is_permutation_equivariant():
    model, d = position_model("none", "all")
    src = random_tokens(d, [6])
    permutation = torch.tensor([3, 0, 4, 1, 2, 5])
    with torch.no_grad():
        out = encode(model, src)["encoder_out"][0][:, 0]
        permuted = encode(model, src[:, permutation])["encoder_out"][0][:, 0]
    torch.testing.assert_close(permuted, out[permutation], atol=1e-5, rtol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
    model, _ = position_model("rope", "all")
    cos, sin = model.position_encoder.rotation(slice(0, 40), 8, None)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(8, generator=g), torch.randn(8, generator=g)

    def rotated(x, i):
        x1, x2 = x[:4], x[4:]
        return x * cos[i, 0] + torch.cat([-x2, x1]) * sin[i, 0]

    for offset in (0, 3, 17):
        scores = [rotated(q, i + offset) @ rotated(k, i) for i in (0, 5, 20)]
        torch.testing.assert_close(torch.stack(scores), scores[0].expand(3), atol=1e-5, rtol=1e-5)


def test_alibi_slopes_and_bias_follow_the_paper():
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -k for k in range(1, 9)]))
    assert alibi_slopes(6).tolist() == [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3]
    model, _ = position_model("alibi", "all")
    bias = model.position_encoder.logit_bias("encoder", 4, 4)
    torch.testing.assert_close(bias[0], -(2 ** -4) * torch.tensor([[0, 1, 2, 3], [1, 0, 1, 2], [2, 1, 0, 1], [3, 2, 1, 0.]]))
    torch.testing.assert_close(model.position_encoder.logit_bias("decoder", 1, 4), bias[:, 3:])


def test_impulse_basis_with_projection_is_a_learned_absolute_embedding():
    flags = ["--basis", "impulse", "--basis-size", "32", "--basis-max-positions", "32", "--basis-width", "1",
             "--max-source-positions", "32", "--max-target-positions", "32"]
    basis, d = position_model("shifted-basis", "input", extra=flags)
    learned, _ = position_model("learned", "input", extra=flags[-4:])
    torch.testing.assert_close(shifted_basis("impulse", 32, 32, 1.0), torch.eye(32, dtype=torch.float64))
    learned.load_state_dict({k: v for k, v in basis.state_dict().items() if not k.startswith("position_encoder.")}, strict=False)
    with torch.no_grad():
        for side in ("encoder", "decoder"):
            projection = basis.position_encoder.projections[side][0]
            embedding = getattr(learned, side).embed_positions
            first = embedding.padding_idx + 1
            embedding.weight[first:first + 32] = projection.weight.t() + projection.bias
    src, prev = random_tokens(d, [9, 5], left_pad=True), random_tokens(d, [6, 6], seed=3)
    with torch.no_grad():
        torch.testing.assert_close(learned(src, None, prev)[0], basis(src, None, prev)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("flags,message", [
    (["--pos-encoder", "rope", "--pos-blocks", "input"], "does not support --pos-blocks input"),
    (["--pos-encoder", "sinusoidal", "--no-token-positional-embeddings"], "use --pos-encoder none"),
    (["--pos-encoder", "sinusoidal", "--encoder-learned-pos"], "use --pos-encoder learned"),
    (["--pos-encoder", "shifted-basis", "--basis-projection", "none", "--basis-size", "8"], "set --basis-size 16"),
])
def test_conflicting_flags_fail_with_the_fix(flags, message):
    with pytest.raises(ValueError, match=message):
        build_model(extra=flags)


@pytest.mark.parametrize("encoder", ["floater", "rope", "alibi", "rope+floater"])
def test_attention_with_position_hooks_runs_fused_and_equals_fairseqs_python_path(encoder, monkeypatch):
    """A full-sequence call runs F.scaled_dot_product_attention (no [B*H, T, S] tensors kept for
    backward), with fairseq's masks (causal, padding) and the hooks' logit biases: outputs and
    gradients equal fairseq's Python path."""
    from fairseq.modules import MultiheadAttention
    from floater_fairseq.modules.position_aware_layers import PositionAwareAttention

    model, d = position_model(encoder, "all")
    model.double().train()
    src = random_tokens(d, [7, 4], left_pad=True)
    prev = random_tokens(d, [6, 3], seed=2)
    calls = []
    fused = PositionAwareAttention._fused_forward
    monkeypatch.setattr(PositionAwareAttention, "_fused_forward",
                        lambda self, *args: calls.append(1) or fused(self, *args))

    def outputs_and_gradients():
        model.zero_grad()
        torch.manual_seed(0)  # the same dropout masks outside attention
        logits, _ = model(src, None, prev)
        logits.logsumexp(-1).sum().backward()
        return logits, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    logits, gradients = outputs_and_gradients()
    # 2 encoder and 2 decoder self-attentions, 1 cross-attention: the last one returns fairseq's
    # alignment weights (the Python path, as for the vanilla model)
    assert len(calls) == 5
    monkeypatch.setattr(PositionAwareAttention, "_fused_forward", lambda self, q, k, v, pads, mask: MultiheadAttention.forward(
        self, q, k, v, pads, None, False, False, mask)[0])
    python_logits, python_gradients = outputs_and_gradients()
    # float64 model; fairseq's Python path takes its softmax in float32 (utils.softmax)
    torch.testing.assert_close(logits, python_logits, atol=1e-6, rtol=1e-6)
    assert gradients.keys() == python_gradients.keys()
    for name in gradients:
        torch.testing.assert_close(gradients[name], python_gradients[name], atol=1e-6, rtol=1e-5, msg=name)
