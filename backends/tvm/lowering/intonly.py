"""TVM lowering of the integer-only ops (`requant.ir.ops.intonly`): Requantize,
DyadicAdd, ILayerNorm, Shiftmax, ShiftGELU, PolySoftmax, PolyGELU, TanhGELU, as Relax integer ops
(int64 arithmetic, TIR's arithmetic right shift for `>>`, floor division, row
reductions along the last axis), bit-exact with the interpreter.

They are high-level Relax calls on purpose: FoldConstant precomputes what depends only on
constant parameters (2^(shift-1), the per-channel vectors), and FuseOps fuses each op's
elementwise chain into one kernel and, for Requantize after an integer matmul, into the
matmul's epilogue, so an integer-only layer is one int8 kernel with an integer epilogue
(backends/tvm/schedule_cpu.py on the CPU, backends/tvm/cuda.py on NVIDIA GPUs).
"""

from __future__ import annotations

import logging
from typing import Any

from tvm import relax, tirx

from requant.backends.tvm.lowering._common import (
    LOWERINGS,
    LowerContext,
    as_dtype,
    constant,
    elementwise_te,
    rank_of,
    relax_dtype,
    requires,
    shaped_like,
)
from requant.ir.dtypes import DType
from requant.ir.graph import Node
from requant.ir.ops.intonly import INT32_MAX, TANH_GELU_EXP

__all__: list[str] = []

logger = logging.getLogger(__name__)

R = relax.op
_I64 = "int64"
_I64_MIN = -(2**63)


def _c(value: int) -> relax.Expr:
    return constant(value, _I64)


def _i64(ctx: LowerContext, x: relax.Expr) -> relax.Expr:
    return as_dtype(ctx, x, _I64)


def _param(ctx: LowerContext, node: Node, ins: list, i: int, rank: int, axis: int) -> relax.Expr | None:
    """Parameter input `i` (one value or a vector along `axis`) as int64, shaped to
    broadcast against a rank-`rank` tensor; None when omitted."""
    if i >= len(ins) or ins[i] is None:
        return None
    p = _i64(ctx, ins[i])
    shape = node.inputs[i].type.shape
    if shape is None or all(d == 1 for d in shape) or rank == 0:
        return ctx.emit(R.reshape(p, ()))
    view = [1] * rank
    view[axis % rank] = -1
    return ctx.emit(R.reshape(p, view))


def _rshift_round(ctx: LowerContext, acc: relax.Expr, shift: relax.Expr) -> relax.Expr:
    """floor((acc + 2^(shift-1)) / 2^shift); 2^shift >> 1 is the half (0 for shift 0)."""
    half = ctx.emit(R.right_shift(R.left_shift(_c(1), shift), _c(1)))
    return ctx.emit(R.right_shift(R.add(acc, half), shift))


def _saturate(ctx: LowerContext, y: relax.Expr, dt: DType, like: relax.Expr) -> relax.Expr:
    lo, hi = dt.int_range
    y = shaped_like(ctx, ctx.emit(R.minimum(R.maximum(y, _c(lo)), _c(hi))), like)
    return ctx.emit(R.astype(y, relax_dtype(dt)))


def _row_max(ctx: LowerContext, x: relax.Expr) -> relax.Expr:
    return ctx.emit(R.max(x, axis=[-1], keepdims=True))


def _row_sum(ctx: LowerContext, x: relax.Expr) -> relax.Expr:
    return ctx.emit(R.sum(x, axis=[-1], keepdims=True))


@LOWERINGS.lowers("Requantize")
def _requantize(ctx: LowerContext, node: Node, ins: list) -> Any:
    x = _i64(ctx, ins[0])
    rank, axis = rank_of(x), int(ctx.attrs(node)["axis"])
    mult, shift, offset = (_param(ctx, node, ins, i, rank, axis) for i in (1, 2, 3))
    acc = ctx.emit(R.multiply(x, mult))
    if offset is not None:
        acc = ctx.emit(R.add(acc, offset))
    return _saturate(ctx, _rshift_round(ctx, acc, shift), node.outputs[0].dtype, x)


@LOWERINGS.lowers("DyadicAdd")
def _dyadic_add(ctx: LowerContext, node: Node, ins: list) -> Any:
    a, b = _i64(ctx, ins[0]), _i64(ctx, ins[3])
    rank, axis = max(rank_of(a), rank_of(b)), int(ctx.attrs(node)["axis"])
    am, ash, bm, bsh, off = (_param(ctx, node, ins, i, rank, axis) for i in (1, 2, 4, 5, 6))
    y = ctx.emit(R.add(_rshift_round(ctx, ctx.emit(R.multiply(a, am)), ash),
                       _rshift_round(ctx, ctx.emit(R.multiply(b, bm)), bsh)))
    if off is not None:
        y = ctx.emit(R.add(y, off))
    return _saturate(ctx, y, node.outputs[0].dtype, y)


def _static_rows(node: Node) -> str | None:
    shape = node.inputs[0].type.shape
    if shape is None or not shape or not isinstance(shape[-1], int):
        return "ILayerNorm needs a static last axis in the TVM backend (its length is a constant of the mean)"
    return None


@LOWERINGS.lowers("ILayerNorm")
@requires(_static_rows)
def _ilayernorm(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    n = int(node.inputs[0].type.shape[-1])
    x = _i64(ctx, ins[0])
    mean = ctx.emit(R.floor_divide(R.add(R.multiply(_row_sum(ctx, x), _c(2)), _c(n)), _c(2 * n)))
    y = ctx.emit(R.subtract(x, mean))
    var = _row_sum(ctx, ctx.emit(R.multiply(y, y)))
    factor = ctx.emit(R.floor_divide(_c(INT32_MAX), _isqrt(ctx, var, int(a["k0"]), int(a["steps"]))))
    return _saturate(ctx, ctx.emit(R.right_shift(R.multiply(y, factor), _c(1))), node.outputs[0].dtype, x)


_OP_PATTERN_OPAQUE = 8  # TVM's kOpaque: FuseOps leaves the kernel alone


def _isqrt(ctx: LowerContext, var: relax.Expr, k0: int, steps: int) -> relax.Expr:
    """`steps` Newton steps `k = max(1, (k + var // k) >> 1)` from `k0`, each step a kernel
    of its own (one value per row). Fused into one kernel, every step repeats the previous
    one twice (2^steps terms: 4.6 MB of CUDA source per LayerNorm kernel at 10 steps, and a
    TIR Let per step hangs LLVM's code generation)."""
    k = None
    for _ in range(steps):
        if k is None:
            k = elementwise_te(ctx, lambda v: tirx.max((k0 + tirx.floordiv(v, k0)) >> 1, 1), [var], _I64,
                               "isqrt_step")
        else:
            k = elementwise_te(ctx, lambda v, kk: tirx.max((kk + tirx.floordiv(v, kk)) >> 1, 1), [var, k], _I64,
                               "isqrt_step")
        gv = ctx.bb.lookup_binding(k).args[0]
        ctx.bb.update_func(gv, ctx.bb.get()[gv].with_attr("op_pattern", _OP_PATTERN_OPAQUE))
    return k if k is not None else _c(k0)


# ----------------------------------------------------------------------------- exponentials


def _shift_exp(ctx: LowerContext, d: relax.Expr, x0: int, n: int) -> relax.Expr:
    """I-ViT's ShiftExp of d <= 0 (requant.ir.ops.intonly.shift_exp)."""
    t = ctx.emit(R.subtract(R.add(d, R.right_shift(d, _c(1))), R.right_shift(d, _c(4))))
    t = ctx.emit(R.maximum(t, _c(n * x0)))
    q = ctx.emit(R.floor_divide(t, _c(x0)))
    r = ctx.emit(R.subtract(t, R.multiply(_c(x0), q)))
    grown = ctx.emit(R.left_shift(R.subtract(r, _c(2 * x0)), R.subtract(_c(n), q)))
    return ctx.emit(R.right_shift(grown, _c(1)))


def _poly_exp(ctx: LowerContext, d: relax.Expr, x0: int, b: int, c: int, n: int) -> relax.Expr:
    """I-BERT's i-exp of d <= 0 (requant.ir.ops.intonly.poly_exp)."""
    t = ctx.emit(R.maximum(d, _c(n * x0)))
    q = ctx.emit(R.floor_divide(t, _c(x0)))
    r = ctx.emit(R.subtract(t, R.multiply(_c(x0), q)))
    z = ctx.emit(R.add(R.multiply(r, R.add(r, _c(b))), _c(c)))
    return ctx.emit(R.right_shift(z, q))


def _softmax(ctx: LowerContext, node: Node, ins: list, exp) -> Any:
    x = _i64(ctx, ins[0])
    keep = ins[1] if len(ins) > 1 else None
    if keep is None:
        d = ctx.emit(R.subtract(x, _row_max(ctx, x)))
    else:
        low = _c(_I64_MIN)
        m = _row_max(ctx, shaped_like(ctx, ctx.emit(R.where(keep, x, low)), x))
        m = ctx.emit(R.where(R.equal(m, low), _c(0), m))  # nothing kept: any value will do
        d = ctx.emit(R.minimum(R.subtract(x, m), _c(0)))
    e = exp(d)
    if keep is not None:
        e = shaped_like(ctx, ctx.emit(R.where(keep, e, _c(0))), x)
    total = ctx.emit(R.minimum(_row_sum(ctx, e), _c(INT32_MAX)))
    factor = ctx.emit(R.floor_divide(_c(INT32_MAX), R.maximum(total, _c(1))))
    frac = int(ctx.attrs(node)["frac_bits"])
    y = ctx.emit(R.right_shift(R.multiply(e, factor), _c(31 - frac)))
    return _saturate(ctx, y, node.outputs[0].dtype, x)


@LOWERINGS.lowers("Shiftmax")
def _shiftmax(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    return _softmax(ctx, node, ins, lambda d: _shift_exp(ctx, d, int(a["x0"]), int(a["n"])))


@LOWERINGS.lowers("PolySoftmax")
def _poly_softmax(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    return _softmax(ctx, node, ins, lambda d: _poly_exp(ctx, d, int(a["x0"]), int(a["b"]), int(a["c"]), int(a["n"])))


@LOWERINGS.lowers("ShiftGELU")
def _shift_gelu(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    x0, n, frac = int(a["x0"]), int(a["n"]), int(a["frac_bits"])
    x = _i64(ctx, ins[0])
    m = ctx.emit(R.maximum(x, _c(0)))
    e1 = _shift_exp(ctx, ctx.emit(R.subtract(x, m)), x0, n)
    e2 = _shift_exp(ctx, ctx.emit(R.negative(m)), x0, n)
    factor = ctx.emit(R.floor_divide(_c(INT32_MAX), R.minimum(R.add(e1, e2), _c(INT32_MAX))))
    sig = ctx.emit(R.right_shift(R.multiply(e1, factor), _c(31 - frac)))
    return _saturate(ctx, ctx.emit(R.multiply(x, sig)), node.outputs[0].dtype, x)


@LOWERINGS.lowers("PolyGELU")
def _poly_gelu(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    b, c, shift, one = int(a["b"]), int(a["c"]), int(a["shift"]), int(a["one"])
    x = _i64(ctx, ins[0])
    clipped = ctx.emit(R.add(R.minimum(R.abs(x), _c(-b)), _c(b)))
    erf = ctx.emit(R.multiply(R.sign(x), R.add(R.multiply(clipped, clipped), _c(c))))
    y = ctx.emit(R.right_shift(erf, _c(shift)))
    return _saturate(ctx, ctx.emit(R.multiply(x, R.add(y, _c(one)))), node.outputs[0].dtype, x)


@LOWERINGS.lowers("TanhGELU")
def _tanh_gelu(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    clip, frac = int(a["clip"]), int(a["frac_bits"])
    x = _i64(ctx, ins[0])
    xc = ctx.emit(R.minimum(R.maximum(x, _c(-clip)), _c(clip)))
    cube = _rshift_round(ctx, ctx.emit(R.multiply(R.multiply(xc, xc), _c(int(a["cube_mult"])))), _c(int(a["cube_shift"])))
    z = _rshift_round(ctx, ctx.emit(R.multiply(xc, R.add(_c(int(a["lin"])), cube))), _c(int(a["z_shift"])))
    x0, b, c, n = TANH_GELU_EXP
    e = _poly_exp(ctx, ctx.emit(R.negative(R.abs(z))), x0, b, c, n)
    sig = ctx.emit(R.floor_divide(_c(c << frac), R.add(_c(c), e)))
    sig = ctx.emit(R.where(R.less(z, _c(0)), R.subtract(_c(1 << frac), sig), sig))
    return _saturate(ctx, ctx.emit(R.multiply(x, sig)), node.outputs[0].dtype, x)
