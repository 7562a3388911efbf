"""Lowering of ScaledDotProductAttention: softmax(Q K^T * scale + mask) V, with is_causal
(top-left aligned), a bool or additive mask, and grouped-query attention (each K/V head
shared by a group of query heads, never repeated in memory). A row whose scores are all
-inf gives zeros, not NaN. f16/bf16 compute in float32 and round once. Needs static head
counts, and a static head size unless the scale is given.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from tvm import relax, te, tirx

from requant.backends.tvm.lowering._common import (
    LOWERINGS,
    LowerContext,
    align_to,
    constant,
    dims_of,
    dtype_of,
    from_compute,
    in_dtype,
    requires,
    static_int,
    to_compute,
)
from requant.backends.tvm.lowering._row import exp_f32, lane_reduce, row_kernel
from requant.backends.tvm.schedule_cpu import LANES, ROW_STAGE
from requant.ir import dtypes
from requant.ir.graph import Node

__all__: list[str] = []

logger = logging.getLogger(__name__)

R = relax.op


def _causal_mask(ctx: LowerContext, s: Any, t: Any) -> relax.Expr:
    """[S, T] bool, query s sees keys 0..s (top-left aligned)."""

    def fn() -> te.Tensor:
        return te.compute((s, t), lambda i, j: j <= i, name="causal")

    return ctx.te(fn, name="causal_mask")


def _sdpa_check(node: Node) -> str | None:
    q, k = node.inputs[0].type, node.inputs[1].type
    if q.shape is None or k.shape is None:
        return "ScaledDotProductAttention needs inputs of known rank in the TVM backend"
    h, hkv, d = q.shape[1], k.shape[1], q.shape[3]
    if not (isinstance(h, int) and isinstance(hkv, int)):
        return "ScaledDotProductAttention needs static head counts in the TVM backend"
    if not isinstance(d, int) and node.attrs.get("scale", 0.0) == 0.0:
        return "ScaledDotProductAttention needs a static head size (or an explicit scale) in the TVM backend"
    return None


@LOWERINGS.lowers("ScaledDotProductAttention")
@requires(_sdpa_check)
def _sdpa(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    dt = in_dtype(node)
    q, k, v = (to_compute(ctx, x, dt) for x in ins[:3])
    ct = dtype_of(q)
    qs, ks = dims_of(q), dims_of(k)
    b, h, s, d = qs
    hkv, t = ks[1], ks[2]
    h_s, hkv_s, d_s = static_int(h), static_int(hkv), static_int(d)
    scale = float(a["scale"]) if a["scale"] != 0.0 else 1.0 / math.sqrt(d_s)
    kt = ctx.emit(R.permute_dims(k, [0, 1, 3, 2]))
    group = 1 if h_s == hkv_s else h_s // hkv_s
    if group > 1:  # [B, Hkv, group, S, D] against [B, Hkv, 1, D, T]: no repeated K/V
        qg = ctx.emit(R.reshape(q, [b, hkv, group, s, d]))
        scores = ctx.emit(R.matmul(qg, R.expand_dims(kt, [2])))
        scores = ctx.emit(R.reshape(scores, [b, h, s, t]))
    else:
        scores = ctx.emit(R.matmul(q, kt))
    scores = ctx.emit(R.multiply(scores, constant(scale, ct)))
    neg_inf = constant(-np.inf, ct)
    if a["is_causal"]:
        scores = ctx.emit(R.where(_causal_mask(ctx, s, t), scores, neg_inf))
    if len(ins) > 3 and ins[3] is not None:
        mask = align_to(ctx, ins[3], scores)
        if in_dtype(node, 3) == dtypes.bool_:
            scores = ctx.emit(R.where(mask, scores, neg_inf))
        else:
            scores = ctx.emit(R.add(scores, to_compute(ctx, mask, dt)))
    probs = _row_softmax(ctx, scores) if ct == "float32" else _softmax_ops(ctx, scores, ct)
    if group > 1:
        pg = ctx.emit(R.reshape(probs, [b, hkv, group, s, t]))
        out = ctx.emit(R.matmul(pg, R.expand_dims(v, [2])))
        out = ctx.emit(R.reshape(out, [b, h, s, dims_of(v)[3]]))
    else:
        out = ctx.emit(R.matmul(probs, v))
    return from_compute(ctx, out, dt)


def _softmax_ops(ctx: LowerContext, scores: relax.Expr, ct: str) -> relax.Expr:
    """The masked softmax as Relax ops (any float dtype): a fully masked row gives 0."""
    row_max = ctx.emit(R.max(scores, [-1], True))
    # scalar fill values: a zeros_like of a static [B, H, S, T] folds into a constant of
    # that size (12.6 MB per layer for MiniLM at batch 64) in the library
    row_max = ctx.emit(R.where(R.isinf(row_max), constant(0, ct), row_max))
    e = ctx.emit(R.exp(R.subtract(scores, row_max)))
    total = ctx.emit(R.sum(e, [-1], True))
    pos = ctx.emit(R.greater(total, constant(0, ct)))
    return ctx.emit(R.where(pos, R.divide(e, R.where(pos, total, constant(1, ct))), constant(0, ct)))


def _row_softmax(ctx: LowerContext, scores: relax.Expr) -> relax.Expr:
    """The float32 masked softmax as one row kernel (as four Relax kernels it made four
    passes over the scores, each row's max and sum one serial chain): the row's top, NaN
    and +inf counting as +inf (16 per-lane partial maxima, then their max); the
    exponentials (a kept row, padded to whole vectors, the polynomial exp `exp_f32`);
    their sum (per lane, then across); the output e / sum, or 0 for a row whose top is
    +inf or whose sum is 0. That is the reference's result: a row of -inf (fully masked)
    and a row holding NaN or +inf (whose sum is NaN there) both give 0."""

    def build(x: te.Tensor) -> te.Tensor:
        *rows, n = x.shape
        f32 = "float32"
        inf, zero = tirx.const(float("inf"), f32), tirx.const(0.0, f32)
        # rows padded to whole vectors: the tail re-reads the last score (a max that
        # changes nothing) and its exponentials are 0
        static = isinstance(n, tirx.IntImm)
        chunks = -(-int(n) // LANES) if static else tirx.floordiv(n + LANES - 1, LANES)
        last = n - 1

        def score(r, j):
            # NaN -> +inf by an ordered compare (false only for NaN), which vectorises
            # where tirx.isnan does not
            v = x[(*r, tirx.min(j, last))]
            return tirx.Select(v <= inf, v, inf)

        top = lane_reduce(rows, chunks, LANES, score, te.max, "top")
        # the tail is zeroed by a factor, not a Select: TVM's simplifier drops the clamp
        # from a read inside a Select branch whose condition bounds it, and both branches
        # of a Select are evaluated (a read past the buffer)
        e = te.compute((*rows, chunks * LANES), lambda *i: exp_f32(x[(*i[:-1], tirx.min(i[-1], last))] - top[i[:-1]])
                       * tirx.Select(i[-1] < n, tirx.const(1.0, f32), zero), name=f"{ROW_STAGE}_exp")
        total = lane_reduce(rows, chunks, LANES, lambda r, j: e[(*r, j)], te.sum, "total")
        # 0 for a row whose top is +inf (NaN or +inf in it) or whose sum is 0 (every score
        # -inf: the max's identity is the lowest finite float, not -inf)
        scale = te.compute(rows, lambda *r: tirx.Select(tirx.any(tirx.isinf(top[r]), tirx.Not(total[r] > zero)), zero,
                                                        tirx.const(1.0, f32) / total[r]), name=f"{ROW_STAGE}_scale")
        return te.compute(x.shape, lambda *i: tirx.Select(scale[i[:-1]] > zero, e[i] * scale[i[:-1]], zero),
                          name="attention_softmax")

    return row_kernel(ctx, build, [scores], "attention_softmax")
