"""LLM-FP4's floating-point quantizer search (Liu et al., "LLM-FP4", EMNLP 2023; reference
code nbasyl/LLM-FP4), on numpy arrays. The pass that uses it is "llm_fp4" (passes/llm_fp4.py).

The quantizer: E exponent bits, M mantissa bits, a real exponent bias b;
`maxval = (2 - 2^-M) * 2^(2^E - 1 - b)`; x is clipped to +-maxval and rounded (half to
even) with step `2^(p - M - b)`, `p = max(floor(log2|x| + b), 1)` -- exactly
`requant.ir.ops.cast.round_to_float_format` for `FloatFormat(E, M, b)`, which
`fp_round` reproduces with a bias that may vary along an axis.

The search, minimising the squared error of the layer outputs `X W_k` on calibration
rows (the reference's "L2_norm" metric):
1. activation X [rows, C] read by linears W_k [C, O_k]: for each E/M split of `bits`,
   per-channel max-fit biases `b_c = 2^E - 1 - log2 max|X_c| + log2(2 - 2^-M)`, a real
   per-tensor bias rho = min_c b_c + t over a grid of offsets t (t > 0 clips), and
   integer per-channel shifts `delta_c = clip(round(b_c) - round(rho), 0, max_shift)`
   (the reference's pre-shifted exponent bias; max_shift defaults to 2^E - 1), so that
   channel c is quantized with bias rho + delta_c. Weights stay float in this step.
2. each weight W' = diag(2^-delta) W_k: for each E/M split of `weight_bits`, a bias per
   output column (or per tensor) = its max-fit bias + t over a grid, given the
   quantized activation of step 1.
Each grid is searched coarse (the offsets) then fine (half a step either side of the best).
Errors use the direct product or a Gram matrix, whichever is cheaper: per candidate
rows*C*min(C, O) multiply-adds for an activation, min(rows, C)*C*O for a weight.

Biases in dtype names (per-tensor ones) are rounded to multiples of 1/16.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from requant.ir.dtypes import FloatFormat

__all__ = [
    "fp_splits",
    "maxfit_bias",
    "fp_round",
    "ActivationFormat",
    "WeightFormat",
    "search_activation_format",
    "search_weight_format",
    "DEFAULT_ACT_OFFSETS",
    "DEFAULT_WEIGHT_OFFSETS",
    "BIAS_STEP",
]

logger = logging.getLogger(__name__)

BIAS_STEP = 1.0 / 16.0
DEFAULT_ACT_OFFSETS: tuple[float, ...] = tuple(np.round(np.arange(-0.5, 3.0001, 0.25), 4))
DEFAULT_WEIGHT_OFFSETS: tuple[float, ...] = tuple(np.round(np.arange(-0.25, 2.0001, 0.25), 4))


def fp_splits(bits: int) -> list[tuple[int, int]]:
    """Every (E, M) with E >= 1 and 1 + E + M = bits: 4 bits -> E1M2, E2M1, E3M0."""
    return [(e, bits - 1 - e) for e in range(1, bits)]


def maxfit_bias(exp_bits: int, man_bits: int, amax: np.ndarray | float) -> np.ndarray:
    """The bias whose maxval equals `amax` (amax floored at 2^-126)."""
    a = np.maximum(np.asarray(amax, np.float64), 2.0 ** -126)
    return 2.0 ** exp_bits - 1.0 - np.log2(a) + np.log2(2.0 - 2.0 ** -man_bits)


def fp_round(x: np.ndarray, exp_bits: int, man_bits: int, bias: np.ndarray | float) -> np.ndarray:
    """x on the grid of FloatFormat(E, M, bias) (round half to even, saturating), float32;
    `bias` broadcasts against x. Same arithmetic as `round_to_float_format`."""
    scale = np.exp2(np.asarray(bias, np.float64))
    y = np.asarray(x, np.float64) * scale
    y = np.where(np.isnan(y), np.inf, y)
    _, ex = np.frexp(np.where(np.isfinite(y), y, 0.0))
    q = np.exp2(np.maximum(ex - 1, 1) - man_bits)
    top = (2.0 - 2.0 ** -man_bits) * 2.0 ** (2 ** exp_bits - 1)
    with np.errstate(invalid="ignore", over="ignore"):
        r = np.where(np.isfinite(y), np.round(y / q) * q, y)
    return (np.clip(r, -top, top) / scale).astype(np.float32)


def _snap(b: np.ndarray | float) -> np.ndarray:
    return np.round(np.asarray(b, np.float64) / BIAS_STEP) * BIAS_STEP


@dataclass
class ActivationFormat:
    """A searched activation quantizer: per-tensor FloatFormat(E, M, rho) applied to
    X * 2^shifts (channel c then has the real bias rho + shifts[c])."""

    exp_bits: int
    man_bits: int
    rho: float
    shifts: np.ndarray  # int64 [C], >= 0
    error: float

    @property
    def format(self) -> FloatFormat:
        return FloatFormat(self.exp_bits, self.man_bits, self.rho)

    def quantize(self, rows: np.ndarray) -> np.ndarray:
        """Q(X) in X's own scale: 2^-shifts * Q_rho(X * 2^shifts)."""
        up = np.exp2(self.shifts.astype(np.float64))
        q = fp_round(np.asarray(rows, np.float64) * up, self.exp_bits, self.man_bits, self.rho)
        return (q / up).astype(np.float32)


@dataclass
class WeightFormat:
    """A searched weight quantizer: FloatFormat(E, M, .) with one bias per output column
    (`per_channel`, `biases` [O]) or one per tensor (`biases` of shape [1])."""

    exp_bits: int
    man_bits: int
    biases: np.ndarray
    error: float
    per_channel: bool = True

    def quantize(self, w: np.ndarray) -> np.ndarray:
        bias = self.biases[None, :] if self.per_channel else self.biases[0]
        return fp_round(w, self.exp_bits, self.man_bits, bias)


class _OutputError:
    """Squared errors of `x_err @ w` summed over rows, for many candidate `x_err` (the
    activation search) or `xq @ a + e0` per output column for many candidate weight
    errors `a` (the weight search), by whichever of the direct product or the Gram
    matrix costs fewer multiply-adds. Products in float32, sums in float64."""

    @staticmethod
    def activation(weights: Sequence[np.ndarray], rows: int):
        c = weights[0].shape[0]
        total_out = sum(w.shape[1] for w in weights)
        if c <= total_out and c < rows:
            gram = sum(np.asarray(w, np.float64) @ np.asarray(w, np.float64).T for w in weights).astype(np.float32)
            return lambda d: float(np.sum((d @ gram).astype(np.float64) * d))
        stacked = np.concatenate([np.asarray(w, np.float32) for w in weights], axis=1)
        return lambda d: float(np.sum(np.square((d @ stacked).astype(np.float64))))

    @staticmethod
    def weight(xq: np.ndarray, e0: np.ndarray):
        n, c = xq.shape
        xq32 = xq.astype(np.float32)
        if n <= c:
            return lambda a: np.sum(np.square((xq32 @ a.astype(np.float32)).astype(np.float64) + e0), axis=0)
        hess = (xq.T @ xq).astype(np.float32)
        proj = xq.T @ e0
        base = np.sum(e0 * e0, axis=0)

        def err(a: np.ndarray) -> np.ndarray:
            ha = (hess @ a.astype(np.float32)).astype(np.float64)
            return np.sum(a * ha, axis=0) + 2.0 * np.sum(a * proj, axis=0) + base

        return err


def _refined(offsets: Sequence[float]) -> tuple[float, ...]:
    """Half the grid step either side of the best coarse offset."""
    steps = np.diff(np.sort(np.asarray(offsets, np.float64)))
    half = float(np.min(steps)) / 2 if steps.size else 0.0
    return (-half, half) if half > 0 else ()


def _act_candidate(e: int, m: int, b: np.ndarray, rho: float, per_channel: bool, limit: int) -> ActivationFormat:
    rho = float(_snap(rho))
    shifts = np.clip(np.round(b) - np.round(rho), 0, limit) if per_channel else np.zeros(b.shape)
    return ActivationFormat(e, m, rho, shifts.astype(np.int64), 0.0)


def search_activation_format(rows: np.ndarray, absmax: np.ndarray, weights: Sequence[np.ndarray], bits: int = 4,
                             offsets: Sequence[float] = DEFAULT_ACT_OFFSETS,
                             splits: Sequence[tuple[int, int]] | None = None, per_channel: bool = True,
                             max_shift: int | None = None) -> ActivationFormat:
    """Step 1 of the module docstring: the offsets grid, then half a step either side of
    the best. `absmax`: exact per-channel max |X| (from all of the calibration data;
    `rows` may be a sample)."""
    x = np.asarray(rows, np.float32)
    error = _OutputError.activation(weights, x.shape[0])
    best: ActivationFormat | None = None
    for e, m in splits or fp_splits(bits):
        b = maxfit_bias(e, m, absmax)
        limit = (2 ** e - 1) if max_shift is None else int(max_shift)
        tried: dict[float, ActivationFormat] = {}

        def attempt(rho: float) -> ActivationFormat:
            cand = _act_candidate(e, m, b, rho, per_channel, limit)
            if cand.rho not in tried:
                cand.error = error(cand.quantize(x) - x)
                tried[cand.rho] = cand
            return tried[cand.rho]

        local = min((attempt(float(np.min(b) + t)) for t in offsets), key=lambda f: f.error)
        local = min([local] + [attempt(local.rho + d) for d in _refined(offsets)], key=lambda f: f.error)
        if best is None or local.error < best.error:
            best = local
    assert best is not None
    return best


def search_weight_format(w: np.ndarray, xq: np.ndarray, x: np.ndarray, w_ref: np.ndarray | None = None, bits: int = 4,
                         offsets: Sequence[float] = DEFAULT_WEIGHT_OFFSETS,
                         splits: Sequence[tuple[int, int]] | None = None, granularity: str = "channel") -> WeightFormat:
    """Step 2: the format of weight `w` [C, O] minimising |xq Q(w) - x w_ref|^2 (w_ref
    defaults to w: the float layer output the quantized one should match); per column
    (or per tensor) the best offset of the grid, then half a step either side of it."""
    w = np.asarray(w, np.float64)
    xq = np.asarray(xq, np.float64)
    e0 = xq @ w - np.asarray(x, np.float64) @ (w if w_ref is None else np.asarray(w_ref, np.float64))
    error = _OutputError.weight(xq, e0)
    per_channel = granularity == "channel"
    amax = np.max(np.abs(w), axis=0) if per_channel else np.max(np.abs(w), keepdims=True).reshape(1)
    best: WeightFormat | None = None
    for e, m in splits or fp_splits(bits):
        b0 = maxfit_bias(e, m, amax)

        def evaluate(biases: np.ndarray) -> np.ndarray:
            biases = biases if per_channel else _snap(biases)
            q = fp_round(w, e, m, biases[None, :] if per_channel else biases[0]).astype(np.float64)
            err = error(q - w)
            return err if per_channel else np.full(err.shape, err.sum())

        cands = [np.broadcast_to(b0 + t, (w.shape[1],)).copy() for t in offsets]
        errs = [evaluate(c) for c in cands]
        pick = np.argmin(np.stack(errs), axis=0)
        cols = np.arange(w.shape[1])
        biases = np.stack(cands)[pick, cols]
        err = np.stack(errs)[pick, cols]
        for d in _refined(offsets):
            trial = biases + d
            trial_err = evaluate(trial)
            better = trial_err < err
            biases, err = np.where(better, trial, biases), np.where(better, trial_err, err)
        biases = biases if per_channel else _snap(biases[:1])
        total = float(np.sum(err)) if per_channel else float(err[0])
        if best is None or total < best.error:
            best = WeightFormat(e, m, np.asarray(biases, np.float64).reshape(-1), total, per_channel)
    assert best is not None
    return best
