"""ONNX lowering of requant's ScaledDotProductAttention (`requant.ir.ops.attention`):
MatMul/Softmax at every opset. ONNX Runtime has no CPU kernel for ONNX's Attention (opset
23) and expands its function body, which runs slower than the MatMul/Softmax form that
ONNX Runtime's fusions know (tools/bench/roundtrip.py measures it)."""

from __future__ import annotations

import logging

import numpy as np

from requant.backends.onnx.lowering._common import LOWERINGS, EmitContext, scalar_const
from requant.backends.onnx.onnx_types import dtype_to_onnx
from requant.errors import UnsupportedOpError
from requant.ir import dtypes
from requant.ir.graph import Node

__all__: list[str] = []

logger = logging.getLogger(__name__)


@LOWERINGS.lowers("ScaledDotProductAttention")
def _sdpa_decomposed(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """softmax(Q K^T * scale + mask) V from MatMul/Softmax (at every opset); K/V heads
    repeated for grouped-query attention (needs static head counts); rows with every
    key masked give 0, as requant's op does."""
    q_t, k_t = node.inputs[0].type, node.inputs[1].type
    dt = q_t.dtype
    n = lambda p: ctx.sub_name(node, p)  # noqa: E731
    i64 = lambda v, tag: ctx.const(np.asarray(v, np.int64), dtypes.int64, tag)  # noqa: E731
    q, k, v = ins[0], ins[1], ins[2]
    heads = None if q_t.shape is None else q_t.shape[1]
    kv_heads = None if k_t.shape is None else k_t.shape[1]
    if heads != kv_heads:
        if not (isinstance(heads, int) and isinstance(kv_heads, int)):
            raise UnsupportedOpError(
                f"{node.label}: grouped-query attention before opset 23 needs static head counts "
                f"(Q has {heads}, K/V {kv_heads}); use opset >= 23"
            )
        group = heads // kv_heads
        repeated = []
        for x, tag in ((k, "k"), (v, "v")):
            (shape,) = ctx.emit("Shape", [x], name=n(f"{tag}_shape"))
            (lead,) = ctx.emit("Slice", [shape, i64([0], "sdpa_0"), i64([1], "sdpa_1")], name=n(f"{tag}_batch"))
            (tail,) = ctx.emit("Slice", [shape, i64([2], "sdpa_2"), i64([4], "sdpa_4")], name=n(f"{tag}_tail"))
            (target,) = ctx.emit("Concat", [lead, i64([heads], "sdpa_heads"), tail], axis=0, name=n(f"{tag}_target"))
            (x5,) = ctx.emit("Unsqueeze", [x, i64([2], "sdpa_axis2")], name=n(f"{tag}_unsqueeze"))
            (x5,) = ctx.emit("Expand", [x5, i64([1, 1, group, 1, 1], "sdpa_group")], name=n(f"{tag}_expand"))
            (xr,) = ctx.emit("Reshape", [x5, target], name=n(f"{tag}_repeat"))
            repeated.append(xr)
        k, v = repeated
    (kt,) = ctx.emit("Transpose", [k], perm=[0, 1, 3, 2], name=n("k_transpose"))
    (scores,) = ctx.emit("MatMul", [q, kt], name=n("scores"))
    scale = float(node.attrs.get("scale", 0.0))
    if scale != 0.0:
        factor = scalar_const(ctx, scale, dt, "sdpa_scale")
    elif q_t.shape is not None and isinstance(q_t.shape[3], int):
        factor = scalar_const(ctx, 1.0 / float(np.sqrt(q_t.shape[3])), dt, "sdpa_scale")
    else:
        (shape,) = ctx.emit("Shape", [q], name=n("q_shape"))
        (d,) = ctx.emit("Slice", [shape, i64([3], "sdpa_3"), i64([4], "sdpa_4")], name=n("head_dim"))
        (d,) = ctx.emit("Cast", [d], to=dtype_to_onnx(dt), name=n("head_dim_float"))
        (d,) = ctx.emit("Sqrt", [d], name=n("sqrt_head_dim"))
        (factor,) = ctx.emit("Reciprocal", [d], name=n("scale"))
    (scores,) = ctx.emit("Mul", [scores, factor], name=n("scaled"))
    neg_inf = scalar_const(ctx, -np.inf, dt, "sdpa_neg_inf")
    if int(node.attrs.get("is_causal", 0)):
        s_len = None if q_t.shape is None else q_t.shape[2]
        t_len = None if k_t.shape is None else k_t.shape[2]
        if isinstance(s_len, int) and isinstance(t_len, int):
            causal = ctx.const(np.tril(np.ones((s_len, t_len), dtype=bool)), dtypes.bool_, "sdpa_causal")
        else:
            zero, one = i64(0, "sdpa_zero"), i64(1, "sdpa_one")
            lens = []
            for x, tag in ((ins[0], "s"), (ins[1], "t")):
                (shape,) = ctx.emit("Shape", [x], name=n(f"{tag}_len_shape"))
                (length,) = ctx.emit("Gather", [shape, i64(2, "sdpa_axis")], axis=0, name=n(f"{tag}_len"))
                lens.append(ctx.emit("Range", [zero, length, one], name=n(f"{tag}_range"))[0])
            (rows,) = ctx.emit("Unsqueeze", [lens[0], i64([1], "sdpa_1")], name=n("rows"))
            (cols,) = ctx.emit("Unsqueeze", [lens[1], i64([0], "sdpa_0")], name=n("cols"))
            (causal,) = ctx.emit("LessOrEqual", [cols, rows], name=n("causal"))
        (scores,) = ctx.emit("Where", [causal, scores, neg_inf], name=n("causal_mask"))
    mask = ins[3] if len(ins) > 3 else None
    if mask is not None:
        if node.inputs[3].dtype == dtypes.bool_:
            # The bool mask becomes an additive one on its own (small, broadcast) shape:
            # ORT's broadcasting Add over the scores is faster than a broadcasting Where,
            # and scores + 0 / scores + -inf give exactly what selecting would.
            zero = scalar_const(ctx, 0.0, dt, "sdpa_zero_f")
            (bias,) = ctx.emit("Where", [mask, zero, neg_inf], name=n("mask_bias"))
            (scores,) = ctx.emit("Add", [scores, bias], name=n("mask"))
        else:
            (scores,) = ctx.emit("Add", [scores, mask], name=n("bias"))
    (probs,) = ctx.emit("Softmax", [scores], axis=-1, name=n("softmax"))
    if mask is not None:
        # a row with every key masked is NaN after Softmax; requant's op gives 0
        (nan,) = ctx.emit("IsNaN", [probs], name=n("masked_rows"))
        (probs,) = ctx.emit("Where", [nan, scalar_const(ctx, 0.0, dt, "sdpa_zero_f"), probs], name=n("zero_rows"))
    ctx.emit("MatMul", [probs, v], outs, name=node.name or None)
