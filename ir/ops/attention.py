"""requant's fused attention op: ScaledDotProductAttention (domain "requant").

    Y = softmax(Q @ K^T * scale + mask) @ V          per head, softmax over the last axis

Inputs (one float dtype for Q, K, V):
- Q [B, H, S, D], K [B, Hkv, T, D], V [B, Hkv, T, Dv]. Grouped-query attention when
  Hkv < H: H must be a multiple of Hkv and query head h reads key/value head
  h // (H / Hkv) (what `repeat_kv` / `repeat_interleave` on the head axis gives).
- mask (optional), broadcastable to [B, H, S, T]: bool (True = attend, False = masked
  out), or a float of Q's dtype added to the scores (an additive bias; -inf masks out).
Attributes:
- scale (float): the factor on Q @ K^T; 0.0 (the default) means 1 / sqrt(D).
- is_causal (0/1): also mask out key t > query s (torch's top-left aligned
  `tril(ones(S, T))`); combines with `mask` when both are given.
Output: Y [B, H, S, Dv] in Q's dtype.

The reference kernel computes in float32 (float64 for f64 inputs) and rounds once:
scores, masking, softmax with max-subtraction, then the product with V. A query row
whose every key is masked out (all scores -inf) gives zeros, as torch's
`F.scaled_dot_product_attention` does, not the NaN a plain softmax would give. The
kernel runs head by head in groups, so GQA never materialises repeated K/V.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from requant.errors import ShapeInferenceError
from requant.ir import dtypes
from requant.ir.ops._common import attr_float, attr_int, check_input, compute_dtype, opt
from requant.ir.registry import InferContext, define_op
from requant.ir.shapes import broadcast_shapes, unify_dims
from requant.ir.types import Dim, TensorType

__all__ = ["sdpa_reference", "causal_mask"]

_OP = "ScaledDotProductAttention"


def _heads_fit(h: Dim, hkv: Dim) -> Dim:
    """The query head count, checked to be a multiple of the key/value head count."""
    if isinstance(h, int) and isinstance(hkv, int):
        if hkv == 0 or h % hkv:
            raise ValueError(f"{h} query heads are not a multiple of {hkv} key/value heads")
    return h


def _infer_sdpa(ctx: InferContext) -> list[TensorType]:
    q = check_input(ctx, 0, "float")
    k = check_input(ctx, 1, "float")
    v = check_input(ctx, 2, "float")
    attr_float(ctx, "scale")
    attr_int(ctx, "is_causal", (0, 1))
    for name, t in (("K", k), ("V", v)):
        if t.dtype != q.dtype:
            raise ctx.fail(f"{name} has dtype {t.dtype}, Q has {q.dtype}")
    for name, t in (("Q", q), ("K", k), ("V", v)):
        if t.rank is not None and t.rank != 4:
            raise ctx.fail(f"{name} must be 4-D [batch, heads, seq, head_dim], got {t}")
    mask = ctx.input(3)
    if mask is not None and mask.dtype not in (dtypes.bool_, q.dtype):
        raise ctx.fail(f"mask must be bool or Q's dtype {q.dtype}, got {mask.dtype}")
    if q.shape is None:
        return [TensorType(None, q.dtype)]
    b, h, s, d = q.shape
    t_len: Dim = None
    dv: Dim = None
    hkv: Dim = None
    if k.shape is not None:
        b = unify_dims(b, k.shape[0], _OP, "batch sizes of Q and K")
        hkv = k.shape[1]
        t_len = k.shape[2]
        d = unify_dims(d, k.shape[3], _OP, "head sizes of Q and K")
    if v.shape is not None:
        b = unify_dims(b, v.shape[0], _OP, "batch sizes of Q and V")
        hkv = unify_dims(hkv, v.shape[1], _OP, "head counts of K and V")
        t_len = unify_dims(t_len, v.shape[2], _OP, "sequence lengths of K and V")
        dv = v.shape[3]
    try:
        _heads_fit(h, hkv)
    except ValueError as exc:
        raise ctx.fail(str(exc)) from None
    if mask is not None and mask.shape is not None:
        if mask.rank > 4:
            raise ctx.fail(f"mask {mask} has more than 4 dims")
        full = (b, h, s, t_len)
        try:
            out = broadcast_shapes([full, mask.shape], _OP)
        except ShapeInferenceError:
            raise ctx.fail(f"mask {mask} does not broadcast to [B, H, S, T] = {full}") from None
        for got, want in zip(out, full):
            if isinstance(got, int) and isinstance(want, int) and got != want:
                raise ctx.fail(f"mask {mask} does not broadcast to [B, H, S, T] = {full}")
    return [TensorType((b, h, s, dv), q.dtype)]


def causal_mask(s: int, t: int) -> np.ndarray:
    """torch's `is_causal` mask: query s sees keys 0..s (top-left aligned), [S, T] bool."""
    return np.tril(np.ones((s, t), dtype=bool))


def sdpa_reference(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    mask: np.ndarray | None = None,
    scale: float = 0.0,
    is_causal: int = 0,
) -> np.ndarray:
    """The numpy reference: see the module docstring."""
    ct = compute_dtype(q)
    qc, kc, vc = (a.astype(ct, copy=False) for a in (q, k, v))
    heads, kv_heads = q.shape[1], k.shape[1]
    group = heads // kv_heads
    s_len, t_len = q.shape[2], k.shape[2]
    factor = ct.type(scale if scale != 0.0 else 1.0 / math.sqrt(q.shape[3]))
    # [B, Hkv, group, S, D]: each key/value head serves `group` consecutive query heads
    qg = qc.reshape(q.shape[0], kv_heads, group, s_len, q.shape[3])
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        scores = np.matmul(qg, np.swapaxes(kc, -1, -2)[:, :, None]) * factor
        scores = scores.reshape(q.shape[0], heads, s_len, t_len)
        if is_causal:
            scores = np.where(causal_mask(s_len, t_len), scores, ct.type(-np.inf))
        if mask is not None:
            if mask.dtype == np.bool_:
                scores = np.where(mask, scores, ct.type(-np.inf))
            else:
                scores = scores + mask.astype(ct, copy=False)
        row_max = np.max(scores, axis=-1, keepdims=True)
        # a fully masked row has max -inf: subtract 0 instead so exp gives 0, not NaN
        row_max = np.where(np.isneginf(row_max), ct.type(0), row_max)
        e = np.exp(scores - row_max)
        total = np.sum(e, axis=-1, keepdims=True)
        probs = np.where(total > 0, e / np.where(total > 0, total, ct.type(1)), ct.type(0))
        pg = probs.reshape(q.shape[0], kv_heads, group, s_len, t_len)
        out = np.matmul(pg, vc[:, :, None])
    return out.reshape(q.shape[0], heads, s_len, v.shape[3]).astype(q.dtype)


def _sdpa_kernel(ins: list, attrs: dict, outs: list) -> Any:
    q, k, v, mask = ins[0], ins[1], ins[2], opt(ins, 3)
    return sdpa_reference(q, k, v, mask, float(attrs["scale"]), int(attrs["is_causal"]))


define_op(
    _OP,
    inputs=("Q", "K", "V", "mask?"),
    attrs={"scale": 0.0, "is_causal": 0},
    infer=_infer_sdpa,
    kernel=_sdpa_kernel,
    domain="requant",
    doc="softmax(Q @ K^T * scale + mask) @ V with GQA, bool or additive masks, is_causal",
)
