"""Pass "smoothquant": SmoothQuant's migration of activation outliers into weights (Xiao
et al., "SmoothQuant", ICML 2023; reference code mit-han-lab/smoothquant `smooth_ln_fcs`).
requant's only SmoothQuant: the quantized targets run it as its own step before
"quantize".

A few channels of a transformer's activations carry 10-100x the range of the rest;
quantized per tensor, they leave the other channels a handful of codes. For an
activation X read by canonical linears `X @ W_k (+ b_k)` (W_k [in, out]), per input
channel j:
    s_j = max|X_j|^alpha / max_k max|W_k[j, :]|^(1 - alpha)
(both maxima floored at `min_scale` = 1e-5, s clipped to [1e-5, 1e5]), then, exactly in
float,
    X @ W_k  ->  (X / s) @ (diag(s) W_k),
a diagonal transform migrated with passes/fold_common.py `migrate_transform`: X / s has
even channels, the weights take the outliers into rows that per-column weight scales
quantize with room to spare. alpha = 0.7 and `min_ratio` = 4 are requant's defaults,
chosen on all-MiniLM-L6-v2 (`python -m requant.tools.bench.minilm_int8` sweeps them;
the reference's 0.5 loses accuracy there, 0.6-0.8 are flat). An activation whose
channels are already even (largest channel max|X_j| below `min_ratio` x the median
one) is left alone: smoothing it costs a multiply at run time and gains nothing.
Where X / s comes from (in this order of preference):
- "norm": X is a LayerNorm / RMSNorm output read only by those linears -> gamma /= s,
  beta /= s (the reference's case: pre-LN models, Llama's RMSNorm);
- "linear": X is a canonical linear's output read only by those linears -> that
  linear's weight columns and bias are divided by s;
- "mul": otherwise (post-LN BERT / MiniLM, whose LayerNorm output also feeds the
  residual Add; a graph input; scope "all" activations after GELU, attention, ...) an
  explicit per-channel `Mul(X, 1/s)` is inserted on the branch to the linears only; the
  other readers still see X.

Which activations (`scope`): "norm" (default) smooths the linear inputs made by a
LayerNorm / RMSNorm, as the reference; "all" every float activation read by a linear.

Statistics: max|X_j| per channel comes from `stats` (a dict from
`requant.passes.calibration.collect_stats` run with
`per_channel_axis=smoothing_channel_axes(graph, scope)`, or {value name: per-channel max
|x| array}), or, with `calibration` (batches), from running the graph here on `runner`
(what the targets do).

`alpha_search` (needs `calibration`): per activation, alpha is picked from `alpha_grid`
to minimise the squared error of the layer outputs `sum_k |Q(X/s) Q(diag(s) W_k) - X W_k|^2`
on calibration rows, with Q the fake quantizers of `activation_scheme` (per tensor,
range min/max of the rows; default int8) and `weight_scheme` (default int8 per output
channel) -- W8A8. When no alpha beats leaving X unsmoothed, X is left alone.

Stats: `activations_smoothed`, `linears_scaled`, `absorbed:norm`, `absorbed:linear`,
`explicit_mul`, `skipped:no_stats`, `skipped:even` (below `min_ratio`),
`kept_unsmoothed` (alpha search), `mean_alpha`.
`graph.meta["smoothquant"]` lists {value, alpha, how, linears, error_ratio} per smoothed
activation (error_ratio: quantized output error after / before, with alpha_search).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from requant.errors import RequantError
from requant.ir.graph import Graph, Value
from requant.ir.quant_formats import QuantScheme, choose_qparams, fake_quantize, parse_scheme, tensor_ranges
from requant.passes.calibration import collect_stats
from requant.passes.channel_transforms import DiagonalTransform
from requant.passes.fold_common import NORM_OPS, linear_readers, migrate_transform
from requant.passes.fold_samples import collect_rows
from requant.passes.conditions import CANONICAL_LINEARS
from requant.passes.manager import PassResult, graph_pass

__all__ = [
    "smoothquant",
    "smoothing_channel_axes",
    "smoothing_candidates",
    "smoothing_scales",
    "quantized_output_error",
    "search_alpha",
    "DEFAULT_ALPHA",
    "DEFAULT_MIN_RATIO",
    "DEFAULT_ALPHA_GRID",
    "SCOPES",
]

logger = logging.getLogger(__name__)

PASS = "smoothquant"
SCOPES = ("norm", "all")
DEFAULT_ALPHA = 0.7
DEFAULT_MIN_RATIO = 4.0
MAX_SCALE = 1e5
DEFAULT_ALPHA_GRID: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(0, 21))
"""0, 0.05, ..., 1."""


# -- which activations -----------------------------------------------------------------------


def smoothing_candidates(graph: Graph, scope: str = "norm") -> list[Value]:
    """The activations the pass would smooth: float values computed by a node (or graph
    inputs, scope "all") and read by at least one canonical linear."""
    if scope not in SCOPES:
        raise RequantError(f"smoothquant: scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    values: list[Value] = []
    pool: Iterable[Value] = [o for n in graph for o in n.outputs]
    if scope == "all":
        pool = [*graph.inputs, *pool]
    for v in pool:
        if not v.dtype.is_float or v.const is not None:
            continue
        if scope == "norm" and (v.producer is None or v.producer.op not in NORM_OPS):
            continue
        linears, _ = linear_readers(v)
        if linears:
            values.append(v)
    return values


def smoothing_channel_axes(graph: Graph, scope: str = "norm") -> dict[str, int]:
    """`per_channel_axis` for `collect_stats`: {activation name: -1} for every candidate."""
    return {v.name: -1 for v in smoothing_candidates(graph, scope)}


# -- scales and errors -------------------------------------------------------------------------


def smoothing_scales(act_absmax: np.ndarray, weights: Sequence[np.ndarray], alpha: float,
                     min_scale: float = 1e-5) -> np.ndarray:
    """s_j = max|X_j|^alpha / max_k max|W_k[j, :]|^(1 - alpha), both maxima floored at
    `min_scale`, s clipped to [min_scale, 1e5] (module docstring)."""
    w_absmax = np.max(np.stack([np.max(np.abs(np.asarray(w, np.float64)), axis=1) for w in weights]), axis=0)
    w_absmax = np.maximum(w_absmax, min_scale)
    a = np.maximum(np.asarray(act_absmax, np.float64), min_scale)
    return np.clip(a ** alpha / w_absmax ** (1.0 - alpha), min_scale, MAX_SCALE)


def is_even(absmax: np.ndarray, min_ratio: float) -> bool:
    """Whether no channel's max|X_j| reaches `min_ratio` x the median channel's."""
    a = np.asarray(absmax, np.float64)
    return bool(a.size == 0 or a.max() < min_ratio * np.median(a))


def _fake_quantize_range(x: np.ndarray, scheme: QuantScheme) -> np.ndarray:
    lo, hi = tensor_ranges(x, scheme)
    scale, zp = choose_qparams(scheme, lo, hi)
    return fake_quantize(x.astype(np.float32), scheme, scale, zp if not scheme.symmetric else None)


def quantized_output_error(rows: np.ndarray, weights: Sequence[np.ndarray], s: np.ndarray | None,
                           activation_scheme: QuantScheme, weight_scheme: QuantScheme) -> float:
    """sum_k |Q(X/s) Q(diag(s) W_k) - X W_k|^2 on `rows` (s None: no smoothing)."""
    x = np.asarray(rows, np.float32)
    xs = x if s is None else (x / s.astype(np.float32)).astype(np.float32)
    xq = _fake_quantize_range(xs, activation_scheme)
    err = 0.0
    for w in weights:
        w32 = np.asarray(w, np.float32)
        ws = w32 if s is None else (np.asarray(w, np.float64) * s[:, None]).astype(np.float32)
        wq = _fake_quantize_range(ws, weight_scheme)
        d = xq @ wq - x @ w32
        err += float(np.sum(d.astype(np.float64) ** 2))
    return err


def search_alpha(rows: np.ndarray, act_absmax: np.ndarray, weights: Sequence[np.ndarray], grid: Sequence[float],
                 activation_scheme: QuantScheme, weight_scheme: QuantScheme,
                 min_scale: float = 1e-5) -> tuple[float | None, float, float]:
    """(best alpha, or None when no smoothing is best; its error; the unsmoothed error)."""
    base = quantized_output_error(rows, weights, None, activation_scheme, weight_scheme)
    best_alpha: float | None = None
    best = base
    for alpha in grid:
        s = smoothing_scales(act_absmax, weights, float(alpha), min_scale)
        err = quantized_output_error(rows, weights, s, activation_scheme, weight_scheme)
        if err < best:
            best_alpha, best = float(alpha), err
    return best_alpha, best, base


# -- the pass ------------------------------------------------------------------------------------


@dataclass
class _Config:
    alpha: float
    min_ratio: float
    alpha_search: bool
    grid: tuple[float, ...]
    min_scale: float
    activation: QuantScheme
    weight: QuantScheme


def _scheme(spec: QuantScheme | str, what: str) -> QuantScheme:
    if isinstance(spec, QuantScheme):
        return spec
    try:
        return parse_scheme(spec, channel_axis=1)
    except ValueError as exc:
        raise RequantError(f"smoothquant: {what}: {exc}") from None


def _absmax_from_stats(stats: Mapping[str, Any] | None, x: Value) -> np.ndarray | None:
    if stats is None or x.name not in stats:
        found = x.meta.get("channel_absmax")
        return None if found is None else np.asarray(found, np.float64).reshape(-1)
    entry = stats[x.name]
    if isinstance(entry, np.ndarray) or isinstance(entry, (list, tuple)):
        return np.asarray(entry, np.float64).reshape(-1)
    lo, hi = getattr(entry, "per_channel_min", None), getattr(entry, "per_channel_max", None)
    if lo is None or hi is None:
        return None
    axis = getattr(entry, "axis", -1)
    rank = x.type.rank
    if axis is not None and rank is not None and axis % rank != rank - 1:
        return None
    return np.maximum(np.abs(np.asarray(lo, np.float64)), np.abs(np.asarray(hi, np.float64))).reshape(-1)


def _smooth_one(graph: Graph, x: Value, absmax: np.ndarray, rows: np.ndarray | None, cfg: _Config,
                stats: dict[str, Any], report: list[dict[str, Any]]) -> None:
    name = x.name  # the norm it comes from may be rebuilt under a new output
    linears, _ = linear_readers(x)
    weights = [np.asarray(lin.weight.const, np.float64) for lin in linears]
    if absmax.shape[0] != weights[0].shape[0]:
        raise RequantError(f"smoothquant: statistics of %{x.name} have {absmax.shape[0]} channels, "
                           f"its linears take {weights[0].shape[0]}")
    if is_even(absmax, cfg.min_ratio):
        stats["skipped:even"] += 1
        return
    alpha: float | None = cfg.alpha
    ratio = None
    if cfg.alpha_search and rows is not None:
        alpha, best, base = search_alpha(rows, absmax, weights, cfg.grid, cfg.activation, cfg.weight, cfg.min_scale)
        ratio = best / base if base > 0 else 1.0
        if alpha is None:
            stats["kept_unsmoothed"] += 1
            report.append({"value": name, "alpha": None, "how": "none", "linears": len(linears), "error_ratio": 1.0})
            return
    s = smoothing_scales(absmax, weights, alpha, cfg.min_scale)
    how = migrate_transform(graph, x, DiagonalTransform(1.0 / s), created_by=PASS).how
    stats["activations_smoothed"] += 1
    stats["linears_scaled"] += len(linears)
    stats["explicit_mul" if how == "mul" else f"absorbed:{how}"] += 1
    report.append({"value": name, "alpha": alpha, "how": how, "linears": len(linears), "error_ratio": ratio})


def _absmax_from_batches(graph: Graph, candidates: Sequence[Value], calibration: Iterable[Any],
                         runner: str) -> dict[str, np.ndarray]:
    """Per-channel max |x| of every candidate over the calibration batches."""
    axes = {v.name: -1 for v in candidates}
    found = collect_stats(graph, calibration, values=[], runner=runner, per_channel_axis=axes, histogram=False)
    return {n: np.maximum(np.abs(st.per_channel_min), np.abs(st.per_channel_max)).astype(np.float64).reshape(-1)
            for n, st in found.items()}


@graph_pass(PASS, "SmoothQuant: per-channel activation scales -> divided out of the producer (or a Mul), "
                  "multiplied into the consuming linears' weight rows",
            requires=(CANONICAL_LINEARS,), pipeline_inputs=("stats",))
def smoothquant(
    graph: Graph,
    alpha: float = DEFAULT_ALPHA,
    min_ratio: float = DEFAULT_MIN_RATIO,
    stats: Mapping[str, Any] | None = None,
    calibration: Iterable[Any] | None = None,
    alpha_search: bool = False,
    alpha_grid: Sequence[float] = DEFAULT_ALPHA_GRID,
    scope: str = "norm",
    min_scale: float = 1e-5,
    activation_scheme: QuantScheme | str = "int8",
    weight_scheme: QuantScheme | str = "int8-channel",
    max_rows: int = 1024,
    runner: str = "auto",
) -> PassResult:
    """See the module docstring. `max_rows`: calibration rows kept per activation for
    the alpha search; `runner`: what runs the graph on `calibration` batches (a
    `requant.ir.runners` name)."""
    if not 0.0 <= float(alpha) <= 1.0:
        raise RequantError(f"smoothquant: alpha must be in [0, 1], got {alpha}")
    if any(not 0.0 <= float(a) <= 1.0 for a in alpha_grid):
        raise RequantError(f"smoothquant: every alpha_grid value must be in [0, 1], got {tuple(alpha_grid)}")
    if alpha_search and calibration is None:
        raise RequantError("smoothquant: alpha_search needs calibration batches (calibration=[...])")
    if float(min_ratio) < 0.0:
        raise RequantError(f"smoothquant: min_ratio must be >= 0, got {min_ratio}")
    cfg = _Config(float(alpha), float(min_ratio), bool(alpha_search), tuple(float(a) for a in alpha_grid), float(min_scale),
                  _scheme(activation_scheme, "activation_scheme"), _scheme(weight_scheme, "weight_scheme"))
    candidates = smoothing_candidates(graph, scope)
    samples = {}
    measured: dict[str, np.ndarray] = {}
    if calibration is not None and alpha_search:
        samples = collect_rows(graph, calibration, [v.name for v in candidates], max_rows=max_rows, runner=runner)
    elif calibration is not None:
        measured = _absmax_from_batches(graph, candidates, calibration, runner) if candidates else {}
    elif stats is None and not any("channel_absmax" in v.meta for v in candidates):
        raise RequantError(
            "smoothquant needs per-channel activation statistics: pass stats=collect_stats(graph, batches, "
            "per_channel_axis=smoothing_channel_axes(graph)) (requant.passes.calibration / smoothquant), "
            "or calibration=[batches]")
    counters: dict[str, int | float | str] = {
        "activations_smoothed": 0, "linears_scaled": 0, "absorbed:norm": 0, "absorbed:linear": 0,
        "explicit_mul": 0, "skipped:no_stats": 0, "skipped:even": 0, "kept_unsmoothed": 0,
    }
    report: list[dict[str, Any]] = []
    for x in candidates:
        found = samples.get(x.name)
        absmax = found.absmax if found is not None else measured.get(x.name)
        if absmax is None:
            absmax = _absmax_from_stats(stats, x)
        if absmax is None:
            counters["skipped:no_stats"] += 1
            logger.debug("smoothquant: no per-channel statistics for %%%s", x.name)
            continue
        _smooth_one(graph, x, absmax, found.rows if found is not None else None, cfg, counters, report)
    if counters["skipped:no_stats"] and not counters["activations_smoothed"]:
        logger.warning("smoothquant: no activation has per-channel statistics (%d skipped); collect them with "
                       "per_channel_axis=smoothing_channel_axes(graph)", counters["skipped:no_stats"])
    alphas = [r["alpha"] for r in report if r["alpha"] is not None]
    counters["mean_alpha"] = float(np.mean(alphas)) if alphas else 0.0
    graph.meta.setdefault("smoothquant", []).extend(report)
    return PassResult(graph, counters["activations_smoothed"] > 0, counters)
