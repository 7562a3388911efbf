"""The TVM lowering table: how each requant op becomes Relax, through `relax.BlockBuilder`.

`LOWERINGS` maps every op name of requant's registry to an emitter or to an explicit
`Unsupported("because ...")`; a test checks that no registered op is missing. An emitter
is `emit(ctx, node, ins) -> expr | [expr, ...]`: `ins` are the Relax expressions of the
node's inputs (None for an omitted optional input), the result one expression per node
output. `ctx` (`LowerContext`) wraps the BlockBuilder: `ctx.emit(call)` binds a Relax
call, `ctx.te(...)` emits a TE compute (`bb.emit_te`) where no Relax op fits. Some
emitters accept only some nodes (a shape given by a constant, MaxPool without Indices):
they carry a `check(node) -> reason | None`, which `unsupported_reason` consults, so
`to_relax` names every node it cannot lower before it emits anything.

Emitters use high-level `relax.op.*` calls wherever one has requant's semantics (they
legalize to TIR that TVM fuses and schedules) and `emit_te` with TE/TIR expressions
for the few bit-level kernels (float-format rounding, BitShift, integer Pow).

Numerics (the interpreter in `requant.ir` is the oracle):
- Integer ops are bit-exact: wrapping Add/Sub/Mul/Neg/Abs/Sum/ReduceSum, truncating
  integer Div (division by zero is undefined behaviour in TVM, where the interpreter
  raises), floor/trunc Mod, BitShift with out-of-range counts, integer Pow by squaring,
  Cast's wrap/saturate rules, MatMulInteger / QLinearMatMul / MatMulIntegerToFloat with
  int32 accumulators, QuantizeLinear's round-half-even + zero point + saturation.
- Float ops follow the interpreter's compute dtypes: f16/bf16 compute in float32 and
  round once (Erf in float64); tolerances in tests/backends/tvm/test_tvm_emit.py.
- Low-bit float formats (fp8_e4m3, fp8_e5m2, fp4_e2m1, `FloatFormat`): TVM's own
  float8 conversions on llvm are not exact (NaN, subnormals, inf) and it has no fp4 or
  parametric floats, so these values are *emulated in float32*: a tensor of such a
  dtype is a float32 tensor in Relax holding values on the format's grid (NaN/inf as
  the format has them). Converting to a format rounds on its grid in float64 with
  bit-level exponent extraction (exactly `round_to_float_format` / ml_dtypes' rounding,
  with Cast's saturation rules); converting from one is exact. The runtime converts
  arrays of these dtypes at the boundary (`relax_dtype` says the Relax dtype).
- int4/uint4 travel in int8/uint8, as in the interpreter.
- Gather indices out of range (the interpreter raises; ONNX leaves it undefined) are
  clamped to the axis, never read out of bounds (TVM's default "fast" take would).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tvm
from tvm import relax, te, tirx, topi

from requant.backends.lowering_table import Unsupported, entry_for
from requant.errors import UnsupportedOpError
from requant.ir import dtypes
from requant.ir.dtypes import DType, FloatFormat
from requant.ir.graph import Node
from requant.ir.registry import get_schema

__all__ = [
    "Unsupported",
    "LowerContext",
    "Emitter",
    "LOWERINGS",
    "lowering_for",
    "unsupported_reason",
    "relax_dtype",
    "EMULATED_FLOATS",
]

logger = logging.getLogger(__name__)

R = relax.op

EMULATED_FLOATS = frozenset({dtypes.fp8_e4m3, dtypes.fp8_e5m2, dtypes.fp4_e2m1})
_HALF = frozenset({dtypes.float16, dtypes.bfloat16})


def is_emulated(dt: DType) -> bool:
    """Whether values of `dt` are float32 grid values in Relax (module docstring)."""
    return isinstance(dt, FloatFormat) or dt in EMULATED_FLOATS


def relax_dtype(dt: DType) -> str:
    """The Relax dtype holding values of requant dtype `dt`."""
    if is_emulated(dt):
        return "float32"
    if dt == dtypes.int4:
        return "int8"
    if dt == dtypes.uint4:
        return "uint8"
    return dt.name


class LowerContext:
    """What an emitter writes through: the BlockBuilder and the symbolic dims."""

    def __init__(self, bb: relax.BlockBuilder, dims: dict[str, Any]) -> None:
        self.bb = bb
        self.dims = dims

    def emit(self, expr: relax.Expr) -> relax.Expr:
        if isinstance(expr, (relax.Var, tvm.ir.expr.Constant)):
            return expr
        return self.bb.emit(expr)

    def te(self, fn: Callable, *args: Any, name: str = "te") -> relax.Expr:
        return self.bb.emit_te(fn, *args, primfunc_name_hint=name)

    def attrs(self, node: Node) -> dict[str, Any]:
        return get_schema(node.op).fill_attrs(node.attrs)

    def dim(self, d: Any) -> Any:
        """An IR dim as a Relax shape value (None when unknown or unbound)."""
        if isinstance(d, int):
            return d
        if isinstance(d, str):
            return self.dims.get(d)
        return None

    def ir_shape(self, shape: Sequence[Any] | None) -> list[Any] | None:
        """An IR shape as Relax shape values, or None when a dim is not known here."""
        if shape is None:
            return None
        out = [self.dim(d) for d in shape]
        return None if any(d is None for d in out) else out


Emitter = Callable[[LowerContext, Node, list], Any]


# ----------------------------------------------------------------------------- helpers


def _c(value: Any, dt: str) -> tvm.ir.expr.Constant:
    return relax.const(np.asarray(value, dtype=_np_of(dt)), dt)


def _np_of(dt: str) -> Any:
    if dt == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(dt)


def _shape(x: relax.Expr) -> list[Any]:
    sinfo = x.ty
    if sinfo.shape is None or not hasattr(sinfo.shape, "values"):
        raise UnsupportedOpError("the TVM backend needs tensors of known rank")
    return list(sinfo.shape.values)


def _rank(x: relax.Expr) -> int:
    return int(x.ty.ndim)


def _dt(x: relax.Expr) -> str:
    return str(x.ty.dtype)


def _static(d: Any) -> int | None:
    if isinstance(d, int):
        return d
    if isinstance(d, tirx.IntImm):
        return int(d.value)
    return None


def _in_dt(node: Node, i: int = 0) -> DType:
    return node.inputs[i].dtype


def _out_dt(node: Node, j: int = 0) -> DType:
    return node.outputs[j].dtype


def _as(ctx: LowerContext, x: relax.Expr, dt: str) -> relax.Expr:
    """`x` cast to Relax dtype `dt` (no cast when it has it already)."""
    return ctx.emit(R.astype(x, dt)) if _dt(x) != dt else x


def _to_compute(ctx: LowerContext, x: relax.Expr, dt: DType) -> relax.Expr:
    """f16/bf16 compute in float32, like the reference kernels."""
    return ctx.emit(R.astype(x, "float32")) if dt in _HALF else x


def _from_compute(ctx: LowerContext, y: relax.Expr, dt: DType) -> relax.Expr:
    return _as(ctx, y, relax_dtype(dt))


def _compute_dt(dt: DType) -> str:
    return "float32" if dt in _HALF else relax_dtype(dt)


def _const_values(node: Node, i: int) -> list[int] | None:
    if i >= len(node.inputs) or node.inputs[i] is None:
        return None
    return [int(v) for v in np.asarray(node.inputs[i].const).reshape(-1)]


def _const_scalar(node: Node, i: int) -> Any:
    return np.asarray(node.inputs[i].const).reshape(-1)[0].item()


def _requires(check: Callable[[Node], str | None]) -> Callable[[Emitter], Emitter]:
    """Give an emitter a node-level `check` (chained after any it has already)."""

    def deco(fn: Emitter) -> Emitter:
        prev = getattr(fn, "check", None)
        fn.check = check if prev is None else (lambda node: prev(node) or check(node))  # type: ignore[attr-defined]
        return fn

    return deco


def _requires_const(*indices: int) -> Callable[[Emitter], Emitter]:
    """Mark an emitter as needing inputs `indices` (when present) to be graph constants."""

    def check(node: Node) -> str | None:
        for i in indices:
            if i < len(node.inputs) and node.inputs[i] is not None and node.inputs[i].const is None:
                inputs = get_schema(node.op).inputs
                name = inputs[min(i, len(inputs) - 1)].name
                return (f"input {name} must be a constant for the TVM backend (it fixes shapes or axes at "
                        f"compile time); run constant folding first or make it a graph constant")
        return None

    return _requires(check)


def _needs_rank(node: Node) -> str | None:
    for v in node.inputs:
        if v is not None and v.type.shape is None:
            return "inputs of unknown rank are not supported by the TVM backend; give the graph inputs shapes"
    return None


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _ewise(ctx: LowerContext, fn: Callable, xs: Sequence[relax.Expr], out_dt: str, name: str) -> relax.Expr:
    """An elementwise TE kernel over same-shaped inputs: `fn(*scalars) -> scalar`."""

    def compute(*ts: te.Tensor) -> te.Tensor:
        return te.compute(ts[0].shape, lambda *i: fn(*[t(*i) for t in ts]), name=name)

    out = ctx.te(compute, *[_with_shape(ctx, x) for x in xs], name=name)
    assert _dt(out) == out_dt, (name, _dt(out), out_dt)
    return out


def _with_shape(ctx: LowerContext, x: relax.Expr) -> relax.Expr:
    """`x` with a ShapeExpr shape (emit_te needs one): a tensor whose dims Relax could not
    infer (e.g. a symbol broadcast against a number) gets fresh dim variables."""
    sinfo = x.ty
    if sinfo.shape is not None and hasattr(sinfo.shape, "values"):
        return x
    dims = [tirx.Var(f"d{i}", "int64") for i in range(int(sinfo.ndim))]
    return ctx.bb.match_cast(x, relax.TensorType(dims, _dt(x)))


def _like(ctx: LowerContext, y: relax.Expr, x: relax.Expr) -> relax.Expr:
    """`y` (a broadcast whose shape Relax could not infer, e.g. symbol vs number) cast to
    the shape of `x`, which it has by construction (checked at run time)."""
    if y.ty.shape is not None and hasattr(y.ty.shape, "values"):
        return y
    return ctx.bb.match_cast(y, relax.TensorType(_shape(x), _dt(y)))


def _align(ctx: LowerContext, p: relax.Expr, x: relax.Expr) -> relax.Expr:
    """`p`, which broadcasts to `x`, with each non-1 dim named by x's dim (so Relax can
    infer broadcasts of a static parameter against a symbolic dim; checked at run time)."""
    ps, xs = _shape(p), _shape(x)
    if len(ps) > len(xs):
        return p
    want = [1 if _static(d) == 1 else xd for d, xd in zip(ps, xs[len(xs) - len(ps):])]
    if all(_same_dim(a, b) for a, b in zip(ps, want)):
        return p
    return ctx.bb.match_cast(p, relax.TensorType(want, _dt(p)))


def _bcast_all(ctx: LowerContext, xs: Sequence[relax.Expr]) -> list[relax.Expr]:
    """Broadcast operands to their common shape (numpy rules) through Relax adds of zeros."""
    if len(xs) == 1:
        return list(xs)
    shapes = [_shape(x) for x in xs]
    if all(len(s) == len(shapes[0]) and all(_same_dim(a, b) for a, b in zip(s, shapes[0])) for s in shapes):
        return list(xs)
    out = []
    for i, x in enumerate(xs):
        acc = x
        for j, y in enumerate(xs):
            if j != i:
                zero = ctx.emit(R.zeros_like(R.astype(y, _dt(x)))) if _dt(y) != _dt(x) else ctx.emit(R.zeros_like(y))
                acc = ctx.emit(R.add(acc, zero))
        out.append(acc)
    return out


def _same_dim(a: Any, b: Any) -> bool:
    sa, sb = _static(a), _static(b)
    if sa is not None and sb is not None:
        return sa == sb
    return a.same_as(b) if hasattr(a, "same_as") else False


# ----------------------------------------------------------------------------- elementwise


def _binary(fn: Callable) -> Emitter:
    def emit(ctx: LowerContext, node: Node, ins: list) -> Any:
        dt = _in_dt(node)
        a, b = (_to_compute(ctx, x, dt) for x in ins[:2])
        return _from_compute(ctx, ctx.emit(fn(a, b)), dt)

    return emit


def _compare(fn: Callable) -> Emitter:
    def emit(ctx: LowerContext, node: Node, ins: list) -> Any:
        if _in_dt(node) == dtypes.bool_:  # LLVM rejects TVM's i1 comparisons: compare as int8
            return ctx.emit(fn(R.astype(ins[0], "int8"), R.astype(ins[1], "int8")))
        return ctx.emit(fn(ins[0], ins[1]))

    return emit


def _mod(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    fn = R.mod if a["fmod"] else R.floor_mod  # mod: C fmod (sign of the dividend)
    return ctx.emit(fn(ins[0], ins[1]))


def _pow(ctx: LowerContext, node: Node, ins: list) -> Any:
    base_dt, exp_dt = _in_dt(node, 0), _in_dt(node, 1)
    x, y = ins
    if base_dt.is_float:
        ct = _compute_dt(base_dt)
        return _from_compute(ctx, ctx.emit(R.power(_as(ctx, x, ct), _as(ctx, y, ct))), base_dt)
    xs, ys = _bcast_all(ctx, [x, ctx.emit(R.astype(y, "float64")) if exp_dt.is_float else y])
    out_dt = relax_dtype(base_dt)
    if exp_dt.is_float:
        def float_exp(a: Any, e: Any) -> Any:
            return _trunc_saturate(tirx.power(a.astype("float64"), e), base_dt)

        return _ewise(ctx, float_exp, [xs, ys], out_dt, "pow_int_float")
    bits = min(exp_dt.bits, 64)

    edt = _dt(ys)

    steps = bits - 1 if exp_dt.is_signed else bits
    chunk = 8  # squarings per TE stage: longer chains make TVM's simplifier blow up

    def chain(i0: int, n: int, result: Any, sq: Any, k: Any) -> Any:
        """result * sq^(bits i0 .. i0+n of k), by square-and-multiply with Lets."""
        if n == 0:
            return result
        bit = ((k >> tirx.const(i0, edt)) & tirx.const(1, edt)) == tirx.const(1, edt)
        r_next, sq_next = tirx.Var(f"r{i0}", out_dt), tirx.Var(f"s{i0}", out_dt)
        body = chain(i0 + 1, n - 1, r_next, sq_next, k)
        return tirx.Let(r_next, tirx.Select(bit, result * sq, result), tirx.Let(sq_next, sq * sq, body))

    def positive(e: Any) -> Any:
        return tirx.Select(e < tirx.const(0, edt), tirx.const(0, edt), e)

    result = ctx.emit(R.ones_like(xs))
    base = xs
    for lo in range(0, steps, chunk):
        n = min(chunk, steps - lo)
        result = _ewise(ctx, lambda r, b, e, lo=lo, n=n: chain(lo, n, r, b, positive(e)), [result, base, ys],
                        out_dt, "pow_int")
        if lo + n < steps:
            def square(b: Any, n: int = n) -> Any:
                for _ in range(n):
                    v = tirx.Var("sq", out_dt)
                    b = tirx.Let(v, b, v * v)
                return b

            base = _ewise(ctx, square, [base], out_dt, "pow_square")

    def negative(a: Any, e: Any, r: Any) -> Any:
        one, zero = tirx.const(1, out_dt), tirx.const(0, out_dt)
        if base_dt.is_signed:
            odd = (e & tirx.const(1, edt)) == tirx.const(1, edt)
            minus = tirx.const(-1, out_dt)
            inv = tirx.Select(a == one, one, tirx.Select(a == minus, tirx.Select(odd, minus, one), zero))
        else:
            inv = tirx.Select(a == one, one, zero)
        return tirx.Select(e < tirx.const(0, edt), inv, r)

    return _ewise(ctx, negative, [xs, ys, result], out_dt, "pow_int_sign")


def _bitshift(ctx: LowerContext, node: Node, ins: list) -> Any:
    dt = _in_dt(node)
    out_dt = relax_dtype(dt)
    left = ctx.attrs(node)["direction"] == "LEFT"
    x, s = _bcast_all(ctx, ins)
    bits = tvm.DataType(out_dt).bits

    wide = not dt.is_signed and bits < 64  # TVM's const folder rejects some uint shift forms

    def shift(a: Any, n: Any) -> Any:
        if wide:
            return narrow(signed_shift(a.astype("int64"), n.astype("int64"), "int64"))
        return signed_shift(a, n, out_dt)

    def narrow(v: Any) -> Any:
        return v.astype(out_dt)

    def signed_shift(a: Any, n: Any, wdt: str) -> Any:
        zero = tirx.const(0, wdt)
        valid = (n >= zero) & (n < tirx.const(bits, wdt))
        count = tirx.Select(valid, n, zero)
        if left:
            return tirx.Select(valid, a << count, zero)
        fill = tirx.Select(a < zero, tirx.const(-1, wdt), zero) if dt.is_signed else zero
        return tirx.Select(valid, a >> count, fill)

    return _ewise(ctx, shift, [x, s], out_dt, "bitshift")


def _logical(fn: Callable) -> Emitter:
    return lambda ctx, node, ins: ctx.emit(fn(ins[0], ins[1]))


def _where(ctx: LowerContext, node: Node, ins: list) -> Any:
    return ctx.emit(R.where(ins[0], ins[1], ins[2]))


def _variadic(fn: Callable) -> Emitter:
    def emit(ctx: LowerContext, node: Node, ins: list) -> Any:
        out = ins[0]
        for x in ins[1:]:
            out = ctx.emit(fn(out, x))
        return _broadcast_to_out(ctx, node, out, ins)

    return emit


def _broadcast_to_out(ctx: LowerContext, node: Node, out: relax.Expr, ins: list) -> relax.Expr:
    if len(ins) == 1:
        return out
    return _bcast_all(ctx, [out] + list(ins))[0]


def _mean(ctx: LowerContext, node: Node, ins: list) -> Any:
    dt = _in_dt(node)
    xs = [_to_compute(ctx, x, dt) for x in ins]
    total = xs[0]
    for x in xs[1:]:
        total = ctx.emit(R.add(total, x))
    total = ctx.emit(R.divide(total, _c(len(ins), _dt(total))))
    total = _broadcast_to_out(ctx, node, total, xs)
    return _from_compute(ctx, total, dt)


# ----------------------------------------------------------------------------- unary


def _float_unary(fn: Callable, compute: str | None = None) -> Emitter:
    """A float function computed in the compute dtype (or `compute`, e.g. float64 for Erf)."""

    def emit(ctx: LowerContext, node: Node, ins: list) -> Any:
        dt = _in_dt(node)
        ct = compute or _compute_dt(dt)
        if dt == dtypes.float64:
            ct = "float64"
        return _from_compute(ctx, ctx.emit(fn(_as(ctx, ins[0], ct))), dt)

    return emit


def _reciprocal(x: relax.Expr) -> relax.Expr:
    return R.divide(_c(1, _dt(x)), x)


def _int_ok(fn: Callable) -> Emitter:
    def emit(ctx: LowerContext, node: Node, ins: list) -> Any:
        dt = _in_dt(node)
        if dt.is_integer:
            return ctx.emit(fn(ins[0]))
        return _float_unary(fn)(ctx, node, ins)

    return emit


def _isinf(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    x = ins[0]
    dt = _dt(x)
    inf = ctx.emit(R.isinf(x))
    if a["detect_positive"] and a["detect_negative"]:
        return inf
    zero = _c(0, dt)
    if a["detect_positive"]:
        return ctx.emit(R.logical_and(inf, R.greater(x, zero)))
    if a["detect_negative"]:
        return ctx.emit(R.logical_and(inf, R.less(x, zero)))
    return ctx.emit(R.zeros_like(inf))


# ----------------------------------------------------------------------------- activations


def _act(fn: Callable[[LowerContext, relax.Expr, dict], relax.Expr]) -> Emitter:
    """`fn(ctx, x, attrs)` on x in its compute dtype; the result rounded to x's dtype."""

    def emit(ctx: LowerContext, node: Node, ins: list) -> Any:
        dt = _in_dt(node)
        x = _to_compute(ctx, ins[0], dt)
        return _from_compute(ctx, ctx.emit(fn(ctx, x, ctx.attrs(node))), dt)

    return emit


def _relu(ctx: LowerContext, node: Node, ins: list) -> Any:
    return ctx.emit(R.maximum(ins[0], _c(0, _dt(ins[0]))))


def _leaky_relu(ctx: LowerContext, x: relax.Expr, a: dict) -> relax.Expr:
    dt = _dt(x)
    return R.where(R.greater_equal(x, _c(0, dt)), x, R.multiply(x, _c(a["alpha"], dt)))


def _prelu(ctx: LowerContext, node: Node, ins: list) -> Any:
    dt = _in_dt(node)
    x, slope = (_to_compute(ctx, v, dt) for v in ins)
    y = R.where(R.less(x, _c(0, _dt(x))), R.multiply(x, slope), x)
    return _from_compute(ctx, ctx.emit(y), dt)


def _expm1_neg(ctx: LowerContext, x: relax.Expr) -> relax.Expr:
    """exp(min(x, 0)) - 1."""
    dt = _dt(x)
    return R.subtract(R.exp(R.minimum(x, _c(0, dt))), _c(1, dt))


def _elu(ctx: LowerContext, x: relax.Expr, a: dict) -> relax.Expr:
    dt = _dt(x)
    return R.where(R.greater_equal(x, _c(0, dt)), x, R.multiply(_c(a["alpha"], dt), _expm1_neg(ctx, x)))


def _selu(ctx: LowerContext, x: relax.Expr, a: dict) -> relax.Expr:
    dt = _dt(x)
    inner = R.where(R.greater(x, _c(0, dt)), x, R.multiply(_c(a["alpha"], dt), _expm1_neg(ctx, x)))
    return R.multiply(_c(a["gamma"], dt), inner)


def _celu(ctx: LowerContext, x: relax.Expr, a: dict) -> relax.Expr:
    dt = _dt(x)
    alpha = _c(a["alpha"], dt)
    neg = R.minimum(_c(0, dt), R.multiply(alpha, R.subtract(R.exp(R.divide(x, alpha)), _c(1, dt))))
    return R.add(R.maximum(x, _c(0, dt)), neg)


def _thresholded_relu(ctx: LowerContext, x: relax.Expr, a: dict) -> relax.Expr:
    dt = _dt(x)
    return R.where(R.greater(x, _c(a["alpha"], dt)), x, _c(0, dt))


def _gelu(ctx: LowerContext, x: relax.Expr, a: dict) -> relax.Expr:
    return R.nn.gelu_tanh(x) if a["approximate"] == "tanh" else R.nn.gelu(x)


def _clip01(x: relax.Expr, dt: str) -> relax.Expr:
    return R.minimum(R.maximum(x, _c(0, dt)), _c(1, dt))


def _hard_sigmoid(ctx: LowerContext, x: relax.Expr, a: dict) -> relax.Expr:
    dt = _dt(x)
    return _clip01(R.add(R.multiply(_c(a["alpha"], dt), x), _c(a["beta"], dt)), dt)


def _hard_swish(ctx: LowerContext, x: relax.Expr, a: dict) -> relax.Expr:
    dt = _dt(x)
    return R.multiply(x, _clip01(R.add(R.multiply(x, _c(1 / 6, dt)), _c(0.5, dt)), dt))


def _softplus_expr(ctx: LowerContext, x: relax.Expr) -> relax.Expr:
    return R.log_add_exp(ctx.emit(R.zeros_like(x)), x)


def _softsign(ctx: LowerContext, x: relax.Expr, a: dict) -> relax.Expr:
    return R.divide(x, R.add(_c(1, _dt(x)), R.abs(x)))


def _swish(ctx: LowerContext, x: relax.Expr, a: dict) -> relax.Expr:
    return R.multiply(x, R.sigmoid(R.multiply(_c(a["alpha"], _dt(x)), x)))


def _mish(ctx: LowerContext, x: relax.Expr, a: dict) -> relax.Expr:
    return R.multiply(x, R.tanh(ctx.emit(_softplus_expr(ctx, x))))


def _clip(ctx: LowerContext, node: Node, ins: list) -> Any:
    y = ins[0]
    if len(ins) > 1 and ins[1] is not None:
        y = ctx.emit(R.maximum(y, R.reshape(ins[1], ())))
    if len(ins) > 2 and ins[2] is not None:
        y = ctx.emit(R.minimum(y, R.reshape(ins[2], ())))
    return y


def _softmax(log: bool) -> Emitter:
    def fn(ctx: LowerContext, x: relax.Expr, a: dict) -> relax.Expr:
        return (R.nn.log_softmax if log else R.nn.softmax)(x, axis=int(a["axis"]))

    return _act(fn)


# ----------------------------------------------------------------------------- casts and float formats


def _grid_params(dt: DType) -> tuple[int, int, float, float]:
    """(exponent bits, mantissa bits, bias, largest finite value) of an emulated format."""
    if isinstance(dt, FloatFormat):
        return dt.exp_bits, dt.man_bits, dt.bias, dt.max_value
    if dt == dtypes.fp8_e4m3:
        return 4, 3, 7.0, 448.0
    if dt == dtypes.fp8_e5m2:
        return 5, 2, 15.0, 57344.0
    return 2, 1, 1.0, 6.0  # fp4_e2m1


def _f64_exponent(v: Any) -> Any:
    """The unbiased binary exponent of float64 `v` (int64, from its bits)."""
    bits = tirx.reinterpret("int64", v)
    return ((bits >> tirx.const(52, "int64")) & tirx.const(0x7FF, "int64")) - tirx.const(1023, "int64")


def _pow2_f64(e: Any) -> Any:
    """2**e as float64 for an int64 exponent in the normal range (exact)."""
    biased = (e + tirx.const(1023, "int64")) << tirx.const(52, "int64")
    return tirx.reinterpret("float64", biased)


def _grid_round(v: Any, man_bits: int, bias: float) -> Any:
    """Round float64 `v` to nearest even on a float grid with `man_bits` mantissa bits,
    exponent bias `bias` and subnormals below exponent 1 (unbounded above): the core of
    `round_to_float_format`. Non-finite values pass through."""
    scale = 2.0**bias
    y = v * tirx.const(scale, "float64")
    e = tirx.max(_f64_exponent(y), tirx.const(1, "int64"))
    e = tirx.min(e, tirx.const(1023 + man_bits, "int64"))
    q = _pow2_f64(e - tirx.const(man_bits, "int64"))
    r = tirx.round(y / q) * q
    r = tirx.Select(tirx.isfinite(y), r, y)
    return r / tirx.const(scale, "float64")


def _encode_float(ctx: LowerContext, x: relax.Expr, dst: DType, saturate: bool) -> relax.Expr:
    """`x` (any float or int Relax tensor) rounded onto `dst`'s grid, as `cast_to` does;
    float32 result (the emulated storage)."""
    _, man, bias, top = _grid_params(dst)
    fp8 = dst in (dtypes.fp8_e4m3, dtypes.fp8_e5m2)
    f64 = "float64"

    def enc(a: Any) -> Any:
        v = a.astype(f64)
        nan = tirx.isnan(v)
        top_c = tirx.const(top, f64)
        if fp8 and saturate:
            r = _grid_round(tirx.max(tirx.min(v, top_c), -top_c), man, bias)
            r = tirx.Select(nan, tirx.const(float("nan"), f64), r)
        elif fp8:
            r = _grid_round(v, man, bias)
            over = tirx.abs(r) > top_c
            if dst == dtypes.fp8_e4m3:
                r = tirx.Select(over | nan, tirx.const(float("nan"), f64), r)
            else:
                inf = tirx.const(float("inf"), f64)
                r = tirx.Select(over & (r > tirx.const(0.0, f64)), inf, tirx.Select(over, -inf, r))
        else:  # fp4 / FloatFormat: saturating, NaN -> +max
            v = tirx.Select(nan, top_c, v)
            v = tirx.max(tirx.min(v, top_c), -top_c)
            r = _grid_round(v, man, bias)
            r = tirx.max(tirx.min(r, top_c), -top_c)
        return r.astype("float32")

    return _ewise(ctx, enc, [x], "float32", "encode_" + dst.short.replace(".", "_"))


def _trunc_saturate(v: Any, dst: DType) -> Any:
    """float64 scalar `v` as integer dtype `dst`: truncated toward zero, saturated to its
    range, NaN -> 0 (requant's Cast; integer Pow with a float exponent)."""
    lo, hi = dst.int_range
    out = relax_dtype(dst)
    f64 = "float64"
    r = tirx.trunc(v)
    r = tirx.Select(tirx.isnan(r), tirx.const(0.0, f64), r)
    small = r <= tirx.const(float(lo), f64)
    big = r >= tirx.const(float(hi), f64)
    mid = tirx.Select(small | big, tirx.const(0.0, f64), r).astype(out)
    return tirx.Select(small, tirx.const(lo, out), tirx.Select(big, tirx.const(hi, out), mid))


def _float_to_int(ctx: LowerContext, x: relax.Expr, dst: DType) -> relax.Expr:
    """Truncate toward zero, saturate to dst's range, NaN -> 0 (requant's Cast)."""
    return _ewise(ctx, lambda a: _trunc_saturate(a.astype("float64"), dst), [x], relax_dtype(dst),
                  "float_to_" + dst.short)


def _wrap_int(ctx: LowerContext, x: relax.Expr, dst: DType) -> relax.Expr:
    out = relax_dtype(dst)
    if dst.bits != 4:
        return _as(ctx, x, out)
    v = ctx.emit(R.bitwise_and(R.astype(x, "int64"), _c(0xF, "int64")))
    if dst.kind == "int":
        v = ctx.emit(R.subtract(R.bitwise_xor(v, _c(8, "int64")), _c(8, "int64")))
    return ctx.emit(R.astype(v, out))


def convert(ctx: LowerContext, x: relax.Expr, src: DType, dst: DType, saturate: bool = True) -> relax.Expr:
    """`x` (values of requant dtype `src`) converted to `dst` by Cast's rules."""
    out = relax_dtype(dst)
    if dst == dtypes.bool_:
        return ctx.emit(R.not_equal(x, _c(0, _dt(x))))
    if src == dtypes.bool_:
        return ctx.emit(R.astype(x, out))
    if dst.is_integer:
        if src.is_integer:
            return _wrap_int(ctx, x, dst)
        return _float_to_int(ctx, x, dst)
    if is_emulated(dst):
        if src == dst:
            return x
        return _encode_float(ctx, x, dst, saturate)
    return _as(ctx, x, out)


def _cast(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    return convert(ctx, ins[0], _in_dt(node), _out_dt(node), bool(a["saturate"]))


# ----------------------------------------------------------------------------- shape ops


def _out_shape(ctx: LowerContext, node: Node, j: int = 0) -> list[Any] | None:
    return ctx.ir_shape(node.outputs[j].type.shape)


@_requires_const(1)
def _reshape(ctx: LowerContext, node: Node, ins: list) -> Any:
    x = ins[0]
    shape = _out_shape(ctx, node)
    if shape is None:
        target = _const_values(node, 1)
        dims = _shape(x)
        if not ctx.attrs(node)["allowzero"]:
            target = [dims[i] if t == 0 else t for i, t in enumerate(target)]
        shape = target
    if any(_static(d) == 0 for d in shape):  # Relax reads a 0 in a shape as "copy this dim"
        return ctx.emit(R.zeros(relax.ShapeExpr(shape), _dt(x)))
    return ctx.emit(R.reshape(x, shape))


def _flatten(ctx: LowerContext, node: Node, ins: list) -> Any:
    x = ins[0]
    dims = _shape(x)
    axis = _axis(ctx.attrs(node)["axis"], len(dims))
    lead = 1
    for d in dims[:axis]:
        lead = lead * d
    return ctx.emit(R.reshape(x, [lead, -1])) if axis < len(dims) else ctx.emit(R.reshape(x, [lead, 1]))


def _squeeze_check(node: Node) -> str | None:
    if len(node.inputs) < 2 or node.inputs[1] is None:
        t = node.inputs[0].type
        if not t.is_static:
            return "Squeeze without axes needs a static input shape in the TVM backend; give the axes"
        return None
    if node.inputs[1].const is None:
        return "input axes must be a constant for the TVM backend"
    return None


@_requires(_squeeze_check)
def _squeeze(ctx: LowerContext, node: Node, ins: list) -> Any:
    x = ins[0]
    axes = _const_values(node, 1)
    rank = _rank(x)
    if axes is None:
        axes = [i for i, d in enumerate(node.inputs[0].type.shape) if d == 1]
    else:
        axes = sorted(_axis(a, rank) for a in axes)
    if not axes:
        return x
    return ctx.emit(R.squeeze(x, axes))


@_requires_const(1)
def _unsqueeze(ctx: LowerContext, node: Node, ins: list) -> Any:
    x = ins[0]
    axes = _const_values(node, 1)
    r = _rank(x) + len(axes)
    axes = sorted(a % r for a in axes)
    if not axes:
        return x
    return ctx.emit(R.expand_dims(x, axes))


def _transpose(ctx: LowerContext, node: Node, ins: list) -> Any:
    perm = ctx.attrs(node)["perm"]
    rank = _rank(ins[0])
    perm = list(range(rank))[::-1] if perm is None else [int(p) for p in perm]
    return ctx.emit(R.permute_dims(ins[0], perm))


@_requires_const(1)
def _expand(ctx: LowerContext, node: Node, ins: list) -> Any:
    x = ins[0]
    shape = _out_shape(ctx, node)
    if shape is None:
        target = _const_values(node, 1)
        dims = _shape(x)
        r = max(len(dims), len(target))
        dims = [1] * (r - len(dims)) + dims
        target = [1] * (r - len(target)) + target
        shape = [d if t == 1 else t for d, t in zip(dims, target)]
    return ctx.emit(R.broadcast_to(x, shape))


def _identity(ctx: LowerContext, node: Node, ins: list) -> Any:
    return ins[0]


def _shape_op(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    dims = _shape(ins[0])
    rank = len(dims)
    s = a["start"] + rank if a["start"] < 0 else a["start"]
    e = rank if a["end"] is None else (a["end"] + rank if a["end"] < 0 else a["end"])
    s, e = min(max(s, 0), rank), min(max(e, 0), rank)
    e = max(s, e)
    part = dims[s:e]
    if all(_static(d) is not None for d in part):
        return _c(np.array([_static(d) for d in part], np.int64), "int64")
    full = ctx.emit(R.shape_to_tensor(R.shape_of(ins[0])))
    return ctx.emit(R.strided_slice(full, axes=[0], begin=[s], end=[e]))


def _size(ctx: LowerContext, node: Node, ins: list) -> Any:
    dims = _shape(ins[0])
    if all(_static(d) is not None for d in dims):
        return _c(np.int64(math.prod(_static(d) for d in dims)), "int64")
    full = ctx.emit(R.astype(R.shape_to_tensor(R.shape_of(ins[0])), "int64"))
    return ctx.emit(R.prod(full))


# ----------------------------------------------------------------------------- sources


def _constant_folded(ctx: LowerContext, node: Node, ins: list) -> Any:
    """Nodes whose inputs are all constants: computed once by the reference kernel."""
    from requant.ir.registry import run_kernel

    arrays = [None if v is None else v.const for v in node.inputs]
    outs = run_kernel(node.op, arrays, node.attrs, [o.type for o in node.outputs])
    return [_const_array(a, o.type.dtype) for a, o in zip(outs, node.outputs)]


def _const_array(arr: np.ndarray, dt: DType) -> tvm.ir.expr.Constant:
    rd = relax_dtype(dt)
    arr = np.asarray(arr)
    if rd == "bfloat16":
        return relax.const(arr, rd)
    return relax.const(np.asarray(arr.astype(_np_of(rd)), order="C"), rd)


def _all_const(node: Node) -> str | None:
    if any(v is not None and v.const is None for v in node.inputs):
        return ("its inputs must be constants for the TVM backend (the output shape depends on their values); "
                "run constant folding first")
    return None


_constant = _constant_folded
_constant_of_shape = _requires(_all_const)(lambda ctx, node, ins: _constant_folded(ctx, node, ins))
_range = _requires(_all_const)(lambda ctx, node, ins: _constant_folded(ctx, node, ins))


def _dropout_check(node: Node) -> str | None:
    if len(node.inputs) > 2 and node.inputs[2] is not None and node.inputs[2].const is None:
        return "training_mode must be a constant False for the TVM backend (inference only)"
    return None


@_requires(_dropout_check)
def _dropout(ctx: LowerContext, node: Node, ins: list) -> Any:
    outs = [ins[0]]
    if len(node.outputs) > 1:
        outs.append(ctx.emit(R.astype(R.ones_like(ins[0]), "bool")))
    return outs


# ----------------------------------------------------------------------------- indexing


def _concat(ctx: LowerContext, node: Node, ins: list) -> Any:
    if len(ins) == 1:
        return ins[0]
    return ctx.emit(R.concat(ins, axis=int(ctx.attrs(node)["axis"])))


@_requires_const(1)
def _split(ctx: LowerContext, node: Node, ins: list) -> Any:
    x = ins[0]
    dims = _shape(x)
    axis = _axis(int(ctx.attrs(node)["axis"]), len(dims))
    sizes = _const_values(node, 1)
    if sizes is None:
        sizes = [_static(ctx.dim(o.type.shape[axis])) if o.type.shape is not None else None for o in node.outputs]
        if any(s is None for s in sizes):
            n = len(node.outputs)
            if len(node.outputs) == 1:
                return [x]
            tup = ctx.emit(R.split(x, n, axis=axis))
            return [ctx.emit(relax.TupleGetItem(tup, i)) for i in range(n)]
    if len(sizes) == 1:
        return [x]
    cuts = list(np.cumsum(sizes)[:-1].tolist())
    tup = ctx.emit(R.split(x, [int(c) for c in cuts], axis=axis))
    return [ctx.emit(relax.TupleGetItem(tup, i)) for i in range(len(sizes))]


_INT64_MAX = 2**63 - 1


@_requires_const(1, 2, 3, 4)
def _slice(ctx: LowerContext, node: Node, ins: list) -> Any:
    from requant.ir.shapes import slice_range

    x = ins[0]
    dims = _shape(x)
    starts, ends = _const_values(node, 1), _const_values(node, 2)
    axes = _const_values(node, 3) or list(range(len(starts)))
    steps = _const_values(node, 4) or [1] * len(starts)
    ax_l, b_l, e_l, s_l = [], [], [], []
    for a, s, e, st in zip(axes, starts, ends, steps):
        a = _axis(a, len(dims))
        n = _static(dims[a])
        if n is not None:
            s, e = slice_range(n, s, e, st)
            if (st > 0 and e < s) or (st < 0 and e > s):
                e = s  # empty
            if st < 0 and e < 0:
                e = -n - 1  # one before the first element
        else:
            lim = 2**31 - 1
            s, e = max(min(s, lim), -lim), max(min(e, lim), -lim)
        ax_l.append(a)
        b_l.append(int(s))
        e_l.append(int(e))
        s_l.append(int(st))
    return ctx.emit(R.strided_slice(x, axes=ax_l, begin=b_l, end=e_l, strides=s_l))


def _norm_index(ctx: LowerContext, idx: relax.Expr, n: Any) -> relax.Expr:
    """Negative indices count from the end (`n` may be symbolic)."""
    dt = _dt(idx)

    def fix(i: Any) -> Any:
        size = tirx.Cast(dt, n) if not isinstance(n, int) else tirx.const(n, dt)
        return tirx.Select(i < tirx.const(0, dt), i + size, i)

    return _ewise(ctx, fix, [idx], dt, "wrap_index")


def _gather(ctx: LowerContext, node: Node, ins: list) -> Any:
    x, idx = ins
    dims = _shape(x)
    axis = _axis(int(ctx.attrs(node)["axis"]), len(dims))
    idx = _norm_index(ctx, idx, dims[axis])
    return ctx.emit(R.take(x, idx, axis=axis, mode="clip"))


def _gather_elements(ctx: LowerContext, node: Node, ins: list) -> Any:
    x, idx = ins
    dims = _shape(x)
    axis = _axis(int(ctx.attrs(node)["axis"]), len(dims))
    idx = _norm_index(ctx, idx, dims[axis])
    return ctx.emit(R.gather_elements(x, idx, axis=axis))


def _gather_nd_check(node: Node) -> str | None:
    t = node.inputs[1].type
    if t.shape is None or not isinstance(t.shape[-1], int):
        return "GatherND needs the last dim of indices to be static in the TVM backend"
    return None


def _norm_nd_indices(ctx: LowerContext, idx: relax.Expr, dims: list[Any], first: int) -> relax.Expr:
    k = _static(_shape(idx)[-1])
    lim = [_static(d) for d in dims[first:first + k]]
    if any(d is None for d in lim):
        return idx
    size = _c(np.array(lim, np.int64), _dt(idx))
    return ctx.emit(R.where(R.less(idx, _c(0, _dt(idx))), R.add(idx, size), idx))


@_requires(_gather_nd_check)
def _gather_nd(ctx: LowerContext, node: Node, ins: list) -> Any:
    x, idx = ins
    b = int(ctx.attrs(node)["batch_dims"])
    idx = _norm_nd_indices(ctx, idx, _shape(x), b)
    return ctx.emit(R.gather_nd(x, idx, batch_dims=b))


_SCATTER_REDUCTIONS = {"none": "update", "add": "add", "mul": "mul", "max": "max", "min": "min"}


def _scatter_elements(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    x, idx, upd = ins
    dims = _shape(x)
    axis = _axis(int(a["axis"]), len(dims))
    idx = _norm_index(ctx, idx, dims[axis])
    return ctx.emit(R.scatter_elements(x, idx, upd, axis=axis, reduction=_SCATTER_REDUCTIONS[a["reduction"]]))


@_requires(_gather_nd_check)
def _scatter_nd(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    x, idx, upd = ins
    idx = _norm_nd_indices(ctx, idx, _shape(x), 0)
    return ctx.emit(R.scatter_nd(x, idx, upd, reduction=_SCATTER_REDUCTIONS[a["reduction"]]))


def _pad_check(node: Node) -> str | None:
    for i in (1, 3):
        if i < len(node.inputs) and node.inputs[i] is not None and node.inputs[i].const is None:
            return "pads and axes must be constants for the TVM backend"
    if node.inputs[0].type.shape is None:
        return "Pad needs an input of known rank in the TVM backend"
    return None


@_requires(_pad_check)
def _pad(ctx: LowerContext, node: Node, ins: list) -> Any:
    x = ins[0]
    rank = _rank(x)
    pads = _const_values(node, 1)
    axes = _const_values(node, 3)
    axes = list(range(rank)) if axes is None else [a % rank for a in axes]
    n = len(axes)
    begin, end = [0] * rank, [0] * rank
    for j, a in enumerate(axes):
        begin[a], end[a] = pads[j], pads[j + n]
    # negative pads crop first
    dims = _shape(x)
    crop_axes = [a for a in range(rank) if begin[a] < 0 or end[a] < 0]
    if crop_axes:
        x = ctx.emit(R.strided_slice(
            x, axes=crop_axes, begin=[max(-begin[a], 0) for a in crop_axes],
            end=[dims[a] + end[a] if end[a] < 0 else dims[a] for a in crop_axes]))
    begin = [max(b, 0) for b in begin]
    end = [max(e, 0) for e in end]
    mode = ctx.attrs(node)["mode"]
    if mode == "wrap":
        return ctx.emit(R.nn.pad(x, _pad_width(begin, end), pad_mode="circular"))
    if mode == "constant":
        cv = ins[2] if len(ins) > 2 and ins[2] is not None else None
        if cv is None:
            value: Any = 0.0
        elif node.inputs[2].const is not None:
            value = float(_const_scalar(node, 2))
        else:
            return _pad_constant_tensor(ctx, x, begin, end, cv)
        if _dt(x) in ("bool",) or _dt(x).startswith(("int", "uint")) and abs(value) >= 2**24:
            return _pad_constant_tensor(ctx, x, begin, end, _c(value, _dt(x)))
        return ctx.emit(R.nn.pad(x, _pad_width(begin, end), pad_mode="constant", pad_value=value))
    return ctx.emit(R.nn.pad(x, _pad_width(begin, end), pad_mode={"reflect": "reflect", "edge": "replicate"}[mode]))


def _pad_width(begin: Sequence[int], end: Sequence[int]) -> list[int]:
    """Relax's pad_width: (before, after) per axis, interleaved."""
    return [int(v) for pair in zip(begin, end) for v in pair]


def _pad_constant_tensor(ctx: LowerContext, x: relax.Expr, begin: list[int], end: list[int], cv: relax.Expr) -> Any:
    """Pad with zeros, then put the fill value where the padding is."""
    dt = _dt(x)
    padded = ctx.emit(R.nn.pad(x, _pad_width(begin, end), pad_mode="constant", pad_value=0.0))
    ones = ctx.emit(R.ones_like(R.astype(x, "int8")))
    inside = ctx.emit(R.nn.pad(ones, _pad_width(begin, end), pad_mode="constant", pad_value=0.0))
    fill = ctx.emit(R.reshape(R.astype(cv, dt), ()))
    return ctx.emit(R.where(R.astype(inside, "bool"), padded, fill))


@_requires_const(1)
def _tile(ctx: LowerContext, node: Node, ins: list) -> Any:
    return ctx.emit(R.tile(ins[0], _const_values(node, 1)))


@_requires_const(1)
def _trilu(ctx: LowerContext, node: Node, ins: list) -> Any:
    k = int(_const_scalar(node, 1)) if len(node.inputs) > 1 and node.inputs[1] is not None else 0
    fn = R.triu if ctx.attrs(node)["upper"] else R.tril
    return ctx.emit(fn(ins[0], k))


# ----------------------------------------------------------------------------- reductions


def _reduce_axes(ctx: LowerContext, node: Node, rank: int) -> list[int] | None:
    """The reduced axes, or None for no reduction (noop_with_empty_axes)."""
    axes = _const_values(node, 1)
    if not axes:
        return None if ctx.attrs(node)["noop_with_empty_axes"] else list(range(rank))
    return sorted({a % rank for a in axes})


def _reduction(pre: Callable | None, red: str, post: Callable | None) -> Emitter:
    @_requires_const(1)
    def emit(ctx: LowerContext, node: Node, ins: list) -> Any:
        dt = _in_dt(node)
        keep = bool(ctx.attrs(node)["keepdims"])
        x = _to_compute(ctx, ins[0], dt)
        axes = _reduce_axes(ctx, node, _rank(x))
        v = ctx.emit(pre(ctx, x)) if pre is not None else x
        if axes is not None:
            v = ctx.emit(_REDUCERS[red](ctx, v, axes, keep, dt))
        if post is not None:
            v = ctx.emit(post(ctx, v, dt))
        return _from_compute(ctx, v, dt)

    return emit


def _int_mean(ctx: LowerContext, v: relax.Expr, axes: list[int], keep: bool, dt: DType) -> relax.Expr:
    if not dt.is_integer:
        return R.mean(v, axes, keep)
    dims = _shape(v)
    total = ctx.emit(R.sum(R.astype(v, "int64"), axes, keep))
    if all(_static(dims[a]) is not None for a in axes):
        n = _c(int(math.prod(_static(dims[a]) for a in axes)), "int64")
    else:
        # the reduced axes' sizes from the run-time shape (not the whole tensor's size)
        sizes = R.astype(R.shape_to_tensor(R.shape_of(v)), "int64")
        n = ctx.emit(R.prod(R.take(sizes, relax.const(np.array(axes, np.int64)), axis=0)))
    return R.astype(R.divide(total, n), relax_dtype(dt))  # TVM's integer divide truncates


_REDUCERS: dict[str, Callable] = {
    "sum": lambda ctx, v, axes, keep, dt: R.sum(v, axes, keep),
    "prod": lambda ctx, v, axes, keep, dt: R.prod(v, axes, keep),
    "mean": _int_mean,
    "max": lambda ctx, v, axes, keep, dt: R.max(v, axes, keep),
    "min": lambda ctx, v, axes, keep, dt: R.min(v, axes, keep),
}


def _sqrt_post(ctx: LowerContext, v: relax.Expr, dt: DType) -> relax.Expr:
    if dt.is_integer:
        return R.astype(R.trunc(R.sqrt(R.astype(v, "float64"))), _dt(v))
    return R.sqrt(v)


@_requires_const(1)
def _log_sum_exp(ctx: LowerContext, node: Node, ins: list) -> Any:
    dt = _in_dt(node)
    keep = bool(ctx.attrs(node)["keepdims"])
    x = _to_compute(ctx, ins[0], dt)
    axes = _reduce_axes(ctx, node, _rank(x))
    if axes is None:
        return ins[0]
    m = ctx.emit(R.max(x, axes, True))
    m = ctx.emit(R.where(R.isfinite(m), m, _c(0, _dt(m))))
    s = ctx.emit(R.add(R.log(R.sum(R.exp(R.subtract(x, m)), axes, True)), m))
    if not keep:
        s = ctx.emit(R.squeeze(s, axes))
    return _from_compute(ctx, s, dt)


def _arg(fn: Callable) -> Emitter:
    def emit(ctx: LowerContext, node: Node, ins: list) -> Any:
        a = ctx.attrs(node)
        x = ins[0]
        dims = _shape(x)
        axis = _axis(int(a["axis"]), len(dims))
        keep = bool(a["keepdims"])
        if a["select_last_index"]:
            idx = ctx.emit(R.astype(fn(R.flip(x, axis), axis, keep), "int64"))
            n = dims[axis]
            last = _c(_static(n) - 1, "int64") if _static(n) is not None else None
            if last is None:
                raise UnsupportedOpError(f"{node.label}: select_last_index needs a static axis in the TVM backend")
            return ctx.emit(R.subtract(last, idx))
        return ctx.emit(R.astype(fn(x, axis, keep), "int64"))

    return emit


def _cumsum_check(node: Node) -> str | None:
    if node.inputs[1].const is None:
        return "input axis must be a constant for the TVM backend"
    return None


@_requires(_cumsum_check)
def _cumsum(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    dt = _in_dt(node)
    x = _to_compute(ctx, ins[0], dt)
    axis = int(_const_scalar(node, 1)) % _rank(x)
    if a["reverse"]:
        x = ctx.emit(R.flip(x, axis))
    y = ctx.emit(R.cumsum(x, axis=axis, dtype=_dt(x), exclusive=bool(a["exclusive"])))
    if a["reverse"]:
        y = ctx.emit(R.flip(y, axis))
    return _from_compute(ctx, y, dt)


@_requires_const(1)
def _topk(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    k = int(_const_scalar(node, 1))
    axis = _axis(int(a["axis"]), _rank(ins[0]))
    tup = ctx.emit(R.topk(ins[0], k=k, axis=axis, ret_type="both", largest=bool(a["largest"]), dtype="int64"))
    return [ctx.emit(relax.TupleGetItem(tup, 0)), ctx.emit(relax.TupleGetItem(tup, 1))]


# ----------------------------------------------------------------------------- linear algebra


def _gemm(ctx: LowerContext, node: Node, ins: list) -> Any:
    at = ctx.attrs(node)
    dt = _in_dt(node)
    a, b = (_to_compute(ctx, x, dt) for x in ins[:2])
    ct = _dt(a)
    if at["transA"]:
        a = ctx.emit(R.permute_dims(a, [1, 0]))
    if at["transB"]:
        b = ctx.emit(R.permute_dims(b, [1, 0]))
    y = ctx.emit(R.matmul(a, b))
    alpha, beta = at["alpha"], at["beta"]
    cast = int if dt.is_integer else float
    if alpha != 1.0:
        y = ctx.emit(R.multiply(y, _c(cast(alpha), ct)))
    if len(ins) > 2 and ins[2] is not None:
        c = _to_compute(ctx, ins[2], dt)
        if beta != 1.0:
            c = ctx.emit(R.multiply(c, _c(cast(beta), ct)))
        y = ctx.emit(R.add(y, c))
    return _from_compute(ctx, y, dt)


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


@_requires(_einsum_check)
def _einsum(ctx: LowerContext, node: Node, ins: list) -> Any:
    dt = _in_dt(node)
    xs = [_to_compute(ctx, x, dt) for x in ins]
    return _from_compute(ctx, ctx.emit(R.einsum(xs, _einsum_equation(node))), dt)


# ----------------------------------------------------------------------------- conv / pool


def _static_spatial(node: Node) -> str | None:
    t = node.inputs[0].type
    if t.shape is None:
        return "needs an input of known rank in the TVM backend"
    if t.rank - 2 not in (1, 2, 3):
        return f"has {t.rank - 2} spatial axes; the TVM backend lowers 1-D, 2-D and 3-D windows"
    if node.attrs.get("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER") and not all(
        isinstance(d, int) for d in t.shape[2:]
    ):
        return "auto_pad SAME needs static spatial dims in the TVM backend (use explicit pads)"
    return None


def _window_pads(node: Node, x_shape: Sequence[Any], kernel: list[int]) -> list[int]:
    """ONNX pads [b1.., e1..] resolved from pads / auto_pad."""
    from requant.ir.shapes import resolve_pads

    a = get_schema(node.op).fill_attrs(node.attrs)
    n = len(kernel)
    strides = list(a.get("strides") or [1] * n)
    dilations = list(a.get("dilations") or [1] * n)
    spatial = tuple(_static(d) if _static(d) is not None else "S" for d in x_shape[2:])
    pads = resolve_pads(spatial, kernel, strides, dilations, a.get("pads"), a["auto_pad"])
    return [int(p[0]) for p in pads] + [int(p[1]) for p in pads]


_CONV = {1: R.nn.conv1d, 2: R.nn.conv2d, 3: R.nn.conv3d}
_CONVT = {1: R.nn.conv1d_transpose, 2: R.nn.conv2d_transpose, 3: R.nn.conv3d_transpose}
_LAYOUTS = {1: ("NCW", "OIW", "IOW"), 2: ("NCHW", "OIHW", "IOHW"), 3: ("NCDHW", "OIDHW", "IODHW")}


@_requires(_static_spatial)
def _conv(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    dt = _in_dt(node)
    x, w = (_to_compute(ctx, v, dt) for v in ins[:2])
    n = _rank(x) - 2
    kernel = [int(_static(d)) for d in _shape(w)[2:]]
    pads = _window_pads(node, _shape(x), kernel)
    dl, kl, _ = _LAYOUTS[n]
    y = ctx.emit(_CONV[n](
        x, w, strides=list(a["strides"] or [1] * n), padding=pads, dilation=list(a["dilations"] or [1] * n),
        groups=int(a["group"]), data_layout=dl, kernel_layout=kl))
    if len(ins) > 2 and ins[2] is not None:
        b = _to_compute(ctx, ins[2], dt)
        y = ctx.emit(R.add(y, R.reshape(b, [1, -1] + [1] * n)))
    return _from_compute(ctx, y, dt)


def _convt_check(node: Node) -> str | None:
    reason = _static_spatial(node)
    if reason:
        return reason
    if not all(isinstance(d, int) for d in node.inputs[0].type.shape[2:]):
        return "ConvTranspose needs static spatial dims in the TVM backend"
    return None


@_requires(_convt_check)
def _conv_transpose(ctx: LowerContext, node: Node, ins: list) -> Any:
    from requant.ir.ops.conv import conv_transpose_geometry

    a = ctx.attrs(node)
    dt = _in_dt(node)
    x, w = (_to_compute(ctx, v, dt) for v in ins[:2])
    n = _rank(x) - 2
    in_sp = [int(_static(d)) for d in _shape(x)[2:]]
    kernel = [int(_static(d)) for d in _shape(w)[2:]]
    geo = conv_transpose_geometry(in_sp, kernel, a.get, n)
    strides = list(a["strides"] or [1] * n)
    dilations = list(a["dilations"] or [1] * n)
    # padding reduces the full output; output_padding / output_shape add at the end
    pb = [g[0] for g in geo]
    full = [s * (d - 1) + (k - 1) * dl + 1 for d, k, s, dl in zip(in_sp, kernel, strides, dilations)]
    extra = [g[2] + g[0] - f for g, f in zip(geo, full)]  # out = full + extra - pb - pe
    pe = [max(-e, 0) for e in extra]
    opad = [max(e, 0) for e in extra]
    # Relax refuses an output_padding not below the stride (ONNX allows it up to the
    # dilation); the positions it adds get no contributions, so it can be zero padding of
    # the result instead
    pad_after = any(o >= s for o, s in zip(opad, strides))
    dl_, _, kl = _LAYOUTS[n]
    y = ctx.emit(_CONVT[n](x, w, strides=strides, padding=pb + pe, output_padding=[0] * n if pad_after else opad,
                           dilation=dilations, groups=int(a["group"]), data_layout=dl_, kernel_layout=kl))
    if pad_after:
        y = ctx.emit(R.nn.pad(y, _pad_width([0, 0] + [0] * n, [0, 0] + opad), pad_mode="constant", pad_value=0.0))
    if len(ins) > 2 and ins[2] is not None:
        b = _to_compute(ctx, ins[2], dt)
        y = ctx.emit(R.add(y, R.reshape(b, [1, -1] + [1] * n)))
    return _from_compute(ctx, y, dt)


_MAXPOOL = {1: R.nn.max_pool1d, 2: R.nn.max_pool2d, 3: R.nn.max_pool3d}
_AVGPOOL = {1: R.nn.avg_pool1d, 2: R.nn.avg_pool2d, 3: R.nn.avg_pool3d}
_POOL_LAYOUT = {1: "NCW", 2: "NCHW", 3: "NCDHW"}


def _maxpool_check(node: Node) -> str | None:
    if len(node.outputs) > 1:
        return "MaxPool's Indices output has no TVM lowering; drop the output or keep this model on ONNX Runtime"
    return _static_spatial(node)


def _pool(table: dict, is_avg: bool) -> Emitter:
    def emit(ctx: LowerContext, node: Node, ins: list) -> Any:
        a = ctx.attrs(node)
        dt = _in_dt(node)
        x = _to_compute(ctx, ins[0], dt)
        n = _rank(x) - 2
        kernel = [int(k) for k in a["kernel_shape"]]
        pads = _window_pads(node, _shape(x), kernel)
        kw = dict(pool_size=kernel, strides=list(a["strides"] or [1] * n), padding=pads,
                  dilation=list(a["dilations"] or [1] * n), ceil_mode=bool(a["ceil_mode"]), layout=_POOL_LAYOUT[n])
        if is_avg:
            kw["count_include_pad"] = bool(a["count_include_pad"])
        y = ctx.emit(table[n](x, **kw))
        shape = _out_shape(ctx, node)
        if shape is not None and any(_static(p) is not None and _static(p) != s
                                     for p, s in zip(_shape(y), shape) if isinstance(s, int)):
            y = ctx.emit(R.strided_slice(y, axes=list(range(2, 2 + n)), begin=[0] * n, end=shape[2:]))
        return _from_compute(ctx, y, dt)

    return _requires(_maxpool_check if not is_avg else _static_spatial)(emit)


def _global_pool(fn: Callable) -> Emitter:
    def emit(ctx: LowerContext, node: Node, ins: list) -> Any:
        dt = _in_dt(node)
        x = _to_compute(ctx, ins[0], dt)
        return _from_compute(ctx, ctx.emit(fn(x, list(range(2, _rank(x))), True)), dt)

    return emit


# ----------------------------------------------------------------------------- normalization


def _stash(ctx: LowerContext, node: Node) -> str:
    return {1: "float32", 11: "float64"}[int(ctx.attrs(node)["stash_type"])]


def _layer_norm(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    dt = _in_dt(node)
    st = _stash(ctx, node)
    x = ins[0]
    rank = _rank(x)
    axes = list(range(_axis(int(a["axis"]), rank), rank))
    xs = _as(ctx, x, st)
    mean = ctx.emit(R.mean(xs, axes, True))
    d = ctx.emit(R.subtract(xs, mean))
    var = ctx.emit(R.mean(R.multiply(d, d), axes, True))
    inv = ctx.emit(R.divide(_c(1, st), R.sqrt(R.add(var, _c(a["epsilon"], st)))))
    y = ctx.emit(R.multiply(d, inv))
    y = _from_compute(ctx, y, dt)
    y = _half_op(ctx, R.multiply, y, ins[1], dt)
    if len(ins) > 2 and ins[2] is not None:
        y = _half_op(ctx, R.add, y, ins[2], dt)
    return [y, mean, inv][: len(node.outputs)]


def _half_op(ctx: LowerContext, fn: Callable, a: relax.Expr, b: relax.Expr, dt: DType) -> relax.Expr:
    """One binary op in X's dtype (f16/bf16: computed in float32, rounded once)."""
    if dt in _HALF:
        return ctx.emit(R.astype(fn(R.astype(a, "float32"), R.astype(b, "float32")), relax_dtype(dt)))
    return ctx.emit(fn(a, b))


def _rms_norm(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    dt = _in_dt(node)
    st = _stash(ctx, node)
    x = ins[0]
    rank = _rank(x)
    axes = list(range(_axis(int(a["axis"]), rank), rank))
    xs = _as(ctx, x, st)
    ms = ctx.emit(R.mean(R.multiply(xs, xs), axes, True))
    y = ctx.emit(R.divide(xs, R.sqrt(R.add(ms, _c(a["epsilon"], st)))))
    y = _from_compute(ctx, y, dt)
    return _half_op(ctx, R.multiply, y, ins[1], dt)


def _channel(ctx: LowerContext, p: relax.Expr, rank: int, ct: str) -> relax.Expr:
    return ctx.emit(R.reshape(_as(ctx, p, ct), [1, -1] + [1] * (rank - 2)))


def _batch_norm(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    dt = _in_dt(node)
    x = _to_compute(ctx, ins[0], dt)
    ct, rank = _dt(x), _rank(x)
    scale, b, mean, var = (_channel(ctx, p, rank, ct) for p in ins[1:5])
    inv = ctx.emit(R.divide(_c(1, ct), R.sqrt(R.add(var, _c(a["epsilon"], ct)))))
    y = ctx.emit(R.add(R.multiply(R.multiply(R.subtract(x, mean), inv), scale), b))
    return _from_compute(ctx, y, dt)


def _instance_norm(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    dt = _in_dt(node)
    x = _to_compute(ctx, ins[0], dt)
    ct, rank = _dt(x), _rank(x)
    axes = list(range(2, rank))
    mean = ctx.emit(R.mean(x, axes, True))
    d = ctx.emit(R.subtract(x, mean))
    var = ctx.emit(R.mean(R.multiply(d, d), axes, True))
    y = ctx.emit(R.divide(d, R.sqrt(R.add(var, _c(a["epsilon"], ct)))))
    y = ctx.emit(R.add(R.multiply(y, _channel(ctx, ins[1], rank, ct)), _channel(ctx, ins[2], rank, ct)))
    return _from_compute(ctx, y, dt)


def _group_norm(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    dt = _in_dt(node)
    st = _stash(ctx, node)
    x = ins[0]
    dims = _shape(x)
    rank = len(dims)
    g = int(a["num_groups"])
    xs = ctx.emit(R.reshape(_as(ctx, x, st), [dims[0], g, -1]))
    mean = ctx.emit(R.mean(xs, [2], True))
    d = ctx.emit(R.subtract(xs, mean))
    var = ctx.emit(R.mean(R.multiply(d, d), [2], True))
    y = ctx.emit(R.divide(d, R.sqrt(R.add(var, _c(a["epsilon"], st)))))
    y = _as(ctx, ctx.emit(R.reshape(y, dims)), relax_dtype(dt))
    y = _half_op(ctx, R.multiply, y, ctx.emit(R.reshape(ins[1], [1, -1] + [1] * (rank - 2))), dt)
    return _half_op(ctx, R.add, y, ctx.emit(R.reshape(ins[2], [1, -1] + [1] * (rank - 2))), dt)


# ----------------------------------------------------------------------------- attention


def _causal_mask(ctx: LowerContext, s: Any, t: Any) -> relax.Expr:
    """[S, T] bool, query s sees keys 0..s (top-left aligned)."""

    def fn() -> te.Tensor:
        return te.compute((s, t), lambda i, j: j <= i, name="causal")

    return ctx.te(fn, name="causal_mask")


def _sdpa(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    dt = _in_dt(node)
    q, k, v = (_to_compute(ctx, x, dt) for x in ins[:3])
    ct = _dt(q)
    qs, ks = _shape(q), _shape(k)
    b, h, s, d = qs
    hkv, t = ks[1], ks[2]
    h_s, hkv_s, d_s = _static(h), _static(hkv), _static(d)
    scale = float(a["scale"]) if a["scale"] != 0.0 else 1.0 / math.sqrt(d_s)
    kt = ctx.emit(R.permute_dims(k, [0, 1, 3, 2]))
    group = 1 if h_s == hkv_s else h_s // hkv_s
    if group > 1:  # [B, Hkv, group, S, D] against [B, Hkv, 1, D, T]: no repeated K/V
        qg = ctx.emit(R.reshape(q, [b, hkv, group, s, d]))
        scores = ctx.emit(R.matmul(qg, R.expand_dims(kt, [2])))
        scores = ctx.emit(R.reshape(scores, [b, h, s, t]))
    else:
        scores = ctx.emit(R.matmul(q, kt))
    scores = ctx.emit(R.multiply(scores, _c(scale, ct)))
    neg_inf = _c(-np.inf, ct)
    if a["is_causal"]:
        scores = ctx.emit(R.where(_causal_mask(ctx, s, t), scores, neg_inf))
    if len(ins) > 3 and ins[3] is not None:
        mask = _align(ctx, ins[3], scores)
        if _in_dt(node, 3) == dtypes.bool_:
            scores = ctx.emit(R.where(mask, scores, neg_inf))
        else:
            scores = ctx.emit(R.add(scores, _to_compute(ctx, mask, dt)))
    row_max = ctx.emit(R.max(scores, [-1], True))
    # scalar fill values: a zeros_like of a static [B, H, S, T] folds into a constant of
    # that size (12.6 MB per layer for MiniLM at batch 64) in the library
    row_max = ctx.emit(R.where(R.isinf(row_max), _c(0, ct), row_max))
    e = ctx.emit(R.exp(R.subtract(scores, row_max)))
    total = ctx.emit(R.sum(e, [-1], True))
    pos = ctx.emit(R.greater(total, _c(0, ct)))
    probs = ctx.emit(R.where(pos, R.divide(e, R.where(pos, total, _c(1, ct))), _c(0, ct)))
    if group > 1:
        pg = ctx.emit(R.reshape(probs, [b, hkv, group, s, t]))
        out = ctx.emit(R.matmul(pg, R.expand_dims(v, [2])))
        out = ctx.emit(R.reshape(out, [b, h, s, _shape(v)[3]]))
    else:
        out = ctx.emit(R.matmul(probs, v))
    return _from_compute(ctx, out, dt)


def _sdpa_check(node: Node) -> str | None:
    q, k = node.inputs[0].type, node.inputs[1].type
    if q.shape is None or k.shape is None:
        return "ScaledDotProductAttention needs inputs of known rank in the TVM backend"
    h, hkv, d = q.shape[1], k.shape[1], q.shape[3]
    if not (isinstance(h, int) and isinstance(hkv, int)):
        return "ScaledDotProductAttention needs static head counts in the TVM backend"
    if not isinstance(d, int) and node.attrs.get("scale", 0.0) == 0.0:
        return "ScaledDotProductAttention needs a static head size (or an explicit scale) in the TVM backend"
    return None


_sdpa = _requires(_sdpa_check)(_sdpa)


# ----------------------------------------------------------------------------- quantization


def _is_scalar_param(v: Any) -> bool:
    return v.type.shape is not None and all(d == 1 for d in v.type.shape)


def _expand_param(ctx: LowerContext, p: relax.Expr, pv: Any, x: relax.Expr, axis: int, block: int) -> relax.Expr:
    """A scale / zero point in ONNX's layout, broadcastable to x (per tensor, per axis, blocked)."""
    if _is_scalar_param(pv):
        return ctx.emit(R.reshape(p, ()))
    dims = _shape(x)
    rank = len(dims)
    axis = _axis(axis, rank)
    if block <= 0:
        return _align(ctx, ctx.emit(R.reshape(p, [1] * axis + [-1] + [1] * (rank - axis - 1))), x)
    rep = ctx.emit(R.repeat(p, block, axis=axis))
    return _align(ctx, ctx.emit(R.strided_slice(rep, axes=[axis], begin=[0], end=[dims[axis]])), x)


def _quantize_values(ctx: LowerContext, v: relax.Expr, zp: relax.Expr | None, dst: DType, saturate: bool) -> relax.Expr:
    """`v` = x / scale (float32) encoded in dst: integers round half to even, + zero point,
    saturate (NaN -> lowest code); float formats on their grid."""
    if not dst.is_integer:
        return _encode_float(ctx, v, dst, saturate)
    lo, hi = dst.int_range
    r = ctx.emit(R.round(v))
    z = _as(ctx, zp, "float32") if zp is not None else _c(0.0, "float32")
    lo_z = ctx.emit(R.subtract(_c(float(lo), "float32"), z))
    hi_z = ctx.emit(R.subtract(_c(float(hi), "float32"), z))
    r = _like(ctx, ctx.emit(R.where(R.isnan(r), lo_z, R.minimum(R.maximum(r, lo_z), hi_z))), v)
    r = _like(ctx, ctx.emit(R.add(r, z)), v)
    return ctx.emit(R.astype(r, relax_dtype(dst)))


def _quantize_linear(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    dst = _out_dt(node)
    axis, block = int(a["axis"]), int(a["block_size"])
    x = _as(ctx, ins[0], "float32")
    s = _as(ctx, _expand_param(ctx, ins[1], node.inputs[1], x, axis, block), "float32")
    v = _like(ctx, ctx.emit(R.divide(x, s)), x)
    zp = None
    if len(ins) > 2 and ins[2] is not None and dst.is_integer:
        zp = _expand_param(ctx, ins[2], node.inputs[2], x, axis, block)
    return _quantize_values(ctx, v, zp, dst, bool(a["saturate"]))


def _dequantize_values(ctx: LowerContext, q: relax.Expr, q_dt: DType, zp: relax.Expr | None, s: relax.Expr) -> relax.Expr:
    if q_dt.is_integer:
        d = _as(ctx, q, "int64")
        if zp is not None:
            d = ctx.emit(R.subtract(d, _as(ctx, zp, "int64")))
        d = _as(ctx, d, "float32")
    else:
        d = _as(ctx, q, "float32")
    return ctx.emit(R.multiply(d, _as(ctx, s, "float32")))


def _dequantize_linear(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    axis, block = int(a["axis"]), int(a["block_size"])
    x = ins[0]
    s = _expand_param(ctx, ins[1], node.inputs[1], x, axis, block)
    zp = None
    if len(ins) > 2 and ins[2] is not None and _in_dt(node).is_integer:
        zp = _expand_param(ctx, ins[2], node.inputs[2], x, axis, block)
    y = _like(ctx, _dequantize_values(ctx, x, _in_dt(node), zp, s), x)
    return _as(ctx, y, relax_dtype(_out_dt(node)))


def _dynamic_qparams(ctx: LowerContext, x: relax.Expr) -> tuple[relax.Expr, relax.Expr]:
    """DynamicQuantizeLinear's float32 scale and zero point (0-d), ONNX's spec + ORT's
    scale 1 for an all-zero input."""
    f = "float32"
    zero = _c(0.0, f)
    hi = ctx.emit(R.maximum(R.max(x), zero))
    lo = ctx.emit(R.minimum(R.min(x), zero))
    scale = ctx.emit(R.where(R.equal(hi, lo), _c(1.0, f), R.divide(R.subtract(hi, lo), _c(255.0, f))))
    initial = ctx.emit(R.subtract(zero, R.divide(lo, scale)))
    zp = ctx.emit(R.round(R.minimum(R.maximum(initial, zero), _c(255.0, f))))
    return scale, zp


def _dynamic_quantize_linear(ctx: LowerContext, node: Node, ins: list) -> Any:
    x = ins[0]
    scale, zp_f = _dynamic_qparams(ctx, x)
    y = _quantize_values(ctx, ctx.emit(R.divide(x, scale)), zp_f, dtypes.uint8, True)
    return [y, scale, ctx.emit(R.astype(zp_f, "uint8"))]


def _row_param(ctx: LowerContext, p: relax.Expr | None, pv: Any, a_rank: int) -> relax.Expr | None:
    """A per-row parameter of A: [M] -> [M, 1]; scalars -> 0-d; N-D as given."""
    if p is None:
        return None
    if _is_scalar_param(pv):
        return ctx.emit(R.reshape(p, ()))
    if pv.type.rank == 1 and a_rank >= 2:
        return ctx.emit(R.reshape(p, [-1, 1]))
    return p


def _col_param(ctx: LowerContext, p: relax.Expr | None, pv: Any) -> relax.Expr | None:
    if p is None:
        return None
    if _is_scalar_param(pv):
        return ctx.emit(R.reshape(p, ()))
    return p


def _int_acc(ctx: LowerContext, a: relax.Expr, a_zp: relax.Expr | None, b: relax.Expr, b_zp: relax.Expr | None) -> relax.Expr:
    """(A - a_zp) @ (B - b_zp) with an int32 accumulator (wrapping, like ORT's)."""
    a32 = _as(ctx, a, "int32")
    b32 = _as(ctx, b, "int32")
    if a_zp is not None:
        a32 = ctx.emit(R.subtract(a32, _as(ctx, a_zp, "int32")))
    if b_zp is not None:
        b32 = ctx.emit(R.subtract(b32, _as(ctx, b_zp, "int32")))
    return ctx.emit(R.matmul(a32, b32, out_dtype="int32"))


def _opt(ins: list, node: Node, i: int) -> tuple[Any, Any]:
    if i < len(ins) and ins[i] is not None:
        return ins[i], node.inputs[i]
    return None, None


def _matmul_integer(ctx: LowerContext, node: Node, ins: list) -> Any:
    a, b = ins[0], ins[1]
    a_zp, a_zpv = _opt(ins, node, 2)
    b_zp, b_zpv = _opt(ins, node, 3)
    return _int_acc(ctx, a, _row_param(ctx, a_zp, a_zpv, _rank(a)), b, _col_param(ctx, b_zp, b_zpv))


def _qlinear_matmul(ctx: LowerContext, node: Node, ins: list) -> Any:
    a, a_s, a_zp, b, b_s, b_zp, y_s, y_zp = ins
    v = node.inputs
    ra = _rank(a)
    acc = _int_acc(ctx, a, _row_param(ctx, a_zp, v[2], ra), b, _col_param(ctx, b_zp, v[5]))
    mult = ctx.emit(R.multiply(_row_param(ctx, a_s, v[1], ra), _col_param(ctx, b_s, v[4])))
    mult = ctx.emit(R.divide(mult, _row_param(ctx, y_s, v[6], ra)))
    val = ctx.emit(R.multiply(R.astype(acc, "float32"), mult))
    zp = _row_param(ctx, y_zp, v[7], ra)
    return _quantize_values(ctx, val, zp, _out_dt(node), True)


def _scaled_int_matmul(ctx: LowerContext, a_q: relax.Expr, a_zp: Any, a_s: relax.Expr, b: relax.Expr, b_zp: Any,
                       b_s: relax.Expr, bias: relax.Expr | None) -> relax.Expr:
    acc = _int_acc(ctx, a_q, a_zp, b, b_zp)
    mult = ctx.emit(R.multiply(R.reshape(a_s, ()), b_s))
    y = ctx.emit(R.multiply(R.astype(acc, "float32"), mult))
    if bias is not None:
        y = ctx.emit(R.add(y, bias))
    return y


def _matmul_integer_to_float(ctx: LowerContext, node: Node, ins: list) -> Any:
    a_zp, a_zpv = _opt(ins, node, 4)
    b_zp, b_zpv = _opt(ins, node, 5)
    bias, _ = _opt(ins, node, 6)
    return _scaled_int_matmul(ctx, ins[0], _col_param(ctx, a_zp, a_zpv), ins[2], ins[1],
                              _col_param(ctx, b_zp, b_zpv), _col_param(ctx, ins[3], node.inputs[3]), bias)


def _dynamic_quantize_matmul(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ins[0]
    scale, zp_f = _dynamic_qparams(ctx, a)
    a_q = _quantize_values(ctx, ctx.emit(R.divide(a, scale)), zp_f, dtypes.uint8, True)
    b_zp, b_zpv = _opt(ins, node, 3)
    bias, _ = _opt(ins, node, 4)
    return _scaled_int_matmul(ctx, a_q, ctx.emit(R.astype(zp_f, "uint8")), scale, ins[1],
                              _col_param(ctx, b_zp, b_zpv), _col_param(ctx, ins[2], node.inputs[2]), bias)


def _unpack_low_first(ctx: LowerContext, packed: relax.Expr, n: int, bits: int, count: int) -> relax.Expr:
    """[n, ...] uint8 bytes -> [n, count] codes (first code in the lowest bits)."""
    per = 8 // bits
    flat = ctx.emit(R.reshape(packed, [n, -1, 1]))
    shifts = _c(np.arange(per, dtype=np.uint8) * bits, "uint8")
    codes = ctx.emit(R.bitwise_and(R.right_shift(flat, shifts), _c((1 << bits) - 1, "uint8")))
    codes = ctx.emit(R.reshape(codes, [n, -1]))
    return ctx.emit(R.strided_slice(codes, axes=[1], begin=[0], end=[count]))


def _matmul_nbits(ctx: LowerContext, node: Node, ins: list) -> Any:
    at = ctx.attrs(node)
    k, n, bits, block = int(at["K"]), int(at["N"]), int(at["bits"]), int(at["block_size"])
    k_blocks = -(-k // block)
    f = "float32"
    codes = _as(ctx, _unpack_low_first(ctx, ins[1], n, bits, k), f)  # [N, K]
    scales = ctx.emit(R.reshape(_as(ctx, ins[2], f), [n, k_blocks]))
    zp_in, zp_v = _opt(ins, node, 3)
    if zp_in is None:
        zp = _c(np.full((n, k_blocks), float(1 << (bits - 1)), np.float32), f)
    elif zp_v.dtype == dtypes.uint8:
        zp = _as(ctx, _unpack_low_first(ctx, zp_in, n, bits, k_blocks), f)
    else:
        zp = ctx.emit(R.reshape(_as(ctx, zp_in, f), [n, k_blocks]))
    g_idx, _ = _opt(ins, node, 4)
    if g_idx is not None:
        idx = ctx.emit(R.astype(R.reshape(g_idx, [k]), "int64"))
        s_k = ctx.emit(R.take(scales, idx, axis=1))
        z_k = ctx.emit(R.take(zp, idx, axis=1))
    else:
        s_k = ctx.emit(R.strided_slice(R.repeat(scales, block, axis=1), axes=[1], begin=[0], end=[k]))
        z_k = ctx.emit(R.strided_slice(R.repeat(zp, block, axis=1), axes=[1], begin=[0], end=[k]))
    w_t = ctx.emit(R.multiply(R.subtract(codes, z_k), s_k))  # [N, K]
    a = _as(ctx, ins[0], f)
    y = ctx.emit(R.matmul(a, R.permute_dims(w_t, [1, 0])))
    bias, _ = _opt(ins, node, 5)
    if bias is not None:
        y = ctx.emit(R.add(y, _as(ctx, bias, f)))
    return _as(ctx, y, relax_dtype(_out_dt(node)))


# FakeQuantize ---------------------------------------------------------------------


def _fake_quantize(ctx: LowerContext, node: Node, ins: list) -> Any:
    from requant.ir.ops.quant import fake_quantize_scheme

    a = ctx.attrs(node)
    zp, zpv = _opt(ins, node, 2)
    scheme = fake_quantize_scheme(a, zp is not None)
    x = ins[0]
    if scheme.granularity in ("mx", "nv"):
        return _fake_quantize_blocks(ctx, node, x, scheme, ins[1] if len(ins) > 1 else None)
    rank = _rank(x)
    if scheme.granularity == "tensor":
        axis, block = 1, 0
    else:
        axis, block = _axis(int(scheme.axis), rank), scheme.block_size
    s = _expand_param(ctx, ins[1], node.inputs[1], x, axis, block)
    z = _expand_param(ctx, zp, zpv, x, axis, block) if zp is not None else None
    v = _like(ctx, ctx.emit(R.divide(x, s)), x)
    q = _quantize_values(ctx, v, z, scheme.dtype, True)
    return _like(ctx, _dequantize_values(ctx, q, scheme.dtype, z, s), x)


def _blocks_check(node: Node) -> str | None:
    if node.attrs.get("granularity") in ("mx", "nv"):
        t = node.inputs[0].type
        if t.shape is None:
            return "FakeQuantize mx/nv needs an input of known rank in the TVM backend"
        axis = int(node.attrs.get("axis", -1)) % max(t.rank, 1)
        if not isinstance(t.shape[axis], int):
            return "FakeQuantize mx/nv needs a static block axis in the TVM backend"
    return None


_fake_quantize = _requires(_blocks_check)(_fake_quantize)


def _fake_quantize_blocks(ctx: LowerContext, node: Node, x: relax.Expr, scheme: Any, tensor_scale: Any) -> Any:
    """MXFP4 / NVFP4 quantize-dequantize: blocks along the axis (a partial last block is
    padded with zeros, which change no block maximum)."""
    dims = _shape(x)
    rank = len(dims)
    axis = _axis(int(scheme.axis), rank)
    block = int(scheme.group_size)
    d = int(_static(dims[axis]))
    nb = -(-d // block)
    perm = [i for i in range(rank) if i != axis] + [axis]
    inv = [perm.index(i) for i in range(rank)]
    xt = ctx.emit(R.permute_dims(x, perm)) if axis != rank - 1 else x
    if nb * block != d:
        xt = ctx.emit(R.nn.pad(xt, _pad_width([0] * rank, [0] * (rank - 1) + [nb * block - d]), pad_mode="constant",
                               pad_value=0.0))
    lead = _shape(xt)[:-1]
    xb = ctx.emit(R.reshape(xt, lead + [nb, block]))
    amax = ctx.emit(R.max(R.abs(xb), [rank], True))
    fp4 = dtypes.fp4_e2m1
    if scheme.granularity == "mx":
        def mx_factor(m: Any) -> Any:
            v = m.astype("float64")
            e = _f64_exponent(v) - tirx.const(2, "int64")  # fp4_e2m1's largest exponent is 2
            e = tirx.Select(v > tirx.const(0.0, "float64"), e, tirx.const(-127, "int64"))
            e = tirx.max(e, tirx.const(-127, "int64"))
            p = _pow2_f64(e)  # exact: 2^-127 is a normal float64
            return tirx.Select(tirx.isfinite(v), p, tirx.const(float("nan"), "float64"))

        factor = _ewise(ctx, mx_factor, [amax], "float64", "mx_scale")
        xd = ctx.emit(R.divide(R.astype(xb, "float64"), factor))
        codes = _encode_float(ctx, xd, fp4, True)
        y = ctx.emit(R.astype(R.multiply(R.astype(codes, "float64"), factor), "float32"))
    else:
        f = "float32"
        if tensor_scale is not None:
            s_t = ctx.emit(R.reshape(_as(ctx, tensor_scale, f), ()))
        else:
            tmax = ctx.emit(R.max(R.abs(x)))
            s = ctx.emit(R.divide(tmax, _c(448.0 * 6.0, f)))
            s_t = ctx.emit(R.where(R.equal(s, _c(0.0, f)), _c(1.0, f), s))
        ratio = ctx.emit(R.divide(amax, R.multiply(_c(6.0, f), s_t)))
        s_b = _encode_float(ctx, ratio, dtypes.fp8_e4m3, True)
        dd = ctx.emit(R.multiply(s_b, s_t))
        zero = ctx.emit(R.equal(dd, _c(0.0, f)))
        v = ctx.emit(R.where(zero, _c(0.0, f), R.divide(xb, R.where(zero, _c(1.0, f), dd))))
        codes = _encode_float(ctx, v, fp4, True)
        y = ctx.emit(R.multiply(codes, dd))
    y = ctx.emit(R.reshape(y, lead + [nb * block]))
    if nb * block != d:
        y = ctx.emit(R.strided_slice(y, axes=[rank - 1], begin=[0], end=[d]))
    return ctx.emit(R.permute_dims(y, inv)) if axis != rank - 1 else y


# ----------------------------------------------------------------------------- the table

_UNARY = {
    "Exp": R.exp, "Log": R.log, "Sqrt": R.sqrt, "Reciprocal": _reciprocal, "Tanh": R.tanh,
    "Sin": R.sin, "Cos": R.cos, "Tan": R.tan, "Asin": R.asin, "Acos": R.acos, "Atan": R.atan,
    "Sinh": R.sinh, "Cosh": R.cosh, "Asinh": R.asinh, "Acosh": R.acosh, "Atanh": R.atanh,
    "Floor": R.floor, "Ceil": R.ceil, "Round": R.round,  # TVM's round is half to even
}

LOWERINGS: dict[str, Emitter | Unsupported] = {}
LOWERINGS.update({op: _float_unary(fn) for op, fn in _UNARY.items()})
LOWERINGS.update({
    # elementwise
    # (TVM's integer divide truncates toward zero, as requant's Div)
    "Add": _binary(R.add), "Sub": _binary(R.subtract), "Mul": _binary(R.multiply), "Div": _binary(R.divide),
    "Pow": _pow, "Mod": _mod, "BitShift": _bitshift,
    "Equal": _compare(R.equal), "Less": _compare(R.less), "LessOrEqual": _compare(R.less_equal),
    "Greater": _compare(R.greater), "GreaterOrEqual": _compare(R.greater_equal),
    "And": _logical(R.logical_and), "Or": _logical(R.logical_or), "Xor": _logical(R.logical_xor),
    "Where": _where,
    "Max": _variadic(R.maximum), "Min": _variadic(R.minimum), "Sum": _variadic(R.add), "Mean": _mean,
    # unary
    "Neg": _int_ok(R.negative), "Abs": _int_ok(R.abs), "Sign": _int_ok(R.sign),
    "Erf": _float_unary(R.erf, compute="float64"),
    "IsNaN": lambda ctx, node, ins: ctx.emit(R.isnan(ins[0])),
    "IsInf": _isinf,
    "Not": lambda ctx, node, ins: ctx.emit(R.logical_not(ins[0])),
    # activations
    "Relu": _relu, "LeakyRelu": _act(_leaky_relu), "PRelu": _prelu, "Elu": _act(_elu), "Selu": _act(_selu),
    "Celu": _act(_celu), "ThresholdedRelu": _act(_thresholded_relu), "Gelu": _act(_gelu),
    "Sigmoid": _act(lambda ctx, x, a: R.sigmoid(x)), "HardSigmoid": _act(_hard_sigmoid),
    "HardSwish": _act(_hard_swish), "Softplus": _act(lambda ctx, x, a: _softplus_expr(ctx, x)),
    "Softsign": _act(_softsign), "Swish": _act(_swish), "Mish": _act(_mish), "Clip": _clip,
    "Softmax": _softmax(False), "LogSoftmax": _softmax(True),
    "ScaledDotProductAttention": _sdpa,
    # casts
    "Cast": _cast, "CastLike": _cast,
    # shape ops
    "Reshape": _reshape, "Flatten": _flatten, "Squeeze": _squeeze, "Unsqueeze": _unsqueeze,
    "Transpose": _transpose, "Expand": _expand, "Identity": _identity, "Shape": _shape_op, "Size": _size,
    # indexing
    "Concat": _concat, "Split": _split, "Slice": _slice, "Gather": _gather, "GatherElements": _gather_elements,
    "GatherND": _gather_nd, "ScatterElements": _scatter_elements, "ScatterND": _scatter_nd, "Pad": _pad,
    "Tile": _tile, "Trilu": _trilu,
    # linear algebra, conv, pool
    "MatMul": _binary(R.matmul), "Gemm": _gemm, "Einsum": _einsum,
    "Conv": _conv, "ConvTranspose": _conv_transpose,
    "MaxPool": _pool(_MAXPOOL, False), "AveragePool": _pool(_AVGPOOL, True),
    "GlobalAveragePool": _global_pool(R.mean), "GlobalMaxPool": _global_pool(R.max),
    # sources and no-ops
    "Constant": _constant, "ConstantOfShape": _constant_of_shape, "Range": _range, "Dropout": _dropout,
    # normalization
    "LayerNormalization": _layer_norm, "RMSNormalization": _rms_norm, "BatchNormalization": _batch_norm,
    "InstanceNormalization": _instance_norm, "GroupNormalization": _group_norm,
    # reductions
    "ReduceSum": _reduction(None, "sum", None),
    "ReduceMean": _reduction(None, "mean", None),
    "ReduceMax": _reduction(None, "max", None),
    "ReduceMin": _reduction(None, "min", None),
    "ReduceProd": _reduction(None, "prod", None),
    "ReduceL1": _reduction(lambda ctx, v: R.abs(v), "sum", None),
    "ReduceL2": _reduction(lambda ctx, v: R.multiply(v, v), "sum", _sqrt_post),
    "ReduceSumSquare": _reduction(lambda ctx, v: R.multiply(v, v), "sum", None),
    "ReduceLogSum": _reduction(None, "sum", lambda ctx, v, dt: R.log(v)),
    "ReduceLogSumExp": _log_sum_exp,
    "ArgMax": _arg(R.argmax), "ArgMin": _arg(R.argmin), "CumSum": _cumsum, "TopK": _topk,
    # quantization
    "QuantizeLinear": _quantize_linear, "DequantizeLinear": _dequantize_linear,
    "DynamicQuantizeLinear": _dynamic_quantize_linear, "MatMulInteger": _matmul_integer,
    "QLinearMatMul": _qlinear_matmul, "com.microsoft.MatMulIntegerToFloat": _matmul_integer_to_float,
    "com.microsoft.DynamicQuantizeMatMul": _dynamic_quantize_matmul, "com.microsoft.MatMulNBits": _matmul_nbits,
    "FakeQuantize": _fake_quantize,
    "com.microsoft.QAttention": Unsupported(
        "QAttention is ONNX Runtime's fused CPU attention kernel (its mask adds mask_filter_value "
        "rather than masking out); TVM targets lower Q/DQ with the lower_integer pass, which never "
        "makes it: run lower_integer on the Q/DQ graph instead of the ONNX backend's lower_quant"),
})


_TABLE_NAME = "TVM lowering table (backends/tvm/relax_lowering.py)"


def lowering_for(op: str) -> Emitter:
    """The emitter of `op`; raises `UnsupportedOpError` with the table's reason."""
    return entry_for(LOWERINGS, op, table_name=_TABLE_NAME, cannot="cannot be lowered to TVM Relax")


def unsupported_reason(node: Node) -> str | None:
    """Why `node` cannot be lowered (no entry, an Unsupported entry, or a node-level
    check of its emitter), or None when it can."""
    entry = LOWERINGS.get(node.op)
    if entry is None:
        return f"no entry in the {_TABLE_NAME}"
    if isinstance(entry, Unsupported):
        return entry.reason
    if node.op != "Constant":
        reason = _needs_rank(node)
        if reason:
            return reason
    check = getattr(entry, "check", None)
    return check(node) if check is not None else None
