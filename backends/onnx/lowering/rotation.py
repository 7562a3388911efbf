"""ONNX lowering of requant's Hadamard (`requant.ir.ops.rotation`): standard MatMuls with
small constant Hadamard factors, at every opset.

H_n / sqrt(n) is the Kronecker product of the factors `requant.ir.hadamard.kronecker_factors`
gives (one dense n x n matrix for n <= 64, else the Paley base order K and powers of two of
at most 128), so with X viewed as [pre, f_1, ..., f_r, post] around the rotated axis each
factor is one MatMul on a Reshape of the running value: `H_f^T @ [A, f, B]` (a left
product, B > 1) or `[rows, f] @ H_f` for the factor that ends the last axis. The left
products go first, so the last node is the plain right product a following quantizer
reads. Why factors: the dense product costs n multiply-adds per element, the factored
form sum(f_i) (44 instead of 384 for MiniLM's width, 140 instead of 1536 for its FFN);
`python -m requant.tools.bench.rotate --only hadamard` times both forms on ONNX Runtime for
MiniLM's shapes. With `block` b the axis is viewed as [n/b, b] and the factors are b's,
rotating each run of b elements on its own. f16/bf16 are computed in float32 and rounded
once, as the reference kernel does.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from requant.backends.onnx.lowering._common import LOWERINGS, EmitContext
from requant.backends.onnx.onnx_types import dtype_to_onnx
from requant.errors import UnsupportedOpError
from requant.ir import dtypes
from requant.ir.graph import Node
from requant.ir.hadamard import block_size, factor_matrix, kronecker_factors
from requant.ir.shapes import normalize_axis

__all__: list[str] = []

logger = logging.getLogger(__name__)


def _static_product(dims) -> int | None:
    return math.prod(dims) if all(isinstance(d, int) for d in dims) else None


@LOWERINGS.lowers("Hadamard")
def _hadamard(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """X @ H_n / sqrt(n) along `axis` as MatMuls with the Kronecker factors (module docstring)."""
    x_t = node.inputs[0].type
    shape = list(x_t.shape)
    axis = normalize_axis(int(node.attrs.get("axis", -1)), len(shape), "Hadamard")
    n = shape[axis]
    if not isinstance(n, int):
        raise UnsupportedOpError(f"{node.label}: the rotated axis has the symbolic size {n!r}; bind it to a "
                                 f"size first (the bind_dims pass) so the Hadamard factors can be built")
    rank, x_axis = len(shape), axis
    b = block_size(n, int(node.attrs.get("block", 0)))
    # the blocks are one more static dim before the (now b-long) rotated axis
    shape[axis:axis + 1] = [n // b, b]
    axis, n = axis + 1, b
    sub = lambda part: ctx.sub_name(node, part)  # noqa: E731
    i64 = lambda v, tag: ctx.const(np.asarray(v, np.int64), dtypes.int64, tag)  # noqa: E731
    half = x_t.dtype in (dtypes.float16, dtypes.bfloat16)
    ct = dtypes.float32 if half else x_t.dtype
    x = ins[0]
    if half:
        (x,) = ctx.emit("Cast", [x], to=dtype_to_onnx(ct), name=sub("to_float32"))
    pre, post = _static_product(shape[:axis]), _static_product(shape[axis + 1:])
    perm = None
    if pre is None and post is None:
        # neither side of the axis is static: move the axis last (post = 1)
        perm = [i for i in range(rank) if i != x_axis] + [x_axis]
        (x,) = ctx.emit("Transpose", [x], perm=perm, name=sub("axis_last"))
        post = 1
    (whole_shape,) = ctx.emit("Shape", [x], name=sub("shape"))
    factors = kronecker_factors(n)
    # left products first (they need the running value as [A, f, B]), the last-axis one last
    order = sorted(range(len(factors)), key=lambda i: i == len(factors) - 1 and post == 1)
    cur = x
    for i in order:
        f = factors[i]
        h = factor_matrix(f).astype(ct.np)
        after = math.prod(factors[i + 1:]) * post if post is not None else None  # B
        if after == 1:
            (cur,) = ctx.emit("Reshape", [cur, i64([-1, f], "hadamard_rows")], name=sub(f"rows_{i}"))
            (cur,) = ctx.emit("MatMul", [cur, ctx.const(h, ct, f"hadamard_{f}")], name=sub(f"factor_{i}"))
            continue
        # one of A, B may be -1: B is static when the dims after the axis are, else A is
        view = [-1, f, after] if post is not None else [pre * math.prod(factors[:i]), f, -1]
        (cur,) = ctx.emit("Reshape", [cur, i64(view, "hadamard_view")], name=sub(f"view_{i}"))
        (cur,) = ctx.emit("MatMul", [ctx.const(np.ascontiguousarray(h.T), ct, f"hadamard_{f}_t"), cur],
                          name=sub(f"factor_{i}"))
    last = outs if not half and perm is None else 1
    (cur,) = ctx.emit("Reshape", [cur, whole_shape], last, name=sub("restore"))
    if perm is not None:
        inverse = [perm.index(i) for i in range(len(perm))]
        (cur,) = ctx.emit("Transpose", [cur], outs if not half else 1, perm=inverse, name=sub("axis_back"))
    if half:
        ctx.emit("Cast", [cur], outs, to=dtype_to_onnx(x_t.dtype), name=sub("to_half"))
