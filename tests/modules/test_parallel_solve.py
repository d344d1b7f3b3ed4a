"""--floater-method parallel (modules/parallel_solve.py): exact where the answer is known, converges
to the ODE's solution as its grid is refined, differentiates its own fixed point exactly, extends
the inference cache seamlessly,
fails its residual check loudly where its fixed iterations do not converge, refuses settings it cannot
honour, and is static (no host synchronisation, one compiled graph for every length, memory bounded
by a window); --floater-method auto runs it on accelerators and rk4 on a CPU."""
import pytest
import torch
from torchdiffeq import odeint

from conftest import random_tokens
from test_position_encoders import encode, position_model
from floater_fairseq.modules import parallel_solve
from floater_fairseq.modules.floater import FloaterPositionSignal


def signal(method="parallel", step_size=None, init_std=0.5, seed=0, parallel_iterations=40, **kwargs):
    torch.manual_seed(seed)
    return FloaterPositionSignal(3, 8, dynamics="dissipative", hidden_dim=16, init_std=init_std, initial_value_std=1.0,
                                 method=method, step_size=step_size, parallel_iterations=parallel_iterations,
                                 **kwargs).double()


def test_pure_decay_is_exact():
    s = signal(init_std=0.0)  # u == 0: dp/dt = -gamma p, p(t) = exp(-gamma t) p(0)
    with torch.no_grad():
        s.dynamics.rho.copy_(torch.linspace(-3, 3, 8, dtype=torch.float64))
        table = s.solve(40)
        t = torch.arange(40, dtype=torch.float64)[:, None, None] * s.dt
        exact = torch.exp(-s.dynamics.decay(torch.float64) * t) * s.initial_values
    torch.testing.assert_close(table, exact, rtol=1e-12, atol=1e-12)


def test_converges_to_the_ode_solution_as_the_grid_is_refined():
    exact_signal = signal(method="dopri8")
    t = torch.arange(30, dtype=torch.float64) * exact_signal.dt
    with torch.no_grad():
        exact = odeint(exact_signal.dynamics, exact_signal.initial_values, t, method="dopri8", rtol=1e-12, atol=1e-12)
        errors = []
        for step in (0.02, 0.01, 0.005):
            s = signal(step_size=step)
            errors.append(float((s.solve(30) - exact).abs().max() / exact.abs().max()))
    assert errors[0] < 1e-3 and errors[2] < 2e-5, errors
    assert errors[0] > 3 * errors[1] > 9 * errors[2], errors  # at least 1.6th order (relu kinks limit it)


def test_gradients_are_exact_for_its_fixed_point():
    s = signal()
    cotangent = torch.randn(20, 3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (s.solve(20) * cotangent).sum().backward()
    directions = [torch.randn_like(p) for p in s.parameters()]
    analytic = sum(float((p.grad * d).sum()) for p, d in zip(s.parameters(), directions))

    def loss_at(eps):
        with torch.no_grad():
            for p, d in zip(s.parameters(), directions):
                p.add_(eps * d)
            value = float((s.solve(20) * cotangent).sum())
            for p, d in zip(s.parameters(), directions):
                p.sub_(eps * d)
        return value

    numeric = (loss_at(1e-6) - loss_at(-1e-6)) / 2e-6
    assert abs(analytic - numeric) <= 1e-6 * abs(numeric)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in s.parameters())


def test_matches_rk4_on_the_same_grid_in_value_and_gradient_direction():
    parallel, rk4 = signal(step_size=0.01), signal(method="rk4", step_size=0.01)
    cotangent = torch.randn(25, 3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    tables = []
    for s in (parallel, rk4):
        table = s.solve(25)
        (table * cotangent).sum().backward()
        tables.append(table.detach())
    assert float((tables[0] - tables[1]).abs().max() / tables[1].abs().max()) < 1e-4
    for p, q in zip(parallel.parameters(), rk4.parameters()):
        cosine = torch.nn.functional.cosine_similarity(p.grad.flatten(), q.grad.flatten(), dim=0)
        assert cosine > 0.999


def test_inference_cache_extends_like_a_single_solve():
    s = signal()
    with torch.no_grad():
        short = s.table(12).clone()
        longer = s.table(50)  # continues from the cached position 11
        fresh = s.solve(50)
    torch.testing.assert_close(longer[:12], short)
    torch.testing.assert_close(longer, fresh, rtol=1e-7, atol=1e-7)


def test_a_map_that_does_not_contract_fails_its_check_loudly():
    s = signal()
    with torch.no_grad():
        torch.testing.assert_close(s.solve(1), s.initial_values.unsqueeze(0))
    wild = signal(init_std=20.0, step_size=0.02)
    with torch.no_grad():  # a steep h (input weights x10, output std 20): Picard does not contract
        wild.dynamics.input_layer.weight.mul_(10.0)
    wild.check_parallel_residual = True
    with pytest.raises(FloatingPointError, match="raise --floater-parallel-iterations or use --floater-method rk4"):
        wild.solve(40)


@pytest.mark.parametrize("kwargs, message", [
    ({"dynamics": "paper"}, "integrates the decay of dissipative dynamics"),
    ({"dynamics": "rotation"}, "integrates the decay of dissipative dynamics"),
    ({"dynamics": "dissipative", "adjoint": True}, "drop --floater-adjoint"),
    ({"dynamics": "dissipative", "step_size": 0.03}, "must divide --floater-dt"),
])
def test_settings_it_cannot_honour_are_refused(kwargs, message):
    for method in ("parallel", "auto"):  # auto may run the parallel solve (on accelerators)
        with pytest.raises(ValueError, match=message):
            FloaterPositionSignal(2, 4, method=method, **kwargs)


def test_auto_runs_rk4_at_half_dt_on_a_cpu_and_the_parallel_solve_elsewhere():
    auto, rk4 = signal("auto"), signal("rk4", step_size=0.05)
    assert auto.solver(torch.device("cpu")) == ("rk4", 0.05)
    assert auto.solver(torch.device("cuda")) == ("parallel", pytest.approx(0.01))
    assert signal("auto", step_size=0.02).solver(torch.device("cuda")) == ("parallel", 0.02)  # a given step holds
    assert torch.equal(auto.solve(30), rk4.solve(30))  # the CPU's half: rk4 at DT/2, bit for bit
    # the accelerator's half, on this CPU: both halves solve the same ODE, to the accuracy targets
    parallel = signal("parallel")
    torch.testing.assert_close(auto.solve(30), parallel.solve(30), rtol=0, atol=1e-4 * float(parallel.solve(30).abs().max()))


def test_auto_steps_eight_times_a_period_of_the_fastest_time_feature_on_a_cpu():
    """--floater-fastest-period P: the time features' periods run from P to 1,024 positions, and auto's rk4
    on a CPU steps at DT / ceil(8 / P), so P = 8 solves at DT (half the default's evaluations) about as
    accurately as the default (P = 4) at DT/2, and far more accurately than P = 4 at DT."""
    def solved(period, method="rk4", step_size=None, seed=0):
        s = signal(method, step_size=step_size, seed=seed, fastest_period=period)
        with torch.no_grad():
            s.dynamics.input_layer.weight.mul_(4)  # a strong dependence on the time features
            return s, s.solve(60)

    assert signal("auto", fastest_period=8).solver(torch.device("cpu")) == ("rk4", 0.1)
    assert signal("auto", fastest_period=5).solver(torch.device("cpu")) == ("rk4", 0.05)
    assert signal("auto", fastest_period=2).solver(torch.device("cpu")) == ("rk4", 0.025)
    assert signal("auto", fastest_period=8).solver(torch.device("cuda")) == ("parallel", pytest.approx(0.01))
    fastest, _ = solved(8)
    assert float(2 * torch.pi / fastest.dynamics.frequencies.max()) == pytest.approx(8 * fastest.dt)
    for seed in range(3):
        errors = {}
        for period, step in ((4, 0.05), (4, 0.1), (8, 0.1)):
            reference = solved(period, step_size=0.002, seed=seed)[1]
            table = solved(period, step_size=step, seed=seed)[1]
            errors[period, step] = float((table - reference).abs().max() / reference.abs().max())
        assert errors[8, 0.1] < 2 * errors[4, 0.05] < errors[4, 0.1] / 5, errors
    # what auto runs for P = 8 on a CPU is rk4 at DT, and the accelerator's half reaches the same solution
    auto, rk4 = solved(8, "auto")[1], solved(8, step_size=0.1)[1]
    assert torch.equal(auto, rk4)
    parallel = solved(8, "parallel")[1]
    torch.testing.assert_close(auto, parallel, rtol=0, atol=1e-4 * float(parallel.abs().max()))


@pytest.mark.parametrize("kwargs, message", [
    ({"fastest_period": 1.5}, r"--floater-fastest-period must be in \[2, 1024\]"),
    ({"fastest_period": 8.0, "dynamics": "paper", "method": "rk4"}, "paper sees t itself"),
])
def test_bad_fastest_periods_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FloaterPositionSignal(2, 4, **{"dynamics": "dissipative", **kwargs})


def test_a_longer_solve_extends_a_shorter_one():
    s = signal()
    with torch.no_grad():
        torch.testing.assert_close(s.solve(40)[:9], s.solve(9), rtol=1e-10, atol=1e-10)


def test_model_decodes_incrementally_as_it_encodes_in_full():
    model, d = position_model("floater", "all", extra=["--floater-method", "parallel"])
    src = random_tokens(d, [6, 3], left_pad=True)
    prev = random_tokens(d, [13, 13], seed=5)
    with torch.no_grad():
        enc = encode(model, src)
        state = {}  # incremental first: the cache grows 6 -> 12 -> 24 while decoding
        steps = [model.decoder(prev[:, :t + 1], encoder_out=enc, incremental_state=state)[0] for t in range(prev.size(1))]
        model.position_encoder.signal._cache = None
        full, _ = model.decoder(prev, encoder_out=enc)  # one fresh solve
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def _solve_with_gradients(s, length, cotangent_seed=3, **solve_kwargs):
    table = parallel_solve.solve(s.dynamics, s.initial_values, 0.0, length, s.dt, round(s.dt / 0.01),
                                 s.parallel_iterations, s.parallel_window, **solve_kwargs)
    cotangent = torch.randn(table.shape, dtype=table.dtype, generator=torch.Generator().manual_seed(cotangent_seed))
    grads = torch.autograd.grad((table * cotangent).sum(), list(s.parameters()))
    return table.detach(), grads


def test_compiles_as_one_graph_that_serves_every_length():
    """torch.compile(fullgraph=True) builds the window's solve and its backward without a graph break,
    equals the eager solve, and ten lengths (one to four windows, last ones cut) reuse the same two
    graphs: no recompilation."""
    from torch._dynamo.testing import CompileCounterWithBackend

    s = signal(parallel_window=8, parallel_iterations=4)  # few iterations: a short trace, the same structure
    counter = CompileCounterWithBackend("aot_eager")
    torch._dynamo.reset()
    built = None
    try:
        for length in (5, 9, 12, 17, 20, 23, 26, 28, 30, 33):
            eager_table, eager_grads = _solve_with_gradients(s, length)
            table, grads = _solve_with_gradients(s, length, compiled={"backend": counter})
            torch.testing.assert_close(table, eager_table, rtol=0, atol=1e-5 * float(eager_table.abs().max()))
            for g, e in zip(grads, eager_grads):
                torch.testing.assert_close(g, e, rtol=0, atol=1e-4 * float(e.abs().max()))
            built = counter.frame_count if built is None else built
    finally:
        torch._dynamo.reset()
    # the forward's graph and the backward's, built at the first length (dynamo may restart an analysis
    # once, which the counter sees as a frame), never again
    assert 2 <= built <= 4 and counter.frame_count == built, (built, counter.frame_count)


def test_no_host_synchronisation_inside_the_solve_or_its_backward():
    """No value is read back to the host (aten::_local_scalar_dense) while solving or differentiating:
    a fixed number of iterations, and a scan whose passes depend on the shape alone."""
    from torch.profiler import ProfilerActivity, profile

    s = signal(parallel_iterations=12)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _solve_with_gradients(s, 150)
    assert not [e for e in prof.events() if e.name in ("aten::_local_scalar_dense", "aten::item")]


def test_memory_for_the_backward_is_the_output_and_not_the_grid():
    """What autograd keeps of a solve (unique storages) is about its [L, K, d] output, not the grid of
    ten points per position: each window keeps its start and recomputes its fixed point."""
    def saved_bytes(length):
        storages = {}

        def pack(tensor):
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor

        s = signal(parallel_window=16)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            table = s.solve(length)
        return sum(storages.values()), table.numel() * table.element_size()

    short, _ = saved_bytes(40)
    long, table_bytes = saved_bytes(400)
    assert long - short < 3 * table_bytes  # the grid of 400 positions is 10x the table


@pytest.mark.parametrize("steps", [1, 3, 16, 17, 100])
def test_scanned_linear_recurrence_equals_the_loop_and_never_overflows(steps):
    rate = torch.tensor([1e-4, 0.5, 3.0, 80.0], dtype=torch.float64)  # 80: a^-C would overflow float32
    operators = parallel_solve.recurrence_operators(rate, steps)
    start = torch.randn(2, 4, dtype=torch.float64)
    increments = torch.randn(steps, 2, 4, dtype=torch.float64)
    expected = [start]
    for c in increments:
        expected.append(torch.exp(-rate) * expected[-1] + c)
    torch.testing.assert_close(parallel_solve.linear_recurrence(start, operators, increments), torch.stack(expected),
                               rtol=1e-12, atol=1e-12)
    single = parallel_solve.recurrence_operators(rate.float(), steps)
    assert torch.isfinite(parallel_solve.linear_recurrence(start.float(), single, increments.float())).all()
