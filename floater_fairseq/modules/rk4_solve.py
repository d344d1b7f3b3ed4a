"""torchdiffeq's rk4 on a fixed grid for the dissipative dynamics, one autograd node per window.

    f(s, p) = tanh(u) - gamma p,   u = W_out act(W_p p + c(s)) + c_out,   c(s) = W_phi phi(s) + c

integrated by torchdiffeq's ``rk4`` step (the 3/8 rule, ``rk4_alt_step_func``), with step
h = DT / substeps so that every position t_i = i DT is a grid point:

    k1 = f(s, p),  k2 = f(s + h/3, p + h k1/3),  k3 = f(s + 2h/3, p + h (k2 - k1/3)),
    k4 = f(s + h, p + h (k1 - k2 + k3)),          p(s + h) = p + h (k1 + 3 k2 + 3 k3 + k4) / 8.

The same arithmetic as ``odeint(..., method="rk4")``; what differs is the bookkeeping. Through
autograd every evaluation is a dozen graph nodes and saves four [K, d] tensors, so at 256
positions on a CPU the graph's overhead costs more than the arithmetic, and at 1,024 positions
the saved tensors take about a GiB (small size). Here a window of positions is one node: its
forward runs without a graph and keeps only each evaluation's input p; its backward recomputes
every evaluation's hidden layer in one batched product (all inputs are known by then) and runs the
rk4 step's discrete adjoint (the transpose of the step above, so gradients are those of the
discrete solve, as autograd's), with each weight's gradient taken by one matrix product over all
of the window's evaluations instead of one per evaluation.
"""
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F

from . import parallel_solve

# the bounded dynamics' hidden activations (--floater-activation) and their derivatives
ACTIVATIONS = {"softplus": F.softplus, "relu": torch.relu}
ACTIVATION_DERIVATIVES = {
    # softplus(z) = log(1 + e^z), linear above torch's threshold of 20
    "softplus": lambda z: torch.where(z > 20, torch.ones_like(z), torch.sigmoid(z)),
    "relu": lambda z: (z > 0).to(z.dtype),
}


def stage_times(first_time: torch.Tensor, steps: int, step: float) -> torch.Tensor:
    """The times at which the rk4 steps of a window evaluate f: [steps, 4] (s, s + h/3, s + 2h/3, s + h)."""
    starts = first_time + torch.arange(steps, dtype=first_time.dtype, device=first_time.device) * step
    offsets = torch.tensor([0.0, 1 / 3, 2 / 3, 1.0], dtype=first_time.dtype, device=first_time.device) * step
    return starts.unsqueeze(1) + offsets


class _Evaluations:
    """f at each stage of a window's steps; keeps each evaluation's input p when ``keep``."""

    def __init__(self, decay, state, out, out_bias, activation: str, keep: bool):
        self.decay, self.state, self.out, self.out_bias = decay, state, out, out_bias
        self.activation = ACTIVATIONS[activation]
        self.inputs: Optional[List[torch.Tensor]] = [] if keep else None

    def __call__(self, p: torch.Tensor, time_bias: torch.Tensor) -> torch.Tensor:
        if self.inputs is not None:
            self.inputs.append(p)
        y = torch.tanh(torch.addmm(self.out_bias, self.activation(torch.addmm(time_bias, p, self.state)), self.out))
        return torch.addcmul(y, self.decay, p, value=-1)


def _steps(start, time_bias, evaluate: Callable, step: float, substeps: int) -> torch.Tensor:
    """The window's rk4 steps from ``start``; returns p at every ``substeps``-th grid point: [W, K, d]."""
    p, outputs = start, []
    for m in range(time_bias.size(0)):
        c = time_bias[m]
        k1 = evaluate(p, c[0])
        k2 = evaluate(torch.add(p, k1, alpha=step / 3), c[1])
        k3 = evaluate(torch.add(p, torch.add(k2, k1, alpha=-1 / 3), alpha=step), c[2])
        k4 = evaluate(torch.add(p, k1 - k2 + k3, alpha=step), c[3])
        p = torch.add(p, k1 + 3 * (k2 + k3) + k4, alpha=step / 8)
        if (m + 1) % substeps == 0:
            outputs.append(p)
    return torch.stack(outputs)


class _Window(torch.autograd.Function):
    """p at the window's W positions after ``start`` ([W, K, d]); see the module docstring."""

    @staticmethod
    def forward(ctx, start, time_bias, decay, state, out, out_bias, step, substeps, activation, differentiable):
        evaluate = _Evaluations(decay, state, out, out_bias, activation, keep=differentiable)
        outputs = _steps(start, time_bias, evaluate, step, substeps)
        if differentiable:
            # the evaluations' inputs [4 x steps, K, d]: the rest of each evaluation is recomputed in
            # backward by batched products, as every input is then known
            ctx.save_for_backward(torch.stack(evaluate.inputs), time_bias, decay, state, out, out_bias)
        ctx.settings = step, substeps, activation
        return outputs

    @staticmethod
    def backward(ctx, grad_outputs):
        inputs, time_bias, decay, state, out, out_bias = ctx.saved_tensors
        step, substeps, activation = ctx.settings
        steps = time_bias.size(0)
        evaluations, rows, width = inputs.shape
        with torch.no_grad():
            pre_activations = torch.mm(inputs.view(-1, width), state).view(evaluations, rows, -1) \
                + time_bias.reshape(evaluations, 1, -1)
            hidden = ACTIVATIONS[activation](pre_activations)
            y = torch.tanh(torch.matmul(hidden, out) + out_bias)
            tanh_derivative = 1 - y * y
            derivative = ACTIVATION_DERIVATIVES[activation](pre_activations)
            grad_f = torch.empty_like(inputs)  # dL/df of each evaluation
            grad_z = torch.empty_like(pre_activations)  # dL/dz, z = W_p p + c(s)
            out_t, state_t = out.t(), state.t()

            def adjoint(index, g):
                """dL/dp of evaluation ``index`` given dL/df = g (the transpose of one evaluation)."""
                grad_f[index] = g
                gz = torch.mul(torch.mm(g * tanh_derivative[index], out_t), derivative[index], out=grad_z[index])
                return torch.addcmul(torch.mm(gz, state_t), decay, g, value=-1)

            grad = torch.zeros_like(inputs[0])
            for m in reversed(range(steps)):
                if (m + 1) % substeps == 0:
                    grad = grad + grad_outputs[(m + 1) // substeps - 1]
                first = 4 * m
                # the transpose of p(s + h) = p + h (k1 + 3 k2 + 3 k3 + k4) / 8 and its stages
                g4 = adjoint(first + 3, grad * (step / 8))
                g3 = adjoint(first + 2, torch.add(grad, g4, alpha=8 / 3) * (3 * step / 8))
                g2 = adjoint(first + 1, torch.add(grad * (3 / 8), g3 - g4) * step)
                g1 = adjoint(first, torch.add(grad * (1 / 8), torch.add(g4, g2 - g3, alpha=1 / 3)) * step)
                grad = grad + g1 + g2 + g3 + g4
            # each weight's gradient summed over the window's evaluations in one product
            grad_u = (grad_f * tanh_derivative).view(-1, width)
            grad_state = torch.mm(inputs.view(-1, width).t(), grad_z.view(-1, grad_z.size(-1)))
            grad_out = torch.mm(hidden.view(-1, hidden.size(-1)).t(), grad_u)
            grad_time_bias = grad_z.sum(1).view_as(time_bias)
            grad_decay = -(grad_f * inputs).sum((0, 1))
        return grad, grad_time_bias, grad_decay, grad_state, grad_out, grad_u.sum(0), None, None, None, None


def solve(dynamics, start: torch.Tensor, first_time: torch.Tensor, count: int, dt: float, substeps: int,
          window: int) -> torch.Tensor:
    """p at ``count`` positions from ``start`` = p(first_time), DT apart: [count, K, d] (the first row is
    ``start``), rk4 with ``substeps`` steps a position, in windows of ``window`` positions."""
    weights, decay = dynamics.weights(start.dtype), dynamics.decay(start.dtype)
    step = dt / substeps
    rows, p = [start.unsqueeze(0)], start
    for first in range(0, count - 1, window):
        positions = min(window, count - 1 - first)
        with torch.no_grad():  # phi(s) has no parameters: nothing of it to keep for backward
            features = parallel_solve.time_features(stage_times(first_time + first * dt, positions * substeps, step),
                                                    dynamics.frequencies)
        time_bias = F.linear(features, weights.time, weights.bias)
        dynamics.num_evaluations += 4 * positions * substeps
        rows.append(_Window.apply(p, time_bias, decay, weights.state, weights.out, weights.out_bias, step, substeps,
                                  dynamics.activation, torch.is_grad_enabled()))
        p = rows[-1][-1]
    return torch.cat(rows)
