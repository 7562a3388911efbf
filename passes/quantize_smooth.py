"""SmoothQuant-style smoothing for the "quantize" pass (Xiao et al., "SmoothQuant",
2023): move the per-channel outliers of an activation x into the weights that read it.

For x read by MatMul layers with constant weights W (x @ W, K input channels),
factors s[K] (`smoothing_factors`: SmoothQuant's formula, computed by the "smoothquant"
pass's `smoothquant.smoothing_scales`) give x @ W = (x / s) @ (s W) exactly in
real arithmetic; quantizing x / s per tensor and s W per output column spreads the
quantization error of x's outlier channels over the weights, which have room for it.
`apply_smoothing` rewrites the graph that way through the fold passes' migration
(`fold_common.migrate_channel_scale`, shared with the "smoothquant" pass): x / s is
folded into x's LayerNorm / RMSNorm or linear producer when nothing else reads x (free
at run time: pre-LN models), else computed by a `Mul(x, 1 / s)` (post-LN BERT, whose
LayerNorm outputs also feed the residual; GELU outputs); the "quantize" pass then
quantizes x / s with the range min/max of x / s and the rescaled weights as usual.
`smoothing_axes(graph)` names the activations and the axis whose per-channel min/max
`collect_stats(per_channel_axis=...)` must collect for it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from requant.ir.graph import Graph, Node, Value
from requant.passes.fold_common import NORM_OPS, Linear, as_linear, migrate_channel_scale
from requant.passes.smoothquant import smoothing_scales
from requant.passes.quantize_insert import uses_qdq

__all__ = ["Smoothing", "SMOOTH_SCOPES", "smoothing_axes", "smoothing_factors", "apply_smoothing"]

SMOOTH_SCOPES = ("all", "norm")
"""Which activations `smoothing_factors` may smooth: every linear input, or only the
outputs of a LayerNorm / RMSNorm (the reference's choice; on a post-LN model those are
the cheaper multiplies, hidden-size wide where the FFN's GELU output is 4x wider)."""

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Smoothing:
    """Per-channel factors s [K] for one activation x, and the min/max of x / s."""

    value: Value  # x (after `apply_smoothing`: the value the linears read, x / s)
    factors: np.ndarray
    lo: float
    hi: float
    how: str = ""  # "norm" | "linear" | "mul" once applied


def smoothing_axes(graph: Graph, ops: Sequence[str] = ("MatMul", "Gemm")) -> dict[str, int]:
    """{activation name: axis} to pass to `collect_stats(per_channel_axis=...)` so that
    `quantize(smooth_alpha=...)` has the per-channel ranges it needs: the last axis of
    every float activation read by a MatMul / Gemm (not transA) with a constant weight."""
    out: dict[str, int] = {}
    for node in graph:
        if node.op not in ops or node.op not in ("MatMul", "Gemm") or len(node.inputs) < 2:
            continue
        x, w = node.inputs[0], node.inputs[1]
        if x is None or w is None or w.const is None or x.const is not None or x.type.rank is None:
            continue
        if node.op == "Gemm" and node.attrs.get("transA", 0):
            continue
        out[x.name] = int(x.type.rank) - 1
    return out


def smoothing_factors(graph: Graph, plans: Mapping[int, Any], stats: Mapping[str, Any], alpha: float,
                      min_ratio: float = 0.0, scope: str = "all") -> tuple[dict[int, Smoothing], list[str]]:
    """SmoothQuant's factors (Xiao et al. 2023) for each activation x read by planned
    MatMuls with constant 2-D weights (the canonical linears; a Gemm reader rules x
    out): s_k = max|x_k|^alpha / max|W_k|^(1 - alpha),
    max over the readers' weight rows (`smoothquant.smoothing_scales`, both maxima
    floored at 1e-8), clipped to [1e-5, 1e5]. Needs per-channel
    statistics along x's last axis (`smoothing_axes`); x without them is not smoothed
    and is returned in the list of names. x whose channel ranges are even (largest
    channel max|x_k| < `min_ratio` x the median one) is left alone: smoothing it costs a
    Mul at run time and gains nothing (MiniLM's attention-output inputs, ratio 2.4-3).
    `scope` (`SMOOTH_SCOPES`): "norm" leaves every x not made by a LayerNorm / RMSNorm."""
    readers: dict[int, list[Node]] = {}
    values: dict[int, Value] = {}
    blocked: set[int] = set()
    for node in graph:
        plan = plans.get(id(node))
        if isinstance(plan, str) or plan is None or node.op not in ("MatMul", "Gemm"):
            continue
        x = node.inputs[0]
        assert x is not None
        if node.op == "Gemm" or isinstance(as_linear(node, x), str):
            blocked.add(id(x))
            continue
        # smoothing moves scale between the Q/DQ of x and the Q/DQ of W: both must be real
        # Q/DQ (FakeQuantize formats pick their own block scales)
        if not all(uses_qdq(item.scheme) and item.scheme.granularity in ("tensor", "channel") for item in plan) \
                or not any(item.role == "activation" for item in plan):
            continue
        readers.setdefault(id(x), []).append(node)
        values[id(x)] = x
    out: dict[int, Smoothing] = {}
    missing: list[str] = []
    for key, nodes in readers.items():
        x = values[key]
        if key in blocked or (scope == "norm" and (x.producer is None or x.producer.op not in NORM_OPS)):
            continue
        stat = stats.get(x.name)
        if stat is None or getattr(stat, "per_channel_max", None) is None or x.type.rank is None \
                or stat.axis is None or stat.axis % x.type.rank != x.type.rank - 1:
            missing.append(x.name)
            continue
        lo_c, hi_c = stat.channel_range("minmax", include_zero=False)
        a_max = np.maximum(np.abs(lo_c), np.abs(hi_c))
        if a_max.max() < min_ratio * np.median(a_max):
            continue
        weights = [node.inputs[1].const for node in nodes]  # canonical linears: W [K, N]
        if any(w.shape[0] != a_max.shape[0] for w in weights):
            continue
        # the "smoothquant" pass's formula with this pass's floors (1e-8) and clip
        s = np.clip(smoothing_scales(np.maximum(a_max, 1e-8), weights, alpha, min_scale=1e-8), 1e-5, 1e5)
        out[key] = Smoothing(x, s, float(min(np.min(lo_c / s), 0.0)), float(max(np.max(hi_c / s), 0.0)))
    return out, missing


def apply_smoothing(graph: Graph, factors: Mapping[int, Smoothing], readers: set[int]) -> dict[int, Smoothing]:
    """Rewrite each x -> (x / s) -> its planned readers (ids in `readers`) with their
    weight rows times s, exactly in float, through the fold passes' migration
    (`fold_common.migrate_channel_scale`): x / s is folded into x's LayerNorm / RMSNorm
    or linear producer when x has no other reader, else computed by a `Mul(x, 1 / s)`
    on the branch to those readers. Returns the smoothings keyed by the id of the value
    the readers now read."""
    out: dict[int, Smoothing] = {}
    for sm in factors.values():
        x = sm.value
        linears: list[Linear] = []
        others: list[str] = []
        for node in x.users:
            if id(node) in readers:
                lin = as_linear(node, x)
                assert isinstance(lin, Linear)
                linears.append(lin)
            else:
                others.append(f"{node.label} is not quantized")
        how, new_x = migrate_channel_scale(graph, x, linears, others, sm.factors, created_by="quantize_smooth")
        out[id(new_x)] = replace(sm, value=new_x, how=how)
        logger.debug("quantize: smoothed %%%s (%s)", x.name, how)
    return out
