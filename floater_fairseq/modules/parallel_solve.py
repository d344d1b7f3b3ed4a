"""A parallel-in-time solve of dissipative FLOATER dynamics, dp/dt = -gamma p + g(t, p), in a static form.

A sequential solver takes O(length) dependent steps, each a handful of small kernels. Here the
positions are cut into windows of WINDOW positions; in each, the trajectory on a grid of step delta
(= the ``--floater-step-size``) is one unknown P = [p(s_0), ..., p(s_M)], and the
variation-of-constants formula

    p(s_{m+1}) = a p(s_m) + int_{s_m}^{s_{m+1}} exp(-gamma (s_{m+1} - s)) g(s, p(s)) ds,   a = exp(-gamma delta)

is iterated as a Picard map P <- F(P): g is evaluated at every grid point in one batched call,
integrated exactly against the exponential with the cubic through the grid values at s_m-2 ..
s_m+1 (weights by Gauss-Legendre quadrature, differentiable in gamma), and the linear recurrence
is solved for all m at once by a doubling scan (log2 M passes; every factor a power of a <= 1, so
nothing overflows whatever gamma is). The next window starts from the last point of this one.

Static: a fixed number of iterations (``iterations``, chosen from the convergence measured on
trained models; ``check`` raises if the residual is not reached, a host synchronisation meant for
tests and diagnostics) and no value read back to the host. Compiled (``compiled``), every window
has the same shape (the last one is solved to its end and cut), so one graph serves every length.
The map is causal (the first STENCIL grid points aside), so the iterates up to a time do not
depend on where the window ends: a longer solve extends a shorter one.

Gradients are exact at each window's fixed point P* = F(P*) (implicit differentiation, as in deep
equilibrium models): the incoming gradient v is mapped to w = (I - dF/dP)^-T v by the same number
of iterations on vector-Jacobian products, then sent through one application of F to theta, gamma
and the window's start. The backward recomputes a window's P* from its start instead of keeping
it, so the memory of a solve is its output plus one window's grid, whatever the length.
"""
import functools
import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

GAUSS_NODES = 8
# g is interpolated on each interval [s_m, s_m+1] by the polynomial through the STENCIL grid values
# ending at s_m+1 (one-sided, as in Adams-Moulton methods, so the solution up to a time does not
# depend on later times: a longer solve extends a shorter one); order STENCIL in delta.
STENCIL = 4


def interval_weights(decay: torch.Tensor, delta: float, width: int = STENCIL) -> torch.Tensor:
    """w[o, j, :] = int_0^delta exp(-gamma (delta - tau)) l_j(tau) dtau, where l_j is the Lagrange basis
    of the nodes (j - o) delta, j < width: the weights of an interval whose left end is node o of its
    stencil. [width - 1, width, d], differentiable in ``decay`` (gamma)."""
    nodes, quadrature = np.polynomial.legendre.leggauss(GAUSS_NODES)
    tau = (nodes + 1) / 2  # on [0, 1], in units of delta
    bases = []
    for offset in range(width - 1):
        stencil = [j - offset for j in range(width)]
        basis = np.ones((GAUSS_NODES, width))
        for j, xj in enumerate(stencil):
            for i, xi in enumerate(stencil):
                if i != j:
                    basis[:, j] *= (tau - xi) / (xj - xi)
        bases.append(basis * (quadrature / 2 * delta)[:, None])
    basis = torch.tensor(np.stack(bases), dtype=decay.dtype, device=decay.device)  # [O, Q, width]
    lag = torch.tensor((1 - tau) * delta, dtype=decay.dtype, device=decay.device)
    kernel = torch.exp(-lag[:, None] * decay[None, :])  # [Q, d]
    return torch.einsum("oqj,qd->ojd", basis, kernel)


def increments(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """c_m = int over [s_m, s_m+1] of exp(-gamma (s_m+1 - s)) g(s) ds for m < M-1: [M-1, K, d].

    Interval m >= STENCIL-2 uses values m+2-STENCIL .. m+1; the first few use values 0 .. STENCIL-1."""
    width = weights.size(1)
    causal = values.size(0) - width + 1  # intervals m = width-2 .. M-2
    first = (weights[:width - 2].unsqueeze(2) * values[:width]).sum(1)  # [width-2, K, d]
    rest = sum(weights[width - 2, j] * values[j:j + causal] for j in range(width))
    return torch.cat([first, rest])


def recurrence_operators(rate: torch.Tensor, steps: int):
    """The factors a^(2^k), k < ceil(log2(steps + 1)), with which ``linear_recurrence`` solves
    p_m+1 = a p_m + c_m for ``steps`` steps, a = exp(-rate) [d]: built once per window shape (they
    depend on gamma alone). Each is exp of a non-positive number: no overflow whatever gamma is."""
    passes = max(1, math.ceil(math.log2(steps + 1)))
    return (torch.exp(-rate * torch.tensor([2.0 ** k for k in range(passes)], dtype=rate.dtype,
                                           device=rate.device).unsqueeze(-1)),)


def linear_recurrence(start: torch.Tensor, operators, steps: torch.Tensor) -> torch.Tensor:
    """p_0 = start, p_m+1 = a p_m + c_m for all m at once: [M, K, d], by a doubling scan: after pass k,
    x_j = sum over the last 2^(k+1) i <= j of a^(j-i) x_i. Three kernels a pass, log2 M passes whose
    number depends on the shape alone, no loop over the steps."""
    (powers,) = operators
    x = torch.cat([start.unsqueeze(0), steps])
    for k in range(powers.size(0)):
        shift = 2 ** k
        if shift >= x.size(0):
            break
        x = torch.cat([x[:shift], x[shift:] + powers[k] * x[:-shift]])
    return x


def mlp(p, time_bias, state, out, out_bias, activation):
    """u = W_out act(W_p p + time_bias) + c_out, the bounded dynamics' MLP (weights as in MlpWeights)."""
    return torch.matmul(activation(torch.matmul(p, state) + time_bias), out) + out_bias


def picard(trajectory, start, time_bias, state, out, out_bias, interval, *operators, activation):
    """F(P): the window's grid from its start and g = tanh(u) evaluated along ``trajectory`` [M, K, d];
    time_bias [M, hidden] is u's time part, state/out/out_bias its weights (MlpWeights), interval the
    quadrature weights, operators the recurrence's, activation u's hidden activation (a function)."""
    forcing = torch.tanh(mlp(trajectory, time_bias.unsqueeze(1), state, out, out_bias, activation))
    return linear_recurrence(start, operators, increments(forcing, interval))


def time_features(times: torch.Tensor, frequencies: torch.Tensor) -> torch.Tensor:
    """phi(t) = [sin(w_k t), cos(w_k t)] for each time: [*times.shape, 2F] (the bounded dynamics' time input)."""
    angles = times.unsqueeze(-1) * frequencies.to(times.dtype)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


def window_time_bias(first_time, frequencies, time_weight, bias, points: int, delta: float):
    """u's time part c + W_phi phi(s) at the window's grid points s = first_time + m delta: [points, hidden]."""
    times = first_time + torch.arange(points, dtype=first_time.dtype, device=first_time.device) * delta
    return F.linear(time_features(times, frequencies), time_weight, bias)


def fixed_point(start, first_time, frequencies, time_weight, bias, *weights, points: int, delta: float, activation,
                iterations: int):
    """``iterations`` Picard steps from the constant trajectory p = start, on ``points`` grid points.
    ``weights``: state, out, out_bias, interval and the recurrence's operators."""
    time_bias = window_time_bias(first_time, frequencies, time_weight, bias, points, delta)
    trajectory = start.unsqueeze(0).expand(points, *start.shape)
    for _ in range(iterations):
        trajectory = picard(trajectory, start, time_bias, *weights, activation=activation)
    return trajectory


def window_gradients(grid_grad, start, first_time, frequencies, time_weight, bias, *weights, points: int,
                     delta: float, activation, iterations: int):
    """Gradients of <grid_grad, P*> w.r.t. (start, time_weight, bias, *weights): w = grid_grad + (dF/dP)^T w
    by ``iterations`` steps, then w through F. Also returns w's residual, for ``check``."""
    trajectory = fixed_point(start, first_time, frequencies, time_weight, bias, *weights, points=points, delta=delta,
                             activation=activation, iterations=iterations)
    time_bias = window_time_bias(first_time, frequencies, time_weight, bias, points, delta)
    _, along_trajectory = torch.func.vjp(lambda p: picard(p, start, time_bias, *weights, activation=activation),
                                         trajectory)
    adjoint = grid_grad
    for _ in range(iterations):
        adjoint = grid_grad + along_trajectory(adjoint)[0]
    residual = (grid_grad + along_trajectory(adjoint)[0] - adjoint).abs().amax() / adjoint.abs().amax().clamp_min(1e-30)

    def through_f(start, time_weight, bias, *weights):
        time_bias = window_time_bias(first_time, frequencies, time_weight, bias, points, delta)
        return picard(trajectory, start, time_bias, *weights, activation=activation)

    _, along_inputs = torch.func.vjp(through_f, start, time_weight, bias, *weights)
    return (*along_inputs(adjoint), residual)


@functools.lru_cache(maxsize=None)
def _compiled(function, options: tuple):
    return torch.compile(function, fullgraph=True, **dict(options))


def _residual(trajectory, start, first_time, frequencies, time_weight, bias, *weights, delta, activation):
    time_bias = window_time_bias(first_time, frequencies, time_weight, bias, trajectory.size(0), delta)
    again = picard(trajectory, start, time_bias, *weights, activation=activation)
    return (again - trajectory).abs().amax() / again.abs().amax().clamp_min(1e-30)


class _Window(torch.autograd.Function):
    """One window: (start, first_time, frequencies, time_weight, bias, *weights) -> P* at its positions
    (every ``substeps``-th grid point after the start). Keeps only its inputs (a start state, the
    weights and operators) for the backward, which recomputes P*."""

    @staticmethod
    def forward(ctx, settings, start, first_time, frequencies, time_weight, bias, *weights):
        forward, _ = settings.functions()
        # plain tensors (a parameter would be another type to a compiled graph's guards: a recompile)
        inputs = [x.detach() for x in (start, first_time, frequencies, time_weight, bias, *weights)]
        trajectory = forward(*inputs, **settings.arguments())
        if settings.check is not None:
            residual = float(_residual(trajectory, *inputs, delta=settings.delta, activation=settings.activation))
            if not residual <= settings.check:
                raise FloatingPointError(
                    f"FLOATER parallel solve: {settings.iterations} iterations leave a residual of {residual:.1e} "
                    f"(check {settings.check:g}); raise --floater-parallel-iterations or use --floater-method rk4")
        ctx.settings = settings
        ctx.save_for_backward(start, first_time, frequencies, time_weight, bias, *weights)
        # a copy: a strided view would keep the whole grid alive for as long as the output lives
        return trajectory[settings.substeps::settings.substeps].clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        settings = ctx.settings
        inputs = [x.detach() for x in ctx.saved_tensors]
        grid_grad = grad.new_zeros(settings.points, *grad.shape[1:])
        grid_grad[settings.substeps::settings.substeps] = grad
        _, gradients = settings.functions()
        start_grad, time_weight_grad, bias_grad, *weight_grads, residual = gradients(grid_grad, *inputs,
                                                                                     **settings.arguments())
        if settings.check is not None and not float(residual) <= settings.check:
            raise FloatingPointError(
                f"FLOATER parallel solve: the implicit gradient's residual after {settings.iterations} iterations "
                f"is {float(residual):.1e} (check {settings.check:g}); raise --floater-parallel-iterations")
        return (None, start_grad, None, None, time_weight_grad, bias_grad, *weight_grads)


class WindowSettings:
    def __init__(self, points, delta, substeps, activation, iterations, check, compiled):
        self.points, self.delta, self.substeps, self.activation = points, delta, substeps, activation
        self.iterations, self.check, self.compiled = iterations, check, compiled

    def arguments(self):
        return dict(points=self.points, delta=self.delta, activation=self.activation, iterations=self.iterations)

    def functions(self):
        if self.compiled is None:
            return fixed_point, window_gradients
        options = tuple(sorted(self.compiled.items()))
        return _compiled(fixed_point, options), _compiled(window_gradients, options)


def solve(dynamics, start: torch.Tensor, first_time: float, count: int, dt: float, substeps: int,
          iterations: int, window: int, check: Optional[float] = None,
          compiled: Optional[dict] = None) -> torch.Tensor:
    """p(first_time + i dt) for i < count, from p(first_time) = start: [count, K, d].

    ``dynamics`` is a DissipativeDynamics; ``window`` positions per window; ``check``: raise when a
    window's relative residual after ``iterations`` exceeds it (forward and gradient); ``compiled``:
    run each window through torch.compile(fullgraph=True, **compiled), e.g. {} or {"mode": "reduce-overhead"}."""
    dtype = start.dtype
    delta = dt / substeps
    windows = -(-(count - 1) // window)
    if compiled is not None:  # every window the same shape: the last is solved to its end and cut
        lengths = [window] * windows
    else:  # the last window as long as asked (at least the stencil's grid points)
        last = max(count - 1 - (windows - 1) * window, -(-(STENCIL - 1) // substeps))
        lengths = [window] * (windows - 1) + [last]
    weights = dynamics.weights(dtype)
    decay = dynamics.decay(dtype)
    interval = interval_weights(decay, delta)
    operators = {length: recurrence_operators(decay * delta, length * substeps) for length in set(lengths)}
    frequencies = dynamics.frequencies.to(dtype)
    activation = dynamics.ACTIVATIONS[dynamics.activation]
    outputs, current, first = [start.unsqueeze(0)], start, 0
    for length in lengths:
        settings = WindowSettings(length * substeps + 1, delta, substeps, activation, iterations, check, compiled)
        window_start = torch.tensor(first_time + first * delta, dtype=dtype, device=start.device)
        positions = _Window.apply(settings, current, window_start, frequencies, weights.time, weights.bias,
                                  weights.state, weights.out, weights.out_bias, interval, *operators[length])
        dynamics.num_evaluations += iterations
        outputs.append(positions)
        current, first = positions[-1], first + length * substeps
    return torch.cat(outputs)[:count]
