"""Quantization grids and the exact expected squared error of rounding onto them; used
by the MSE clipping search in `calibration_ranges`.

A *grid* is a callable `grid(lo, hi) -> np.ndarray`: the sorted real values a quantizer
whose calibrated range is `(lo, hi)` can output (after dequantization). `quant_grid(dtype,
symmetric)` makes the grid of requant's standard schemes:

- integers, symmetric: `scale = max(|lo|, |hi|) / (2^(bits-1) - 1)`, zero point 0 for
  signed types (codes `[qmin, qmax]`: int8 -128..127, so -128 * scale is representable,
  as QuantizeLinear saturates to it) and 2^(bits-1) for unsigned ones;
- integers, asymmetric (`symmetric=False`):
  `scale = (hi - lo) / (qmax - qmin)`, `zero_point = clip(round_half_even(qmin - lo /
  scale))`, values `(q - zero_point) * scale`;
- float formats (fp8_e4m3, fp8_e5m2, fp4_e2m1, any `FloatFormat`), always symmetric:
  the format's finite values times `max(|lo|, |hi|) / max_finite`.

`ErrorIntegral(points)` is the antiderivative F of e(x) = (x - nearest(x))^2 where
nearest() rounds to the closest point and saturates at the ends; for a histogram whose
counts are uniform inside each bin, the expected squared error of a bin [a, b] is
(F(b) - F(a)) / (b - a), exactly, which is what `expected_mse` sums.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import lru_cache

import numpy as np

from requant.errors import RequantError
from requant.ir import dtypes
from requant.ir.dtypes import DType, FloatFormat

__all__ = [
    "Grid",
    "quant_grid",
    "format_values",
    "resolve_dtype",
    "ErrorIntegral",
    "expected_mse",
]

logger = logging.getLogger(__name__)

Grid = Callable[[float, float], np.ndarray]
"""`grid(lo, hi)` -> sorted representable real values for the calibrated range."""


def resolve_dtype(dtype: str | DType | None = None, bits: int | None = None) -> DType:
    """The quantized dtype asked for: `dtype` by name or object, else a signed integer
    of `bits` bits (4 -> int4, 8 -> int8), else int8."""
    if dtype is not None:
        try:
            return dtypes.dtype(dtype)
        except ValueError as exc:
            raise RequantError(f"calibration: {exc}") from None
    if bits is None or bits == 8:
        return dtypes.int8
    if bits == 4:
        return dtypes.int4
    if bits == 16:
        return dtypes.int16
    raise RequantError(f"calibration: no integer dtype of {bits} bits; pass dtype= (int8, uint8, int4, uint4, fp8_e4m3, ...)")


def _int_bounds(dt: DType) -> tuple[int, int]:
    if dt.bits > 16:
        raise RequantError(f"calibration: {dt.name} is too wide to be a quantization target (at most 16 bits)")
    return dt.int_range


@lru_cache(maxsize=None)
def format_values(dt: DType) -> np.ndarray:
    """Sorted finite values of a float format, both signs, zero once (float64)."""
    if isinstance(dt, FloatFormat):
        e, m, b = dt.exp_bits, dt.man_bits, dt.bias
        sub = np.arange(2**m, dtype=np.float64) * 2.0 ** (1 - b - m)
        exps = np.arange(1, 2**e, dtype=np.float64)[:, None]
        normal = (1.0 + np.arange(2**m, dtype=np.float64)[None, :] / 2**m) * 2.0 ** (exps - b)
        pos = np.concatenate([sub, normal.ravel()])
    elif dt.is_float and dt.bits <= 8:
        codes = np.arange(2**dt.bits, dtype=np.uint8)
        pos = codes.view(dt.np).astype(np.float64)
        pos = pos[np.isfinite(pos) & (pos >= 0)]
    else:
        raise RequantError(f"calibration: {dt.name} has no quantization grid (use an int, uint or <=8-bit float format)")
    pos = np.unique(pos)
    values = np.unique(np.concatenate([-pos, pos]))
    values.flags.writeable = False
    return values


def quant_grid(dtype: str | DType, symmetric: bool = True) -> Grid:
    """The grid callable of a standard scheme over `dtype` (see the module docstring;
    the same conventions as `requant.ir.quant_formats.choose_qparams`). Float formats
    are always symmetric."""
    dt = resolve_dtype(dtype)
    if dt.is_float:
        values = format_values(dt)
        top = float(values[-1])

        def float_grid(lo: float, hi: float) -> np.ndarray:
            return values * (max(abs(lo), abs(hi)) / top)

        return float_grid
    qmin, qmax = _int_bounds(dt)
    codes = np.arange(qmin, qmax + 1, dtype=np.float64)
    if symmetric:
        # zero point 0 (signed) or 2^(bits-1) (unsigned); scale = amax / (2^(bits-1) - 1)
        half = 1 << (dt.bits - 1)
        centred = codes - (half if dt.kind == "uint" else 0)
        q = half - 1

        def symmetric_grid(lo: float, hi: float) -> np.ndarray:
            return centred * (max(abs(lo), abs(hi)) / q)

        return symmetric_grid

    def asymmetric_grid(lo: float, hi: float) -> np.ndarray:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        scale = (hi - lo) / (qmax - qmin)
        if scale == 0.0:
            return codes * 0.0
        zero_point = float(np.clip(np.round(qmin - lo / scale), qmin, qmax))
        return (codes - zero_point) * scale

    return asymmetric_grid


class ErrorIntegral:
    """F(x) = integral from points[0] to x of (t - nearest(t))^2 dt, nearest() rounding
    to the closest of `points` and saturating outside them (see the module docstring)."""

    def __init__(self, points: np.ndarray) -> None:
        p = np.unique(np.asarray(points, dtype=np.float64))
        if p.size == 0:
            raise RequantError("calibration: an empty quantization grid")
        self.points = p
        self.half_gaps = np.diff(p) / 2.0
        # cumulative integral up to each point: each gap contributes 2 * h^3 / 3
        self.cumulative = np.concatenate([[0.0], np.cumsum(2.0 * self.half_gaps**3 / 3.0)])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        p, h, c = self.points, self.half_gaps, self.cumulative
        x = np.asarray(x, dtype=np.float64)
        k = np.searchsorted(p, x, side="right") - 1
        below = k < 0
        above = k >= p.size - 1
        kk = np.clip(k, 0, max(p.size - 2, 0))
        out = np.empty_like(x)
        if p.size > 1:
            d = x - p[kk]
            near_left = d <= h[kk]
            left_part = c[kk] + d**3 / 3.0
            right_part = c[kk] + (2.0 * h[kk] ** 3 + (x - p[kk + 1]) ** 3) / 3.0
            out[...] = np.where(near_left, left_part, right_part)
        out = np.where(below, (x - p[0]) ** 3 / 3.0, out)
        out = np.where(above, c[-1] + (x - p[-1]) ** 3 / 3.0, out)
        return out


def expected_mse(counts: np.ndarray, edges: np.ndarray, points: np.ndarray) -> float:
    """Expected squared rounding error of data distributed as the histogram (uniform
    inside each bin) on the grid `points`."""
    total = float(counts.sum())
    if total == 0.0:
        return 0.0
    if not np.all(np.isfinite(points)):
        return float("inf")
    used = np.nonzero(counts)[0]  # only bins holding data contribute
    left, right = edges[used], edges[used + 1]
    integral = ErrorIntegral(points)
    per_bin = (integral(right) - integral(left)) / (right - left)
    return float(np.dot(counts[used], per_bin) / total)
