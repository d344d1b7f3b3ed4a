"""FloaterDynamics / FloaterPositionSignal against exact solutions, gradients and the cache."""
import math

import pytest
import torch
from torchdiffeq._impl.odeint import SOLVERS

from fairseq.modules.sinusoidal_positional_embedding import SinusoidalPositionalEmbedding
from floater_fairseq.options import AUTO_METHODS, ODE_METHODS, PARALLEL_METHODS
import functools

from floater_fairseq.modules.floater import FloaterNumericalError
from floater_fairseq.modules.floater import FloaterPositionSignal as _Signal

# these tests are of the paper's dynamics h (exact solutions need its linear layers)
FloaterPositionSignal = functools.partial(_Signal, dynamics="paper")


def set_linear_field(signal, matrix):
    """Make h(t, p) = A p exactly: relu(p) - relu(-p) = p with a hidden layer of width 2d."""
    d = signal.dim
    dyn = signal.dynamics
    assert dyn.input_layer.out_features == 2 * d
    eye = torch.eye(d, dtype=matrix.dtype)
    with torch.no_grad():
        dyn.input_layer.weight.zero_()
        dyn.input_layer.weight[:d, :d] = eye
        dyn.input_layer.weight[d:, :d] = -eye
        dyn.input_layer.bias.zero_()
        dyn.output_layer.weight.zero_()
        dyn.output_layer.weight[:, :d] = matrix
        dyn.output_layer.weight[:, d:2 * d] = -matrix
        dyn.output_layer.bias.zero_()


@pytest.mark.parametrize("method", ["rk4", "dopri5", "midpoint"])
def test_linear_field_matches_matrix_exponential(method):
    d, n, dt = 4, 30, 0.1
    torch.manual_seed(0)
    signal = FloaterPositionSignal(3, d, dt=dt, method=method, hidden_dim=2 * d, rtol=1e-9, atol=1e-10).double()
    a = torch.randn(d, d, dtype=torch.float64) * 0.3
    set_linear_field(signal, a)
    with torch.no_grad():
        signal.initial_values.copy_(torch.randn(3, d, dtype=torch.float64))
        table = signal.solve(n)
    for i in range(n):
        exact = signal.initial_values.detach() @ torch.linalg.matrix_exp(a * i * dt).T
        tol = 1e-4 if method == "midpoint" else 1e-7
        torch.testing.assert_close(table[i], exact, atol=tol, rtol=tol)


def test_some_h_reproduces_sinusoidal_encoding():
    """Eq. 9: the sinusoid is a FLOATER trajectory. With h = A p, A the generator of a rotation by
    w_j per position in each (sin_j, cos_j) plane, p(t_i) equals fairseq's sinusoidal embedding."""
    d, n, dt, pad = 16, 64, 0.1, 1
    half = d // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float64) * -(math.log(10000) / (half - 1)))
    a = torch.zeros(d, d, dtype=torch.float64)
    for j in range(half):  # d/dt sin(w t/dt) = (w/dt) cos, d/dt cos = -(w/dt) sin
        a[j, half + j] = freqs[j] / dt
        a[half + j, j] = -freqs[j] / dt
    reference = SinusoidalPositionalEmbedding.get_embedding(pad + 1 + n, d, pad).double()[pad + 1:]
    errors = {}
    for steps_per_position in (5, 20):  # the paper's step dt/5, and a finer one
        signal = FloaterPositionSignal(
            1, d, dt=dt, method="rk4", step_size=dt / steps_per_position, hidden_dim=2 * d
        ).double()
        set_linear_field(signal, a)
        with torch.no_grad():
            signal.initial_values.copy_(reference[:1])
            errors[steps_per_position] = (signal.solve(n)[:, 0] - reference).abs().max().item()
    # RK4's truncation error on the fastest component (1 rad per position) over 64 positions,
    # and its 4th-order convergence: 4x smaller steps, ~256x smaller error.
    assert errors[5] < 1e-3
    assert errors[20] < errors[5] / 100


class _Solve(torch.nn.Module):
    def __init__(self, signal, length):
        super().__init__()
        self.signal, self.length = signal, length

    def forward(self):
        return self.signal.solve(self.length)


def test_gradcheck_float64():
    """Gradients of the solution w.r.t. theta and p(0), through torchdiffeq, in float64."""
    torch.manual_seed(0)
    signal = FloaterPositionSignal(2, 3, dt=0.2, method="rk4", step_size=0.1, init_std=0.5, initial_value_std=1.0).double()
    solve = _Solve(signal, 4)
    names = [name for name, _ in solve.named_parameters()]
    inputs = tuple(p.detach().clone().requires_grad_(True) for _, p in solve.named_parameters())

    def pure(*values):
        return torch.func.functional_call(solve, dict(zip(names, values)), ())

    assert torch.autograd.gradcheck(pure, inputs, eps=1e-6, atol=1e-6)


def test_adjoint_gradients_equal_direct_gradients():
    torch.manual_seed(0)
    grads = []
    for adjoint in (False, True):
        torch.manual_seed(0)
        signal = FloaterPositionSignal(2, 4, method="rk4", adjoint=adjoint, init_std=0.3, initial_value_std=1.0).double()
        signal.solve(12).pow(2).sum().backward()
        grads.append([p.grad.clone() for p in signal.parameters()])
    for direct, adjoint in zip(*grads):
        torch.testing.assert_close(direct, adjoint, atol=1e-6, rtol=1e-5)


def test_lazily_extended_cache_equals_fresh_solve():
    torch.manual_seed(0)
    signal = FloaterPositionSignal(5, 8, init_std=0.3, initial_value_std=1.0)
    with torch.no_grad():
        short = signal.table(10)
        assert signal._cache.size(0) == 10
        long = signal.table(40)  # 4x longer than anything seen: continue from t_9
        assert signal._cache.size(0) >= 40
        fresh = signal.solve(40)
    torch.testing.assert_close(long[:10], short)
    torch.testing.assert_close(long, fresh, atol=1e-5, rtol=1e-5)


def test_cache_not_in_state_dict_and_served_while_parameters_are_unchanged():
    torch.manual_seed(0)
    signal = FloaterPositionSignal(2, 4, init_std=0.3, initial_value_std=1.0)
    with torch.no_grad():
        signal.table(6)
        solves = signal.num_solves
        signal.table(6)
        signal.load_state_dict({k: v.clone() for k, v in signal.state_dict().items()})  # same values
        signal.table(6)
    assert signal.num_solves == solves, "a repeated inference call must hit the cache"
    assert set(signal.state_dict()) == {
        "initial_values", "dynamics.input_layer.weight", "dynamics.input_layer.bias",
        "dynamics.output_layer.weight", "dynamics.output_layer.bias",
    }


def _write_with_autograd(signal):
    with torch.no_grad():
        signal.dynamics.output_layer.weight.mul_(2.0)


def _write_p_data(signal):
    # fairseq's optimizers (FairseqAdam, NAG, Adafactor): p.data written in place, which does not
    # bump the autograd version counter
    for p in signal.parameters():
        p.data.add_(0.05)


def _copy_master_weights(signal):
    # fp16/bf16 optimizers copy fp32 master weights back into the model
    for p in signal.parameters():
        p.data.copy_(p.data * 1.1 + 0.01)


def _swap_storage(signal):
    # EMA swaps and some FSDP/averaging code replace p.data by another tensor
    for p in signal.parameters():
        p.data = p.data.clone() - 0.02


def _load_other_state(signal):
    signal.load_state_dict({k: v + 0.03 for k, v in signal.state_dict().items()})


def _move_to_float64(signal):
    signal.double()


@pytest.mark.parametrize("write", [_write_with_autograd, _write_p_data, _copy_master_weights, _swap_storage,
                                   _load_other_state, _move_to_float64])
def test_cache_follows_every_way_parameters_change(write):
    """An inference table always equals a fresh solve of the current parameters, whoever wrote them."""
    torch.manual_seed(0)
    signal = FloaterPositionSignal(3, 4, init_std=0.3, initial_value_std=1.0)
    with torch.no_grad():
        before = signal.table(8).clone()
        write(signal)
        after = signal.table(8)
        fresh = signal.solve(8)
    if write is _move_to_float64:
        assert before.dtype == torch.float32 and after.dtype == torch.float64
    else:
        assert not torch.allclose(before, after)
    torch.testing.assert_close(after, fresh, atol=0, rtol=0)


def test_training_mode_solves_fresh_every_call_with_gradients():
    signal = FloaterPositionSignal(2, 4, init_std=0.3)
    for _ in range(3):
        signal.zero_grad()
        signal.table(5).sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in signal.parameters())
    assert signal._cache is None


def test_non_finite_state_raises_floater_error():
    signal = FloaterPositionSignal(1, 4, dt=1.0, method="euler", step_size=1.0, initial_value_std=1.0)
    with torch.no_grad():
        for p in signal.dynamics.parameters():
            p.fill_(1e3)
    with pytest.raises(FloaterNumericalError, match="FLOATER.*--lr.*--floater-step-size"):
        signal.solve(60)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"dt": 0.0}, "--floater-dt must be > 0"), ({"method": "rk5"}, "unknown --floater-method 'rk5'"),
     ({"dt": 0.1, "step_size": -0.1}, "--floater-step-size must be > 0")],
)
def test_bad_settings_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FloaterPositionSignal(1, 4, **kwargs)


def test_method_names_are_torchdiffeq_solvers_or_ours():
    assert set(ODE_METHODS) - set(PARALLEL_METHODS) - set(AUTO_METHODS) <= set(SOLVERS)


def test_single_position_and_fp32_state_for_half_parameters():
    signal = FloaterPositionSignal(2, 4, initial_value_std=1.0).to(torch.bfloat16)
    with torch.no_grad():
        table = signal.table(1)
        assert table.dtype == torch.float32
        assert signal.table(7).dtype == torch.float32


@pytest.mark.parametrize("dynamics", ["paper", "dissipative", "rotation"])
def test_windowed_fixed_grid_solve_equals_one_torchdiffeq_call(dynamics):
    """The solve runs torchdiffeq window by window (SOLVE_WINDOW positions per call, so its backward
    is O(L) and not O(L^2)); for a fixed-grid method that is the same computation as one call."""
    from torchdiffeq import odeint
    from floater_fairseq.modules import floater

    torch.manual_seed(0)
    signal = _Signal(3, 6, method="rk4", step_size=0.05, init_std=0.3, initial_value_std=1.0,
                     dynamics=dynamics).double()
    length = 2 * floater.SOLVE_WINDOW + 5  # two full windows and a partial one
    windowed = signal.solve(length)
    cotangent = torch.randn_like(windowed)
    windowed_grads = torch.autograd.grad((windowed * cotangent).sum(), list(signal.parameters()))
    times = torch.arange(length, dtype=torch.float64) * signal.dt
    whole = odeint(signal.dynamics, signal.initial_values, times, method="rk4", options={"step_size": 0.05})
    whole_grads = torch.autograd.grad((whole * cotangent).sum(), list(signal.parameters()))
    torch.testing.assert_close(windowed, whole, atol=1e-12, rtol=1e-12)
    for ours, reference in zip(windowed_grads, whole_grads):
        torch.testing.assert_close(ours, reference, atol=1e-11, rtol=1e-11)


@pytest.mark.parametrize("activation,substeps", [("softplus", 2), ("relu", 5)])
def test_rk4_window_node_equals_torchdiffeq_rk4_and_keeps_one_tensor_per_evaluation(activation, substeps):
    """modules/rk4_solve.py: torchdiffeq's rk4 (3/8 rule) as one autograd node per window, its backward
    the step's discrete adjoint: values and every gradient (start, theta, gamma) equal torchdiffeq's
    through autograd, from a start time t > 0; what it keeps for backward is the evaluations' inputs
    (one [K, d] each), against more than four per evaluation kept by autograd through torchdiffeq."""
    from torchdiffeq import odeint
    from floater_fairseq.modules import rk4_solve
    from floater_fairseq.modules.floater import DissipativeDynamics

    torch.manual_seed(0)
    dynamics = DissipativeDynamics(16, 10, 0.5, 0.1, activation=activation).double()
    with torch.no_grad():
        for parameter in dynamics.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    start = torch.randn(3, 16, dtype=torch.float64, requires_grad=True)
    times = torch.arange(7, 7 + 21, dtype=torch.float64) * 0.1
    kept = []

    def keep(tensor):
        kept.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        ours = rk4_solve.solve(dynamics, start, times[0], times.numel(), 0.1, substeps, window=8)
    ours_kept, kept[:] = sum(kept), []
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        reference = odeint(dynamics.vector_field(torch.float64), start, times, method="rk4",
                           options={"step_size": 0.1 / substeps})
    evaluations = 4 * substeps * (times.numel() - 1)
    # per evaluation: its input [K, d], its time features [2F] and time bias [hidden]; weights per window
    weights = sum(parameter.numel() for parameter in dynamics.parameters())
    assert ours_kept <= evaluations * (start.numel() + 16 + 10) + 3 * 2 * weights
    assert sum(kept) > 4 * evaluations * start.numel()
    torch.testing.assert_close(ours, reference, atol=1e-12, rtol=1e-12)
    cotangent = torch.randn_like(ours)
    inputs = [start, *dynamics.parameters()]
    for mine, theirs in zip(torch.autograd.grad((ours * cotangent).sum(), inputs),
                            torch.autograd.grad((reference * cotangent).sum(), inputs)):
        torch.testing.assert_close(mine, theirs, atol=1e-11, rtol=1e-11)
