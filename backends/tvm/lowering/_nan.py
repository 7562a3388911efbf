"""NaN-propagating max / min / sign / arg-reductions for the TVM lowerings.

TVM's `maximum`, `minimum`, `max`, `min`, `argmax`, `argmin` and `sign` follow the
C/LLVM `maxnum` convention: a NaN operand is ignored (max(NaN, 0) = 0, sign(NaN) = 0).
The interpreter, numpy and ONNX Runtime propagate it (np.maximum(NaN, 0) = NaN;
np.argmax picks the first NaN). requant has one float semantics, the interpreter's,
so every lowering that takes a max or a min goes through these helpers: on float
tensors they select the NaN explicitly (`where(isnan(a), a, ...)`), on integer
tensors they are TVM's ops unchanged. Relu(NaN), Clip(NaN), Max/Min, ReduceMax/Min,
MaxPool and GlobalMaxPool, ArgMax/ArgMin, Sign, Elu/Selu/Celu and HardSigmoid then give
what the interpreter gives (tests/test_nonfinite_semantics.py).

Against a constant that holds no NaN (Relu's 0, Clip's bounds, HardSigmoid's 0 and 1)
only the other operand is tested: `where(isnan(a), a, max(a, c))`, and a Clip's max and
min share one test. The general form's second test and select, on the constant, stayed
in every fused conv epilogue; `where(a < c, c, a)`, NaN-propagating too, measured as fast
in float convs but slower in the int8 convs' epilogues.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from tvm import relax
from tvm.script import relax as R

from requant.backends.tvm.lowering._common import constant, dtype_of
from requant.backends.tvm.schedule_cpu import constant_array

__all__ = ["maximum", "minimum", "clip", "reduce_max", "reduce_min", "sign", "arg_reduce", "pooled_max"]

logger = logging.getLogger(__name__)


def _is_float(*operands: relax.Expr) -> bool:
    """Whether the operands are float, read off the first whose type is known (an
    expression not yet emitted has none)."""
    for x in operands:
        try:
            return str(dtype_of(x)).startswith(("float", "bfloat"))
        except AttributeError:
            continue
    raise TypeError("NaN-aware max/min: no operand has a known dtype; emit one first")


def _first_nan(a: relax.Expr, b: relax.Expr, result: relax.Expr) -> relax.Expr:
    """`result` with NaN where a or b is NaN; an operand that is a NaN-free constant is not
    tested (module docstring)."""
    if _nan_free_constant(b):
        return R.where(R.isnan(a), a, result)
    if _nan_free_constant(a):
        return R.where(R.isnan(b), b, result)
    return R.where(R.isnan(a), a, R.where(R.isnan(b), b, result))


def _nan_free_constant(x: relax.Expr) -> bool:
    value = constant_array(x)
    return value is not None and not np.isnan(value.astype(np.float32)).any()


def maximum(a: relax.Expr, b: relax.Expr) -> relax.Expr:
    """Elementwise max; NaN if either operand is NaN (float tensors)."""
    return _first_nan(a, b, R.maximum(a, b)) if _is_float(a, b) else R.maximum(a, b)


def minimum(a: relax.Expr, b: relax.Expr) -> relax.Expr:
    """Elementwise min; NaN if either operand is NaN (float tensors)."""
    return _first_nan(a, b, R.minimum(a, b)) if _is_float(a, b) else R.minimum(a, b)


def clip(x: relax.Expr, lo: relax.Expr | None, hi: relax.Expr | None,
         emit: Any = lambda e: e) -> relax.Expr:
    """min(max(x, lo), hi) (a bound None: none), NaN where any operand is; against
    NaN-free constant bounds x is tested once for both (nested, each test would read the
    other's result again). `emit` binds the intermediate max where both are taken."""
    bounds = [b for b in (lo, hi) if b is not None]
    if bounds and _is_float(x, *bounds) and all(_nan_free_constant(b) for b in bounds):
        y = x if lo is None else R.maximum(x, lo)
        return R.where(R.isnan(x), x, y if hi is None else R.minimum(y, hi))
    y = x if lo is None else maximum(x, lo)
    return y if hi is None else minimum(emit(y), hi)


def _any_nan(x: relax.Expr, axes: Any, keepdims: bool) -> relax.Expr:
    return R.greater(R.max(R.astype(R.isnan(x), "int8"), axes, keepdims), R.const(0, "int8"))


def _reduce(fn: Any, x: relax.Expr, axes: Any, keepdims: bool) -> relax.Expr:
    if not _is_float(x):
        return fn(x, axes, keepdims)
    nan = constant(float("nan"), dtype_of(x))
    return R.where(_any_nan(x, axes, keepdims), nan, fn(x, axes, keepdims))


def reduce_max(x: relax.Expr, axes: Any = None, keepdims: bool = False) -> relax.Expr:
    """Max over `axes`; NaN where the reduced slice holds a NaN (float tensors)."""
    return _reduce(R.max, x, axes, keepdims)


def reduce_min(x: relax.Expr, axes: Any = None, keepdims: bool = False) -> relax.Expr:
    """Min over `axes`; NaN where the reduced slice holds a NaN (float tensors)."""
    return _reduce(R.min, x, axes, keepdims)


def sign(x: relax.Expr) -> relax.Expr:
    """sign(x), NaN for NaN (float tensors)."""
    return R.where(R.isnan(x), x, R.sign(x)) if _is_float(x) else R.sign(x)


def arg_reduce(fn: Any, x: relax.Expr, axis: int, keepdims: bool) -> relax.Expr:
    """argmax / argmin (`fn`) along `axis`, the index of the first NaN where the slice
    holds one, as numpy and the interpreter pick it (float tensors)."""
    if not _is_float(x):
        return fn(x, axis, keepdims)
    nan_mask = R.astype(R.isnan(x), "int8")
    return R.where(_any_nan(x, [axis], keepdims), R.argmax(nan_mask, axis, keepdims), fn(x, axis, keepdims))


def pooled_max(pool: Any, x: relax.Expr, pooled: relax.Expr, **window: Any) -> relax.Expr:
    """`pooled` (= pool(x, **window), a max pool) with NaN in every window that holds
    one: the same pool over x's NaN flags marks those windows (float tensors)."""
    if not _is_float(x):
        return pooled
    dt = dtype_of(x)
    flags = pool(R.astype(R.isnan(x), dt), **window)
    return R.where(R.greater(flags, constant(0, dt)), constant(float("nan"), dt), pooled)
