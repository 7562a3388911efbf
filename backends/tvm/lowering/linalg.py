"""Lowerings of MatMul, Gemm (transA, transB, alpha, beta; an integer Gemm scales by
integer alpha and beta) and Einsum (an implicit output takes the labels used once, in
alphabetical order; a label repeated within one operand, a diagonal, is refused).
f16/bf16 compute in float32 and round once.
"""

from __future__ import annotations

import logging
from typing import Any

from tvm import relax

from requant.backends.tvm.lowering._common import (
    LOWERINGS,
    LowerContext,
    constant,
    dtype_of,
    from_compute,
    in_dtype,
    requires,
    to_compute,
)
from requant.backends.tvm.lowering.elementwise import binary
from requant.ir.graph import Node

__all__: list[str] = []

logger = logging.getLogger(__name__)

R = relax.op


LOWERINGS.add("MatMul", binary(R.matmul))


@LOWERINGS.lowers("Gemm")
def _gemm(ctx: LowerContext, node: Node, ins: list) -> Any:
    at = ctx.attrs(node)
    dt = in_dtype(node)
    a, b = (to_compute(ctx, x, dt) for x in ins[:2])
    ct = dtype_of(a)
    if at["transA"]:
        a = ctx.emit(R.permute_dims(a, [1, 0]))
    if at["transB"]:
        b = ctx.emit(R.permute_dims(b, [1, 0]))
    y = ctx.emit(R.matmul(a, b))
    alpha, beta = at["alpha"], at["beta"]
    cast = int if dt.is_integer else float
    if alpha != 1.0:
        y = ctx.emit(R.multiply(y, constant(cast(alpha), ct)))
    if len(ins) > 2 and ins[2] is not None:
        c = to_compute(ctx, ins[2], dt)
        if beta != 1.0:
            c = ctx.emit(R.multiply(c, constant(cast(beta), ct)))
        y = ctx.emit(R.add(y, c))
    return from_compute(ctx, y, dt)


def _einsum_equation(node: Node) -> str:
    eq = node.attrs["equation"].replace(" ", "")
    if "->" in eq:
        return eq
    from collections import Counter

    terms = eq.split(",")
    counts = Counter(ch for t in terms for ch in t.replace("...", ""))
    singles = "".join(sorted(ch for ch, n in counts.items() if n == 1))
    return eq + "->" + ("..." if "..." in eq else "") + singles


def _einsum_check(node: Node) -> str | None:
    eq = _einsum_equation(node)
    lhs, rhs = eq.split("->")
    for term in lhs.split(","):
        letters = term.replace("...", "")
        if len(set(letters)) != len(letters):
            return (f"Einsum with a repeated label in one operand ({term!r}: a diagonal) has no TVM lowering; "
                    f"rewrite it with Gather/Mul/ReduceSum")
    return None


@LOWERINGS.lowers("Einsum")
@requires(_einsum_check)
def _einsum(ctx: LowerContext, node: Node, ins: list) -> Any:
    dt = in_dtype(node)
    xs = [to_compute(ctx, x, dt) for x in ins]
    return from_compute(ctx, ctx.emit(R.einsum(xs, _einsum_equation(node))), dt)
