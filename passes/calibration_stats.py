"""`TensorStats`: streaming statistics of one tensor over a calibration set, in memory
that does not grow with the number of batches.

What it keeps, updated batch by batch by `update(array)`:
- the global min and max of the finite values (exact), the number of values seen, of
  batches, and of non-finite values (NaN/inf are counted, logged and left out);
- optionally (`axis=`), the min and max per channel along that axis (exact);
- optionally (`histogram=True`, the default), a histogram of x (signed, so asymmetric
  percentiles and zero-point searches work; |x| is its exact fold) with a fixed number of
  uniform bins over [-R, R]. R starts at the first batch's max |x| and doubles whenever a
  batch exceeds it: each doubling merges adjacent bin pairs into the middle half of the
  array, which is exact (no interpolation), so the histogram after many batches is the
  histogram of their concatenation at the final bin width (the top bin is closed, so a
  value equal to an earlier R stays in the bin below it). The bin width is 2R / bins
  with max|x| <= R < 2 max|x| (R = max|x| when no batch exceeded the first one).

`range(method, **opts)` turns the statistics into a clipping range; the methods are in
`calibration_ranges` (minmax, percentile, mse, entropy). `channel_range()` gives
per-channel min/max ranges.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from requant.errors import RequantError
from requant.passes.calibration_grids import resolve_dtype
from requant.passes.calibration_ranges import (
    HistogramView,
    entropy_range,
    minmax_range,
    mse_range,
    percentile_range,
)

__all__ = ["TensorStats", "RANGE_METHODS", "DEFAULT_BINS"]

logger = logging.getLogger(__name__)

DEFAULT_BINS = 4096
"""Signed bins: 2048 per sign, so the |x| histogram has TensorRT's 2048 bins."""

_COMMON_OPTIONS = frozenset({"dtype", "bits", "symmetric", "include_zero"})
RANGE_METHODS: dict[str, frozenset[str]] = {
    "minmax": _COMMON_OPTIONS,
    "percentile": _COMMON_OPTIONS | {"percentile"},
    "mse": _COMMON_OPTIONS | {"grid"},
    "entropy": _COMMON_OPTIONS | {"num_quantized_bins", "start_bin", "stride"},
}
"""Every range method and the options it takes."""


class TensorStats:
    """Streaming statistics of one tensor (module docstring). `name` is only used in
    messages; `axis` asks for per-channel min/max along that axis; `bins` (a multiple of
    4) sets the histogram resolution; `histogram=False` keeps min/max only."""

    def __init__(self, name: str = "", *, axis: int | None = None, bins: int = DEFAULT_BINS,
                 histogram: bool = True) -> None:
        if bins < 4 or bins % 4:
            raise RequantError(f"calibration: histogram bins must be a positive multiple of 4, got {bins}")
        self.name = name
        self.axis = axis
        self.bins = int(bins)
        self.count = 0
        self.batches = 0
        self.nonfinite = 0
        self.min: float | None = None
        self.max: float | None = None
        self.per_channel_min: np.ndarray | None = None
        self.per_channel_max: np.ndarray | None = None
        self.histogram: np.ndarray | None = None  # float64 counts, allocated on the first nonzero value
        self.hist_limit: float = 0.0  # R: the histogram covers [-R, R]
        self._want_histogram = histogram
        self._pending_zeros = 0  # zeros seen before any nonzero value fixed R

    # -- updating --------------------------------------------------------------------
    def update(self, array: Any) -> None:
        """Add one batch's values of the tensor."""
        x = _as_float_array(array)
        self.batches += 1
        if x.size == 0:
            return
        if self.axis is not None:
            self._update_channels(x)
        flat = x.reshape(-1)
        lo, hi = flat.min(), flat.max()
        if not (np.isfinite(lo) and np.isfinite(hi)):
            finite = np.isfinite(flat)
            bad = int(flat.size - np.count_nonzero(finite))
            self.nonfinite += bad
            logger.warning("calibration: %d non-finite values in %s left out of its statistics", bad, self._label)
            flat = flat[finite]
            if flat.size == 0:
                return
            lo, hi = flat.min(), flat.max()
        self.count += int(flat.size)
        self.min = float(lo) if self.min is None else min(self.min, float(lo))
        self.max = float(hi) if self.max is None else max(self.max, float(hi))
        if self._want_histogram:
            self._update_histogram(flat, max(-float(lo), float(hi)))

    def _update_channels(self, x: np.ndarray) -> None:
        axis = self.axis
        if not -x.ndim <= axis < x.ndim:
            raise RequantError(f"calibration: channel axis {axis} is out of range for {self._label} of rank {x.ndim}")
        axis %= x.ndim
        others = tuple(i for i in range(x.ndim) if i != axis)
        if np.all(np.isfinite(x)):
            cmin, cmax = x.min(axis=others), x.max(axis=others)
        else:
            finite = np.isfinite(x)
            cmin = np.where(finite, x, np.inf).min(axis=others)
            cmax = np.where(finite, x, -np.inf).max(axis=others)
        cmin, cmax = cmin.astype(np.float64), cmax.astype(np.float64)
        if self.per_channel_min is None:
            self.per_channel_min, self.per_channel_max = cmin, cmax
            return
        if cmin.shape != self.per_channel_min.shape:
            raise RequantError(
                f"calibration: {self._label} has {cmin.size} channels along axis {self.axis} in batch "
                f"{self.batches - 1}, {self.per_channel_min.size} before"
            )
        np.minimum(self.per_channel_min, cmin, out=self.per_channel_min)
        np.maximum(self.per_channel_max, cmax, out=self.per_channel_max)

    def _update_histogram(self, flat: np.ndarray, absmax: float) -> None:
        if self.histogram is None:
            if absmax == 0.0:
                self._pending_zeros += flat.size
                return
            self.histogram = np.zeros(self.bins, dtype=np.float64)
            self.hist_limit = absmax
            self.histogram[self.bins // 2] += self._pending_zeros
            self._pending_zeros = 0
        while absmax > self.hist_limit:
            self._double_range()
        half = self.bins // 2
        scale = np.asarray(half / self.hist_limit, dtype=flat.dtype)
        index = np.floor(flat * scale + np.asarray(half, dtype=flat.dtype)).astype(np.intp)
        np.clip(index, 0, self.bins - 1, out=index)
        self.histogram += np.bincount(index, minlength=self.bins)

    def _double_range(self) -> None:
        """Double R: adjacent bin pairs merge, exactly, into the middle half."""
        merged = self.histogram.reshape(-1, 2).sum(axis=1)
        quarter = self.bins // 4
        self.histogram = np.zeros(self.bins, dtype=np.float64)
        self.histogram[quarter:quarter + merged.size] = merged
        self.hist_limit *= 2.0

    # -- reading ---------------------------------------------------------------------
    @property
    def _label(self) -> str:
        return f"%{self.name}" if self.name else "the tensor"

    @property
    def absmax(self) -> float:
        self._require_data()
        return max(abs(self.min), abs(self.max))

    @property
    def bin_width(self) -> float:
        """Width of one histogram bin (0 while every value seen was 0)."""
        return 2.0 * self.hist_limit / self.bins

    def bin_edges(self) -> np.ndarray:
        return np.linspace(-self.hist_limit, self.hist_limit, self.bins + 1)

    def view(self) -> HistogramView:
        """The histogram and exact min/max, as the range searches take them."""
        self._require_data()
        if not self._want_histogram:
            raise RequantError(
                f"calibration: {self._label} was collected without a histogram; percentile, mse and entropy need one"
            )
        if self.histogram is None:  # all zeros so far: a degenerate histogram at 0
            counts = np.zeros(self.bins)
            counts[self.bins // 2] = self._pending_zeros
            return HistogramView(counts, np.linspace(-1e-30, 1e-30, self.bins + 1), self.min, self.max)
        return HistogramView(self.histogram, self.bin_edges(), self.min, self.max)

    def _require_data(self) -> None:
        if self.min is None:
            raise RequantError(f"calibration: no finite values recorded for {self._label} (no batches, or all NaN/inf)")

    def range(self, method: str = "minmax", **opts: Any) -> tuple[float, float]:
        """The clipping range `(lo, hi)` by `method` (see `calibration_ranges`).

        Every method takes `dtype` (or `bits`: a signed integer of that width), the target
        format, and `symmetric`; `symmetric=None` (the default) means: symmetric for a
        signed target dtype (int8, int4, fp8, ...), asymmetric for an unsigned one or when
        no dtype is given (mse's default dtype is int8). `include_zero=True` widens an
        asymmetric range to contain 0. Method options:
        percentile(percentile=99.99); mse(grid=None: a custom `grid(lo, hi)` callable);
        entropy(num_quantized_bins=2^(bits-1), start_bin=128, stride=None), whose bits
        come from the dtype (default 8). So one call fits every scheme:
        `stats.range(method, dtype=scheme.dtype, symmetric=scheme.symmetric)`."""
        allowed = RANGE_METHODS.get(method)
        if allowed is None:
            raise RequantError(f"calibration: unknown range method '{method}'; choose one of {', '.join(RANGE_METHODS)}")
        unknown = sorted(set(opts) - allowed)
        if unknown:
            raise RequantError(
                f"calibration: range method '{method}' takes no option(s) {', '.join(unknown)}; "
                f"it takes {', '.join(sorted(allowed))}"
            )
        self._require_data()
        dtype, bits = opts.pop("dtype", None), opts.pop("bits", None)
        target = resolve_dtype(dtype, bits) if dtype is not None or bits is not None else None
        if method == "mse" and target is None:
            target = resolve_dtype("int8")
        if opts.get("symmetric") is None:
            opts["symmetric"] = target is not None and target.kind != "uint"
        opts["symmetric"] = bool(opts["symmetric"])
        if method == "minmax":
            return minmax_range(self.min, self.max, **opts)
        if method == "percentile":
            return percentile_range(self.view(), **opts)
        if method == "mse":
            return mse_range(self.view(), target, **opts)
        return entropy_range(self.view(), bits=target.bits if target is not None else 8, **opts)

    def channel_range(self, method: str = "minmax", *, symmetric: bool = False,
                      include_zero: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel `(lo, hi)` arrays along `axis` (only "minmax" is per channel)."""
        if method != "minmax":
            raise RequantError(f"calibration: per-channel ranges support 'minmax' only, not '{method}'")
        if self.per_channel_min is None:
            raise RequantError(
                f"calibration: no per-channel statistics for {self._label}; collect with per_channel_axis={{name: axis}}"
            )
        lo, hi = self.per_channel_min.copy(), self.per_channel_max.copy()
        if symmetric:
            a = np.maximum(np.abs(lo), np.abs(hi))
            return -a, a
        if include_zero:
            lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
        return lo, hi

    def summary(self) -> dict[str, Any]:
        """JSON-able facts (for Value.meta and reports)."""
        return {"min": self.min, "max": self.max, "count": self.count, "batches": self.batches,
                "nonfinite": self.nonfinite, "bins": self.bins if self._want_histogram else 0,
                "bin_width": self.bin_width, "axis": self.axis}

    def __repr__(self) -> str:
        return (f"<TensorStats {self._label}: min={self.min} max={self.max} count={self.count} "
                f"batches={self.batches}>")


def _as_float_array(array: Any) -> np.ndarray:
    """A float32 (or float64) numpy view of a numpy array or torch tensor."""
    if not isinstance(array, np.ndarray) and hasattr(array, "detach"):
        array = array.detach().cpu()
        if str(array.dtype) == "torch.bfloat16":
            array = array.float()
        array = array.numpy()
    x = np.asarray(array)
    if x.dtype == np.float64 or x.dtype == np.float32:
        return x
    if x.dtype.kind in "iub" or x.dtype.itemsize > 4:
        return x.astype(np.float64)
    return x.astype(np.float32)  # float16, bfloat16, fp8, fp4 (ml_dtypes)
