"""The bounded FLOATER dynamics (--floater-dynamics dissipative | rotation): their bounds hold for
random large parameters over long horizons, they start where they claim to (h == 0 is the vanilla
model; rotation at --pos-blocks input is fairseq's sinusoid), and gradients flow."""
import math

import pytest
import torch

from conftest import build_model, random_tokens
from floater_fairseq.modules.floater import FloaterPositionSignal, RotationDynamics


def randomize(signal, std, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in signal.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dissipative_trajectories_stay_in_their_box(seed):
    signal = FloaterPositionSignal(5, 8, dynamics="dissipative", hidden_dim=16).double()
    randomize(signal, std=4.0, seed=seed)  # large weights, decay rates from ~0.1 to ~10
    with torch.no_grad():
        table = signal.solve(2000)  # t up to 200: 20x the usual training horizon
        start = signal.initial_values.abs()
        box = torch.maximum(start, 1 / signal.dynamics.decay(torch.float64))  # |p_j| <= max(|p_j(0)|, 1/gamma_j)
    assert table.abs().max() > 0.5  # the test has something to bound
    assert (table.abs() <= box + 1e-6).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_rotation_trajectories_keep_their_norm(seed):
    signal = FloaterPositionSignal(4, 8, dynamics="rotation", hidden_dim=16, method="dopri5",
                                   rtol=1e-8, atol=1e-8).double()
    randomize(signal, std=0.5, seed=seed)
    with torch.no_grad():
        table = signal.solve(200)
    norms = table.norm(dim=-1)
    torch.testing.assert_close(norms, norms[:1].expand_as(norms), rtol=1e-6, atol=0)
    assert not torch.allclose(table[0], table[-1])  # it did move


def test_rotation_starts_as_fairseqs_sinusoid():
    d, n = 16, 60
    # the exact ODE solution (a tight adaptive solve) is the sinusoid
    signal = FloaterPositionSignal(1, d, dynamics="rotation", init_std=0.0, method="dopri5",
                                   rtol=1e-10, atol=1e-10).double()
    with torch.no_grad():
        signal.initial_values.copy_(RotationDynamics.sinusoid_start(1, d))
        table = signal.solve(n)[:, 0]
    half = d // 2
    w = torch.exp(torch.arange(half, dtype=torch.float64) * -(math.log(10000) / (half - 1)))
    i = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    torch.testing.assert_close(table, torch.cat([torch.sin(i * w), torch.cos(i * w)], dim=1), atol=1e-6, rtol=0)


def test_rotation_input_model_embeds_positions_as_the_sinusoid_at_initialisation():
    model, dictionary, _ = build_model(extra=["--pos-encoder", "floater", "--pos-blocks", "input",
                                              "--floater-dynamics", "rotation", "--floater-init-std", "0"])
    tokens = random_tokens(dictionary, [9, 9])
    with torch.no_grad():
        signal = model.encoder.embed_positions(tokens)[0]  # [T, d]
    half = signal.size(-1) // 2
    w = torch.exp(torch.arange(half, dtype=torch.float64) * -(math.log(10000) / (half - 1)))
    i = torch.arange(9, dtype=torch.float64).unsqueeze(1)
    expected = torch.cat([torch.sin(i * w), torch.cos(i * w)], dim=1).float()
    torch.testing.assert_close(signal, expected, atol=2e-4, rtol=0)  # rk4 at step dt/5: its error


@pytest.mark.parametrize("dynamics", ["dissipative", "rotation"])
def test_bounded_families_at_h0_b0_are_the_vanilla_transformer_and_learn(dynamics):
    extra = ["--pos-encoder", "floater", "--pos-blocks", "all", "--floater-dynamics", dynamics]
    model, dictionary, _ = build_model(extra=extra + ["--floater-init-std", "0"])
    with torch.no_grad():
        assert model.position_encoder.signal.solve(12).abs().max() == 0  # every bias is zero
    model, dictionary, _ = build_model(extra=extra + ["--floater-init-std", "0.3"])
    with torch.no_grad():
        model.position_encoder.signal.initial_values.normal_(std=0.3)
    src, prev = random_tokens(dictionary, [7, 5], seed=1), random_tokens(dictionary, [6, 4], seed=2)
    out, _ = model(src, torch.tensor([7, 5]), prev)
    out.sum().backward()
    for name, p in model.position_encoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
