"""Fast Fourier transforms and the Toeplitz products computed with them (domain "requant").

Complex values follow ONNX's `DFT` convention: a complex tensor is a real tensor with
one more, trailing, axis of size 2 holding (real, imaginary). Axes of a complex tensor
are counted without that trailing axis.

- `RFFT(X; axis=-1, n=0)`: the real-input DFT along `axis`, unnormalised,
  `Y[k] = sum_t X[t] exp(-2 pi i k t / n)` for k = 0 .. n//2 (numpy.fft.rfft). `n` = 0
  takes the axis length; a longer `n` zero-pads, a shorter one truncates. Output: the
  complex [..., n//2 + 1 (at axis), ..., 2].
- `IRFFT(X; axis=-1, n=0)`: its inverse (numpy.fft.irfft): from the n//2 + 1 bins of a
  Hermitian spectrum to n real samples, normalised by 1/n. `n` = 0 means 2 (bins - 1).
  The imaginary parts of bin 0 and, for even n, of bin n/2 do not contribute (a real
  signal's spectrum has none there), as in numpy and ONNX Runtime's one-sided inverse DFT.
- `ToeplitzMatMulFFT(X, S; axis=-2, n_fft)`: `T @ X` along `axis`, where T is the
  Toeplitz matrix `T[i, j] = h[(i - j) mod n_fft]` (i, j < n, the axis length) of the
  circulant whose first column h has the spectrum `S = RFFT(h, n_fft)`:
  `Y = IRFFT(RFFT(X, n_fft) * S, n_fft)`, its first n entries along `axis`. S (without
  its complex axis) broadcasts against X right-aligned, with n_fft//2 + 1 bins where X
  has `axis` (one spectrum per head, per channel, ...); Y has the broadcast shape.
- `ToeplitzLowRankMatMulFFT(P, K, V, S; n_fft)`: `((P K^T) * T) @ V`, the product of a
  rank-m matrix masked elementwise by a Toeplitz T (same T as above) with V:
  `Y_i = sum_j (P_i . K_j) T[i, j] V_j` for P, K [..., n, m], V [..., n, e] and
  S [..., n_fft//2 + 1, 2], leading dims broadcast; Y [..., n, e].

Why these are exact: a Toeplitz matrix `C[i, j] = c_(j - i)` with offsets -(n-1) ..
n-1 is the top-left n x n block of a circulant of size L >= 2n - 1 whose first column
is `h[r] = c_(-r)` (r < n), `h[L - r] = c_r` (0 < r < n), zero elsewhere (`circulant_column`);
a circulant is diagonalised by the DFT, so `C @ x = IRFFT(RFFT(h) * RFFT(x, L))[:n]` in
O(L log L) instead of O(n^2). For `(P K^T * C) @ V` the paper's identity
`Y_i = P_i^T [sum_j c_(j-i) K_j V_j^T]` turns the product into Toeplitz products of the
m * e columns `K_j[r] V_j[s]` followed by a contraction with P_i (Luo et al., "Stable,
Fast and Accurate: Kernelized Attention with Relative Positional Encoding", NeurIPS
2021, arXiv 2106.12566), O(n m e log n) instead of O(n^2 (m + e)). Rounding is the
only difference from the quadratic forms.

Reference kernels compute in the compute dtype (f32 in float32, f64 in float64,
f16/bf16 in float32, rounded once): an f32 FFT here has the rounding of the f32 FFTs
the backends run, so a pass that needs more precision says so with Casts.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from requant.ir.ops._common import attr_int, check_input, compute_dtype
from requant.ir.registry import REQUIRED, InferContext, define_op
from requant.ir.shapes import broadcast_shapes, normalize_axis
from requant.ir.types import Dim, TensorType

__all__ = [
    "fft_length",
    "circulant_column",
    "circulant_gather_index",
    "toeplitz_line_positions",
    "rfft_reference",
    "irfft_reference",
    "toeplitz_matmul_fft_reference",
    "toeplitz_low_rank_matmul_fft_reference",
]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- the circulant embedding


def fft_length(n: int) -> int:
    """The FFT size a Toeplitz product of length n uses: the smallest power of two that
    holds the 2n - 1 offsets without wrap-around."""
    return 1 << max(0, (2 * n - 2).bit_length())


def toeplitz_line_positions(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the 2n - 1 entries that list a Toeplitz n x n matrix's diagonals
    by offset k = j - i = -(n-1) .. n-1: the first column bottom-up, then the first row."""
    k = np.arange(-(n - 1), n)
    return np.maximum(-k, 0), np.maximum(k, 0)


def circulant_gather_index(n: int, n_fft: int) -> np.ndarray:
    """For each r < n_fft, where the circulant's first column h[r] comes from in a
    Toeplitz line c[0 .. 2n-2] (c[t] = c_(t - (n-1))) followed by one zero (index
    2n - 1): h[r] = c_(-r) for r < n, h[n_fft - r] = c_r for 0 < r < n, else 0."""
    if n_fft < 2 * n - 1:
        raise ValueError(f"an FFT of {n_fft} points cannot hold the {2 * n - 1} offsets of a length-{n} Toeplitz")
    index = np.full(n_fft, 2 * n - 1, dtype=np.int64)
    r = np.arange(n)
    index[r] = (n - 1) - r
    r = np.arange(1, n)
    index[n_fft - r] = (n - 1) + r
    return index


def circulant_column(line: np.ndarray, n_fft: int) -> np.ndarray:
    """The circulant first column h [..., n_fft] of Toeplitz lines [..., 2n - 1]."""
    n = (line.shape[-1] + 1) // 2
    padded = np.concatenate([line, np.zeros(line.shape[:-1] + (1,), line.dtype)], axis=-1)
    return padded[..., circulant_gather_index(n, n_fft)]


# ----------------------------------------------------------------------------- reference kernels


def _as_complex(x: np.ndarray) -> np.ndarray:
    return x[..., 0] + 1j * x[..., 1] if x.dtype == np.float64 else (x[..., 0] + np.complex64(1j) * x[..., 1])


def _as_pairs(z: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return np.stack([z.real, z.imag], axis=-1).astype(dtype)


def rfft_reference(x: np.ndarray, n: int = 0, axis: int = -1) -> np.ndarray:
    """RFFT (module docstring) in the compute dtype of x."""
    ct = compute_dtype(x)
    z = np.fft.rfft(x.astype(ct, copy=False), n=n or None, axis=axis)
    return _as_pairs(z, ct)


def irfft_reference(x: np.ndarray, n: int = 0, axis: int = -1) -> np.ndarray:
    """IRFFT (module docstring) in the compute dtype of x."""
    ct = compute_dtype(x)
    z = _as_complex(x.astype(ct, copy=False))
    return np.fft.irfft(z, n=n or None, axis=axis).astype(ct, copy=False)


def toeplitz_matmul_fft_reference(x: np.ndarray, s: np.ndarray, n_fft: int, axis: int = -2) -> np.ndarray:
    """ToeplitzMatMulFFT (module docstring) in the compute dtype of x."""
    ct = compute_dtype(x)
    from_end = (axis % x.ndim) - x.ndim  # S and the result align with X from the right
    n = x.shape[from_end]
    spectrum = np.fft.rfft(x.astype(ct, copy=False), n=n_fft, axis=from_end) * _as_complex(s.astype(ct, copy=False))
    y = np.fft.irfft(spectrum, n=n_fft, axis=from_end)
    return np.take(y, np.arange(n), axis=from_end).astype(ct, copy=False)


def toeplitz_low_rank_matmul_fft_reference(p: np.ndarray, k: np.ndarray, v: np.ndarray, s: np.ndarray,
                                           n_fft: int) -> np.ndarray:
    """ToeplitzLowRankMatMulFFT (module docstring) in the compute dtype of p: the m * e
    columns K_j[r] V_j[s], their Toeplitz products, then the contraction with P_i."""
    ct = compute_dtype(p)
    p, k, v, s = (a.astype(ct, copy=False) for a in (p, k, v, s))
    columns = k[..., :, :, None] * v[..., :, None, :]  # [..., n, m, e]
    spectrum = _as_complex(s)[..., :, None, None]  # [..., F, 1, 1]
    mixed = np.fft.irfft(np.fft.rfft(columns, n=n_fft, axis=-3) * spectrum, n=n_fft, axis=-3)
    mixed = mixed[..., : p.shape[-2], :, :].astype(ct, copy=False)
    return np.einsum("...nr,...nre->...ne", p, mixed).astype(ct, copy=False)


# ----------------------------------------------------------------------------- type rules


def _fft_size(ctx: InferContext, length: Dim) -> Dim:
    """The transform length: the attribute n, else the axis length."""
    n = attr_int(ctx, "n", lo=0)
    return n if n else length


def _infer_rfft(ctx: InferContext) -> list[TensorType]:
    x = check_input(ctx, 0, "float")
    if x.shape is None:
        return [TensorType(None, x.dtype)]
    if x.rank == 0:
        raise ctx.fail("X must have rank >= 1")
    axis = normalize_axis(attr_int(ctx, "axis"), x.rank, ctx.schema.id)
    n = _fft_size(ctx, x.shape[axis])
    if n == 0:
        raise ctx.fail("a transform of length 0")
    shape = list(x.shape)
    shape[axis] = n // 2 + 1 if isinstance(n, int) else None
    return [TensorType(tuple(shape) + (2,), x.dtype)]


def _complex_shape(ctx: InferContext, t: TensorType, name: str) -> tuple[Dim, ...]:
    if t.rank < 2:
        raise ctx.fail(f"{name} is complex (trailing axis of 2): it needs rank >= 2, got {t}")
    if isinstance(t.shape[-1], int) and t.shape[-1] != 2:
        raise ctx.fail(f"{name} is complex: its last axis holds (real, imaginary) and must be 2, got {t}")
    return tuple(t.shape[:-1])


def _infer_irfft(ctx: InferContext) -> list[TensorType]:
    x = check_input(ctx, 0, "float")
    if x.shape is None:
        return [TensorType(None, x.dtype)]
    shape = list(_complex_shape(ctx, x, "X"))
    axis = normalize_axis(attr_int(ctx, "axis"), len(shape), ctx.schema.id)
    bins = shape[axis]
    n = attr_int(ctx, "n", lo=0)
    if not n:
        n = 2 * (bins - 1) if isinstance(bins, int) else None
    if n == 0:
        raise ctx.fail("a transform of length 0 (one bin and n = 0): give n")
    shape[axis] = n
    return [TensorType(tuple(shape), x.dtype)]


def _spectrum_broadcast(ctx: InferContext, x_shape: tuple[Dim, ...], s: TensorType, axis: int, n_fft: int,
                        what: str) -> tuple[Dim, ...] | None:
    """The shape of the product with the spectrum: x_shape and S's, right-aligned, S's
    bins (at X's axis) replaced by the axis length; checks S's bins."""
    if s.shape is None:
        return None
    s_shape = list(_complex_shape(ctx, s, "S"))
    from_end = len(x_shape) - axis  # X's axis, counted from the end
    if len(s_shape) < from_end:
        raise ctx.fail(f"S {s} has no axis matching {what}'s axis {axis} (right-aligned, before the complex axis)")
    at = len(s_shape) - from_end
    bins = s_shape[at]
    if isinstance(bins, int) and bins != n_fft // 2 + 1:
        raise ctx.fail(f"S has {bins} bins at {what}'s axis; n_fft={n_fft} needs {n_fft // 2 + 1}")
    s_shape[at] = x_shape[axis]
    return broadcast_shapes([tuple(x_shape), tuple(s_shape)], ctx.schema.id)


def _n_fft(ctx: InferContext, n: Dim) -> int:
    n_fft = attr_int(ctx, "n_fft", lo=1)
    if isinstance(n, int) and n_fft < n:
        raise ctx.fail(f"n_fft={n_fft} is shorter than the sequence ({n})")
    return n_fft


def _infer_toeplitz(ctx: InferContext) -> list[TensorType]:
    x = check_input(ctx, 0, "float")
    s = check_input(ctx, 1, "float")
    if s.dtype != x.dtype:
        raise ctx.fail(f"S has dtype {s.dtype}, X has {x.dtype}")
    if x.shape is None:
        return [TensorType(None, x.dtype)]
    if x.rank == 0:
        raise ctx.fail("X must have rank >= 1")
    axis = normalize_axis(attr_int(ctx, "axis"), x.rank, ctx.schema.id)
    n_fft = _n_fft(ctx, x.shape[axis])
    return [TensorType(_spectrum_broadcast(ctx, tuple(x.shape), s, axis, n_fft, "X"), x.dtype)]


def _infer_low_rank(ctx: InferContext) -> list[TensorType]:
    p, k, v, s = (check_input(ctx, i, "float") for i in range(4))
    for name, t in (("K", k), ("V", v), ("S", s)):
        if t.dtype != p.dtype:
            raise ctx.fail(f"{name} has dtype {t.dtype}, P has {p.dtype}")
    if any(t.shape is None for t in (p, k, v)):
        return [TensorType(None, p.dtype)]
    for name, t in (("P", p), ("K", k), ("V", v)):
        if t.rank < 2:
            raise ctx.fail(f"{name} must be [..., n, features], got {t}")
    for name, t in (("K", k), ("V", v)):
        if isinstance(t.shape[-2], int) and isinstance(p.shape[-2], int) and t.shape[-2] != p.shape[-2]:
            raise ctx.fail(f"{name} {t} and P {p} have different sequence lengths")
    if isinstance(p.shape[-1], int) and isinstance(k.shape[-1], int) and p.shape[-1] != k.shape[-1]:
        raise ctx.fail(f"P {p} and K {k} have different feature sizes")
    n = p.shape[-2]
    n_fft = _n_fft(ctx, n)
    lead = broadcast_shapes([tuple(p.shape[:-2]), tuple(k.shape[:-2]), tuple(v.shape[:-2])], ctx.schema.id)
    if s.shape is not None:
        s_shape = _complex_shape(ctx, s, "S")
        bins = s_shape[-1]
        if isinstance(bins, int) and bins != n_fft // 2 + 1:
            raise ctx.fail(f"S has {bins} bins; n_fft={n_fft} needs {n_fft // 2 + 1}")
        lead = broadcast_shapes([lead, tuple(s_shape[:-1])], ctx.schema.id)
    return [TensorType(tuple(lead) + (n, v.shape[-1]), p.dtype)]


# ----------------------------------------------------------------------------- declarations


def _rfft_kernel(ins: list, attrs: dict, outs: list) -> Any:
    return rfft_reference(ins[0], int(attrs["n"]), int(attrs["axis"])).astype(ins[0].dtype)


def _irfft_kernel(ins: list, attrs: dict, outs: list) -> Any:
    x = ins[0]
    axis = int(attrs["axis"]) % (x.ndim - 1)
    return irfft_reference(x, int(attrs["n"]), axis).astype(x.dtype)


def _toeplitz_kernel(ins: list, attrs: dict, outs: list) -> Any:
    x = ins[0]
    return toeplitz_matmul_fft_reference(x, ins[1], int(attrs["n_fft"]), int(attrs["axis"])).astype(x.dtype)


def _low_rank_kernel(ins: list, attrs: dict, outs: list) -> Any:
    return toeplitz_low_rank_matmul_fft_reference(*ins[:4], n_fft=int(attrs["n_fft"])).astype(ins[0].dtype)


define_op(
    "RFFT",
    inputs=("X",),
    attrs={"axis": -1, "n": 0},
    infer=_infer_rfft,
    kernel=_rfft_kernel,
    domain="requant",
    doc="real-input DFT along an axis (numpy.fft.rfft); complex output as a trailing (re, im) axis",
)
define_op(
    "IRFFT",
    inputs=("X",),
    attrs={"axis": -1, "n": 0},
    infer=_infer_irfft,
    kernel=_irfft_kernel,
    domain="requant",
    doc="inverse of RFFT (numpy.fft.irfft): n real samples from n//2 + 1 Hermitian bins, 1/n normalised",
)
define_op(
    "ToeplitzMatMulFFT",
    inputs=("X", "S"),
    attrs={"axis": -2, "n_fft": REQUIRED},
    infer=_infer_toeplitz,
    kernel=_toeplitz_kernel,
    domain="requant",
    doc="Toeplitz @ X along an axis by the FFT: IRFFT(RFFT(X, n_fft) * S, n_fft), first n entries",
)
define_op(
    "ToeplitzLowRankMatMulFFT",
    inputs=("P", "K", "V", "S"),
    attrs={"n_fft": REQUIRED},
    infer=_infer_low_rank,
    kernel=_low_rank_kernel,
    domain="requant",
    doc="((P K^T) * Toeplitz) @ V by the FFT (kernelized attention with relative positions)",
)
