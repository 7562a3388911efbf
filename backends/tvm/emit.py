"""IR -> Relax: `to_relax(graph)` builds an `IRModule` with one function "main" through
`relax.BlockBuilder`, one lowering per node from `lowering.LOWERINGS`.

The function's parameters are the graph inputs, in order and named after them; it
returns a Relax `Tuple` of the graph outputs, always (one output gives a 1-tuple).
Constants become Relax constants (emitted where first read). Symbolic dims (strings in
the inputs' `TensorType` shapes) become `tirx.Var`s shared by name, unless `bind_dims`
fixes them to ints; an unknown dim (None) of an input gets its own variable.
A node computable from constants alone whose result is larger than
`FOLD_LIMIT_BYTES` reads its data inputs through an opaque identity (the VM's `vm.builtin.copy`),
so that Relax's FoldConstant, which folds every all-constant call whatever its size, leaves
it to run time: requant's own fold_constants keeps such results (a position bias gathered
into [heads, n, n], a mask expanded to the batch) as computations for the same reason, and
a folded tensor of gigabytes costs several times its size while TVM compiles and exports
the library, and that size again in the library file.
Tensors of a dtype TVM cannot hold exactly travel in another (`relax_dtype`: fp8, fp4
and `FloatFormat` as float32 grid values, int4/uint4 in int8/uint8); `to_relax_array`
/ `from_relax_array` convert numpy arrays at the boundary.

Before emitting anything, every node is checked against the table (and against its
emitter's node-level check): all nodes that cannot be lowered are reported in one
`UnsupportedOpError`, each op with its count, one node's name and the reason.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
import tvm
from tvm import relax, tirx

from requant.errors import RequantError, UnsupportedOpError
from requant.ir.dtypes import DType
from requant.ir.graph import Graph, Value
from requant.backends.tvm.lowering import (
    LowerContext,
    const_array,
    is_emulated,
    lowering_for,
    relax_dtype,
    unsupported_reason,
)

__all__ = ["to_relax", "check_lowerable", "to_relax_array", "from_relax_array"]

logger = logging.getLogger(__name__)

#: constant-only results larger than this are computed at run time (module docstring)
FOLD_LIMIT_BYTES = 1 << 28


def check_lowerable(graph: Graph) -> None:
    """Raise one `UnsupportedOpError` naming every op of `graph` the TVM backend cannot
    lower (op, count, one node, reason); return quietly when all can be."""
    missing: OrderedDict[str, list] = OrderedDict()
    for node in graph:
        reason = unsupported_reason(node)
        if reason is None:
            continue
        entry = missing.setdefault(node.op, [0, node.label, reason])
        entry[0] += 1
    if not missing:
        return
    lines = [f"  - {op} (x{count}, e.g. {label}): {reason}" for op, (count, label, reason) in missing.items()]
    symbols = sorted({d for v in graph.inputs for d in (v.type.shape or ()) if isinstance(d, str)})
    sizes = ""
    if symbols:
        example = ", ".join(f"'{d}': N" for d in symbols)
        sizes = (f"\nthe graph inputs have symbolic dims ({', '.join(symbols)}): sizes given at compile time "
                 f"(requant.compile(..., example_inputs=...) or dims={{{example}}}) fold computed shapes to "
                 f"constants and build kernels for those sizes")
    raise UnsupportedOpError(
        f"graph '{graph.name}': {len(missing)} op(s) have no TVM lowering: {', '.join(missing)}\n"
        + "\n".join(lines) + sizes
        + "\nlower or rewrite these ops first, or use the ONNX backend (target cpu-*/cuda-* with backend='onnx')"
    )


def _input_var(value: Value, dims: dict[str, Any]) -> relax.Var:
    t = value.type
    dt = relax_dtype(t.dtype)
    if t.shape is None:
        return relax.Var(value.name, relax.TensorType(None, dt, ndim=-1))
    shape = []
    for i, d in enumerate(t.shape):
        if isinstance(d, int):
            shape.append(d)
        elif isinstance(d, str):
            if d not in dims:
                dims[d] = tirx.Var(d, "int64")
            shape.append(dims[d])
        else:
            shape.append(tirx.Var(f"{value.name}_dim{i}", "int64"))
    return relax.Var(value.name, relax.TensorType(shape, dt))


def to_relax(graph: Graph, *, bind_dims: Mapping[str, int] | None = None) -> tvm.IRModule:
    """The Relax module of `graph` (module docstring). Raises `UnsupportedOpError`
    listing every op without a lowering before emitting anything."""
    check_lowerable(graph)
    dims: dict[str, Any] = {k: int(v) for k, v in (bind_dims or {}).items()}
    params = [_input_var(v, dims) for v in graph.inputs]
    env: dict[int, relax.Expr] = {id(v): p for v, p in zip(graph.inputs, params)}
    bb = relax.BlockBuilder()

    def read(v: Value | None) -> relax.Expr | None:
        if v is None:
            return None
        found = env.get(id(v))
        if found is None:
            if v.const is None:
                raise RequantError(f"to_relax: %{v.name} is read before it is defined (graph not verified?)")
            found = const_array(v.const, v.type.dtype)
            env[id(v)] = found
        return found

    ctx = LowerContext(bb, dims, read)
    unfolded = _large_constant_nodes(graph)
    with bb.function("main", params):
        with bb.dataflow():
            for node in graph:
                emitter = lowering_for(node.op)
                ins = [read(v) for v in node.inputs]
                try:
                    result = _emit_unfolded(bb, ctx, emitter, node, ins) if id(node) in unfolded else None
                    if result is None:
                        result = emitter(ctx, node, ins)
                except RequantError:
                    raise
                except Exception as exc:
                    raise RequantError(f"to_relax: lowering {node.label} failed: {type(exc).__name__}: {exc}") from exc
                outs = list(result) if isinstance(result, (list, tuple)) else [result]
                if len(outs) != len(node.outputs):
                    raise RequantError(f"to_relax: {node.label} gave {len(outs)} outputs, it has {len(node.outputs)}")
                for value, expr in zip(node.outputs, outs):
                    _check_dtype(node.label, value, expr)
                    env[id(value)] = expr
            result = bb.emit_output(relax.Tuple([read(v) for v in graph.outputs]))
        bb.emit_func_output(result)
    return bb.get()


def _large_constant_nodes(graph: Graph) -> set[int]:
    """ids of the nodes computable from constants alone (every input a constant or such a
    node's output) whose outputs take more than FOLD_LIMIT_BYTES and which have a data
    input (`_is_data`) to read through the opaque identity."""
    from_constants: set[int] = set()
    large: set[int] = set()
    for node in graph:
        inputs = [v for v in node.inputs if v is not None]
        if not inputs or not all(v.const is not None or id(v) in from_constants for v in inputs):
            continue
        from_constants.update(id(o) for o in node.outputs)
        sizes = [o.type.numel for o in node.outputs]
        nbytes = sum(n * o.dtype.bits // 8 for n, o in zip(sizes, node.outputs)) if None not in sizes else 0
        if nbytes > FOLD_LIMIT_BYTES and any(_is_data(v) for v in inputs):
            large.add(id(node))
    return large


def _is_data(value: Value | None) -> bool:
    """A float tensor, or an integer one of rank >= 2: not a shape, axes or pads input,
    which lowerings may need as constants."""
    if value is None or value.type.shape is None:
        return False
    return value.dtype.is_float or len(value.type.shape) >= 2


def _emit_unfolded(bb: relax.BlockBuilder, ctx: LowerContext, emitter: Any, node: Any, ins: list) -> Any:
    """`node` lowered by `emitter` with its data inputs (`_is_data`) read through an opaque
    identity, so that FoldConstant cannot evaluate it at compile time; None when its
    lowering needs one as a constant: then it is left to fold."""
    opaque = [bb.emit(relax.op.call_pure_packed("vm.builtin.copy", x, ty_args=x.ty)) if _is_data(v) else x
              for v, x in zip(node.inputs, ins)]
    try:
        return emitter(ctx, node, opaque)
    except (RequantError, tvm.TVMError, TypeError, ValueError) as exc:
        logger.debug("to_relax: %s folds at compile time, its lowering needs constant inputs: %s", node.label, exc)
        return None


def _check_dtype(label: str, value: Value, expr: relax.Expr) -> None:
    want = relax_dtype(value.type.dtype)
    sinfo = expr.ty
    got = getattr(sinfo, "dtype", None)
    if got is not None and str(got) != want:
        raise RequantError(f"to_relax: {label} output %{value.name} lowered to {got}, expected {want} "
                           f"(for {value.type.dtype}): a bug in backends/tvm/lowering/")


def to_relax_array(array: Any, dt: DType) -> np.ndarray:
    """A numpy array of requant dtype `dt` in the storage its Relax tensor uses."""
    arr = np.asarray(array)
    if is_emulated(dt):
        return arr.astype(np.float32)
    return arr


def from_relax_array(array: np.ndarray, dt: DType) -> np.ndarray:
    """The inverse of `to_relax_array`: a Relax result as requant's storage of `dt`
    (exact: emulated formats hold values on their grid)."""
    arr = np.asarray(array)
    if arr.dtype != dt.np:
        return arr.astype(dt.np)
    return arr
