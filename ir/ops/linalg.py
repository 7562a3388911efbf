"""Matrix products: MatMul (numpy semantics, batched, 1-D operands promoted) and Gemm.

Integer MatMul accumulates in the operand dtype here (wrapping); requant's integer
matmul with int32 accumulation is a separate op.
"""

from __future__ import annotations

import numpy as np

from requant.ir.registry import InferContext, define_op
from requant.ir.shapes import broadcast_shapes
from requant.ir.types import TensorType

__all__: list[str] = []


def _infer_matmul(ctx: InferContext) -> list[TensorType]:
    a, b = ctx.inputs
    if a.dtype != b.dtype:
        raise ctx.fail(f"operand dtypes differ: {a.dtype} and {b.dtype}")
    if a.shape is None or b.shape is None:
        return [TensorType(None, a.dtype)]
    sa, sb = list(a.shape), list(b.shape)
    if not sa or not sb:
        raise ctx.fail("operands must have rank >= 1")
    squeeze_a, squeeze_b = len(sa) == 1, len(sb) == 1
    if squeeze_a:
        sa = [1] + sa
    if squeeze_b:
        sb = sb + [1]
    k1, k2 = sa[-1], sb[-2]
    if isinstance(k1, int) and isinstance(k2, int) and k1 != k2:
        raise ctx.fail(f"inner dims differ: {tuple(a.shape)} @ {tuple(b.shape)}")
    batch = broadcast_shapes([tuple(sa[:-2]), tuple(sb[:-2])], "MatMul")
    out = list(batch) + ([] if squeeze_a else [sa[-2]]) + ([] if squeeze_b else [sb[-1]])
    return [TensorType(tuple(out), a.dtype)]


def _matmul(ins, attrs, outs):
    with np.errstate(over="ignore"):
        return np.matmul(ins[0], ins[1])


define_op("MatMul", inputs=("A", "B"), infer=_infer_matmul, kernel=_matmul)


def _infer_gemm(ctx: InferContext) -> list[TensorType]:
    a, b = ctx.inputs[0], ctx.inputs[1]
    if a.dtype != b.dtype:
        raise ctx.fail(f"operand dtypes differ: {a.dtype} and {b.dtype}")
    if a.rank is not None and a.rank != 2 or b.rank is not None and b.rank != 2:
        raise ctx.fail(f"operands must be 2-D, got {a} and {b}")
    if a.shape is None or b.shape is None:
        return [TensorType(None, a.dtype)]
    m, ka = (a.shape[1], a.shape[0]) if ctx.attrs["transA"] else a.shape
    kb, n = (b.shape[1], b.shape[0]) if ctx.attrs["transB"] else b.shape
    if isinstance(ka, int) and isinstance(kb, int) and ka != kb:
        raise ctx.fail(f"inner dims differ: {ka} and {kb}")
    c = ctx.input(2)
    if c is not None and c.shape is not None:
        broadcast_shapes([(m, n), c.shape], "Gemm")
    return [TensorType((m, n), a.dtype)]


def _gemm(ins, attrs, outs):
    a, b = ins[0], ins[1]
    c = ins[2] if len(ins) > 2 else None
    if attrs["transA"]:
        a = a.T
    if attrs["transB"]:
        b = b.T
    alpha, beta = attrs["alpha"], attrs["beta"]
    y = np.matmul(a, b)
    if alpha != 1.0:
        y = y * np.asarray(alpha, dtype=y.dtype)
    if c is not None:
        y = y + (c if beta == 1.0 else c * np.asarray(beta, dtype=c.dtype))
    return y


define_op(
    "Gemm",
    inputs=("A", "B", "C?"),
    attrs={"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0},
    infer=_infer_gemm,
    kernel=_gemm,
)
