"""Clipping-range searches on calibration histograms: what `TensorStats.range` computes.

Every function here takes a `HistogramView` (a signed histogram with uniform bins, plus
the exact finite min/max of the data) and returns `(lo, hi)` as Python floats:

- `minmax_range`: the observed min/max;
- `percentile_range`: asymmetric: the (100 - p)-th and p-th percentiles of x;
  symmetric: the p-th percentile of |x|; read off the histogram's CDF with linear
  interpolation inside a bin (within one bin width of the inverted-CDF percentile);
- `mse_range`: the range whose quantization grid (see `calibration_grids`) minimises the
  expected squared error, computed exactly for data uniform inside each bin; symmetric:
  a 1-D search over the threshold (coarse grid, then a refinement around the best);
  asymmetric: a joint shrink of (lo, hi), then two rounds of per-end coordinate descent;
- `entropy_range`: TensorRT's KL-divergence threshold on the |x| histogram (as in
  NVIDIA's pytorch-quantization `_compute_amax_entropy`): for each candidate bin i from
  `start_bin`, P = the first i bins with the tail mass added to the last, Q = those bins
  merged into `num_quantized_bins` (2^(bits-1) = 128 for 8 bits) and spread back over
  the non-empty bins; the threshold is the largest i minimising KL(P || Q). Like
  pytorch-quantization, the zero bin takes its neighbour's count so that a spike of exact
  zeros (ReLU) does not pull the threshold down.

Results are then finished the same way (`finish_range`): `symmetric=True` gives
`(-a, a)` with `a = max(|lo|, |hi|)`; otherwise the range is clipped to the observed
[min, max] and, with `include_zero` (the default), widened to contain 0 (every grid
requant quantizes onto represents 0 exactly: padding, ReLU zeros, masked attention).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from requant.errors import RequantError
from requant.ir.dtypes import DType
from requant.passes.calibration_grids import Grid, expected_mse, quant_grid, resolve_dtype

__all__ = [
    "HistogramView",
    "finish_range",
    "minmax_range",
    "percentile_range",
    "mse_range",
    "entropy_range",
    "histogram_quantile",
]

logger = logging.getLogger(__name__)

_COARSE_STEPS = 128
_REFINE_STEPS = 33
_ENTROPY_MAX_CANDIDATES = 1024


@dataclass(frozen=True)
class HistogramView:
    """A signed histogram (`counts[i]` values in `[edges[i], edges[i + 1])`), symmetric
    about 0, and the exact finite min/max of the data it counts."""

    counts: np.ndarray
    edges: np.ndarray
    min: float
    max: float

    @property
    def absmax(self) -> float:
        return max(abs(self.min), abs(self.max))

    def folded(self) -> tuple[np.ndarray, np.ndarray]:
        """The histogram of |x|: bins [0, w), [w, 2w), ... (exact: the signed bins are
        symmetric about 0)."""
        half = self.counts.size // 2
        counts = self.counts[half:] + self.counts[:half][::-1]
        return counts, self.edges[half:] - self.edges[half]


def finish_range(lo: float, hi: float, view_min: float, view_max: float, *, symmetric: bool,
                 include_zero: bool = True) -> tuple[float, float]:
    """Apply the common finishing rules (module docstring) to a raw `(lo, hi)`."""
    if symmetric:
        a = float(max(abs(lo), abs(hi)))
        return -a, a
    lo, hi = max(float(lo), float(view_min)), min(float(hi), float(view_max))
    if include_zero:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    return lo, hi


def minmax_range(view_min: float, view_max: float, *, symmetric: bool = False,
                 include_zero: bool = True) -> tuple[float, float]:
    return finish_range(view_min, view_max, view_min, view_max, symmetric=symmetric, include_zero=include_zero)


def histogram_quantile(counts: np.ndarray, edges: np.ndarray, q: float) -> float:
    """The q-quantile (0 <= q <= 1) of the histogram, interpolating linearly in a bin."""
    cdf = np.cumsum(counts, dtype=np.float64)
    total = cdf[-1]
    if total <= 0:
        return 0.0
    target = q * total
    i = int(min(np.searchsorted(cdf, target, side="left"), counts.size - 1))
    before = cdf[i - 1] if i > 0 else 0.0
    frac = (target - before) / counts[i] if counts[i] > 0 else 1.0
    return float(edges[i] + min(max(frac, 0.0), 1.0) * (edges[i + 1] - edges[i]))


def percentile_range(view: HistogramView, percentile: float = 99.99, *, symmetric: bool = False,
                     include_zero: bool = True) -> tuple[float, float]:
    if not 0.0 < percentile <= 100.0:
        raise RequantError(f"calibration: percentile must be in (0, 100], got {percentile}")
    q = percentile / 100.0
    if symmetric:
        counts, edges = view.folded()
        a = min(histogram_quantile(counts, edges, q), view.absmax)
        return finish_range(-a, a, view.min, view.max, symmetric=True)
    lo = histogram_quantile(view.counts, view.edges, 1.0 - q)
    hi = histogram_quantile(view.counts, view.edges, q)
    return finish_range(lo, hi, view.min, view.max, symmetric=False, include_zero=include_zero)


def mse_range(view: HistogramView, dtype: str | DType | None = None, *, bits: int | None = None,
              symmetric: bool | None = None, grid: Grid | None = None,
              include_zero: bool = True) -> tuple[float, float]:
    """The MSE-optimal range for `dtype` (default int8; or a signed integer of `bits`),
    or for a custom `grid(lo, hi)`. `symmetric=None` follows the dtype: signed types
    symmetric, unsigned asymmetric; float formats are always symmetric."""
    dt = resolve_dtype(dtype, bits)
    if symmetric is None:
        symmetric = dt.kind != "uint"
    if dt.is_float and not symmetric and grid is None:
        raise RequantError(f"calibration: {dt.name} grids are symmetric; use symmetric=True for float formats")
    grid = grid or quant_grid(dt, symmetric)

    def cost(lo: float, hi: float) -> float:
        return expected_mse(view.counts, view.edges, np.asarray(grid(lo, hi), dtype=np.float64))

    if symmetric:
        a = _search_scale(lambda t: cost(-t, t), view.absmax)
        return finish_range(-a, a, view.min, view.max, symmetric=True)
    lo, hi = _search_asymmetric(cost, min(view.min, 0.0), max(view.max, 0.0))
    return finish_range(lo, hi, view.min, view.max, symmetric=False, include_zero=include_zero)


def _search_scale(cost_of, top: float) -> float:
    """argmin over t in (0, top] of cost_of(t): a coarse grid, then a finer one around
    the best coarse point."""
    if top <= 0.0:
        return 0.0
    coarse = top * np.linspace(1.0 / _COARSE_STEPS, 1.0, _COARSE_STEPS)
    costs = [cost_of(float(t)) for t in coarse]
    best = int(np.argmin(costs))
    lo_t = coarse[best - 1] if best > 0 else coarse[0] / 2
    hi_t = coarse[min(best + 1, coarse.size - 1)]
    fine = np.linspace(lo_t, hi_t, _REFINE_STEPS)
    fine_costs = [cost_of(float(t)) for t in fine]
    if min(fine_costs) < costs[best]:
        return float(fine[int(np.argmin(fine_costs))])
    return float(coarse[best])


def _search_asymmetric(cost, lo0: float, hi0: float) -> tuple[float, float]:
    if lo0 == hi0:
        return lo0, hi0
    alphas = np.linspace(1.0 / _COARSE_STEPS, 1.0, _COARSE_STEPS)
    joint = [cost(lo0 * a, hi0 * a) for a in alphas]
    a = float(alphas[int(np.argmin(joint))])
    lo, hi, best = lo0 * a, hi0 * a, min(joint)
    for _ in range(2):
        if lo0 < 0.0:
            cand = [cost(lo0 * x, hi) for x in alphas]
            if min(cand) < best:
                best, lo = min(cand), lo0 * float(alphas[int(np.argmin(cand))])
        if hi0 > 0.0:
            cand = [cost(lo, hi0 * x) for x in alphas]
            if min(cand) < best:
                best, hi = min(cand), hi0 * float(alphas[int(np.argmin(cand))])
    return lo, hi


def entropy_range(view: HistogramView, bits: int = 8, *, num_quantized_bins: int | None = None,
                  start_bin: int = 128, stride: int | None = None, symmetric: bool = False,
                  include_zero: bool = True) -> tuple[float, float]:
    """TensorRT-style KL threshold (module docstring). `stride=None` picks one that
    tries at most 1024 candidate thresholds."""
    nq = int(num_quantized_bins or 2 ** (bits - 1))
    counts, edges = view.folded()
    nonzero = np.nonzero(counts)[0]
    if nonzero.size == 0:
        return finish_range(0.0, 0.0, view.min, view.max, symmetric=symmetric, include_zero=include_zero)
    used = int(nonzero[-1]) + 1
    i_best = _kl_threshold_bin(counts[:used].astype(np.float64), nq, max(start_bin, nq), stride)
    a = min(float(edges[i_best]), view.absmax)
    return finish_range(-a, a, view.min, view.max, symmetric=symmetric, include_zero=include_zero)


def _kl_threshold_bin(hist: np.ndarray, nq: int, start: int, stride: int | None) -> int:
    """The number of |x| bins to keep (threshold = that bin's upper edge)."""
    n = hist.size
    if n <= start:
        return n
    hist = hist.copy()
    if n > 1:
        hist[0] = hist[1]  # ignore the spike of exact zeros (see the module docstring)
    if stride is None:
        stride = max(1, (n - start) // _ENTROPY_MAX_CANDIDATES)
    tail = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])  # tail[i] = sum(hist[i:])
    best_i, best_kl = n, np.inf
    for i in range(start, n + 1, stride):
        kl = _kl_at(hist, i, nq, tail[i])
        if kl <= best_kl:  # ties: keep the largest threshold
            best_i, best_kl = i, kl
    return best_i


def _kl_at(hist: np.ndarray, i: int, nq: int, tail_mass: float) -> float:
    head = hist[:i]
    p = head.copy()
    p[-1] += tail_mass
    group = (np.arange(i) * nq) // i
    nonempty = head > 0
    sums = np.bincount(group, weights=head, minlength=nq)
    sizes = np.bincount(group, weights=nonempty, minlength=nq)
    q = np.where(nonempty, sums[group] / np.maximum(sizes[group], 1.0), 0.0)
    p_total, q_total = p.sum(), q.sum()
    if p_total <= 0 or q_total <= 0:
        return np.inf
    mask = p > 0
    if np.any(q[mask] == 0):
        return np.inf
    pn, qn = p[mask] / p_total, q[mask] / q_total
    return float(np.sum(pn * np.log(pn / qn)))
