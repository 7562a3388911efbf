"""Lowering of requant's Hadamard (`requant.ir.ops.rotation`): X @ H_n / sqrt(n) along one
axis as Relax matmuls with the small constant factors of
`requant.ir.hadamard.kronecker_factors` (one dense matrix for n <= 64; else the Paley base
order K and powers of two of at most 128), X viewed as [pre, f_1, ..., f_r, post].

Each factor but the last is a left product `H_f^T @ [A, f, B]` (a batch matmul); the
factor that ends the last axis goes last as `[rows, f] @ H_f`, a matmul with a 2-D
constant, which `schedule_cpu.PackConstantWeights` turns into a packed dense kernel. The
Reshape back to the input's shape that follows it is injective, and TVM's FuseOps fuses
only elementwise ops into a matmul's epilogue, so the next linear's activation quantizer
fuses with that Reshape (one pass over the rotated tensor), not into the dense kernel.
Symbolic dims stay symbolic (the views are products of the input's dims). f16/bf16
compute in float32 and round once.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from tvm import relax

from requant.backends.tvm.lowering._common import (
    LOWERINGS,
    LowerContext,
    const_array,
    dims_of,
    from_compute,
    in_dtype,
    requires,
    to_compute,
)
from requant.ir import dtypes
from requant.ir.graph import Node
from requant.ir.hadamard import factor_matrix, kronecker_factors
from requant.ir.shapes import normalize_axis

__all__: list[str] = []

logger = logging.getLogger(__name__)

R = relax.op


def _check(node: Node) -> str | None:
    shape = node.inputs[0].type.shape
    if shape is None:
        return "Hadamard needs an input of known rank in the TVM backend"
    axis = int(node.attrs.get("axis", -1))
    if not -len(shape) <= axis < len(shape) or not isinstance(shape[axis], int):
        return "Hadamard needs a static size of the rotated axis in the TVM backend (bind_dims)"
    return None


def _product(dims: list[Any]) -> Any:
    out: Any = 1
    for d in dims:
        out = out * d
    return out


@LOWERINGS.lowers("Hadamard")
@requires(_check)
def _hadamard(ctx: LowerContext, node: Node, ins: list) -> Any:
    dt = in_dtype(node)
    x = to_compute(ctx, ins[0], dt)
    ct = dtypes.float32 if dt in (dtypes.float16, dtypes.bfloat16) else dt
    dims = dims_of(x)
    axis = normalize_axis(int(ctx.attrs(node)["axis"]), len(dims), "Hadamard")
    n = int(node.inputs[0].type.shape[axis])
    pre, post = _product(dims[:axis]), _product(dims[axis + 1:])
    factors = kronecker_factors(n)
    last_is_right = isinstance(post, int) and post == 1
    order = sorted(range(len(factors)), key=lambda i: last_is_right and i == len(factors) - 1)
    cur = x
    for i in order:
        f = factors[i]
        h = factor_matrix(f)
        if last_is_right and i == len(factors) - 1:
            cur = ctx.emit(R.reshape(cur, [pre * (n // f), f]))
            cur = ctx.emit(R.matmul(cur, const_array(h, ct)))
            continue
        before = pre * math.prod(factors[:i])
        after = math.prod(factors[i + 1:]) * post
        cur = ctx.emit(R.reshape(cur, [before, f, after]))
        cur = ctx.emit(R.matmul(const_array(h.T.copy(), ct), cur))
    y = ctx.emit(R.reshape(cur, dims))
    return from_compute(ctx, y, dt)
