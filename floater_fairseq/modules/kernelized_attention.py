"""Kernelized attention with relative position encoding, computed by FFT in O(n log n).

Luo et al., "Stable, Fast and Accurate: Kernelized Attention with Relative Positional Encoding"
(NeurIPS 2021). With positive random features phi (Performer) and a learnable relative bias
b_{j-i} per head, c = exp(b - max b):

    z_i = phi(q_i)^T sum_j c_{j-i} phi(k_j) v_j^T  /  phi(q_i)^T sum_j c_{j-i} phi(k_j)      (1)

C_ij = c_{j-i} is Toeplitz, so both sums are one Toeplitz product C @ [phi(k) (x) [v, 1]], done
with rFFT/irFFT of length 2n in fp32: O(n log n) time; the outer products are formed a block
at a time and never stored, so memory is O(n (m + d)). q and k are L2-normalised
(the paper's fix for unstable random-feature attention); the relative bias restores sharp
attention. Causal attention sets c_{j-i} = 0 for j > i; incremental decoding computes step i
directly in O(i). Only self-attention: cross-attention has no relative position.
"""
import functools
import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..options import add_options, fill_defaults
from .position_aware_layers import PositionAwareAttention



@dataclass
class KernelizedAttentionOptions:
    """What --kernelized-* says for one side (encoder or decoder)."""

    features: int = 64  # m, the number of random features
    redraw: bool = False  # draw new features at every training forward
    window: int = 0  # offsets clipped to [-window, window]; 0: the side's max positions - 1
    fft_min_length: int = 0  # shorter inputs: direct O(n^2 m) evaluation; 0: always FFT


def _compute_dtype(x: Tensor) -> torch.dtype:
    """fp32 at least (fp16/bf16 FFTs lose the small weights), float64 kept for tests."""
    return torch.promote_types(x.dtype, torch.float32)


def orthogonal_gaussian_features(num_features: int, dim: int, generator=None, device=None) -> Tensor:
    """[m, d] rows w ~ N(0, I) drawn in orthogonal blocks (Performer's ORF): each block of d rows
    is an orthonormal basis rescaled by the norms of independent Gaussian vectors."""
    blocks = []
    for _ in range(math.ceil(num_features / dim)):
        gaussian = torch.randn(dim, dim, generator=generator, device=device)
        q, r = torch.linalg.qr(gaussian)
        q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # Haar-uniform (QR's signs are not)
        norms = torch.randn(dim, dim, generator=generator, device=device).norm(dim=1)
        blocks.append(q.t() * norms.unsqueeze(1))
    return torch.cat(blocks)[:num_features]


def positive_random_features(x: Tensor, projection: Tensor) -> Tensor:
    """phi(x) = exp(w^T x - |x|^2 / 2) / sqrt(m), so E[phi(q)^T phi(k)] = exp(q^T k)."""
    logits = x @ projection.t() - 0.5 * x.pow(2).sum(-1, keepdim=True)
    return torch.exp(logits) / math.sqrt(projection.size(0))


def relative_offsets_bias(rpe_bias: Tensor, length: int, causal: bool) -> Tensor:
    """[H, 2n-1] bias for offsets j - i = -(n-1) .. n-1 from the per-head table [H, W+1] (causal:
    offsets -W..0) or [H, 2W+1] (offsets -W..W); offsets beyond the window take its edge value."""
    window = rpe_bias.size(1) - 1 if causal else (rpe_bias.size(1) - 1) // 2
    offsets = torch.arange(-(length - 1), length, device=rpe_bias.device).clamp(-window, window)
    if causal:
        offsets = offsets.clamp(max=0)  # the future half is zeroed by the caller
    return rpe_bias[:, offsets + window]


def toeplitz_kernel(bias: Tensor, causal: bool) -> Tensor:
    """c = exp(b - max b) over the offsets in use, [H, 2n-1]; causal: zero for j > i."""
    length = (bias.size(1) + 1) // 2
    if causal:
        past = bias[:, :length]
        c_past = torch.exp(past - past.max(dim=1, keepdim=True).values)
        return torch.cat([c_past, c_past.new_zeros(bias.size(0), length - 1)], dim=1)
    return torch.exp(bias - bias.max(dim=1, keepdim=True).values)


def _circulant_column(kernel: Tensor) -> Tensor:
    """First column g of the 2n circulant embedding of t (offsets -(n-1)..n-1), g[(i - j) mod 2n]
    = t_{j-i}: t_0, t_-1, .., t_-(n-1), 0, t_(n-1), .., t_1."""
    n = (kernel.size(-1) + 1) // 2
    return torch.cat([kernel[:, :n].flip(1), kernel.new_zeros(kernel.size(0), 1), kernel[:, n:].flip(1)], dim=1)


def _spectrum(kernel: Tensor, n: int) -> Tensor:
    """rFFT of the circulant embedding, [H, n+1]."""
    return torch.fft.rfft(_circulant_column(kernel), n=2 * n)


def _convolve(x: Tensor, spectrum: Tensor) -> Tensor:
    """irFFT(rFFT(x, 2n) * spectrum)[:n] along the last dim: the Toeplitz product."""
    n = x.size(-1)
    return torch.fft.irfft(torch.fft.rfft(x, n=2 * n) * spectrum, n=2 * n)[..., :n]


def toeplitz_matmul(kernel: Tensor, x: Tensor) -> Tensor:
    """y_i = sum_j t_{j-i} x_j for kernel t [H, 2n-1] (offsets -(n-1)..n-1) and x [B, H, F, n]
    (sequence last), as a circular convolution of length 2n (rFFT/irFFT, fp32 at least)."""
    dtype = _compute_dtype(x)
    return _convolve(x.to(dtype), _spectrum(kernel.to(dtype), x.size(-1)).unsqueeze(1))


def _blocks(phi: Tensor, values: int, budget_bytes: int = 2 * 2 ** 20):
    """(heads, features) slices whose outer products' 2n-point spectra take ~``budget_bytes``:
    small blocks stay in cache (measured at n = 2048 on a 2-core CPU: 2 MB blocks ~5x faster
    than 256 MB ones)."""
    batch, heads, features, n = phi.shape
    per_feature = batch * values * (n + 1) * 2 * phi.element_size()
    step = max(1, min(features, budget_bytes // max(per_feature, 1)))
    return [(slice(h, h + 1), slice(i, min(i + step, features)))
            for h in range(heads) for i in range(0, features, step)]


class _KernelizedRPE(torch.autograd.Function):
    """out[d, i] = sum_m phi_q[m, i] sum_j t_{j-i} phi_k[m, j] v[d, j]   (Eq. 1, unnormalised)

    for phi_q, phi_k [B, H, m, n], v [B, H, D, n], t [H, 2n-1]. The outer products phi_k (x) v
    are formed, convolved and contracted a few features at a time and never stored: memory is
    O(n (m + D)) besides one chunk, and the backward recomputes them. Backward (T^T reverses the
    offsets): grad S = phi_q (x) grad_out, grad outer = T^T grad S, grad t_k = sum_i grad S_i .
    outer_{i+k} (a cross-correlation, from the same spectra)."""

    @staticmethod
    def forward(ctx, kernel, phi_q, phi_k, v):
        ctx.save_for_backward(kernel, phi_q, phi_k, v)
        spectrum = _spectrum(kernel, v.size(-1))[None, :, None, None, :]  # [1, H, 1, 1, n+1]
        out = torch.zeros_like(v)
        for h, f in _blocks(phi_k, v.size(2)):
            summed = _convolve(phi_k[:, h, f, None, :] * v[:, h, None], spectrum[:, h])  # [B, 1, c, D, n]
            out[:, h] += torch.einsum("bhcn,bhcdn->bhdn", phi_q[:, h, f], summed)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        kernel, phi_q, phi_k, v = ctx.saved_tensors
        want_kernel, want_q, want_k, want_v = ctx.needs_input_grad
        n = v.size(-1)
        spectrum = _spectrum(kernel, n)[None, :, None, None, :]
        transposed = _spectrum(kernel.flip(1), n)[None, :, None, None, :]
        grad_out = grad_out.contiguous()
        grad_q, grad_k = torch.zeros_like(phi_q), torch.zeros_like(phi_k)
        grad_v = torch.zeros_like(v)
        correlation = torch.zeros(kernel.size(0), n + 1, dtype=spectrum.dtype, device=kernel.device)
        for h, f in _blocks(phi_k, v.size(2)):
            outer_spectrum = torch.fft.rfft(phi_k[:, h, f, None, :] * v[:, h, None], n=2 * n)
            if want_q:
                summed = torch.fft.irfft(outer_spectrum * spectrum[:, h], n=2 * n)[..., :n]
                grad_q[:, h, f] = torch.einsum("bhdn,bhcdn->bhcn", grad_out[:, h], summed)
            grad_summed_spectrum = torch.fft.rfft(phi_q[:, h, f, None, :] * grad_out[:, h, None], n=2 * n)
            if want_kernel:
                correlation[h] += torch.einsum("bhcdf,bhcdf->hf", grad_summed_spectrum.conj(), outer_spectrum)
            if want_k or want_v:
                grad_outer = torch.fft.irfft(grad_summed_spectrum * transposed[:, h], n=2 * n)[..., :n]
                grad_k[:, h, f] = torch.einsum("bhcdn,bhdn->bhcn", grad_outer, v[:, h])
                grad_v[:, h] += torch.einsum("bhcdn,bhcn->bhdn", grad_outer, phi_k[:, h, f])
        grad_kernel = None
        if want_kernel:
            r = torch.fft.irfft(correlation, n=2 * n)  # r[k mod 2n] = sum_i grad S_i . outer_{i+k}
            grad_kernel = torch.cat([r[:, n + 1:], r[:, :n]], dim=1)
        return grad_kernel, grad_q if want_q else None, grad_k if want_k else None, grad_v if want_v else None


def _features(x: Tensor, projection: Tensor, dtype: torch.dtype) -> Tensor:
    return positive_random_features(F.normalize(x.to(dtype), dim=-1), projection.to(dtype))


def _direct(phi_q: Tensor, phi_k: Tensor, v: Tensor, kernel: Tensor, first_row: int) -> Tensor:
    """Eq. (1) evaluated directly, O(n_q n_k m): queries at positions first_row, first_row + 1, ..
    against keys 0 .. L-1, with kernel t [H, 2L-1] over offsets -(L-1)..L-1."""
    length = phi_k.size(2)
    rows = torch.arange(first_row, first_row + phi_q.size(2), device=phi_q.device)
    offsets = torch.arange(length, device=phi_q.device).unsqueeze(0) - rows.unsqueeze(1) + length - 1
    weights = (phi_q @ phi_k.transpose(-1, -2)) * kernel[:, offsets]
    return _normalise(weights @ v, weights.sum(-1, keepdim=True))


def kernelized_rpe_attention(q: Tensor, k: Tensor, v: Tensor, rpe_bias: Tensor, projection: Tensor,
                             key_padding_mask: Optional[Tensor] = None, causal: bool = False,
                             fft_min_length: int = 0) -> Tensor:
    """Eq. (1) for q, k, v [B, H, n, d] (q, k normalised here), key_padding_mask [B, n] True at
    pads; returns [B, H, n, d] in q's dtype. Numerator and denominator share one Toeplitz product:
    the denominator is the numerator's extra value column of ones. Inputs shorter than
    ``fft_min_length`` take the direct O(n^2 m) evaluation of the same sums (faster for short
    sentences; 0: always FFT)."""
    compute = _compute_dtype(q)
    phi_q, phi_k = _features(q, projection, compute), _features(k, projection, compute)
    if key_padding_mask is not None:
        phi_k = phi_k.masked_fill(key_padding_mask[:, None, :, None], 0.0)  # pads contribute nothing
    kernel = toeplitz_kernel(relative_offsets_bias(rpe_bias.to(compute), q.size(2), causal), causal)
    if q.size(2) < fft_min_length:
        out = _direct(phi_q, phi_k, v.to(compute), kernel, 0)
    else:
        v1 = torch.cat([v.to(compute), v.new_ones(v.shape[:-1] + (1,), dtype=compute)], dim=-1)
        # sequence last, contiguous: the FFTs run along contiguous memory
        summed = _KernelizedRPE.apply(kernel, *(x.transpose(-1, -2).contiguous() for x in (phi_q, phi_k, v1)))
        summed = summed.transpose(-1, -2)
        out = _normalise(summed[..., :-1], summed[..., -1:])
    if key_padding_mask is not None:
        # a query that sees no real key (a pad before the first token) gets 0, not FFT round-off / 0
        real = (~key_padding_mask).to(compute)
        sees_a_key = real.cumsum(-1) > 0 if causal else real.sum(-1, keepdim=True) > 0
        out = out * sees_a_key[:, None, :, None]
    return out.to(q.dtype)


def add_self_attention_args(parser):
    add_options(parser, "self-attention")


def self_attention_defaults(args):
    fill_defaults(args, "self-attention")


def self_attention_module(args, side: str):
    """The factory a layer builds its self-attention with, or None for fairseq's softmax."""
    if getattr(args, f"{side}_self_attention") != "kernelized-rpe":
        return None
    options = KernelizedAttentionOptions(args.kernelized_features, args.kernelized_feature_redraw,
                                         args.kernelized_rpe_window, args.kernelized_fft_min_length)
    max_positions = args.max_source_positions if side == "encoder" else args.max_target_positions
    return functools.partial(KernelizedRPEAttention, options=options, max_positions=max_positions,
                             causal=side == "decoder")


def _normalise(numerator: Tensor, denominator: Tensor) -> Tensor:
    """numerator / denominator; the denominator is > 0 unless every key is padding (then 0)."""
    return numerator / denominator.clamp_min(torch.finfo(denominator.dtype).tiny)


class KernelizedRPEAttention(PositionAwareAttention):
    """Self-attention of Eq. (1), a drop-in for fairseq's MultiheadAttention (same projections and
    parameter names, fairseq's incremental_state conventions, so beam search reorders it).

    The position encoder's q/k/v biases and rotations still apply (they act on the projections);
    a logit bias (ALiBi) cannot, since there are no explicit logits. Attention dropout does not
    apply either: there is no explicit attention matrix to drop from."""

    def __init__(self, embed_dim: int, num_heads: int, options: KernelizedAttentionOptions,
                 max_positions: int, causal: bool, **kwargs):
        kwargs["self_attention"] = True
        super().__init__(embed_dim, num_heads, **kwargs)
        if options.features < 1:
            raise ValueError(f"--kernelized-features must be positive, got {options.features}")
        window = options.window or max(max_positions - 1, 1)
        self.causal = causal
        self.redraw = options.redraw
        self.fft_min_length = options.fft_min_length
        # zero bias: uniform c, i.e. plain random-feature attention at initialisation
        self.rpe_bias = nn.Parameter(torch.zeros(num_heads, (window + 1) if causal else (2 * window + 1)))
        # persistent: a checkpoint decodes with the features it was trained with
        self.register_buffer("feature_projection", orthogonal_gaussian_features(options.features, self.head_dim))

    @property
    def window(self) -> int:
        return self.rpe_bias.size(1) - 1 if self.causal else (self.rpe_bias.size(1) - 1) // 2

    def _projection(self) -> Tensor:
        if self.redraw and self.training:
            self.feature_projection.copy_(orthogonal_gaussian_features(
                self.feature_projection.size(0), self.head_dim, device=self.feature_projection.device))
        return self.feature_projection

    def _heads(self, x: Tensor) -> Tensor:
        t, b, _ = x.shape
        return x.view(t, b, self.num_heads, self.head_dim).permute(1, 2, 0, 3)  # [B, H, T, d]

    def forward(self, query, key=None, value=None, key_padding_mask=None, incremental_state=None,
                need_weights=True, static_kv=False, attn_mask=None, before_softmax=False,
                need_head_weights=False) -> Tuple[Tensor, Optional[Tensor]]:
        positions = self.current_positions()
        if positions is not None and positions.logit_bias is not None:
            raise RuntimeError("kernelized-rpe attention has no explicit logits for a logit bias "
                               "(ALiBi); it has its own relative bias: use --pos-encoder none")
        if before_softmax:
            raise NotImplementedError("kernelized-rpe attention has no logits to return (before_softmax)")
        if attn_mask is not None and not self.causal:
            raise NotImplementedError("non-causal kernelized-rpe attention takes no attention mask")
        # a causal module applies its own future mask (the attn_mask fairseq's decoder passes)
        key = query if key is None else key
        value = key if value is None else value
        q, k, v = (self._heads(proj(x)) for proj, x in ((self.q_proj, query), (self.k_proj, key),
                                                         (self.v_proj, value)))
        if incremental_state is not None:
            out = self._incremental_step(q, k, v, key_padding_mask, incremental_state)
        else:
            out = kernelized_rpe_attention(q, k, v, self.rpe_bias, self._projection(), key_padding_mask,
                                           causal=self.causal, fft_min_length=self.fft_min_length)
        tgt_len, bsz = query.size(0), query.size(1)
        out = out.permute(2, 0, 1, 3).reshape(tgt_len, bsz, self.embed_dim)
        return self.out_proj(out), None

    def _incremental_step(self, q, k, v, key_padding_mask, incremental_state) -> Tensor:
        """Decoder step(s) computed directly from the stored keys' features and values, O(i)."""
        if not self.causal:
            raise RuntimeError("incremental decoding needs causal (decoder) kernelized-rpe attention")
        compute = _compute_dtype(q)
        phi_k = _features(k, self.feature_projection, compute)
        if key_padding_mask is not None:
            phi_k = phi_k.masked_fill(key_padding_mask[:, -k.size(2):][:, None, :, None], 0.0)
        state: Dict[str, Optional[Tensor]] = self._get_input_buffer(incremental_state)
        if "prev_key_features" in state:
            phi_k = torch.cat([state["prev_key_features"], phi_k], dim=2)
            v = torch.cat([state["prev_value"], v.to(compute)], dim=2)
        state["prev_key_features"], state["prev_value"] = phi_k, v.to(compute)
        incremental_state = self._set_input_buffer(incremental_state, state)
        length, steps = phi_k.size(2), q.size(2)
        kernel = toeplitz_kernel(relative_offsets_bias(self.rpe_bias.to(compute), length, True), True)
        # the new queries sit at positions length - steps .. length - 1
        return _direct(_features(q, self.feature_projection, compute), phi_k, v, kernel,
                       length - steps).to(q.dtype)
