"""floater_transformer with FLOATER: extrapolation through the lazily extended cache,
equivalence with the vanilla transformer at h == 0, b(0) == 0, one ODE solve per forward."""
import types

import pytest
import torch

from fairseq.sequence_generator import SequenceGenerator
from floater_fairseq.models.floater_transformer import FloaterTransformerModel
from floater_fairseq.modules.floater import FloaterNumericalError
from floater_fairseq.modules.position_encoder import PositionCall

from conftest import build_model, random_tokens, randomize_floater

BLOCKS = ["all", "input"]


def floater_model(blocks, extra=()):
    model, d, args = build_model(extra=["--pos-blocks", blocks, *extra])
    randomize_floater(model)
    return model.eval(), d


def encode(model, src):
    return model.encoder(src, src_lengths=src.ne(model.encoder.padding_idx).sum(1))


@pytest.mark.parametrize("blocks", BLOCKS)
def test_encodes_and_decodes_inputs_four_times_longer(blocks):
    model, d = floater_model(blocks)
    short = random_tokens(d, [10, 8], left_pad=True)
    long = random_tokens(d, [40, 33], left_pad=True, seed=9)
    generator = SequenceGenerator([model], d, beam_size=2, max_len_a=1, max_len_b=5)
    with torch.no_grad():
        generator.generate([model], {"net_input": {"src_tokens": short, "src_lengths": short.ne(d.pad()).sum(1)}})
        cached = model.position_encoder.signal._cache.size(0)
        assert cached < 40
        hypos = generator.generate([model], {"net_input": {"src_tokens": long, "src_lengths": long.ne(d.pad()).sum(1)}})
        assert model.position_encoder.signal._cache.size(0) >= 40
        assert all(len(h[0]["tokens"]) > 0 and torch.isfinite(h[0]["positional_scores"]).all() for h in hypos)
        extended = model.position_encoder.signal.table(45)
        fresh = model.position_encoder.signal.solve(45)
    torch.testing.assert_close(extended, fresh, atol=1e-5, rtol=1e-5)
    assert model.encoder.max_positions() >= 1024 and model.max_positions()[0] >= 1024


def test_compat_form_at_h0_b0_is_the_vanilla_transformer():
    """Eq. 11 with b(0) = 0 and h == 0 adds nothing: same outputs as fairseq's transformer."""
    floater, d, _ = build_model(extra=["--floater-init-std", "0"])
    vanilla, _, _ = build_model(arch="transformer_tiny", dictionary=d)
    vanilla.load_state_dict(
        {k: v for k, v in floater.state_dict().items() if not k.startswith("position_encoder.")}, strict=True
    )
    floater.eval(), vanilla.eval()
    src = random_tokens(d, [6, 3], left_pad=True)
    prev = random_tokens(d, [5, 5], seed=2)
    with torch.no_grad():
        torch.testing.assert_close(floater(src, None, prev)[0], vanilla(src, None, prev)[0], atol=1e-6, rtol=1e-6)
    randomize_floater(floater)
    with torch.no_grad():
        assert not torch.allclose(floater(src, None, prev)[0], vanilla(src, None, prev)[0], atol=1e-3)


@pytest.mark.parametrize("blocks", BLOCKS)
def test_one_ode_solve_per_training_forward_and_exact_gradients(blocks):
    model, d, _ = build_model(extra=["--pos-blocks", blocks])
    model.train()
    src = random_tokens(d, [9, 5], left_pad=True)
    prev = random_tokens(d, [12, 4], seed=1)
    signal = model.position_encoder.signal
    solved_lengths = []
    solve = signal.solve
    signal.solve = lambda length: solved_lengths.append(length) or solve(length)
    for step in range(3):
        model.zero_grad()
        out, _ = model(src, None, prev)
        assert solved_lengths == [12] * (step + 1), "one odeint call, only as far as the longest sequence"
        out.sum().backward()
        for name, p in signal.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {name} at step {step}"
    assert signal._cache is None


def test_trajectory_layout_compat_form():
    model, _, args = build_model()
    randomize_floater(model)
    e, n = args.encoder_layers, args.decoder_layers
    encoder = model.position_encoder
    assert encoder.signal.num_trajectories == 3 * e + 6 * n
    with torch.no_grad():
        table = encoder.signal.table(4)
        used = []
        for side in ("encoder", "decoder"):
            call = PositionCall(side, slice(0, 4), 4, torch.float32, source_index=slice(0, 4), source_length=4)
            for layer in encoder.layer_positions(call):
                for attention in (layer.self_attention, layer.cross_attention):
                    for bias in (attention.q, attention.k, attention.v) if attention else ():
                        used += [r for r in range(table.size(1)) if torch.equal(table[:, r], bias[:, 0])]
    assert used == list(range(3 * e + 6 * n))  # each trajectory used once, in the documented order


def test_bfloat16_model_keeps_the_ode_in_float32():
    model, d = floater_model("all")
    model = model.to(torch.bfloat16)
    src = random_tokens(d, [5, 3], left_pad=True)
    prev = random_tokens(d, [4, 4])
    with torch.no_grad():
        out, _ = model(src, None, prev)
        assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
        assert model.position_encoder.signal.table(5).dtype == torch.float32


def test_exploding_dynamics_stop_training_with_floater_error():
    model, d, _ = build_model(extra=["--floater-dynamics", "paper", "--floater-dt", "1.0", "--floater-method", "euler", "--floater-step-size", "1.0"])
    with torch.no_grad():
        for p in model.position_encoder.signal.parameters():
            p.fill_(1e3)
    src = random_tokens(d, [40], left_pad=True)
    with pytest.raises(FloaterNumericalError, match="FLOATER"):
        model(src, None, src)


@pytest.mark.parametrize(
    "flags, message",
    [(["--floater-method", "rk5"], "invalid choice: 'rk5'"), (["--pos-blocks", "middle"], "invalid choice: 'middle'"),
     (["--pos-encoder", "fourier"], "unknown --pos-encoder 'fourier'")],
)
def test_unknown_values_fail_at_argument_parsing(flags, message, capsys):
    with pytest.raises(SystemExit):
        build_model(extra=flags)
    assert message in capsys.readouterr().err


def test_architectures_match_fairseq_namesakes():
    from argparse import Namespace

    from fairseq.models import ARCH_CONFIG_REGISTRY

    for name in ["transformer_tiny", "transformer_iwslt_de_en", "transformer_wmt_en_de",
                 "transformer_vaswani_wmt_en_de_big", "transformer_vaswani_wmt_en_fr_big"]:
        ours, theirs = Namespace(), Namespace()
        ARCH_CONFIG_REGISTRY["floater_" + name](ours)
        ARCH_CONFIG_REGISTRY[name](theirs)
        assert {k: v for k, v in vars(ours).items() if k in vars(theirs)} == vars(theirs), name
        assert ours.pos_encoder == "floater" and ours.pos_blocks == "all"
    flagged = Namespace(floater_dt=0.01, encoder_layers=3)
    ARCH_CONFIG_REGISTRY["floater_transformer_iwslt_de_en"](flagged)
    assert flagged.floater_dt == 0.01 and flagged.encoder_layers == 3, "archs must never overwrite user flags"
    assert issubclass(FloaterTransformerModel, __import__("fairseq").models.transformer.TransformerModel)


def test_deepcopy_shares_one_signal_and_drops_the_cache():
    """EMA and ensembling deep-copy models: the copy's encoder and decoder must use the copy's
    signal (not the original's), and derived caches must not be copied."""
    import copy

    model, d = floater_model("all")
    src = random_tokens(d, [5, 3], left_pad=True)
    prev = random_tokens(d, [4, 4])
    with torch.no_grad():
        expected, _ = model(src, None, prev)
        assert model.position_encoder.signal._cache is not None
        clone = copy.deepcopy(model)
        assert clone.position_encoder.signal._cache is None
        assert clone.encoder.position_encoder is clone.position_encoder is clone.decoder.position_encoder
        assert clone.position_encoder.signal is not model.position_encoder.signal
        torch.testing.assert_close(clone(src, None, prev)[0], expected)


def test_dynamics_default_on_the_command_line_and_for_args_saved_before_the_flag():
    import argparse

    from floater_fairseq.options import fill_defaults
    for extra in ([], ["--floater-method", "rk4"], ["--floater-dt", "0.1", "--floater-init-std", "0.02"]):
        _, _, args = build_model(extra=extra)
        assert args.floater_dynamics == "dissipative", extra  # given flags are not a saved config
    saved = argparse.Namespace(floater_dt=0.1, floater_method="rk4", floater_step_size=None, floater_rtol=1e-4,
                               floater_atol=1e-6, floater_adjoint=False, floater_hidden_dim=None, floater_init_std=0.02)
    fill_defaults(saved, "floater")
    assert saved.floater_dynamics == "paper"  # the only dynamics there was when these args were saved


def test_solver_and_activation_defaults_follow_the_dynamics_and_saved_args_keep_theirs():
    import argparse

    from floater_fairseq.modules.floater import FloaterPositionEncoder
    cases = [([], "auto", "softplus"), (["--floater-dynamics", "dissipative"], "auto", "softplus"),
             (["--floater-dynamics", "paper"], "rk4", "softplus"), (["--floater-dynamics", "rotation"], "rk4", "softplus"),
             (["--floater-method", "rk4"], "rk4", "softplus"), (["--floater-method", "parallel"], "parallel", "softplus"),
             (["--floater-activation", "relu"], "auto", "relu")]
    for extra, method, activation in cases:
        model, _, args = build_model(extra=extra)
        signal = model.position_encoder.signal
        assert (args.floater_method, signal.method) == (method, method), extra  # recorded as run
        if method == "auto":  # the step is chosen with the solver, per device
            assert args.floater_step_size is None and signal.step_size is None, extra
            assert signal.solver(torch.device("cpu")) == ("rk4", pytest.approx(args.floater_dt / 2)), extra
            assert signal.solver(torch.device("cuda")) == ("parallel", pytest.approx(args.floater_dt / 10)), extra
        else:
            step = args.floater_dt / (10 if method == "parallel" else 5)
            assert args.floater_step_size == pytest.approx(step) and signal.step_size == pytest.approx(step), extra
            assert signal.solver(torch.device("cpu")) == (method, pytest.approx(step)), extra
        assert args.floater_activation == activation, extra
        if args.floater_dynamics != "paper":
            assert signal.dynamics.activation == activation, extra
    # args saved before --floater-activation (with the dynamics flag, and the method rk4 then
    # filled in): the relu dynamics they were trained with, solved as they were
    saved = argparse.Namespace(floater_dt=0.1, floater_method="rk4", floater_step_size=None, floater_rtol=1e-4,
                               floater_atol=1e-6, floater_adjoint=False, floater_hidden_dim=None,
                               floater_init_std=0.02, floater_dynamics="dissipative", floater_parallel_tol=1e-6)
    FloaterPositionEncoder.set_defaults(saved)
    assert (saved.floater_activation, saved.floater_method) == ("relu", "rk4")


def test_fastest_period_is_saved_with_the_model_and_sets_the_cpu_step(tmp_path):
    """--floater-fastest-period 8 (the period8 rows): time features of periods 8 to 1,024 positions, rk4 at DT
    on a CPU; the value travels in the checkpoint's cfg, so a model rebuilt from it computes the same."""
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.models import ARCH_MODEL_REGISTRY
    from omegaconf import OmegaConf

    model, d, args = build_model(extra=["--floater-fastest-period", "8"])
    randomize_floater(model)
    signal = model.position_encoder.signal
    assert signal.solver(torch.device("cpu")) == ("rk4", pytest.approx(args.floater_dt))
    periods = 2 * torch.pi / (signal.dynamics.frequencies * args.floater_dt)
    assert (float(periods.min()), float(periods.max())) == (pytest.approx(8), pytest.approx(1024))
    torch.save({"cfg": OmegaConf.to_container(convert_namespace_to_omegaconf(args)), "model": model.state_dict()},
               tmp_path / "checkpoint.pt")
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # fairseq keeps the arch's args a Namespace
    assert saved["cfg"]["model"].floater_fastest_period == 8.0
    task = types.SimpleNamespace(source_dictionary=d, target_dictionary=d)
    rebuilt = ARCH_MODEL_REGISTRY[args.arch].build_model(saved["cfg"]["model"], task)
    rebuilt.load_state_dict(saved["model"])
    src = random_tokens(d, [7, 5], left_pad=True)
    prev = random_tokens(d, [6, 6], seed=3)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(src, src.ne(d.pad()).sum(1), prev)[0],
                                   model.eval()(src, src.ne(d.pad()).sum(1), prev)[0], rtol=0, atol=0)
    saved["cfg"]["model"].floater_fastest_period = 4.0  # the same weights with the default's periods differ
    other = ARCH_MODEL_REGISTRY[args.arch].build_model(saved["cfg"]["model"], task)
    other.load_state_dict(saved["model"])
    with torch.no_grad():
        assert not torch.equal(other.eval()(src, src.ne(d.pad()).sum(1), prev)[0],
                               model(src, src.ne(d.pad()).sum(1), prev)[0])


def test_generation_checks_the_cached_solution_once_per_generate_call():
    """The cache's validity (one comparison, a host synchronisation, per ODE parameter) is checked
    by the encoder and the first decoding step only; later steps of the same generate call trust
    it. A parameter written in place between two calls (as fairseq's optimizers do) is still seen."""
    model, d = floater_model("all")
    signal = model.position_encoder.signal
    checks = []
    original = signal._cache_is_current
    signal._cache_is_current = lambda: checks.append(1) or original()
    src = random_tokens(d, [9, 6], left_pad=True)
    sample = {"net_input": {"src_tokens": src, "src_lengths": src.ne(d.pad()).sum(1)}}
    generator = SequenceGenerator([model], d, beam_size=3, max_len_a=0, max_len_b=12, min_len=12)
    with torch.no_grad():
        first = generator.generate([model], sample)
        assert len(checks) <= 2  # 13 decoding steps
        signal.dynamics.output_layer.weight.data.mul_(3.0)  # no version bump, as optimizers write p.data
        second = generator.generate([model], sample)
    fresh, _, _ = build_model(extra=["--pos-blocks", "all"])
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        expected = generator.generate([fresh.eval()], sample)
    assert [h[0]["tokens"].tolist() for h in second] == [h[0]["tokens"].tolist() for h in expected]
    for got, want in zip(second, expected):
        torch.testing.assert_close(got[0]["positional_scores"], want[0]["positional_scores"])
    assert any(not torch.equal(a[0]["positional_scores"], b[0]["positional_scores"]) for a, b in zip(first, second))
