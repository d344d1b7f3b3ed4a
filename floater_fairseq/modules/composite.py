"""Two or more position encoders at once: ``--pos-encoder rope+floater``.

Each part is the registered encoder of its name, built with the same flags, and sets what it
sets alone; per layer and call their ``LayerPositions`` are merged:

    input    x^(n) + sum_parts p^(n)                       (each part's block-input signal)
    q/k/v    W x + b + sum_parts b^(n)(t_i)                 (additive projection biases, Eqs. 11-13)
    cos/sin  R(i) (W x + b + sum b^(n)(t_i))                (the one rotary part, applied after the biases)
    logits   q.k / sqrt(d) + sum_parts bias_h(i, j)         (e.g. ALiBi)

So ``rope+floater`` is RoPE's relative rotation of q and k on top of the bounded FLOATER model
(input sinusoid and ODE biases at every block): each part keeps the parameters, flags and
defaults it has alone, under ``position_encoder.parts.NAME``. At most one part may provide the
input embedding and at most one may rotate q and k: the composition is then unambiguous.
"""
import contextlib
import copy
from typing import Dict, List, Optional

from torch import nn

from .position_aware_layers import AttentionPositions, LayerPositions
from .position_encoder import (
    POSITION_ENCODER_REGISTRY,
    AbsolutePositionEncoder,
    PositionEncoder,
    register_position_encoder,
)

SEPARATOR = "+"


def _simple_names() -> List[str]:
    return sorted(n for n, cls in POSITION_ENCODER_REGISTRY.items() if not issubclass(cls, CompositePositionEncoder))


def part_names(name: str) -> List[str]:
    """The parts of a composite name, checked: 'rope+floater' -> ['rope', 'floater']."""
    names = name.split(SEPARATOR)
    simple = _simple_names()
    unknown = [n for n in names if n not in simple]
    if unknown:
        raise ValueError(f"--pos-encoder {name}: unknown part(s) {', '.join(map(repr, unknown))}; a composite "
                         f"joins registered encoders with '+' (e.g. rope+floater), choose from: {', '.join(simple)}")
    if len(set(names)) != len(names) or "none" in names or len(names) < 2:
        raise ValueError(f"--pos-encoder {name}: a composite joins two or more different encoders other than "
                         f"'none' with '+', e.g. rope+floater")
    return names


def position_encoder_class(name: str) -> type:
    """The registered encoder ``name``; a composite 'a+b' is built and registered on first use."""
    if name not in POSITION_ENCODER_REGISTRY:
        if SEPARATOR not in name:
            raise ValueError(f"unknown --pos-encoder {name!r}; choose one of {', '.join(_simple_names())}, or join "
                             f"several with '+' (e.g. rope+floater)")
        parts = tuple(part_names(name))
        register_position_encoder(name)(type(
            "CompositePositionEncoder_" + "_".join(p.replace("-", "_") for p in parts),
            (CompositePositionEncoder,), {"parts_names": parts}))
    return POSITION_ENCODER_REGISTRY[name]


def _input_embedding_parts(args, cfg, classes) -> List[str]:
    """Which parts provide the input embedding (fairseq's, or their own table at the input)."""
    found = []
    for cls in classes:
        scratch = copy.deepcopy(cfg)
        cls.configure(args, scratch)
        own_table = issubclass(cls, AbsolutePositionEncoder) and args.pos_blocks == "input"
        if own_table or not scratch.no_token_positional_embeddings:
            found.append(cls)
    return found


class CompositePositionEncoder(PositionEncoder):
    """The sum of its parts' position inputs (module docstring); subclasses name ``parts_names``."""

    parts_names = ()

    def __init__(self, args, num_layers: Dict[str, int]):
        super().__init__(args, num_layers)
        self.parts = nn.ModuleDict({name: POSITION_ENCODER_REGISTRY[name](args, num_layers)
                                    for name in self.parts_names})

    @classmethod
    def part_classes(cls):
        return [POSITION_ENCODER_REGISTRY[name] for name in cls.parts_names]

    # supported_blocks / uses_source_positions: what every part supports / what any part needs
    @classmethod
    def _supported_blocks(cls):
        return tuple(b for b in ("all", "input") if all(b in c.supported_blocks for c in cls.part_classes()))

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.supported_blocks = cls._supported_blocks()
        cls.uses_source_positions = any(c.uses_source_positions for c in cls.part_classes())

    # add_args / set_defaults stay the base's no-ops: the parts are registered encoders, whose flags
    # and defaults are already added and filled

    @classmethod
    def configure(cls, args, cfg):
        providers = _input_embedding_parts(args, cfg, cls.part_classes())
        if len(providers) > 1:
            raise ValueError(f"--pos-encoder {cls.name} --pos-blocks {args.pos_blocks}: "
                             f"{' and '.join(p.name for p in providers)} both provide the input embedding; "
                             f"combine at most one of them with encoders that act inside attention (rope, "
                             f"alibi) or at every block (--pos-blocks all)")
        (providers[0] if providers else PositionEncoder).configure(args, cfg)

    def install(self, model):
        super().install(model)
        for part in self.parts.values():
            part.install(model)

    @property
    def acts_in_attention(self):
        return any(part.acts_in_attention for part in self.parts.values())

    def part(self, name: str) -> Optional[PositionEncoder]:
        return self.parts[name] if name in self.parts else None

    def max_positions(self, side):
        limits = [limit for limit in (p.max_positions(side) for p in self.parts.values()) if limit is not None]
        return min(limits) if limits else None

    @contextlib.contextmanager
    def solving(self, length):
        with contextlib.ExitStack() as stack:
            for part in self.parts.values():
                stack.enter_context(part.solving(length))
            yield

    def layer_positions(self, call):
        merged = None
        for part in self.parts.values():
            positions = part.layer_positions(call)
            if positions is None:
                continue
            merged = positions if merged is None else [merge_layer(a, b) for a, b in zip(merged, positions)]
        return merged

    def position_matrices(self, length):
        matrices = {}
        for name, part in self.parts.items():
            try:
                matrices.update({f"{name}: {key}": value for key, value in part.position_matrices(length).items()})
            except NotImplementedError:
                continue  # e.g. rope: relative, no absolute table
        if not matrices:
            return super().position_matrices(length)
        return matrices

    def extra_repr(self):
        return f"parts={'+'.join(self.parts_names)}, blocks={self.blocks}"


def _add(a, b):
    if a is None:
        return b
    return a if b is None else a + b


def merge_attention(a: Optional[AttentionPositions], b: Optional[AttentionPositions]) -> Optional[AttentionPositions]:
    if a is None or b is None:
        return b if a is None else a
    if a.cos is not None and b.cos is not None:
        raise ValueError("two parts of a composite position encoder rotate q and k; keep one rotary encoder")
    fused = {}
    for name in ("q_fused", "k_fused", "v_fused"):
        if getattr(a, name) is not None and getattr(b, name) is not None:
            raise ValueError(f"two parts of a composite position encoder replace the same projection bias ({name})")
        fused[name] = getattr(a, name) if getattr(a, name) is not None else getattr(b, name)
    return AttentionPositions(q=_add(a.q, b.q), k=_add(a.k, b.k), v=_add(a.v, b.v),
                              cos=a.cos if a.cos is not None else b.cos, sin=a.sin if a.sin is not None else b.sin,
                              logit_bias=_add(a.logit_bias, b.logit_bias), **fused)


def merge_layer(a: LayerPositions, b: LayerPositions) -> LayerPositions:
    return LayerPositions(input=_add(a.input, b.input),
                          self_attention=merge_attention(a.self_attention, b.self_attention),
                          cross_attention=merge_attention(a.cross_attention, b.cross_attention))


# the row of issue 30: RoPE in self-attention with the bounded FLOATER at every block
position_encoder_class("rope+floater")
