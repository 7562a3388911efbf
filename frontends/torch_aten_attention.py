"""Lowering of aten.scaled_dot_product_attention, kept whole by the frontend's
decomposition table.

- On 4-D Q/K/V: requant's ScaledDotProductAttention, one node per attention, with
  torch's exact semantics (bool or additive mask, is_causal, GQA, fully masked rows
  give 0); passes that need the Softmax inside expand it. A float mask is cast to the
  result dtype; `scale` is passed only when torch was given one.
- Other ranks: standard ops. MatMul(Q, Transpose(K)) * scale (1 / sqrt(head dim) by
  default, so a symbolic head dim needs an explicit scale), the causal mask as a
  constant lower triangle (Trilu of a ones tensor when the lengths are symbolic), the
  mask (bool: Where(mask, s, -inf); float: Add), Softmax(axis=-1) guarded to give 0 on
  fully masked rows when a mask is given, MatMul(., V). Grouped-query attention repeats
  each K/V head in place (static head counts only).
- attention dropout (dropout_p > 0) is refused.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from requant.frontends.torch_aten_common import Cx, emit_safe_softmax, norm_dim, static_shape
from requant.frontends.torch_lowering import NotLowerable, lowers
from requant.ir import dtypes
from requant.ir.graph import Value
from requant.ir.registry import is_registered

__all__: list[str] = []  # the lowerings are reached through LOWERINGS

logger = logging.getLogger(__name__)


def _repeat_heads(cx: Cx, kv: Value, rep: int) -> Value:
    """(..., H, S, E) -> (..., H*rep, S, E), each head repeated `rep` times in place."""
    rank = kv.type.rank
    x = cx.emit("Unsqueeze", kv, cx.axes([rank - 2]))
    x = cx.emit("Expand", x, cx.const(np.array([1] * (rank - 2) + [rep, 1, 1], dtype=np.int64)))
    heads = kv.shape[rank - 3] * rep
    target = [0] * (rank - 3) + [heads, -1, kv.shape[-1]]
    return cx.emit("Reshape", x, cx.const(np.array(target, dtype=np.int64)))


def _causal_mask(cx: Cx, q: Any, k: Any) -> Value:
    length, source = cx.shape(q)[-2], cx.shape(k)[-2]
    static = static_shape([length, source])
    if static is not None:
        return cx.const(np.tril(np.ones(static, dtype=bool)))
    ones = cx.emit("Expand", cx.const(np.array(True)), cx.int_vector([
        _size_value(cx, q, -2), _size_value(cx, k, -2)]))
    return cx.emit("Trilu", ones, upper=0)


def _size_value(cx: Cx, x: Any, dim: int) -> Value:
    v = cx.value(x)
    return cx.dim_size(v, norm_dim(dim, v.type.rank))


@lowers("aten.scaled_dot_product_attention.default")
def scaled_dot_product_attention(cx: Cx, q: Any, k: Any, v: Any, attn_mask: Any = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, *, scale: float | None = None,
                                 enable_gqa: bool = False) -> Value:
    if dropout_p:
        raise NotLowerable("attention dropout (dropout_p > 0; call model.eval())")
    dt = cx.out_dtype
    mask = None
    if attn_mask is not None:
        mask = cx.value(attn_mask)
        mask = mask if mask.dtype == dtypes.bool_ else cx.cast(mask, dt)
    if all(cx.rank(t) == 4 for t in (q, k, v)) and is_registered("ScaledDotProductAttention"):
        # one op with torch's exact semantics (GQA, causal, fully masked rows -> 0)
        attrs: dict[str, Any] = {"is_causal": int(bool(is_causal))}
        if scale is not None:
            attrs["scale"] = float(scale)
        inputs = [cx.value(q), cx.value(k), cx.value(v)] + ([mask] if mask is not None else [])
        return cx.emit("ScaledDotProductAttention", *inputs, **attrs)
    return _attention_decomposed(cx, q, k, v, mask, is_causal, scale, enable_gqa)


def _attention_decomposed(cx: Cx, q: Any, k: Any, v: Any, mask: Value | None, is_causal: bool,
                          scale: float | None, enable_gqa: bool) -> Value:
    """Attention as standard ops, for the ranks the fused op does not take."""
    dt = cx.out_dtype
    qv, kv, vv = cx.value(q), cx.value(k), cx.value(v)
    head_dim = cx.static_int(cx.shape(q)[-1])
    if scale is None:
        if head_dim is None:
            raise NotLowerable("attention with a symbolic head dimension and no explicit scale")
        scale = 1.0 / math.sqrt(head_dim)
    if enable_gqa and cx.rank(q) >= 3:
        q_heads, kv_heads = cx.static_int(cx.shape(q)[-3]), cx.static_int(cx.shape(k)[-3])
        if q_heads is None or kv_heads is None:
            raise NotLowerable("grouped-query attention with symbolic head counts")
        if q_heads != kv_heads:
            kv, vv = _repeat_heads(cx, kv, q_heads // kv_heads), _repeat_heads(cx, vv, q_heads // kv_heads)
    rank = kv.type.rank
    perm = list(range(rank))
    perm[-2], perm[-1] = perm[-1], perm[-2]
    scores = cx.emit("MatMul", qv, cx.emit("Transpose", kv, perm=perm))
    scores = cx.emit("Mul", scores, cx.const(np.asarray(scale, dt.np)))
    minus_inf = cx.const(np.asarray(-np.inf, dt.np))
    if is_causal:
        scores = cx.emit("Where", _causal_mask(cx, q, k), scores, minus_inf)
    if mask is not None:
        if mask.dtype == dtypes.bool_:
            scores = cx.emit("Where", mask, scores, minus_inf)
        else:
            scores = cx.emit("Add", scores, mask)
    # a mask can hide every key of a query (left padding); torch then gives zeros, not NaN
    probs = cx.emit("Softmax", scores, axis=-1) if mask is None else emit_safe_softmax(cx, scores, -1)
    return cx.emit("MatMul", probs, vv)
