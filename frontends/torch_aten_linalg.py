"""Lowerings of aten's matrix products: linear, matmul / mm / bmm, addmm, baddbmm.

Semantics particular to these lowerings:
- linear(x, W, b) -> MatMul(x, Transpose(W)) (+ Add(b)). The weight constant keeps
  torch's [out, in] layout and its state_dict name; constant folding turns the
  Transpose of a constant into a plain [in, out] constant. A weight that is not 2-D is
  multiplied as it is. linear and matmul reach the IR whole because the frontend's
  decomposition table keeps them.
- addmm is one Gemm with torch's alpha and beta.
- baddbmm is MatMul, times alpha when alpha != 1, plus beta * bias (the bias is left
  out when beta == 0, as torch ignores it then).
"""

from __future__ import annotations

import logging
from typing import Any

from requant.frontends.torch_aten_common import Cx
from requant.frontends.torch_lowering import lowers
from requant.ir.graph import Value

__all__: list[str] = []  # the lowerings are reached through LOWERINGS

logger = logging.getLogger(__name__)


@lowers("aten.linear.default")
def linear(cx: Cx, x: Any, weight: Any, bias: Any = None) -> Value:
    w = cx.value(weight)
    y = cx.emit("MatMul", cx.value(x), cx.emit("Transpose", w, perm=[1, 0]) if w.type.rank == 2 else w)
    if bias is not None:
        y = cx.emit("Add", y, cx.value(bias))
    return y


@lowers("aten.matmul.default", "aten.mm.default", "aten.bmm.default")
def matmul(cx: Cx, a: Any, b: Any) -> Value:
    return cx.emit("MatMul", cx.value(a), cx.value(b))


@lowers("aten.addmm.default")
def addmm(cx: Cx, bias: Any, a: Any, b: Any, *, beta: float = 1, alpha: float = 1) -> Value:
    return cx.emit("Gemm", cx.value(a), cx.value(b), cx.value(bias), alpha=float(alpha), beta=float(beta))


@lowers("aten.baddbmm.default")
def baddbmm(cx: Cx, bias: Any, a: Any, b: Any, *, beta: float = 1, alpha: float = 1) -> Value:
    dt = cx.out_dtype
    prod = cx.emit("MatMul", cx.value(a), cx.value(b))
    if alpha != 1:
        prod = cx.emit("Mul", prod, cx.tensor(alpha, dt))
    if beta == 0:
        return prod
    base = cx.value(bias)
    if beta != 1:
        base = cx.emit("Mul", base, cx.tensor(beta, dt))
    return cx.emit("Add", base, prod)
