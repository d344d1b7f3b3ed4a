"""Shifted-basis (non-Fourier) position encoders, after Zheng, Ramasinghe and Lucey 2021
("Rethinking Positional Encoding", part A of docs/other-systems.md).

    Psi(x)_j = psi(x - t_j),   t_j = j * L_max / D,   j = 0..D-1,   x = 0..L_max-1

psi (``--basis``): gaussian exp(-u^2 / (2 w^2)); triangle max(0, 1 - |u| / w); impulse
1[|u| <= w / 2]; square sign(cos(pi u / w)) (a +-1 wave of period 2w centred on t_j); rff
[sin 2 pi b x, cos 2 pi b x] with D/2 frequencies b ~ N(0, 1) / w (random Fourier features,
seeded, stored in the checkpoint). w = ``--basis-width`` in tokens (default: the centre spacing).
Rows are divided by the largest row norm. ``--basis-projection linear`` maps the D features to
the model dimension with a learned Linear(D -> d) (one per block with --pos-blocks all);
``none`` needs D == d. A fixed table of L_max rows: no extrapolation past L_max.
With impulse, w = 1 and D = L_max, Psi is the identity and the projection is exactly a learned
absolute embedding (tested).
"""
import math

import torch
from torch import nn

from ..options import BASES, add_options, fill_defaults
from .position_encoder import AbsolutePositionEncoder, register_position_encoder



def shifted_basis(kind: str, max_positions: int, size: int, width: float, seed: int = 0) -> torch.Tensor:
    """Psi [max_positions, size], float64, rows divided by the largest row norm."""
    if width <= 0:
        raise ValueError(f"--basis-width must be positive, got {width}")
    x = torch.arange(max_positions, dtype=torch.float64).unsqueeze(1)
    if kind == "rff":
        if size % 2:
            raise ValueError(f"--basis rff needs an even --basis-size (sin and cos pairs), got {size}")
        g = torch.Generator().manual_seed(seed)
        frequencies = torch.randn(size // 2, generator=g, dtype=torch.float64) / width
        angles = 2 * math.pi * x * frequencies
        psi = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    else:
        centres = torch.arange(size, dtype=torch.float64) * (max_positions / size)
        u = x - centres
        if kind == "gaussian":
            psi = torch.exp(-u ** 2 / (2 * width ** 2))
        elif kind == "triangle":
            psi = (1 - u.abs() / width).clamp(min=0)
        elif kind == "impulse":
            psi = (u.abs() <= width / 2).double()
        elif kind == "square":
            psi = torch.sign(torch.cos(math.pi * u / width))
        else:
            raise ValueError(f"unknown --basis {kind!r}; choose from {', '.join(BASES)}")
    return psi / psi.norm(dim=1).max().clamp(min=1e-12)


@register_position_encoder("shifted-basis")
class ShiftedBasisEncoder(AbsolutePositionEncoder):
    def __init__(self, args, num_layers):
        super().__init__(args, num_layers)
        self.length = args.basis_max_positions
        size = args.basis_size
        width = args.basis_width if args.basis_width is not None else self.length / size
        self.register_buffer("basis", shifted_basis(args.basis, self.length, size, width, args.basis_seed).float())
        if args.basis_projection == "linear":
            self.projections = nn.ModuleDict({
                side: nn.ModuleList(nn.Linear(size, self.embed_dim) for _ in range(self.num_tables(side)))
                for side in ("encoder", "decoder")
            })
        elif size != self.embed_dim:
            raise ValueError(
                f"--basis-projection none adds the {size} basis features directly to {self.embed_dim}-dim "
                f"embeddings: set --basis-size {self.embed_dim} or use --basis-projection linear"
            )
        else:
            self.projections = None
        self.extra = f"basis={args.basis}, size={size}, width={width:g}, max_positions={self.length}"

    @staticmethod
    def add_args(group):
        add_options(group, "shifted-basis")

    @staticmethod
    def set_defaults(args):
        fill_defaults(args, "shifted-basis")

    def max_positions(self, side):
        return self.length

    def table(self, side, length):
        self.check_length(side, length)
        psi = self.basis[:length]
        if self.projections is None:
            return psi.unsqueeze(1).expand(length, self.num_tables(side), -1)
        return torch.stack([projection(psi) for projection in self.projections[side]], dim=1)

    def extra_repr(self):
        return f"{super().extra_repr()}, {self.extra}"
