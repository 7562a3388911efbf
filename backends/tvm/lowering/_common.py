"""What every family of the TVM lowering shares.

- `LOWERINGS`, the one lowering table (a `LoweringTable`): each family module registers
  its emitters in it, right beside them; `unsupported_reason` asks it (and the node-level
  checks of its emitters) whether a node can be lowered.
- `LowerContext`, what an emitter writes through, and `Emitter`, an emitter's type.
- How requant dtypes travel in Relax: `relax_dtype`, `is_emulated`, `EMULATED_FLOATS`
  (low-bit float formats as float32 grid values, int4/uint4 in int8/uint8).
- The node-level check decorators `requires` / `requires_const`, and `needs_rank`.
- The small Relax helpers emitters build with: constants (`constant`, `const_array`),
  shapes and dtypes of Relax expressions, the compute dtype of f16/bf16 (float32),
  constant inputs read at compile time, broadcasting, elementwise TE kernels.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tvm
from tvm import relax, te, tirx

from requant.backends.lowering_table import LoweringTable, Unsupported
from requant.errors import UnsupportedOpError
from requant.ir import dtypes
from requant.ir.dtypes import DType, FloatFormat
from requant.ir.graph import Node
from requant.ir.registry import get_schema

__all__ = [
    "EMULATED_FLOATS",
    "HALF_FLOATS",
    "LOWERINGS",
    "Emitter",
    "LowerContext",
    "align_to",
    "as_dtype",
    "broadcast_all",
    "compute_dtype",
    "const_array",
    "const_ints",
    "const_scalar",
    "constant",
    "dims_of",
    "dtype_of",
    "elementwise_te",
    "from_compute",
    "in_dtype",
    "is_emulated",
    "needs_rank",
    "normalize_axis",
    "numpy_dtype",
    "optional_input",
    "out_dtype",
    "out_shape",
    "pad_width",
    "rank_of",
    "relax_dtype",
    "requires",
    "requires_const",
    "requires_const_or_typed_output",
    "typed_out_shape",
    "same_dim",
    "shaped_like",
    "static_int",
    "to_compute",
    "unsupported_reason",
    "with_shape_expr",
]

logger = logging.getLogger(__name__)

R = relax.op

LOWERINGS = LoweringTable("TVM lowering table (backends/tvm/lowering/)", cannot="cannot be lowered to TVM Relax")


EMULATED_FLOATS = frozenset({dtypes.fp8_e4m3, dtypes.fp8_e5m2, dtypes.fp4_e2m1})
HALF_FLOATS = frozenset({dtypes.float16, dtypes.bfloat16})


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
    """What an emitter writes through: the BlockBuilder, the symbolic dims, and the
    Relax expression of any IR value emitted so far (`value`: an emitter that fuses a
    pattern reads the operands of its inputs' producers)."""

    def __init__(self, bb: relax.BlockBuilder, dims: dict[str, Any],
                 read: Callable[[Any], relax.Expr] | None = None) -> None:
        self.bb = bb
        self.dims = dims
        self._read = read

    def value(self, v: Any) -> relax.Expr:
        """The Relax expression of IR value `v` (a graph input, a constant or an output of
        a node emitted earlier)."""
        if self._read is None:
            raise UnsupportedOpError("this lowering context reads no other values")
        return self._read(v)

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


# ----------------------------------------------------------------------------- constants, shapes, dtypes


def constant(value: Any, dt: str) -> tvm.ir.expr.Constant:
    """A Relax constant of Relax dtype `dt` (a scalar or an array)."""
    return relax.const(np.asarray(value, dtype=numpy_dtype(dt)), dt)


def numpy_dtype(dt: str) -> Any:
    """The numpy dtype of Relax dtype `dt` (ml_dtypes' for bfloat16)."""
    if dt == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(dt)


def const_array(arr: np.ndarray, dt: DType) -> tvm.ir.expr.Constant:
    """A graph constant of requant dtype `dt` as a Relax constant in its Relax dtype."""
    rd = relax_dtype(dt)
    arr = np.asarray(arr)
    if rd == "bfloat16":
        return relax.const(arr, rd)
    return relax.const(np.asarray(arr.astype(numpy_dtype(rd)), order="C"), rd)


def dims_of(x: relax.Expr) -> list[Any]:
    """The dims of Relax tensor `x` (ints or symbolic `tirx` expressions)."""
    sinfo = x.ty
    if sinfo.shape is None or not hasattr(sinfo.shape, "values"):
        raise UnsupportedOpError("the TVM backend needs tensors of known rank")
    return list(sinfo.shape.values)


def rank_of(x: relax.Expr) -> int:
    return int(x.ty.ndim)


def dtype_of(x: relax.Expr) -> str:
    """The Relax dtype of `x`."""
    return str(x.ty.dtype)


def static_int(d: Any) -> int | None:
    """A Relax or IR dim as an int, or None when it is symbolic."""
    if isinstance(d, int):
        return d
    if isinstance(d, tirx.IntImm):
        return int(d.value)
    return None


def in_dtype(node: Node, i: int = 0) -> DType:
    """The requant dtype of input `i` of `node`."""
    return node.inputs[i].dtype


def out_dtype(node: Node, j: int = 0) -> DType:
    """The requant dtype of output `j` of `node`."""
    return node.outputs[j].dtype


def out_shape(ctx: LowerContext, node: Node, j: int = 0) -> list[Any] | None:
    """Output `j`'s IR shape as Relax shape values, or None when a dim is unknown here."""
    return ctx.ir_shape(node.outputs[j].type.shape)


def as_dtype(ctx: LowerContext, x: relax.Expr, dt: str) -> relax.Expr:
    """`x` cast to Relax dtype `dt` (no cast when it has it already)."""
    return ctx.emit(R.astype(x, dt)) if dtype_of(x) != dt else x


def to_compute(ctx: LowerContext, x: relax.Expr, dt: DType) -> relax.Expr:
    """f16/bf16 compute in float32, like the reference kernels."""
    return ctx.emit(R.astype(x, "float32")) if dt in HALF_FLOATS else x


def from_compute(ctx: LowerContext, y: relax.Expr, dt: DType) -> relax.Expr:
    """`y`, computed in the compute dtype, rounded once to requant dtype `dt`."""
    return as_dtype(ctx, y, relax_dtype(dt))


def compute_dtype(dt: DType) -> str:
    """The Relax dtype values of `dt` compute in (float32 for f16/bf16)."""
    return "float32" if dt in HALF_FLOATS else relax_dtype(dt)


def normalize_axis(axis: int, rank: int) -> int:
    """A negative `axis` counted from the end."""
    return axis + rank if axis < 0 else axis


# ----------------------------------------------------------------------------- inputs read at compile time


def const_ints(node: Node, i: int) -> list[int] | None:
    """Constant input `i` of `node` as a flat list of ints (None when omitted)."""
    if i >= len(node.inputs) or node.inputs[i] is None:
        return None
    return [int(v) for v in np.asarray(node.inputs[i].const).reshape(-1)]


def const_scalar(node: Node, i: int) -> Any:
    """The first element of constant input `i` of `node`, as a Python number."""
    return np.asarray(node.inputs[i].const).reshape(-1)[0].item()


def optional_input(ins: list, node: Node, i: int) -> tuple[Any, Any]:
    """(Relax expression, IR value) of optional input `i`, or (None, None) when omitted."""
    if i < len(ins) and ins[i] is not None:
        return ins[i], node.inputs[i]
    return None, None


# ----------------------------------------------------------------------------- node-level checks


def requires(check: Callable[[Node], str | None]) -> Callable[[Emitter], Emitter]:
    """Give an emitter a node-level `check` (chained after any it has already)."""

    def deco(fn: Emitter) -> Emitter:
        prev = getattr(fn, "check", None)
        fn.check = check if prev is None else (lambda node: prev(node) or check(node))  # type: ignore[attr-defined]
        return fn

    return deco


def _computed_input_reason(node: Node, indices: Sequence[int]) -> str | None:
    """Why inputs `indices` (when present) of `node` must be graph constants, or None."""
    for i in indices:
        if i < len(node.inputs) and node.inputs[i] is not None and node.inputs[i].const is None:
            inputs = get_schema(node.op).inputs
            name = inputs[min(i, len(inputs) - 1)].name
            return (f"input {name} must be a constant for the TVM backend (it fixes shapes or axes at "
                    f"compile time); run constant folding first or make it a graph constant")
    return None


def requires_const(*indices: int) -> Callable[[Emitter], Emitter]:
    """Mark an emitter as needing inputs `indices` (when present) to be graph constants."""
    return requires(lambda node: _computed_input_reason(node, indices))


def requires_const_or_typed_output(*indices: int) -> Callable[[Emitter], Emitter]:
    """Like `requires_const`, but a computed input is accepted when the node's output
    type says every dim (an int, or a symbol such as "batch": what the shape inference
    derived from a Shape -> Gather -> Concat chain): the emitter then builds the output
    from that type (`typed_out_shape`), which is how a graph with a symbolic batch
    lowers its computed Expand / Reshape / Range / ConstantOfShape."""

    def check(node: Node) -> str | None:
        reason = _computed_input_reason(node, indices)
        shape = node.outputs[0].type.shape
        if shape is not None and all(isinstance(d, (int, str)) for d in shape):
            return None
        return reason

    return requires(check)


def typed_out_shape(ctx: LowerContext, node: Node, j: int = 0) -> list[Any]:
    """Output `j`'s shape from its IR type, every dim known (an int or a symbol the graph
    inputs bind); an `UnsupportedOpError` naming the node otherwise."""
    shape = out_shape(ctx, node, j)
    if shape is None:
        unknown = [d for d in (node.outputs[j].type.shape or ()) if ctx.dim(d) is None]
        raise UnsupportedOpError(
            f"{node.label}: its output shape depends on computed values and the dim(s) {unknown} are not sizes of "
            f"the graph inputs; compile with example_inputs= or dims={{...}} so that they fold to constants")
    return shape


def needs_rank(node: Node) -> str | None:
    """The check `unsupported_reason` applies to every node but Constant: inputs of unknown
    rank cannot be lowered."""
    for v in node.inputs:
        if v is not None and v.type.shape is None:
            return "inputs of unknown rank are not supported by the TVM backend; give the graph inputs shapes"
    return None


def unsupported_reason(node: Node) -> str | None:
    """Why `node` cannot be lowered (no entry, an Unsupported entry, or a node-level
    check of its emitter), or None when it can."""
    entry = LOWERINGS.get(node.op)
    if entry is None:
        return f"no entry in the {LOWERINGS.name}"
    if isinstance(entry, Unsupported):
        return entry.reason
    if node.op != "Constant":
        reason = needs_rank(node)
        if reason:
            return reason
    check = getattr(entry, "check", None)
    return check(node) if check is not None else None


# ----------------------------------------------------------------------------- broadcasting and TE kernels


def elementwise_te(ctx: LowerContext, fn: Callable, xs: Sequence[relax.Expr], out_dt: str, name: str) -> relax.Expr:
    """An elementwise TE kernel over same-shaped inputs: `fn(*scalars) -> scalar`."""

    def compute(*ts: te.Tensor) -> te.Tensor:
        return te.compute(ts[0].shape, lambda *i: fn(*[t(*i) for t in ts]), name=name)

    out = ctx.te(compute, *[with_shape_expr(ctx, x) for x in xs], name=name)
    assert dtype_of(out) == out_dt, (name, dtype_of(out), out_dt)
    return out


def with_shape_expr(ctx: LowerContext, x: relax.Expr) -> relax.Expr:
    """`x` with a ShapeExpr shape (emit_te needs one): a tensor whose dims Relax could not
    infer (e.g. a symbol broadcast against a number) gets fresh dim variables."""
    sinfo = x.ty
    if sinfo.shape is not None and hasattr(sinfo.shape, "values"):
        return x
    dims = [tirx.Var(f"d{i}", "int64") for i in range(int(sinfo.ndim))]
    return ctx.bb.match_cast(x, relax.TensorType(dims, dtype_of(x)))


def shaped_like(ctx: LowerContext, y: relax.Expr, x: relax.Expr) -> relax.Expr:
    """`y` (a broadcast whose shape Relax could not infer, e.g. symbol vs number) cast to
    the shape of `x`, which it has by construction (checked at run time)."""
    if y.ty.shape is not None and hasattr(y.ty.shape, "values"):
        return y
    return ctx.bb.match_cast(y, relax.TensorType(dims_of(x), dtype_of(y)))


def align_to(ctx: LowerContext, p: relax.Expr, x: relax.Expr) -> relax.Expr:
    """`p`, which broadcasts to `x`, with each non-1 dim named by x's dim (so Relax can
    infer broadcasts of a static parameter against a symbolic dim; checked at run time)."""
    ps, xs = dims_of(p), dims_of(x)
    if len(ps) > len(xs):
        return p
    want = [1 if static_int(d) == 1 else xd for d, xd in zip(ps, xs[len(xs) - len(ps):])]
    if all(same_dim(a, b) for a, b in zip(ps, want)):
        return p
    return ctx.bb.match_cast(p, relax.TensorType(want, dtype_of(p)))


def broadcast_all(ctx: LowerContext, xs: Sequence[relax.Expr]) -> list[relax.Expr]:
    """Broadcast operands to their common shape (numpy rules) through Relax adds of zeros."""
    if len(xs) == 1:
        return list(xs)
    shapes = [dims_of(x) for x in xs]
    if all(len(s) == len(shapes[0]) and all(same_dim(a, b) for a, b in zip(s, shapes[0])) for s in shapes):
        return list(xs)
    out = []
    for i, x in enumerate(xs):
        acc = x
        for j, y in enumerate(xs):
            if j != i:
                same = dtype_of(y) == dtype_of(x)
                zero = ctx.emit(R.zeros_like(y)) if same else ctx.emit(R.zeros_like(R.astype(y, dtype_of(x))))
                acc = ctx.emit(R.add(acc, zero))
        out.append(acc)
    return out


def same_dim(a: Any, b: Any) -> bool:
    """Whether two Relax dims are known to be equal (same value, or the same variable)."""
    sa, sb = static_int(a), static_int(b)
    if sa is not None and sb is not None:
        return sa == sb
    return a.same_as(b) if hasattr(a, "same_as") else False


def pad_width(begin: Sequence[int], end: Sequence[int]) -> list[int]:
    """Relax's pad_width: (before, after) per axis, interleaved."""
    return [int(v) for pair in zip(begin, end) for v in pair]
