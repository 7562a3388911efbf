"""TVM lowering of the integer-only ops (`requant.ir.ops.intonly`): Requantize,
DyadicAdd, ILayerNorm, Shiftmax, ShiftGELU, PolySoftmax, PolyGELU, TanhGELU, in int64
arithmetic (TIR's arithmetic right shift for `>>`, floor division), bit-exact with the
interpreter.

- Requantize and DyadicAdd are high-level Relax calls: FoldConstant precomputes what
  depends only on constant parameters (2^(shift-1), the per-channel vectors), and
  FuseOps fuses them into the producing matmul's epilogue, so an integer-only layer is
  one int8 kernel with an integer epilogue.
- The GELUs are elementwise TE kernels: PolyGELU's formula fuses into the matmul's
  epilogue; ShiftGELU and TanhGELU, whose sigmoid divides per element, are a lookup in
  a table of every input code's output that the op's reference kernel computes at build
  time (`_lookup_table`; their inputs are 8- or 16-bit).
- The softmax family and ILayerNorm are one row kernel each (`_row.row_kernel`): the row
  reductions, the per-row values (max, sum, factor, mean, the square root's Newton
  steps) and the output in one PrimFunc, with the Requantize that follows fused in. Per-
  row stages are named `ROW_STAGE...`, which the CPU schedule (RowReduction) computes
  once per row instead of inlining them into every element: a per-element int64 division
  (the softmax factor, the LayerNorm factor) costs tens of cycles and does not vectorise.
  As separate Relax reductions these ops were five kernels each, every one a pass over
  int64 tensors in memory.

Schedules: backends/tvm/schedule_cpu.py on the CPU, backends/tvm/cuda.py (dlight) on
NVIDIA GPUs.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from tvm import relax, te, tirx

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
    with_shape_expr,
)
from requant.backends.tvm.lowering._row import row_kernel
from requant.backends.tvm.schedule_cpu import ROW_STAGE
from requant.errors import UnsupportedOpError
from requant.ir import dtypes
from requant.ir.dtypes import DType
from requant.ir.graph import Node
from requant.ir.ops.intonly import INT32_MAX
from requant.ir.registry import run_kernel
from requant.ir.types import TensorType

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


# ----------------------------------------------------------------------------- scalar TIR forms


def _tir_i64(v: int) -> tirx.IntImm:
    return tirx.const(v, _I64)


def _tir_sat(y: tirx.PrimExpr, dt: DType) -> tirx.PrimExpr:
    lo, hi = dt.int_range
    return tirx.max(tirx.min(y, _tir_i64(hi)), _tir_i64(lo)).astype(relax_dtype(dt))


def _tir_floordiv_clamped(t: tirx.PrimExpr, x0: int, n: int) -> tirx.PrimExpr:
    """t // x0 for an int64 t in [n * x0, 0] (the exponentials clamp it there): in int32
    when that range fits, which is exact and which LLVM vectorises (a 64-bit division by
    a constant it does not: x86 has no 64-bit multiply-high vector instruction)."""
    if -(2**31) <= n * x0:
        return tirx.floordiv(t.astype("int32"), tirx.const(x0, "int32")).astype(_I64)
    return tirx.floordiv(t, _tir_i64(x0))


def _tir_shift_exp(d: tirx.PrimExpr, x0: int, n: int) -> tirx.PrimExpr:
    """I-ViT's ShiftExp of d <= 0 (requant.ir.ops.intonly.shift_exp) on int64 scalars."""
    t = tirx.max(d + (d >> 1) - (d >> 4), _tir_i64(n * x0))
    q = _tir_floordiv_clamped(t, x0, n)
    r = t - _tir_i64(x0) * q
    return ((r - _tir_i64(2 * x0)) << (_tir_i64(n) - q)) >> 1


def _tir_poly_exp(d: tirx.PrimExpr, x0: int, b: int, c: int, n: int) -> tirx.PrimExpr:
    """I-BERT's i-exp of d <= 0 (requant.ir.ops.intonly.poly_exp) on int64 scalars."""
    t = tirx.max(d, _tir_i64(n * x0))
    q = _tir_floordiv_clamped(t, x0, n)
    r = t - _tir_i64(x0) * q
    return (r * (r + _tir_i64(b)) + _tir_i64(c)) >> q


# ----------------------------------------------------------------------------- row kernels


def _static_rows(node: Node) -> str | None:
    shape = node.inputs[0].type.shape
    if shape is None or not shape or not isinstance(shape[-1], int):
        return "ILayerNorm needs a static last axis in the TVM backend (its length is a constant of the mean)"
    return None


def _mask_reader(x: te.Tensor, keep: te.Tensor):
    """keep (bool) read at x's index, broadcast right-aligned (its dims of 1 read 0)."""
    skip = len(x.shape) - len(keep.shape)

    def read(*idx):
        return keep[tuple(0 if isinstance(d, tirx.IntImm) and int(d) == 1 else i
                          for d, i in zip(keep.shape, idx[skip:]))]
    return read


@LOWERINGS.lowers("ILayerNorm")
@requires(_static_rows)
def _ilayernorm(ctx: LowerContext, node: Node, ins: list) -> Any:
    """One row kernel: the row sum, the mean, the sum of squares, `steps` Newton steps of
    the integer square root (each a per-row stage: written as one expression, every step
    would repeat the previous one twice), the factor, the output."""
    a = ctx.attrs(node)
    k0, steps = int(a["k0"]), int(a["steps"])
    out_dt = node.outputs[0].dtype

    def build(x: te.Tensor) -> te.Tensor:
        *rows, n = x.shape
        n = int(n)
        xi = lambda idx: x[idx].astype(_I64)  # noqa: E731
        k = te.reduce_axis((0, n), name="k")
        total = te.compute(rows, lambda *r: te.sum(xi((*r, k)), axis=k), name=f"{ROW_STAGE}_sum")
        mean = te.compute(rows, lambda *r: tirx.floordiv(total[r] * 2 + n, _tir_i64(2 * n)), name=f"{ROW_STAGE}_mean")
        k2 = te.reduce_axis((0, n), name="k2")
        var = te.compute(rows, lambda *r: te.sum((xi((*r, k2)) - mean[r]) * (xi((*r, k2)) - mean[r]), axis=k2),
                         name=f"{ROW_STAGE}_var")

        def newton(prev: te.Tensor | None):
            def step(*r):
                k = _tir_i64(k0) if prev is None else prev[r]
                return tirx.max((k + tirx.floordiv(var[r], k)) >> 1, _tir_i64(1))
            return step

        root = None
        for i in range(steps):
            root = te.compute(rows, newton(root), name=f"{ROW_STAGE}_isqrt{i}")
        factor = te.compute(rows, lambda *r: tirx.floordiv(_tir_i64(INT32_MAX), _tir_i64(k0) if root is None else root[r]),
                            name=f"{ROW_STAGE}_factor")
        return te.compute(x.shape, lambda *i: _tir_sat(((xi(i) - mean[i[:-1]]) * factor[i[:-1]]) >> 1, out_dt),
                          name="ilayernorm")

    return row_kernel(ctx, build, [ins[0]], "ilayernorm")


def _softmax(ctx: LowerContext, node: Node, ins: list, exp) -> Any:
    """One row kernel: the row max (over kept elements), the exponentials (kept: a row
    stage), their sum, the factor, the output."""
    frac = int(ctx.attrs(node)["frac_bits"])
    out_dt = node.outputs[0].dtype
    masked = len(ins) > 1 and ins[1] is not None
    low = _tir_i64(_I64_MIN)

    def build(x: te.Tensor, *mask: te.Tensor) -> te.Tensor:
        *rows, n = x.shape
        keep = _mask_reader(x, mask[0]) if mask else None
        xi = lambda idx: x[idx].astype(_I64)  # noqa: E731
        k = te.reduce_axis((0, n), name="k")
        if keep is None:
            top = te.compute(rows, lambda *r: te.max(xi((*r, k)), axis=k), name=f"{ROW_STAGE}_max")
            shifted = lambda i: xi(i) - top[i[:-1]]  # noqa: E731
        else:
            raw = te.compute(rows, lambda *r: te.max(tirx.Select(keep(*r, k), xi((*r, k)), low), axis=k),
                             name=f"{ROW_STAGE}_kept_max")
            # nothing kept: any value will do
            top = te.compute(rows, lambda *r: tirx.Select(raw[r] == low, _tir_i64(0), raw[r]), name=f"{ROW_STAGE}_max")
            shifted = lambda i: tirx.min(xi(i) - top[i[:-1]], _tir_i64(0))  # noqa: E731
        e = te.compute(x.shape, lambda *i: exp(shifted(i)) if keep is None
                       else tirx.Select(keep(*i), exp(shifted(i)), _tir_i64(0)), name=f"{ROW_STAGE}_exp")
        k2 = te.reduce_axis((0, n), name="k2")
        total = te.compute(rows, lambda *r: te.sum(e[(*r, k2)], axis=k2), name=f"{ROW_STAGE}_total")
        factor = te.compute(rows, lambda *r: tirx.floordiv(
            _tir_i64(INT32_MAX), tirx.max(tirx.min(total[r], _tir_i64(INT32_MAX)), _tir_i64(1))), name=f"{ROW_STAGE}_factor")
        return te.compute(x.shape, lambda *i: _tir_sat((e[i] * factor[i[:-1]]) >> (31 - frac), out_dt), name="softmax")

    return row_kernel(ctx, build, [ins[0], ins[1]] if masked else [ins[0]], "int_softmax")


@LOWERINGS.lowers("Shiftmax")
def _shiftmax(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    return _softmax(ctx, node, ins, lambda d: _tir_shift_exp(d, int(a["x0"]), int(a["n"])))


@LOWERINGS.lowers("PolySoftmax")
def _poly_softmax(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    return _softmax(ctx, node, ins, lambda d: _tir_poly_exp(d, int(a["x0"]), int(a["b"]), int(a["c"]), int(a["n"])))


_TABLE_DTYPES = (dtypes.int8, dtypes.uint8, dtypes.int16, dtypes.uint16)
# TVM's kInjective: the Requantize that follows fuses into the lookup. (kElemWise is reset
# to opaque by AnnotateTIROpPattern, the table read being indirect; forced back after it, the
# lookup fused into the matmul's epilogue and measured slower there, the gather inside the
# register tile's write-back: README, "Integer-only inference")
_OP_PATTERN_INJECTIVE = 2


def _lookup_table(ctx: LowerContext, node: Node, ins: list) -> relax.Expr:
    """An elementwise op of an 8- or 16-bit input (the GELUs accept no wider one) as a
    table of its outputs for every input code (256 or 65536 entries), computed by the
    op's reference kernel at build time, so bit-exact by construction, and read with the
    code as index: one integer load per element instead of an int64 division per element,
    which LLVM does not vectorise (ShiftGELU's and TanhGELU's sigmoid; the README's
    "Integer-only inference" has the measurements). The lookup is a kernel of its own
    with the Requantize that follows fused in; PolyGELU, a few multiplications, stays a
    formula fused into the matmul's epilogue, which is cheaper than that extra pass."""
    in_dt, out_dt = node.inputs[0].dtype, node.outputs[0].dtype
    if in_dt not in _TABLE_DTYPES:
        raise UnsupportedOpError(f"{node.label}: a {in_dt} input has no lookup table in the TVM backend "
                                 f"(8- and 16-bit inputs do)")
    lo, hi = in_dt.int_range
    codes = np.arange(lo, hi + 1).astype(in_dt.np)
    table = run_kernel(node.op, [codes], node.attrs, [TensorType((len(codes),), out_dt)])[0]
    name = f"{node.op.lower()}_table"

    def lookup(x: te.Tensor, t: te.Tensor) -> te.Tensor:
        return te.compute(x.shape, lambda *i: t[x(*i).astype("int32") - lo], name=name)

    out = ctx.te(lookup, with_shape_expr(ctx, ins[0]), constant(table, relax_dtype(out_dt)), name=name)
    gv = ctx.bb.lookup_binding(out).args[0]
    ctx.bb.update_func(gv, ctx.bb.get()[gv].with_attr("op_pattern", _OP_PATTERN_INJECTIVE))
    return out


@LOWERINGS.lowers("ShiftGELU")
def _shift_gelu(ctx: LowerContext, node: Node, ins: list) -> Any:
    return _lookup_table(ctx, node, ins)


@LOWERINGS.lowers("PolyGELU")
def _poly_gelu(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    b, c, shift, one = int(a["b"]), int(a["c"]), int(a["shift"]), int(a["one"])
    out_dt = node.outputs[0].dtype

    def gelu(v: tirx.PrimExpr) -> tirx.PrimExpr:
        x = v.astype(_I64)
        clipped = tirx.min(tirx.abs(x), _tir_i64(-b)) + _tir_i64(b)
        sign = tirx.Select(x > 0, _tir_i64(1), tirx.Select(x < 0, _tir_i64(-1), _tir_i64(0)))
        y = (sign * (clipped * clipped + _tir_i64(c))) >> shift
        return _tir_sat(x * (y + _tir_i64(one)), out_dt)

    return elementwise_te(ctx, gelu, [ins[0]], relax_dtype(out_dt), "poly_gelu")


@LOWERINGS.lowers("TanhGELU")
def _tanh_gelu(ctx: LowerContext, node: Node, ins: list) -> Any:
    return _lookup_table(ctx, node, ins)
