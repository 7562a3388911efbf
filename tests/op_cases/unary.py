"""Cases of the elementwise unary ops (requant.ir.ops.unary): exponentials, logarithms,
trigonometric and hyperbolic functions, rounding, sign and magnitude, NaN/inf tests, Not."""

from __future__ import annotations

import numpy as np

from op_cases.case import OLD_OPSETS, ORT_NO_BF16, CaseList, Draws, I

__all__ = ["CASES"]

CASES = CaseList()
add = CASES.add
_d = Draws(102)
r, ri, rb = _d.r, _d.ri, _d.rb

_DOMAINS = {
    "Log": (0.05, 5),
    "Sqrt": (0, 5),
    "Reciprocal": (0.2, 4),
    "Asin": (-0.99, 0.99),
    "Acos": (-0.99, 0.99),
    "Atanh": (-0.95, 0.95),
    "Acosh": (1.0, 5),
    "Tan": (-1.3, 1.3),
}
for op in ("Exp", "Log", "Sqrt", "Reciprocal", "Tanh", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan",
           "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Floor", "Ceil", "Erf"):
    lo, hi = _DOMAINS.get(op, (-3, 3))
    add(op, [I(r(3, 5, lo=lo, hi=hi))])
for op in ("Exp", "Tanh", "Erf", "Sqrt", "Sin"):
    lo, hi = _DOMAINS.get(op, (-3, 3))
    add(op, [I(r(4, 5, dt="f16", lo=lo, hi=hi))], label="f16")
    add(op, [I(r(4, 5, dt="bf16", lo=lo, hi=hi))], label="bf16", refused=ORT_NO_BF16)
add("Exp", [I(r(4, 5), shape=("B", 5))], expect=("B", 5), label="sym")
add("Round", [I(np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.4, -0.6, 3.7], np.float32))])
for op in ("Neg", "Abs", "Sign"):
    add(op, [I(r(3, 4))])
    add(op, [I(ri(3, 4))], label="i32")
    add(op, [I(np.array([-128, -1, 0, 1, 127], np.int8))], label="i8")
add("Abs", [I(r(2, 3, 4))], label="old_opsets", export_opsets=OLD_OPSETS)
add("IsNaN", [I(np.array([1.0, np.nan, np.inf, -np.inf, 0.0], np.float32))])
add("IsInf", [I(np.array([1.0, np.nan, np.inf, -np.inf, 0.0], np.float32))])
add("IsInf", [I(np.array([1.0, np.nan, np.inf, -np.inf, 0.0], np.float32))], {"detect_negative": 0}, label="pos")
add("Not", [I(rb(3, 4))])
