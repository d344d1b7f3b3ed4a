"""Kernelized attention with relative position encoding (Luo et al. 2021) against exact
references written here: the FFT Toeplitz product, the attention it approximates, causality,
padding, incremental decoding, and the model flags."""
import pytest
import torch
import torch.nn.functional as F

from floater_fairseq.modules.kernelized_attention import (
    KernelizedAttentionOptions,
    KernelizedRPEAttention,
    kernelized_rpe_attention,
    orthogonal_gaussian_features,
    toeplitz_matmul,
)

from conftest import build_model

KERNELIZED = ["--encoder-self-attention", "kernelized-rpe", "--decoder-self-attention", "kernelized-rpe"]


def dense_toeplitz(kernel, n):
    """C[h, i, j] = t_{j-i} for t indexed by offset -(n-1)..n-1, written out entry by entry."""
    C = torch.empty(kernel.size(0), n, n, dtype=kernel.dtype)
    for i in range(n):
        for j in range(n):
            C[:, i, j] = kernel[:, (j - i) + n - 1]
    return C


def exact_attention(q, k, v, rpe_bias, key_padding_mask=None, causal=False):
    """The O(n^2) attention Eq. (1) estimates: weights c_{j-i} exp(q^_i . k^_j), normalised."""
    n, heads = q.size(2), q.size(1)
    window = rpe_bias.size(1) - 1 if causal else (rpe_bias.size(1) - 1) // 2
    bias = torch.empty(heads, n, n, dtype=q.dtype)
    for i in range(n):
        for j in range(n):
            bias[:, i, j] = rpe_bias[:, min(max(j - i, -window), window if not causal else 0) + window]
    logits = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-1, -2) + bias
    if causal:
        logits = logits.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    if key_padding_mask is not None:
        logits = logits.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    return torch.softmax(logits, dim=-1) @ v


def random_inputs(n=9, heads=2, dim=8, batch=2, seed=0, window=None, causal=False):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, n, dim, generator=g, dtype=torch.float64) for _ in range(3))
    window = window or n - 1
    size = window + 1 if causal else 2 * window + 1
    return q, k, v, torch.randn(heads, size, generator=g, dtype=torch.float64) * 2


@pytest.mark.parametrize("n", [1, 2, 7, 16])
def test_fft_toeplitz_product_equals_the_dense_product(n):
    g = torch.Generator().manual_seed(n)
    kernel = torch.randn(3, 2 * n - 1, generator=g, dtype=torch.float64)
    x = torch.randn(2, 3, 5, n, generator=g, dtype=torch.float64)  # [B, H, channels, n]
    expected = (dense_toeplitz(kernel, n) @ x.transpose(-1, -2)).transpose(-1, -2)
    torch.testing.assert_close(toeplitz_matmul(kernel, x), expected, atol=1e-5, rtol=1e-5)


def test_fft_toeplitz_product_gradients_equal_the_dense_product_gradients():
    g = torch.Generator().manual_seed(0)
    kernel = torch.randn(2, 11, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randn(1, 2, 3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(toeplitz_matmul, (kernel, x))


def test_orthogonal_features_are_orthogonal_within_a_block():
    w = orthogonal_gaussian_features(12, 8, generator=torch.Generator().manual_seed(0))
    assert w.shape == (12, 8)
    gram = w[:8] @ w[:8].t()
    torch.testing.assert_close(gram - torch.diag(torch.diag(gram)), torch.zeros(8, 8), atol=1e-5, rtol=0)


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_more_random_features_approach_exact_attention(causal):
    q, k, v, bias = random_inputs(causal=causal)
    exact = exact_attention(q, k, v, bias, causal=causal)
    errors = {}
    for m in (8, 64, 512, 8192):
        trials = [(kernelized_rpe_attention(q, k, v, bias, orthogonal_gaussian_features(
            m, 8, generator=torch.Generator().manual_seed(s)).double(), causal=causal) - exact).abs().mean()
            for s in range(4)]
        errors[m] = float(torch.stack(trials).mean())
    assert errors[8] > errors[64] > errors[512] > errors[8192], errors
    assert errors[8192] < 0.02 and errors[8192] < errors[8] / 10, errors


def test_causal_output_never_depends_on_a_future_token():
    q, k, v, bias = random_inputs(causal=True)
    projection = orthogonal_gaussian_features(16, 8).double()
    out = kernelized_rpe_attention(q, k, v, bias, projection, causal=True)
    for t in (0, 4, 8):
        k2, v2 = k.clone(), v.clone()
        k2[:, :, t] += 5.0
        v2[:, :, t] -= 3.0
        changed = kernelized_rpe_attention(q, k2, v2, bias, projection, causal=True)
        torch.testing.assert_close(changed[:, :, :t], out[:, :, :t], atol=1e-10, rtol=0)
        assert (changed[:, :, t:] - out[:, :, t:]).abs().max() > 1e-3  # and the present/future do


def test_bidirectional_output_depends_on_every_token():
    q, k, v, bias = random_inputs()
    projection = orthogonal_gaussian_features(16, 8).double()
    out = kernelized_rpe_attention(q, k, v, bias, projection)
    v2 = v.clone()
    v2[:, :, -1] += 1.0
    assert ((kernelized_rpe_attention(q, k, v2, bias, projection) - out).abs().amax(-1) > 1e-6).all()


def test_padded_keys_contribute_nothing_and_offsets_ignore_padding():
    q, k, v, bias = random_inputs(n=6, batch=1)
    projection = orthogonal_gaussian_features(16, 8).double()
    alone = kernelized_rpe_attention(q, k, v, bias, projection)
    junk = torch.randn(1, 2, 3, 8, dtype=torch.float64) * 10
    mask = torch.tensor([[True] * 3 + [False] * 6])
    left = kernelized_rpe_attention(*(torch.cat([junk, x], dim=2) for x in (q, k, v)), bias, projection, mask)
    torch.testing.assert_close(left[:, :, 3:], alone, atol=1e-10, rtol=0)
    right = kernelized_rpe_attention(*(torch.cat([x, junk], dim=2) for x in (q, k, v)), bias, projection,
                                     mask.flip(1))
    torch.testing.assert_close(right[:, :, :6], alone, atol=1e-10, rtol=0)


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_direct_evaluation_for_short_inputs_equals_the_fft(causal):
    q, k, v, bias = (x.requires_grad_() for x in random_inputs(n=7, causal=causal, window=4))
    projection = orthogonal_gaussian_features(16, 8).double()
    mask = torch.tensor([[True, True] + [False] * 5, [False] * 7])
    fft = kernelized_rpe_attention(q, k, v, bias, projection, mask, causal=causal)
    direct = kernelized_rpe_attention(q, k, v, bias, projection, mask, causal=causal, fft_min_length=8)
    torch.testing.assert_close(direct, fft, atol=1e-10, rtol=1e-10)
    grads = [torch.autograd.grad(out.sum(), (q, k, v, bias)) for out in (fft, direct)]
    for g_fft, g_direct in zip(*grads):
        torch.testing.assert_close(g_direct, g_fft, atol=1e-9, rtol=1e-9)


def test_offsets_beyond_the_window_share_the_edge_bias():
    q, k, v, bias = random_inputs(n=12, window=3)
    projection = orthogonal_gaussian_features(4096, 8, generator=torch.Generator().manual_seed(0)).double()
    approx = kernelized_rpe_attention(q, k, v, bias, projection)
    assert (approx - exact_attention(q, k, v, bias)).abs().mean() < 0.05


def test_gradients_reach_queries_keys_values_and_the_relative_bias():
    q, k, v, bias = (x.requires_grad_() for x in random_inputs(n=5, dim=4, batch=1, window=2))
    projection = orthogonal_gaussian_features(8, 4).double()
    assert torch.autograd.gradcheck(
        lambda *xs: kernelized_rpe_attention(*xs, projection), (q, k, v, bias), atol=1e-6)
    assert torch.autograd.gradcheck(
        lambda *xs: kernelized_rpe_attention(*xs, projection, causal=True), (q, k, v, bias[:, :3]), atol=1e-6)


def module(causal, features=16, window=0, max_positions=64):
    torch.manual_seed(0)
    attention = KernelizedRPEAttention(16, 2, KernelizedAttentionOptions(features, False, window),
                                       max_positions, causal)
    with torch.no_grad():
        attention.rpe_bias.normal_(0, 1)
    return attention.eval()


def test_module_incremental_steps_equal_one_causal_pass_and_follow_beam_reordering():
    attention = module(causal=True)
    x = torch.randn(7, 3, 16)
    full, _ = attention(x, x, x)
    state = {}
    steps = [attention(x[t:t + 1], x[t:t + 1], x[t:t + 1], incremental_state=state)[0] for t in range(7)]
    torch.testing.assert_close(torch.cat(steps), full, atol=1e-5, rtol=1e-5)
    # beam search: reorder the cached state, then continue as if those rows had been decoded
    order = torch.tensor([2, 2, 0])
    attention.reorder_incremental_state(state, order)
    extra = torch.randn(1, 3, 16)
    step, _ = attention(extra, extra, extra, incremental_state=state)
    reordered = torch.cat([x[:, order], extra])
    torch.testing.assert_close(step[0], attention(reordered, reordered, reordered)[0][-1], atol=1e-5, rtol=1e-5)


def test_module_parameters_do_not_depend_on_length_and_features_are_saved():
    attention = module(causal=False, window=5)
    assert attention.rpe_bias.shape == (2, 11) and module(causal=True, window=5).rpe_bias.shape == (2, 6)
    assert module(causal=True).rpe_bias.shape == (2, 64)  # full range: max positions - 1
    assert "feature_projection" in attention.state_dict()
    redraw = KernelizedRPEAttention(16, 2, KernelizedAttentionOptions(16, True, 0), 64, False)
    before = redraw.feature_projection.clone()
    x = torch.randn(4, 1, 16)
    redraw.eval()(x, x, x)
    assert torch.equal(redraw.feature_projection, before)  # evaluation keeps the features
    redraw.train()(x, x, x)
    assert not torch.equal(redraw.feature_projection, before)


def test_model_flags_build_kernelized_self_attention_and_softmax_cross_attention():
    model, _, _ = build_model(extra=["--pos-encoder", "none", *KERNELIZED, "--kernelized-features", "8",
                                     "--kernelized-rpe-window", "10"])
    for layer in model.encoder.layers:
        assert isinstance(layer.self_attn, KernelizedRPEAttention) and not layer.self_attn.causal
        assert layer.self_attn.feature_projection.shape == (8, 8) and layer.self_attn.window == 10
    for layer in model.decoder.layers:
        assert isinstance(layer.self_attn, KernelizedRPEAttention) and layer.self_attn.causal
        assert not isinstance(layer.encoder_attn, KernelizedRPEAttention)
    only_encoder, _, _ = build_model(extra=["--encoder-self-attention", "kernelized-rpe"])
    assert isinstance(only_encoder.encoder.layers[0].self_attn, KernelizedRPEAttention)
    assert not isinstance(only_encoder.decoder.layers[0].self_attn, KernelizedRPEAttention)


def test_alibi_with_kernelized_attention_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="alibi.*use --pos-encoder none"):
        build_model(extra=["--pos-encoder", "alibi", *KERNELIZED])


def test_bfloat16_inputs_are_computed_in_fp32_and_stay_finite():
    attention = module(causal=False)
    x = torch.randn(5, 2, 16)
    out32 = kernelized_rpe_attention(*(t.view(5, 2, 2, 8).permute(1, 2, 0, 3) for t in (x, x, x)),
                                     attention.rpe_bias, attention.feature_projection)
    out16 = kernelized_rpe_attention(*(t.bfloat16().view(5, 2, 2, 8).permute(1, 2, 0, 3) for t in (x, x, x)),
                                     attention.rpe_bias, attention.feature_projection)
    assert out16.dtype == torch.bfloat16 and torch.isfinite(out16).all()
    torch.testing.assert_close(out16.float(), out32, atol=0.05, rtol=0.05)
