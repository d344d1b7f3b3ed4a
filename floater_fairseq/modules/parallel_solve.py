"""A parallel-in-time solve of dissipative FLOATER dynamics, dp/dt = -gamma p + g(t, p).

A sequential solver takes O(length) dependent steps, each a handful of small kernels. Here the
whole trajectory is one unknown P = [p(s_0), ..., p(s_M)] on a grid of step delta (= the
``--floater-step-size``), and the variation-of-constants formula

    p(s_{m+1}) = a p(s_m) + int_{s_m}^{s_{m+1}} exp(-gamma (s_{m+1} - s)) g(s, p(s)) ds,   a = exp(-gamma delta)

is iterated as a Picard map P <- F(P): g is evaluated at every grid point in one batched call,
integrated exactly against the exponential with the cubic through the grid values at s_m-2 ..
s_m+1 (weights by Gauss-Legendre quadrature, differentiable in gamma), and the linear
recurrence is solved for all m at once by a chunked weighted cumulative sum. The decay is
integrated exactly, so the map contracts at a rate set by g alone: on the trained dynamics of
``make demo`` 9 to 11 iterations reach 1e-6 at 13 and at 52 positions
(benchmarks/bench_solver_accuracy.py).

Gradients are exact at the fixed point P* = F(P*) (implicit differentiation, as in deep
equilibrium models): the incoming gradient v is mapped to w = (I - dF/dP)^-T v by the same
fixed-point iteration on vector-Jacobian products, then sent through one application of F to
theta, gamma and p(0). Kernel launches are therefore independent of the length.
"""
from typing import Optional

import numpy as np
import torch

GAUSS_NODES = 8
# g is interpolated on each interval [s_m, s_m+1] by the polynomial through the STENCIL grid values
# ending at s_m+1 (one-sided, as in Adams-Moulton methods, so the solution up to a time does not
# depend on later times: a longer solve extends a shorter one); order STENCIL in delta.
STENCIL = 4
# |gamma| delta * chunk stays below this, so exp(+-) of it fits float32 without overflow.
MAX_CHUNK_EXPONENT = 30.0
MAX_ITERATIONS = 100


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
    first = [sum(weights[m, j] * values[j] for j in range(width)) for m in range(width - 2)]
    rest = sum(weights[width - 2, j] * values[j:j + causal] for j in range(width))
    return torch.cat([torch.stack(first), rest]) if first else rest


def linear_recurrence(start: torch.Tensor, decay: torch.Tensor, delta: float, steps: torch.Tensor) -> torch.Tensor:
    """p_0 = start, p_m+1 = exp(-gamma delta) p_m + c_m for all m at once: [M, K, d].

    Within a chunk p_j = a^j (p_first + sum_i<j a^-(i+1) c_i) (one cumsum); chunks are short enough
    that a^-(chunk) cannot overflow, and they follow each other in a loop of a few iterations."""
    rate = decay * delta  # [d]
    chunk = max(1, int(MAX_CHUNK_EXPONENT / max(float(rate.detach().max()), 1e-12)))
    outputs = [start.unsqueeze(0)]
    current = start
    for begin in range(0, steps.size(0), chunk):
        block = steps[begin:begin + chunk]
        exponents = torch.arange(1, block.size(0) + 1, dtype=rate.dtype, device=rate.device)[:, None] * rate
        exponents = exponents.unsqueeze(1)  # [C, 1, d]
        values = torch.exp(-exponents) * (current.unsqueeze(0) + torch.cumsum(torch.exp(exponents) * block, dim=0))
        outputs.append(values)
        current = values[-1]
    return torch.cat(outputs)


def fixed_point_iteration(step, guess: torch.Tensor, tolerance: float, max_iterations: int) -> Optional[torch.Tensor]:
    """x = step(x) by plain iteration, until no value of step(x) - x exceeds ``tolerance`` x max
    |step(x)|; None if that never happens. (Anderson acceleration was measured on the demo's trained
    dynamics: 9 instead of 11 iterations, for several more trajectory-sized tensors of memory.)"""
    x = guess
    for _ in range(max_iterations):
        fx = step(x)
        if float((fx - x).abs().max()) <= tolerance * max(float(fx.abs().max()), 1e-30):
            return fx
        x = fx
    return None


def solve(dynamics, start: torch.Tensor, first_time: float, count: int, dt: float, substeps: int,
          tolerance: float, max_iterations: int) -> Optional[torch.Tensor]:
    """p(first_time + i dt) for i < count, from p(first_time) = start: [count, K, d].

    ``dynamics`` is a DissipativeDynamics. Returns None when the iteration does not reach
    ``tolerance`` within ``max_iterations`` (the caller falls back to a sequential solver)."""
    points = (count - 1) * substeps + 1
    if points < STENCIL:
        raise ValueError(f"the parallel solve needs at least {STENCIL} grid points, got {points}")
    delta = dt / substeps
    dtype = start.dtype
    times = first_time + torch.arange(points, dtype=dtype, device=start.device) * delta
    decay = dynamics.decay(dtype)
    weights = interval_weights(decay, delta)
    time_bias = dynamics.time_bias(times)  # [M, H]

    def picard(trajectory):
        forcing = dynamics.forcing(time_bias, trajectory)
        return linear_recurrence(start, decay, delta, increments(forcing, weights))

    with torch.no_grad():
        guess = start.detach().unsqueeze(0).expand(points, *start.shape).contiguous()
        trajectory = fixed_point_iteration(picard, guess, tolerance, max_iterations)
    if trajectory is None:
        return None
    if not torch.is_grad_enabled():
        return trajectory[::substeps]
    at_fixed_point = trajectory.detach().requires_grad_()
    with torch.enable_grad():
        linearised = picard(at_fixed_point)  # for vector-Jacobian products w.r.t. P at P*
    output = picard(trajectory.detach())  # carries the gradient to theta, gamma and p(0)

    def implicit_gradient(grad):
        # w = grad + (dF/dP)^T w: a fixed point with the forward map's contraction
        def adjoint(w):
            return grad + torch.autograd.grad(linearised, at_fixed_point, w, retain_graph=True)[0]

        w = fixed_point_iteration(adjoint, grad, tolerance, max_iterations)
        if w is None:
            raise FloatingPointError("FLOATER parallel solve: the implicit gradient did not converge in "
                                     f"{max_iterations} iterations although the solve did; use --floater-method rk4")
        return w

    if output.requires_grad:
        output.register_hook(implicit_gradient)
    return output[::substeps]
