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
compute in float32 and round once. With `block` b the factors are b's: the row kernel's
stages then mix only inside each run of b elements, and the matmul form views the axis as
[n/b, b].

Along the last axis (every online rotation the rotate passes insert) the op is instead
one row kernel (`_row_kernel`): the row viewed as [f_1, ..., f_r] with factors of at most
16 (`row_factors`: the base order K, then Sylvester powers of two, smallest first, whose
order does not matter since H_(2^a) (x) H_(2^b) = H_(2^(a+b)) either way), one stage per
factor, f_t multiply-adds per element each (28 for MiniLM's 384 = 12 x 2 x 16 instead of
44, 36 for its FFN's 1536 = 12 x 8 x 16 instead of 140), the whole row in L1 between
stages, and TVM fuses the next linear's activation quantizer into its epilogue (one pass
over the rotated tensor). The CPU schedule is `schedule_cpu.HadamardRows`; the Relax
matmuls made a pass over memory per factor, the last one a dense product of up to 128
multiply-adds per element.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from tvm import relax, te

from requant.backends.tvm.lowering._common import (
    LOWERINGS,
    LowerContext,
    const_array,
    dims_of,
    from_compute,
    in_dtype,
    requires,
    to_compute,
    with_shape_expr,
)
from requant.backends.tvm.schedule_cpu import HADAMARD_STAGE
from requant.ir import dtypes
from requant.ir.graph import Node
from requant.ir.hadamard import block_size, factor_matrix, hadamard_factors, kronecker_factors
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


#: the largest factor of the row kernel: one 16-lane vector of outputs per step
ROW_FACTOR_MAX = 16


def row_factors(n: int) -> list[int]:
    """f_1, ..., f_r with H_n / sqrt(n) = (x)_t H_(f_t) / sqrt(f_t), every f_t <= 16 except
    a base order K > 16 (20, 28, ...): K first, then powers of two, smallest first."""
    k, p = hadamard_factors(n)
    twos = []
    while p > 1:
        twos.append(min(p, ROW_FACTOR_MAX))
        p //= twos[-1]
    return ([k] if k > 1 else []) + sorted(twos)


def _row_kernel(ctx: LowerContext, x: relax.Expr, n: int, ct: str) -> relax.Expr:
    """x @ H_n / sqrt(n) along x's last axis as one TE function of `len(row_factors(n))`
    stages (module docstring); for a last axis longer than n, the same product on each run
    of n elements (I (x) H_n / sqrt(n)): a stage's index arithmetic never leaves the run."""
    from requant.backends.tvm.schedule_cpu import HADAMARD_STAGE

    factors = row_factors(n)
    mats = [const_array(factor_matrix(f), ct) for f in factors]

    def stage(cur: te.Tensor, h: te.Tensor, t: int) -> te.Tensor:
        f, after = factors[t], math.prod(factors[t + 1:])
        k = te.reduce_axis((0, f), name=f"k{t}")

        def product(*idx: Any) -> Any:
            *lead, i = idx
            j = i // after % f
            return te.sum(cur[(*lead, i + (k - j) * after)] * h[k, j], axis=k)

        return te.compute(cur.shape, product, name=f"{HADAMARD_STAGE}{t}")

    def compute(x_t: te.Tensor, *hs: te.Tensor) -> te.Tensor:
        cur = x_t
        for t, h in enumerate(hs):
            cur = stage(cur, h, t)
        return cur

    return ctx.te(compute, with_shape_expr(ctx, x), *mats, name="hadamard_rows")


@LOWERINGS.lowers("Hadamard")
@requires(_check)
def _hadamard(ctx: LowerContext, node: Node, ins: list) -> Any:
    dt = in_dtype(node)
    x = to_compute(ctx, ins[0], dt)
    ct = dtypes.float32 if dt in (dtypes.float16, dtypes.bfloat16) else dt
    dims = dims_of(x)
    axis = normalize_axis(int(ctx.attrs(node)["axis"]), len(dims), "Hadamard")
    n = int(node.inputs[0].type.shape[axis])
    b = block_size(n, int(ctx.attrs(node).get("block", 0)))
    if axis == len(dims) - 1 and b > 1:
        return from_compute(ctx, _row_kernel(ctx, x, b, ct), dt)
    pre, post = _product(dims[:axis]) * (n // b), _product(dims[axis + 1:])
    n = b
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
