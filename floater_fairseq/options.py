"""Every flag floater_fairseq adds to fairseq, stated once: group, type, default, range and help.

argparse (``add_options``), the architectures' defaults (``fill_defaults``), the config generator
(scripts/make-configs.py) and the flag tables of docs/ (``python -m floater_fairseq.options``)
all read ``OPTIONS``. A default of None is explained by the help text (e.g. "DT/5").
"""
import argparse
import math
import re
import sys
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

# torchdiffeq's method names (its public ``method=`` argument). Fixed-grid methods take a step
# size; adaptive ones take rtol/atol.
FIXED_GRID_METHODS = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams", "fixed_adams")
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
# ours (modules/parallel_solve.py): a parallel-in-time solve on the fixed grid of --floater-step-size
PARALLEL_METHODS = ("parallel",)
# ours: chosen per device at solve time (see solver_for_device)
AUTO_METHODS = ("auto",)
ODE_METHODS = FIXED_GRID_METHODS + ADAPTIVE_METHODS + PARALLEL_METHODS + AUTO_METHODS
POSITION_BLOCKS = ("all", "input")
SELF_ATTENTION_KINDS = ("softmax", "kernelized-rpe")
BASES = ("gaussian", "triangle", "impulse", "square", "rff")
PLACEMENTS = ("interleaved", "first", "last")
MEMORY_POSITIONS = ("relative", "floater")


@dataclass(frozen=True)
class Option:
    group: str  # the component that reads it
    flag: str
    default: Any
    help: str
    type: Optional[type] = None
    choices: Optional[Tuple[str, ...]] = None
    bounds: Optional[Tuple[float, float, bool]] = None  # (low, high, low inclusive); high inclusive
    metavar: Optional[str] = None
    # the value for arguments saved before this flag existed, when the default has changed since:
    # args that carry every flag of ``saved_with`` (saved args carry all flags of their time, filled
    # in by fill_defaults) but not this one. A command line rarely gives them all, so it gets ``default``.
    legacy_default: Any = None
    saved_with: Tuple[str, ...] = ()

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")

    @property
    def is_switch(self) -> bool:
        return self.type is bool

    def parse(self, text: str):
        value = self.type(text)
        if self.bounds is not None:
            low, high, inclusive = self.bounds
            if not ((value >= low if inclusive else value > low) and value <= high):
                interval = f"{'[' if inclusive else '('}{low:g}, {high:g}{']' if high != math.inf else ')'}"
                raise argparse.ArgumentTypeError(f"{self.flag} must be in {interval}, got {text}")
        return value


INF = math.inf
_OPTIONS = [
    # which position encoder, and where (models/floater_transformer.py)
    Option("position", "--pos-encoder", "floater", "position encoder: a registered one, or several joined by + "
           "(e.g. rope+floater: each part as alone, their q/k/v biases and block inputs summed)"),
    Option("position", "--pos-blocks", "all", "all: at every block (FLOATER: q/k/v biases, Eqs. 11-13; "
           "sinusoidal/learned/shifted-basis: added to each block input, Eqs. 7, 10); input: at the input "
           "embeddings only", choices=POSITION_BLOCKS),
    # FLOATER (modules/floater.py); the memory LM reads the solver ones too
    Option("floater", "--floater-dt", 0.1, "time between consecutive positions, t_i = i*DT (the paper's "
           "0.1; the authors' code used 0.01)", float, bounds=(0, INF, False), metavar="DT"),
    Option("floater", "--floater-method", None, "torchdiffeq solver; parallel: our parallel-in-time solve "
           "of dissipative dynamics (few kernel launches at any length); auto: parallel on accelerators, "
           "rk4 on a CPU, chosen at solve time by the device (see solver_for_device); None: auto for "
           "dissipative dynamics, rk4 for the others", choices=ODE_METHODS),
    Option("floater", "--floater-dynamics", "dissipative", "h: paper (the paper's MLP of t and p, unbounded), "
           "dissipative (-gamma p + tanh(u): |p| bounded) or rotation (skew-symmetric: |p| constant; "
           "starts as the sinusoid at --pos-blocks input); the bounded ones see t through sin/cos features",
           choices=("paper", "dissipative", "rotation"), legacy_default="paper",
           saved_with=("floater_dt", "floater_method", "floater_step_size", "floater_rtol", "floater_atol",
                       "floater_adjoint", "floater_hidden_dim", "floater_init_std")),
    Option("floater", "--floater-activation", "softplus", "hidden activation of the bounded dynamics' MLP u "
           "(dissipative, rotation); smooth, so fixed-grid solves and their gradients converge at the "
           "solver's order (the paper's h keeps relu)", choices=("softplus", "relu"), legacy_default="relu",
           saved_with=("floater_dt", "floater_method", "floater_dynamics", "floater_step_size",
                       "floater_parallel_tol", "floater_rtol", "floater_atol", "floater_adjoint",
                       "floater_hidden_dim", "floater_init_std")),
    Option("floater", "--floater-fastest-period", 4.0, "the bounded dynamics' fastest time feature, in "
           "positions (their periods are log-spaced from it to 1,024); sets auto's rk4 step on a CPU: "
           "DT / ceil(8 / P), eight steps a period (P = 4: DT/2; P >= 8: DT, half the evaluations)", float,
           bounds=(2, 1024, True), metavar="P"),
    Option("floater", "--floater-step-size", None, "step of fixed-grid solvers (None: DT/10 for --floater-method "
           "parallel, DT/5 (the paper's setting) for the others; auto: DT/10 on accelerators, DT/2 on a CPU (DT / ceil(8 / P) for "
           "--floater-fastest-period P)); "
           "above DT, positions between grid points are interpolated linearly (torchdiffeq)", float, bounds=(0, INF, False), metavar="H"),
    Option("floater", "--floater-parallel-tol", 1e-6, "--floater-method parallel: the residual (relative to "
           "the largest value) its iterations are meant to reach; checked by tests and benchmarks, not in "
           "training (the check reads a value back to the host)", float, bounds=(0, 1, False)),
    Option("floater", "--floater-parallel-iterations", 12, "--floater-method parallel: Picard iterations per "
           "window, forward and for the implicit gradient (a fixed count, so the solve has no data-dependent "
           "control flow)", int, bounds=(1, INF, True), metavar="N"),
    Option("floater", "--floater-parallel-window", 64, "--floater-method parallel: positions solved together; "
           "the next window starts where this one ends, so memory is bounded by one window's grid at any length",
           int, bounds=(1, INF, True), metavar="W"),
    Option("floater", "--floater-parallel-compile", "off", "--floater-method parallel: run each window through "
           "torch.compile(fullgraph=True) (default: inductor's default mode; reduce-overhead: with CUDA graphs); "
           "one graph serves every length. Opt-in until timed on an accelerator",
           choices=("off", "default", "reduce-overhead")),
    Option("floater", "--floater-rtol", 1e-4, "rtol of adaptive solvers", float, bounds=(0, 1, False)),
    Option("floater", "--floater-atol", 1e-6, "atol of adaptive solvers", float, bounds=(0, 1, False)),
    Option("floater", "--floater-adjoint", False, "backpropagate with the adjoint method (O(1) memory in "
           "length)", bool),
    Option("floater", "--floater-hidden-dim", None, "hidden width of the dynamics h (None: the embedding "
           "dim)", int, bounds=(1, INF, True), metavar="N"),
    Option("floater", "--floater-no-input-sinusoid", False, "--pos-blocks all: drop the vanilla input sinusoid "
           "that the compatibility form keeps, so positions come from the ODE biases only (and from a "
           "composite's other parts, e.g. rope+floater)", bool),
    Option("floater", "--floater-init-std", 0.02, "std of h's output layer at initialisation (0: h == 0)",
           float, bounds=(0, INF, True)),
    # shifted-basis encoders (modules/shifted_basis.py)
    Option("shifted-basis", "--basis", "gaussian", "shifted-basis function psi", choices=BASES),
    Option("shifted-basis", "--basis-size", 64, "number of basis functions D", int, bounds=(1, INF, True),
           metavar="D"),
    Option("shifted-basis", "--basis-width", None, "width of psi in tokens (None: L_max / D, the centre "
           "spacing)", float, bounds=(0, INF, False), metavar="W"),
    Option("shifted-basis", "--basis-max-positions", 256, "positions covered by the basis, L_max (no "
           "extrapolation)", int, bounds=(1, INF, True), metavar="L"),
    Option("shifted-basis", "--basis-projection", "linear", "learned Linear(D -> d) per table, or none (D "
           "must equal d)", choices=("linear", "none")),
    Option("shifted-basis", "--basis-seed", 0, "seed of the rff frequencies", int),
    # RoPE (modules/rope.py)
    Option("rope", "--rope-base", 10000.0, "RoPE frequency base", float, bounds=(1, INF, False)),
    # kernelized attention (modules/kernelized_attention.py)
    Option("self-attention", "--encoder-self-attention", "softmax", "encoder self-attention: softmax or "
           "kernelized-rpe (Luo et al. 2021)", choices=SELF_ATTENTION_KINDS),
    Option("self-attention", "--decoder-self-attention", "softmax", "decoder self-attention: softmax or "
           "causal kernelized-rpe", choices=SELF_ATTENTION_KINDS),
    Option("self-attention", "--kernelized-features", 64, "kernelized-rpe: random features per head", int,
           bounds=(1, INF, True), metavar="M"),
    Option("self-attention", "--kernelized-feature-redraw", False, "kernelized-rpe: draw new random "
           "features at every training step (default: fixed, saved in the checkpoint)", bool),
    Option("self-attention", "--kernelized-rpe-window", 0, "kernelized-rpe: learn b_{j-i} for |j - i| <= W, "
           "longer offsets share the edge value (0: the full range)", int, bounds=(0, INF, True), metavar="W"),
    Option("self-attention", "--kernelized-fft-min-length", 0, "kernelized-rpe: evaluate the same sums "
           "directly, O(n^2 m), for inputs shorter than N tokens (0: always FFT)", int, bounds=(0, INF, True),
           metavar="N"),
    # the long-range-memory LM (models/memory_transformer_lm.py)
    Option("memory-lm", "--lrm-layers", None, "layers with long-range memory (None: all)", int,
           bounds=(0, INF, True), metavar="K"),
    Option("memory-lm", "--lrm-placement", "interleaved", "where the K long-memory layers sit", choices=PLACEMENTS),
    Option("memory-lm", "--lrm-len", 512, "long-range memory length", int, bounds=(0, INF, True), metavar="M"),
    Option("memory-lm", "--srm-len", 128, "short-range memory length of the other layers", int,
           bounds=(0, INF, True), metavar="M"),
    Option("memory-lm", "--srm-attention-range", 0, "short-memory layers attend to at most the last R "
           "positions (0: all they keep)", int, bounds=(0, INF, True), metavar="R"),
    Option("memory-lm", "--memory-positions", "relative", "relative (Transformer-XL) or floater (window "
           "positions)", choices=MEMORY_POSITIONS),
]
OPTIONS: Dict[str, Option] = {option.dest: option for option in _OPTIONS}


def default(name: str):
    return OPTIONS[name].default


def default_method(dynamics: str) -> str:
    """--floater-method when not given: auto where the parallel solve applies (dissipative
    dynamics), else rk4 (the paper's)."""
    return "auto" if dynamics == "dissipative" else "rk4"


def default_step_size(method: str, dt: float) -> float:
    """--floater-step-size when not given: DT/5 (the paper's) for torchdiffeq's methods; DT/10 for
    the parallel solve, whose table error against rk4 DT/5 on the trained Multi30k model is 1.4e-4
    at DT/5 (over the 1e-4 target) and 1.2e-5 at DT/10, for the same kernel launches
    (docs/results.md#speed)."""
    return dt / 10 if method in PARALLEL_METHODS else dt / 5


def cpu_rk4_substeps(fastest_period: float) -> int:
    """rk4 steps a position that ``auto`` runs on a CPU: eight a period of the fastest time feature
    (ceil(8 / P); at least one, so that every position is a grid point)."""
    return max(1, math.ceil(8 / fastest_period - 1e-9))


def solver_for_device(method: str, step_size: Optional[float], dt: float, device_type: str,
                      fastest_period: float):
    """(method, step) that a solve on ``device_type`` runs. ``auto``: the parallel solve (DT/10) on
    accelerators, where kernel launches dominate (~1/75 of rk4 DT/5's, docs/results.md#speed); rk4
    on a CPU, where arithmetic does (the parallel solve costs 6-8x as much there), at eight steps a
    period of the fastest time feature: DT/2 for the default's period of 4 positions, the coarsest
    rk4 step measured to meet the accuracy targets on trained dynamics (table <= 8.3e-5, gradients
    <= 3.5e-5 against rk4 DT/5); DT for periods of 8 or more. Both reach the same solution to that
    accuracy, so a model may be trained on one device and decoded on the other. Other methods run
    as given."""
    if method in AUTO_METHODS:
        method = "rk4" if device_type == "cpu" else "parallel"
        default_step = dt / cpu_rk4_substeps(fastest_period) if method == "rk4" else dt / 10
    else:
        default_step = default_step_size(method, dt)
    return method, default_step if step_size is None else step_size


def add_options(parser, group: str, parsers=None, **choices):
    """Add a group's flags; ``choices`` overrides a flag's choices (e.g. the encoder registry),
    ``parsers`` (dest -> function) a flag's type.
    Flags carry no argparse default, so the architectures' ``fill_defaults`` can tell what the
    user gave."""
    for option in _OPTIONS:
        if option.group != group:
            continue
        shown = "off" if option.is_switch else option.default
        kwargs = {"help": f"{option.help} (default: {shown})"}
        if option.is_switch:
            kwargs["action"] = "store_true"
        else:
            kwargs["choices"] = choices.get(option.dest, option.choices)
            if option.type is not None:
                kwargs["type"], kwargs["metavar"] = option.parse, option.metavar or option.type.__name__.upper()
            if parsers and option.dest in parsers:
                kwargs["type"] = parsers[option.dest]
        parser.add_argument(option.flag, **kwargs)


def fill_defaults(args, *groups: str):
    """Set every flag of ``groups`` that the user did not give to its default (never overwrites)."""
    given = {option.dest for option in _OPTIONS if hasattr(args, option.dest)}  # before we fill any
    for option in _OPTIONS:
        if option.group not in groups or getattr(args, option.dest, None) is not None:
            continue
        legacy = (option.legacy_default is not None and option.dest not in given
                  and all(dest in given for dest in option.saved_with))
        setattr(args, option.dest, option.legacy_default if legacy else option.default)


def markdown_table(*groups: str) -> str:
    lines = ["| flag | default | values | meaning |", "|---|---|---|---|"]
    for option in _OPTIONS:
        if groups and option.group not in groups:
            continue
        if option.choices:
            values = ", ".join(option.choices)
        elif option.bounds:
            low, high, inclusive = option.bounds
            values = f"{option.type.__name__} {'>=' if inclusive else '>'} {low:g}" + (
                f", <= {high:g}" if high != INF else "")
        else:
            values = "switch" if option.is_switch else (option.type.__name__ if option.type else "text")
        shown = "off" if option.is_switch else f"`{option.default}`"
        lines.append(f"| `{option.flag}` | {shown} | {values} | {option.help} |")
    return "\n".join(lines) + "\n"


DOC_BLOCK = re.compile(r"(<!-- options: ([\w -]+) -->\n)(.*?)(<!-- /options -->)", re.S)


def fill_doc_tables(text: str) -> str:
    """Replace each ``<!-- options: GROUP ... -->`` block of a Markdown page by the groups' table."""
    return DOC_BLOCK.sub(lambda m: m.group(1) + markdown_table(*m.group(2).split()) + m.group(4), text)


def main(argv=None):
    """python -m floater_fairseq.options [GROUP ...]          print the flag table
    python -m floater_fairseq.options --write-docs FILE ...   refresh the tables in Markdown pages"""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--write-docs"]:
        for path in argv[1:]:
            with open(path, encoding="utf-8") as f:
                text = f.read()
            with open(path, "w", encoding="utf-8") as f:
                f.write(fill_doc_tables(text))
        return 0
    sys.stdout.write(markdown_table(*argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
