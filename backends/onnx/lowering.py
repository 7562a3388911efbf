"""The ONNX lowering table: how each requant op becomes ONNX nodes.

`LOWERINGS` maps every op name of requant's registry to an emitter or to an explicit
`Unsupported("because ...")`; a test checks that no registered op is missing. An emitter
is `emit(ctx, node, ins, outs)`: `ins` are the ONNX names of the node's inputs (None for
an omitted optional input), `outs` the names its outputs must have; it appends ONNX
nodes (and small initializers) to the `EmitContext`, which knows the target opset.

Standard ops (ONNX names and modern-opset semantics in the registry) go through
`standard`, which copies the op, converts attribute values to ONNX's attribute types
(dtype names -> element-type codes, arrays -> tensors) and, for older target opsets,
turns inputs back into the attributes those opsets had (`axes` of Reduce* before 18,
...). Ops newer than the target opset (Gelu 20, RMSNormalization 23, Swish 24, ...)
are decomposed into older ONNX ops. Where ONNX leaves semantics open and ONNX Runtime
differs from requant, the emitter pins requant's (Cast float -> int saturates and
truncates; BitShift on signed ints). requant's own ops lower to standard ONNX:
ScaledDotProductAttention to MatMul/Softmax at every opset: ONNX Runtime 1.32 has no
CPU kernel for ONNX Attention-23 and expands its function body, which ran MiniLM 6%
slower than the MatMul/Softmax form its fusions know (tools/bench/roundtrip.py).

Whenever a node does not become one ONNX node of the same op, the exporter records the
original node on the ONNX nodes it became (see `export.py`), so reading the file back
with `from_onnx` restores it exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from requant.backends.lowering_table import Unsupported, entry_for
from requant.errors import RequantError, UnsupportedOpError
from requant.frontends.onnx_types import dtype_to_onnx, tensor_from_array
from requant.ir import dtypes
from requant.ir.dtypes import DType
from requant.ir.graph import Node

__all__ = [
    "Unsupported",
    "EmitContext",
    "Emitter",
    "LOWERINGS",
    "lowering_for",
    "standard",
    "onnx_schema",
]

logger = logging.getLogger(__name__)


def onnx_schema(op_type: str, opset: int, domain: str = "") -> Any | None:
    """ONNX's schema of `op_type` as of `opset`, or None when it does not exist yet."""
    import onnx.defs

    try:
        return onnx.defs.get_schema(op_type, max_inclusive_version=opset, domain=domain)
    except Exception:
        return None


class EmitContext:
    """Where emitters write: ONNX nodes, extra initializers, fresh names, opset imports."""

    def __init__(self, opset: int, taken: set[str]) -> None:
        self.opset = opset
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.domains: dict[str, int] = {"": opset}
        self._taken = taken
        self._counter = 0

    def fresh(self, base: str) -> str:
        base = base or "t"
        name = base
        while name in self._taken:
            self._counter += 1
            name = f"{base}__{self._counter}"
        self._taken.add(name)
        return name

    def const(self, array: Any, dt: DType | None = None, base: str = "const") -> str:
        """A new initializer holding `array`; returns its name."""
        arr = np.asarray(array)
        dt = dt if dt is not None else dtypes.from_numpy(arr.dtype)
        name = self.fresh(base)
        self.initializers.append(tensor_from_array(arr, dt, name))
        return name

    def emit(
        self,
        op_type: str,
        inputs: Sequence[str | None],
        outputs: int | Sequence[str] = 1,
        *,
        domain: str = "",
        name: str | None = None,
        **attrs: Any,
    ) -> list[str]:
        """Append one ONNX node; returns its output names (fresh ones when `outputs` is a count)."""
        from onnx import helper

        if isinstance(outputs, int):
            outs = [self.fresh(f"{name or op_type}_out") for _ in range(outputs)]
        else:
            outs = list(outputs)
        ins = list(inputs)
        while ins and ins[-1] is None:
            ins.pop()
        if domain and domain not in self.domains:
            self.domains[domain] = 1
        node = helper.make_node(
            op_type, ["" if i is None else i for i in ins], outs, name=name, domain=domain or None,
            **{k: v for k, v in attrs.items() if v is not None},
        )
        self.nodes.append(node)
        return outs

    def has_op(self, op_type: str) -> bool:
        return onnx_schema(op_type, self.opset) is not None

    def sub_name(self, node: Node, part: str) -> str | None:
        """A name for a helper node of a decomposition, derived from the requant node's."""
        return f"{node.name}/{part}" if node.name else None


Emitter = Callable[[EmitContext, Node, list, list], None]


# ----------------------------------------------------------------------------- attributes

# Attributes whose requant value is a dtype (name or DType) and ONNX's an element-type code.
_DTYPE_ATTRS = {"to", "dtype", "output_dtype"}

# Attributes the registry has that older opsets lack and whose meaning those opsets
# already have (Split's output count; saturation only matters for fp8, which arrives with
# the opset that added `saturate`).
_DROPPABLE_ATTRS = {("Split", "num_outputs"), ("Cast", "saturate"), ("CastLike", "saturate")}


def _onnx_attr(op: str, name: str, value: Any, spec: Any) -> Any:
    """`value` converted to ONNX's attribute type `spec.type`, as an AttributeProto."""
    from onnx import AttributeProto, helper

    kind = spec.type
    if kind == AttributeProto.INT:
        if name in _DTYPE_ATTRS and isinstance(value, (str, DType)):
            value = dtype_to_onnx(dtypes.dtype(value))
        value = int(value)
    elif kind == AttributeProto.FLOAT:
        value = float(value)
    elif kind == AttributeProto.STRING:
        value = str(value)
    elif kind == AttributeProto.INTS:
        value = [int(v) for v in np.asarray(value).reshape(-1).tolist()]
    elif kind == AttributeProto.FLOATS:
        value = [float(v) for v in np.asarray(value, dtype=np.float64).reshape(-1).tolist()]
    elif kind == AttributeProto.STRINGS:
        value = [str(v) for v in value]
    elif kind == AttributeProto.TENSOR:
        arr = np.asarray(value)
        return helper.make_attribute(name, tensor_from_array(arr, dtypes.from_numpy(arr.dtype)))
    else:
        raise RequantError(f"{op}: attribute {name} of ONNX kind {kind} cannot be written")
    return helper.make_attribute(name, value, attr_type=kind)


def standard(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """Emit a standard op as the same ONNX op, adapting attributes to the target opset."""
    from onnx import helper

    schema = onnx_schema(node.op, ctx.opset)
    if schema is None:
        first = _first_opset(node.op)
        raise UnsupportedOpError(
            f"{node.label}: ONNX has {node.op} only from opset {first}; target opset is {ctx.opset} "
            f"(use opset >= {first}, or opset=None for the newest the runtime supports)"
        )
    onnx_inputs = [p.name for p in schema.inputs]
    variadic = bool(schema.inputs) and schema.inputs[-1].option == type(schema).FormalParameterOption.Variadic
    attributes = []
    req_inputs = [p.name for p in _requant_schema(node.op).inputs]
    keep: list[str | None] = []
    for i, name in enumerate(ins):
        pname = req_inputs[i] if i < len(req_inputs) else None
        if pname is not None and pname not in onnx_inputs and pname in schema.attributes and not variadic:
            # an input that this older opset takes as an attribute (axes, split, ...)
            if name is None:
                continue
            v = node.inputs[i]
            if v is None or v.const is None:
                raise UnsupportedOpError(
                    f"{node.label}: opset {ctx.opset} takes {pname} as an attribute, so it must be a "
                    f"constant here; use opset >= {_input_since(node.op, pname)} for a computed {pname}"
                )
            attributes.append(_onnx_attr(node.op, pname, v.const, schema.attributes[pname]))
            continue
        if not variadic and len(keep) >= len(onnx_inputs) and name is not None:
            raise UnsupportedOpError(f"{node.label}: opset {ctx.opset}'s {node.op} has no input {pname or i}")
        keep.append(name)
    for key, value in node.attrs.items():
        if value is None:
            continue
        spec = schema.attributes.get(key)
        if spec is None:
            if (node.op, key) in _DROPPABLE_ATTRS:
                continue
            raise UnsupportedOpError(
                f"{node.label}: attribute {key} does not exist in opset {ctx.opset}'s {node.op}"
            )
        attributes.append(_onnx_attr(node.op, key, value, spec))
    while keep and keep[-1] is None:
        keep.pop()
    proto = helper.make_node(node.op, ["" if i is None else i for i in keep], outs, name=node.name or None)
    proto.attribute.extend(attributes)
    ctx.nodes.append(proto)


def _requant_schema(op: str):
    from requant.ir.registry import get_schema

    return get_schema(op)


def _first_opset(op: str) -> int:
    import onnx.defs

    try:
        return min(s.since_version for s in onnx.defs.get_all_schemas_with_history() if s.name == op and s.domain == "")
    except ValueError:
        return -1


def _input_since(op: str, input_name: str) -> int:
    import onnx.defs

    versions = [
        s.since_version
        for s in onnx.defs.get_all_schemas_with_history()
        if s.name == op and s.domain == "" and input_name in [p.name for p in s.inputs]
    ]
    return min(versions) if versions else -1


# ----------------------------------------------------------------------------- decompositions


def _native_or(since: int, fallback: Emitter, native: Emitter | None = None) -> Emitter:
    """Emit the op natively (`native`, default: as the same ONNX op) when the target
    opset has it, else `fallback`."""
    direct = native or standard

    def emit(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
        if ctx.opset >= since:
            direct(ctx, node, ins, outs)
        else:
            fallback(ctx, node, ins, outs)

    emit.__name__ = f"native_from_{since}_or_{fallback.__name__}"
    emit.__doc__ = f"native from opset {since}; before it: {fallback.__doc__ or fallback.__name__}"
    return emit


def _scalar(ctx: EmitContext, value: float, dt: DType, base: str) -> str:
    return ctx.const(np.array(value, dtype=dt.np), dt, base)


def _gelu_decomposed(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """0.5 x (1 + erf(x / sqrt 2)), or the tanh form for approximate="tanh"."""
    x = ins[0]
    dt = node.inputs[0].dtype
    n = lambda p: ctx.sub_name(node, p)  # noqa: E731
    half = _scalar(ctx, 0.5, dt, "gelu_half")
    one = _scalar(ctx, 1.0, dt, "gelu_one")
    if node.attrs.get("approximate", "none") == "tanh":
        c = _scalar(ctx, float(np.sqrt(2.0 / np.pi)), dt, "gelu_c")
        k = _scalar(ctx, 0.044715, dt, "gelu_k")
        (x3,) = ctx.emit("Mul", [x, x], name=n("sq"))
        (x3,) = ctx.emit("Mul", [x3, x], name=n("cube"))
        (t,) = ctx.emit("Mul", [x3, k], name=n("k"))
        (t,) = ctx.emit("Add", [x, t], name=n("inner"))
        (t,) = ctx.emit("Mul", [t, c], name=n("scale"))
        (t,) = ctx.emit("Tanh", [t], name=n("tanh"))
    else:
        r2 = _scalar(ctx, float(np.sqrt(2.0)), dt, "gelu_sqrt2")
        (t,) = ctx.emit("Div", [x, r2], name=n("div"))
        (t,) = ctx.emit("Erf", [t], name=n("erf"))
    (t,) = ctx.emit("Add", [t, one], name=n("add1"))
    (t,) = ctx.emit("Mul", [x, t], name=n("mul"))
    ctx.emit("Mul", [t, half], outs, name=node.name or None)


def _swish_decomposed(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """x * Sigmoid(alpha * x)."""
    x = ins[0]
    alpha = float(node.attrs.get("alpha", 1.0))
    s = x
    if alpha != 1.0:
        (s,) = ctx.emit("Mul", [x, _scalar(ctx, alpha, node.inputs[0].dtype, "swish_alpha")], name=ctx.sub_name(node, "alpha"))
    (s,) = ctx.emit("Sigmoid", [s], name=ctx.sub_name(node, "sigmoid"))
    ctx.emit("Mul", [x, s], outs, name=node.name or None)


def _reduce_mean_last_axes(ctx: EmitContext, node: Node, x: str, axes: list[int], tag: str) -> str:
    if ctx.opset >= 18:
        (m,) = ctx.emit("ReduceMean", [x, ctx.const(np.array(axes, np.int64), dtypes.int64, f"{tag}_axes")],
                        keepdims=1, name=ctx.sub_name(node, tag))
    else:
        (m,) = ctx.emit("ReduceMean", [x], axes=axes, keepdims=1, name=ctx.sub_name(node, tag))
    return m


def _norm_axes(node: Node) -> tuple[list[int], DType, DType]:
    x = node.inputs[0]
    rank = x.type.rank
    if rank is None:
        raise UnsupportedOpError(f"{node.label}: decomposing it needs the input's rank")
    axis = int(node.attrs.get("axis", -1)) % max(rank, 1)
    stash = dtypes.float64 if int(node.attrs.get("stash_type", 1)) == 11 else dtypes.float32
    return list(range(axis, rank)), x.dtype, stash


def _rms_norm_decomposed(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """x / sqrt(mean(x^2) + eps) * scale, statistics in the stash type (ONNX's function body)."""
    axes, dt, stash = _norm_axes(node)
    x = ins[0]
    n = lambda p: ctx.sub_name(node, p)  # noqa: E731
    xs = x if stash == dt else ctx.emit("Cast", [x], to=dtype_to_onnx(stash), name=n("cast_in"))[0]
    (sq,) = ctx.emit("Mul", [xs, xs], name=n("square"))
    ms = _reduce_mean_last_axes(ctx, node, sq, axes, "mean_square")
    eps = _scalar(ctx, float(node.attrs.get("epsilon", 1e-5)), stash, "rms_eps")
    (t,) = ctx.emit("Add", [ms, eps], name=n("add_eps"))
    (t,) = ctx.emit("Sqrt", [t], name=n("sqrt"))
    (y,) = ctx.emit("Div", [xs, t], name=n("normalize"))
    if stash != dt:
        (y,) = ctx.emit("Cast", [y], to=dtype_to_onnx(dt), name=n("cast_out"))
    ctx.emit("Mul", [y, ins[1]], outs, name=node.name or None)


def _layer_norm_decomposed(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """(x - mean) / sqrt(var + eps) * scale + bias (opsets before 17)."""
    if len(outs) > 1:
        raise UnsupportedOpError(f"{node.label}: Mean/InvStdDev outputs need opset >= 17")
    axes, dt, stash = _norm_axes(node)
    x = ins[0]
    n = lambda p: ctx.sub_name(node, p)  # noqa: E731
    xs = x if stash == dt else ctx.emit("Cast", [x], to=dtype_to_onnx(stash), name=n("cast_in"))[0]
    mean = _reduce_mean_last_axes(ctx, node, xs, axes, "mean")
    (d,) = ctx.emit("Sub", [xs, mean], name=n("center"))
    (sq,) = ctx.emit("Mul", [d, d], name=n("square"))
    var = _reduce_mean_last_axes(ctx, node, sq, axes, "var")
    eps = _scalar(ctx, float(node.attrs.get("epsilon", 1e-5)), stash, "ln_eps")
    (t,) = ctx.emit("Add", [var, eps], name=n("add_eps"))
    (t,) = ctx.emit("Sqrt", [t], name=n("sqrt"))
    (y,) = ctx.emit("Div", [d, t], name=n("normalize"))
    if stash != dt:
        (y,) = ctx.emit("Cast", [y], to=dtype_to_onnx(dt), name=n("cast_out"))
    if len(ins) > 2 and ins[2] is not None:
        (y,) = ctx.emit("Mul", [y, ins[1]], name=n("scale"))
        ctx.emit("Add", [y, ins[2]], outs, name=node.name or None)
    else:
        ctx.emit("Mul", [y, ins[1]], outs, name=node.name or None)


def _bitshift(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """ONNX BitShift takes unsigned integers only; requant also shifts signed ones:
    LEFT wraps (shift the same bits as unsigned), RIGHT is arithmetic
    (asr(x, s) = ((x + 2^(b-1)) as unsigned >> s) - 2^(b-1-s))."""
    dt = node.inputs[0].dtype
    if dt.kind == "uint":
        standard(ctx, node, ins, outs)
        return
    if dt.kind != "int" or dt.bits not in (8, 16, 32, 64):
        raise UnsupportedOpError(f"{node.label}: BitShift on {dt} has no ONNX form")
    udt = dtypes.dtype(f"u{dt.bits}")
    n = lambda p: ctx.sub_name(node, p)  # noqa: E731
    (s,) = ctx.emit("Cast", [ins[1]], to=dtype_to_onnx(udt), name=n("shift_u"))
    direction = node.attrs.get("direction", "LEFT")
    if direction == "LEFT":
        (xu,) = ctx.emit("Cast", [ins[0]], to=dtype_to_onnx(udt), name=n("x_u"))
        (y,) = ctx.emit("BitShift", [xu, s], direction="LEFT", name=n("shift"))
        ctx.emit("Cast", [y], outs, to=dtype_to_onnx(dt), name=node.name or None)
        return
    # RIGHT: bias into the unsigned range, shift logically, remove the shifted bias.
    bias_u = ctx.const(np.array(1 << (dt.bits - 1), dtype=udt.np), udt, "asr_bias")
    (xu,) = ctx.emit("Cast", [ins[0]], to=dtype_to_onnx(udt), name=n("x_u"))
    (xb,) = ctx.emit("Add", [xu, bias_u], name=n("bias"))
    (y,) = ctx.emit("BitShift", [xb, s], direction="RIGHT", name=n("shift"))
    (bias_s,) = ctx.emit("BitShift", [bias_u, s], direction="RIGHT", name=n("bias_shift"))
    (d,) = ctx.emit("Sub", [y, bias_s], name=n("unbias"))
    ctx.emit("Cast", [d], outs, to=dtype_to_onnx(dt), name=node.name or None)


def _mish_decomposed(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """x * tanh(softplus(x))."""
    (t,) = ctx.emit("Softplus", [ins[0]], name=ctx.sub_name(node, "softplus"))
    (t,) = ctx.emit("Tanh", [t], name=ctx.sub_name(node, "tanh"))
    ctx.emit("Mul", [ins[0], t], outs, name=node.name or None)


def _group_norm_before_21(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """opsets 18-20 define per-group scale/bias, a different op: not emitted."""
    raise UnsupportedOpError(
        f"{node.label}: GroupNormalization with per-channel scale/bias exists from opset 21; "
        f"target opset is {ctx.opset} (use opset >= 21 or opset=None)"
    )


def _shape(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """Shape's start/end exist from opset 15; before it, Shape then Slice."""
    start, end = node.attrs.get("start"), node.attrs.get("end")
    if ctx.opset >= 15:
        standard(ctx, node, ins, outs)
        return
    if not start and end is None:
        ctx.emit("Shape", ins, outs, name=node.name or None)
        return
    (full,) = ctx.emit("Shape", ins, name=ctx.sub_name(node, "shape"))
    i64 = lambda v, tag: ctx.const(np.array([v], np.int64), dtypes.int64, tag)  # noqa: E731
    stop = np.iinfo(np.int64).max if end is None else int(end)
    ctx.emit("Slice", [full, i64(int(start or 0), "shape_start"), i64(stop, "shape_end"), i64(0, "shape_axis")],
             outs, name=node.name or None)


def _float_bound(value: int, dt: DType, toward: float = 0.0) -> np.ndarray | None:
    """The float of dtype `dt` nearest to integer `value` that is not farther from zero
    (so a Clip to it stays inside the integer range); None when every finite value of
    `dt` already is (f16 against i32, ...)."""
    np_t = dt.np
    if abs(value) > float(np.finfo(np.float32 if dt == dtypes.bfloat16 else np_t).max):
        return None
    f = np.array([value], dtype=np.float64).astype(np_t)
    if abs(float(f[0])) > abs(value):
        # one step toward zero: IEEE magnitudes order like their bit patterns
        uint = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[f.itemsize]
        f = (f.view(uint) - uint(1)).view(np_t)
    return f.reshape(())


def _cast(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """Cast with requant's semantics where ONNX leaves them open: float -> integer
    truncates and saturates (a Clip first; ONNX says "undefined if out of range" and
    ONNX Runtime rounds, not truncates, into int4/uint4, so those go through i8/u8).
    A `FloatFormat` target has no ONNX element type: refused."""
    from requant.ir.dtypes import FloatFormat

    src = node.inputs[0].dtype
    dst = dtypes.dtype(node.attrs["to"])
    if isinstance(dst, FloatFormat):
        raise UnsupportedOpError(
            f"{node.label}: Cast to the parametric float {dst} has no ONNX form (ONNX Runtime would "
            f"keep plain float32); quantize with a standard format (fp8_e4m3, fp4_e2m1, int4) instead"
        )
    if not (src.is_float and dst.is_integer):
        standard(ctx, node, ins, outs)
        return
    n = lambda p: ctx.sub_name(node, p)  # noqa: E731
    lo, hi = dst.int_range
    clip_dt = dtypes.float32 if isinstance(src, FloatFormat) else src
    lo_f, hi_f = _float_bound(lo, clip_dt, 0.0), _float_bound(hi, clip_dt, 0.0)
    x = ins[0]
    if lo_f is not None or hi_f is not None:
        bounds = [None if b is None else ctx.const(b, clip_dt, tag) for b, tag in ((lo_f, "cast_lo"), (hi_f, "cast_hi"))]
        (x,) = ctx.emit("Clip", [x, *bounds], name=n("saturate"))
    if dst in (dtypes.int4, dtypes.uint4):
        wide = dtypes.int8 if dst == dtypes.int4 else dtypes.uint8
        (x,) = ctx.emit("Cast", [x], to=dtype_to_onnx(wide), name=n("truncate"))
    ctx.emit("Cast", [x], outs, to=dtype_to_onnx(dst), name=node.name or None)


def _sdpa_decomposed(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """softmax(Q K^T * scale + mask) V from MatMul/Softmax (opsets before 23); K/V heads
    repeated for grouped-query attention (needs static head counts); rows with every
    key masked give 0, as requant's op does."""
    q_t, k_t = node.inputs[0].type, node.inputs[1].type
    dt = q_t.dtype
    n = lambda p: ctx.sub_name(node, p)  # noqa: E731
    i64 = lambda v, tag: ctx.const(np.asarray(v, np.int64), dtypes.int64, tag)  # noqa: E731
    q, k, v = ins[0], ins[1], ins[2]
    heads = None if q_t.shape is None else q_t.shape[1]
    kv_heads = None if k_t.shape is None else k_t.shape[1]
    if heads != kv_heads:
        if not (isinstance(heads, int) and isinstance(kv_heads, int)):
            raise UnsupportedOpError(
                f"{node.label}: grouped-query attention before opset 23 needs static head counts "
                f"(Q has {heads}, K/V {kv_heads}); use opset >= 23"
            )
        group = heads // kv_heads
        repeated = []
        for x, tag in ((k, "k"), (v, "v")):
            (shape,) = ctx.emit("Shape", [x], name=n(f"{tag}_shape"))
            (lead,) = ctx.emit("Slice", [shape, i64([0], "sdpa_0"), i64([1], "sdpa_1")], name=n(f"{tag}_batch"))
            (tail,) = ctx.emit("Slice", [shape, i64([2], "sdpa_2"), i64([4], "sdpa_4")], name=n(f"{tag}_tail"))
            (target,) = ctx.emit("Concat", [lead, i64([heads], "sdpa_heads"), tail], axis=0, name=n(f"{tag}_target"))
            (x5,) = ctx.emit("Unsqueeze", [x, i64([2], "sdpa_axis2")], name=n(f"{tag}_unsqueeze"))
            (x5,) = ctx.emit("Expand", [x5, i64([1, 1, group, 1, 1], "sdpa_group")], name=n(f"{tag}_expand"))
            (xr,) = ctx.emit("Reshape", [x5, target], name=n(f"{tag}_repeat"))
            repeated.append(xr)
        k, v = repeated
    (kt,) = ctx.emit("Transpose", [k], perm=[0, 1, 3, 2], name=n("k_transpose"))
    (scores,) = ctx.emit("MatMul", [q, kt], name=n("scores"))
    scale = float(node.attrs.get("scale", 0.0))
    if scale != 0.0:
        factor = _scalar(ctx, scale, dt, "sdpa_scale")
    elif q_t.shape is not None and isinstance(q_t.shape[3], int):
        factor = _scalar(ctx, 1.0 / float(np.sqrt(q_t.shape[3])), dt, "sdpa_scale")
    else:
        (shape,) = ctx.emit("Shape", [q], name=n("q_shape"))
        (d,) = ctx.emit("Slice", [shape, i64([3], "sdpa_3"), i64([4], "sdpa_4")], name=n("head_dim"))
        (d,) = ctx.emit("Cast", [d], to=dtype_to_onnx(dt), name=n("head_dim_float"))
        (d,) = ctx.emit("Sqrt", [d], name=n("sqrt_head_dim"))
        (factor,) = ctx.emit("Reciprocal", [d], name=n("scale"))
    (scores,) = ctx.emit("Mul", [scores, factor], name=n("scaled"))
    neg_inf = _scalar(ctx, -np.inf, dt, "sdpa_neg_inf")
    if int(node.attrs.get("is_causal", 0)):
        s_len = None if q_t.shape is None else q_t.shape[2]
        t_len = None if k_t.shape is None else k_t.shape[2]
        if isinstance(s_len, int) and isinstance(t_len, int):
            causal = ctx.const(np.tril(np.ones((s_len, t_len), dtype=bool)), dtypes.bool_, "sdpa_causal")
        else:
            zero, one = i64(0, "sdpa_zero"), i64(1, "sdpa_one")
            lens = []
            for x, tag in ((ins[0], "s"), (ins[1], "t")):
                (shape,) = ctx.emit("Shape", [x], name=n(f"{tag}_len_shape"))
                (length,) = ctx.emit("Gather", [shape, i64(2, "sdpa_axis")], axis=0, name=n(f"{tag}_len"))
                lens.append(ctx.emit("Range", [zero, length, one], name=n(f"{tag}_range"))[0])
            (rows,) = ctx.emit("Unsqueeze", [lens[0], i64([1], "sdpa_1")], name=n("rows"))
            (cols,) = ctx.emit("Unsqueeze", [lens[1], i64([0], "sdpa_0")], name=n("cols"))
            (causal,) = ctx.emit("LessOrEqual", [cols, rows], name=n("causal"))
        (scores,) = ctx.emit("Where", [causal, scores, neg_inf], name=n("causal_mask"))
    mask = ins[3] if len(ins) > 3 else None
    if mask is not None:
        if node.inputs[3].dtype == dtypes.bool_:
            # The bool mask becomes an additive one on its own (small, broadcast) shape:
            # ORT's broadcasting Add over the scores is faster than a broadcasting Where,
            # and scores + 0 / scores + -inf give exactly what selecting would.
            zero = _scalar(ctx, 0.0, dt, "sdpa_zero_f")
            (bias,) = ctx.emit("Where", [mask, zero, neg_inf], name=n("mask_bias"))
            (scores,) = ctx.emit("Add", [scores, bias], name=n("mask"))
        else:
            (scores,) = ctx.emit("Add", [scores, mask], name=n("bias"))
    (probs,) = ctx.emit("Softmax", [scores], axis=-1, name=n("softmax"))
    if mask is not None:
        # a row with every key masked is NaN after Softmax; requant's op gives 0
        (nan,) = ctx.emit("IsNaN", [probs], name=n("masked_rows"))
        (probs,) = ctx.emit("Where", [nan, _scalar(ctx, 0.0, dt, "sdpa_zero_f"), probs], name=n("zero_rows"))
    ctx.emit("MatMul", [probs, v], outs, name=node.name or None)


def _constant(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """A Constant node keeps its tensor in the `value` attribute."""
    from onnx import helper

    value = node.attrs.get("value")
    if value is None:
        raise UnsupportedOpError(f"{node.label}: only Constant(value=array) is supported")
    dt = node.outputs[0].dtype
    proto = helper.make_node("Constant", [], outs, name=node.name or None,
                             value=tensor_from_array(np.asarray(value), dt))
    ctx.nodes.append(proto)


# ----------------------------------------------------------------------------- the table

# Registered ops whose semantics are ONNX's modern ones: emitted as they are. An op joins
# this list only once its registry definition has been checked against ONNX's (an op
# with requant-specific extensions needs its own emitter below).
_STANDARD_OPS = (
    # elementwise, two or more operands
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Equal", "Greater", "GreaterOrEqual", "Less",
    "LessOrEqual", "And", "Or", "Xor", "Where", "Max", "Min", "Sum", "Mean",
    # one operand
    "Neg", "Abs", "Sign", "Reciprocal", "Exp", "Log", "Sqrt", "Erf", "Tanh", "Sin", "Cos", "Tan",
    "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Floor", "Ceil", "Round",
    "IsNaN", "IsInf", "Not", "Identity",
    # activations
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "ThresholdedRelu", "Sigmoid",
    "HardSigmoid", "HardSwish", "Softplus", "Softsign", "Clip", "Softmax", "LogSoftmax",
    # linear algebra
    "MatMul", "Gemm", "Einsum",
    # normalization
    "BatchNormalization", "InstanceNormalization",
    # reductions
    "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp", "ArgMax", "ArgMin", "CumSum", "TopK",
    # shapes and data movement
    "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Concat", "Split", "Slice",
    "Gather", "GatherElements", "GatherND", "ScatterElements", "ScatterND", "Expand", "Tile",
    "Pad", "Size", "ConstantOfShape", "Range", "CastLike", "Trilu",
    # convolution and pooling
    "Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
    # misc
    "Dropout",
)

LOWERINGS: dict[str, Emitter | Unsupported] = {op: standard for op in _STANDARD_OPS}
LOWERINGS.update({
    "BitShift": _bitshift,
    "Constant": _constant,
    "Cast": _cast,
    "Shape": _shape,
    "ScaledDotProductAttention": _sdpa_decomposed,
    "Gelu": _native_or(20, _gelu_decomposed),
    "Swish": _native_or(24, _swish_decomposed),
    "RMSNormalization": _native_or(23, _rms_norm_decomposed),
    "LayerNormalization": _native_or(17, _layer_norm_decomposed),
    "Mish": _native_or(18, _mish_decomposed),
    "GroupNormalization": _native_or(21, _group_norm_before_21),
})


def lowering_for(op: str) -> Emitter:
    """The emitter of `op`; raises `UnsupportedOpError` with the table's reason."""
    return entry_for(LOWERINGS, op, table_name="ONNX lowering table (backends/onnx/lowering.py)", cannot="cannot be exported to ONNX")


# ----------------------------------------------------------------------------- quantization ops
#
# QuantizeLinear / DequantizeLinear / DynamicQuantizeLinear / MatMulInteger / QLinearMatMul
# are standard ONNX. com.microsoft.MatMulIntegerToFloat, DynamicQuantizeMatMul, MatMulNBits and
# QAttention are ONNX Runtime contrib ops, emitted in their domain (the exporter imports each
# domain an emitter uses, version 1). FakeQuantize becomes QuantizeLinear + DequantizeLinear
# where ONNX Runtime has kernels for the format (int8/uint8/int4/uint4, fp8) and an exact
# float emulation from basic ops otherwise (fp4_e2m1, FloatFormat, MXFP4, NVFP4): the grid
# rounding runs in float64 exactly as the interpreter's (`round_to_float_format`), scales
# are powers of two taken from tables (no Pow), so ORT's results are bit-identical.
# Known ORT difference: QuantizeLinear to fp8 with saturate=0 gives +-448 for e4m3
# |x/scale| in [480, 496) and NaN for e5m2 |x/scale| in [61440, 65536), where ONNX's
# reference and requant give NaN and +-inf (FakeQuantize always saturates).

_QDQ_FP8 = (dtypes.fp8_e4m3, dtypes.fp8_e5m2)


def _qdq_min_opset(node: Node) -> tuple[int, str]:
    """Oldest default-domain opset whose Q/DQ expresses `node`, and why."""
    quantize = node.op == "QuantizeLinear"
    code = node.outputs[0].dtype if quantize else node.inputs[0].dtype
    needs = [(13, "")]
    if code in _QDQ_FP8:
        needs.append((19, f"{code} codes"))
    if code in (dtypes.int4, dtypes.uint4, dtypes.int16, dtypes.uint16):
        needs.append((21, f"{code} codes"))
    if code == dtypes.fp4_e2m1:
        needs.append((23, "fp4_e2m1 codes"))
    if int(node.attrs.get("block_size", 0) or 0):
        needs.append((21, "block_size"))
    if node.attrs.get("output_dtype") is not None:
        needs.append((21 if quantize else 23, "output_dtype"))
    if quantize and node.inputs[0].dtype != dtypes.float32:
        needs.append((19, f"{node.inputs[0].dtype} input"))
    return max(needs)


def _qdq(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """Q/DQ as the same ONNX op once the opset has what the node uses (`saturate` is
    dropped before opset 19, where only fp8 gives it a meaning and fp8 does not exist)."""
    need, why = _qdq_min_opset(node)
    if ctx.opset < need:
        raise UnsupportedOpError(f"{node.label}: ONNX's {node.op} has {why} only from opset {need}; "
                                 f"target opset is {ctx.opset} (use opset >= {need} or opset=None)")
    if ctx.opset < 19 and "saturate" in node.attrs:
        attrs = {k: v for k, v in node.attrs.items() if k != "saturate" and v is not None}
        ctx.emit(node.op, ins, outs, name=node.name or None, **attrs)
        return
    standard(ctx, node, ins, outs)


def _contrib(ctx: EmitContext, node: Node, ins: list, outs: list, floats: tuple[str, ...] = ()) -> None:
    """An ONNX Runtime contrib op: the same op in its domain (com.microsoft), its
    attributes ONNX ints except those named in `floats`; attributes left at None stay
    unset."""
    schema = _requant_schema(node.op)
    attrs = {k: (float(v) if k in floats else int(v)) for k, v in node.attrs.items() if v is not None}
    ctx.emit(schema.name, ins, outs, domain=schema.domain, name=node.name or None, **attrs)


def _qattention(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """com.microsoft QAttention as it is: num_heads / unidirectional ints, scale and
    mask_filter_value floats."""
    _contrib(ctx, node, ins, outs, floats=("scale", "mask_filter_value"))


def _onnx_type(dt: DType) -> int:
    return dtype_to_onnx(dt)


def _fq_reduce_max(ctx: EmitContext, x: str, axes: list[int] | None, keepdims: int, name: str | None) -> str:
    if axes is None:
        return ctx.emit("ReduceMax", [x], keepdims=keepdims, name=name)[0]
    if ctx.opset >= 18:
        return ctx.emit("ReduceMax", [x, ctx.const(np.array(axes, np.int64), dtypes.int64, "fq_axes")],
                        keepdims=keepdims, name=name)[0]
    return ctx.emit("ReduceMax", [x], axes=axes, keepdims=keepdims, name=name)[0]


def _fq_grid_round(ctx: EmitContext, node: Node, v: str, fmt: Any, tag: str) -> str:
    """`round_to_float_format(v, fmt)` from ONNX ops in float64; returns the float64
    grid values (x-space). NaN -> +max, saturating at +-max, half to even."""
    from requant.ir.dtypes import FloatFormat

    n = lambda p: ctx.sub_name(node, f"{tag}_{p}")  # noqa: E731
    f64 = dtypes.float64
    if not isinstance(fmt, FloatFormat):
        fmt = FloatFormat(2, 1, 1.0)  # fp4_e2m1's grid
    e_bits, m_bits, bias = fmt.exp_bits, fmt.man_bits, float(fmt.bias)
    emax = 2**e_bits - 1
    top = (2.0 - 2.0**-m_bits) * 2.0**emax
    (y,) = ctx.emit("Cast", [v], to=_onnx_type(f64), name=n("f64"))
    if bias != 0.0:
        (y,) = ctx.emit("Mul", [y, _scalar(ctx, 2.0**bias, f64, "fq_bias")], name=n("bias"))
    (nan,) = ctx.emit("IsNaN", [y], name=n("isnan"))
    (y,) = ctx.emit("Where", [nan, _scalar(ctx, np.inf, f64, "fq_inf"), y], name=n("nan_to_inf"))
    (a,) = ctx.emit("Abs", [y], name=n("abs"))
    if emax >= 2:
        thresholds = np.exp2(np.arange(2, emax + 1, dtype=np.float64))
        steps = np.exp2(np.arange(1, emax + 1, dtype=np.float64) - m_bits)
        (a1,) = ctx.emit("Unsqueeze", [a, ctx.const(np.array([-1], np.int64), dtypes.int64, "fq_last")],
                         name=n("unsqueeze"))
        (ge,) = ctx.emit("GreaterOrEqual", [a1, ctx.const(thresholds, f64, "fq_binades")], name=n("binades"))
        (cnt,) = ctx.emit("Cast", [ge], to=_onnx_type(dtypes.int64), name=n("binade_i64"))
        (cnt,) = ctx.emit("ReduceSum", [cnt, ctx.const(np.array([-1], np.int64), dtypes.int64, "fq_last")],
                          keepdims=0, name=n("binade"))
        (step,) = ctx.emit("Gather", [ctx.const(steps, f64, "fq_steps"), cnt], axis=0, name=n("step"))
    else:
        step = _scalar(ctx, 2.0 ** (1 - m_bits), f64, "fq_step")
    (t,) = ctx.emit("Div", [y, step], name=n("div_step"))
    (t,) = ctx.emit("Round", [t], name=n("round"))
    (t,) = ctx.emit("Mul", [t, step], name=n("mul_step"))
    (t,) = ctx.emit("Clip", [t, _scalar(ctx, -top, f64, "fq_min"), _scalar(ctx, top, f64, "fq_max")],
                    name=n("saturate"))
    if bias != 0.0:
        (t,) = ctx.emit("Div", [t, _scalar(ctx, 2.0**bias, f64, "fq_bias")], name=n("unbias"))
    return t


def _fq_static(node: Node, what: str) -> tuple[int, tuple]:
    shape = node.inputs[0].type.shape
    if shape is None:
        raise UnsupportedOpError(f"{node.label}: exporting {what} to ONNX needs the input's rank")
    return len(shape), tuple(shape)


def _fq_broadcast_scale(ctx: EmitContext, node: Node, scheme: Any, scale: str) -> str:
    """The scale made elementwise-broadcastable to X (tensor: a scalar; channel: [C, 1..];
    group: gathered to the axis length)."""
    i64 = lambda v, tag: ctx.const(np.asarray(v, np.int64), dtypes.int64, tag)  # noqa: E731
    if scheme.granularity == "tensor":
        return ctx.emit("Reshape", [scale, i64([], "fq_scalar")], name=ctx.sub_name(node, "scale_scalar"))[0]
    rank, shape = _fq_static(node, f"a per-{scheme.granularity} scale")
    axis = scheme.axis % rank
    if scheme.granularity == "channel":
        return ctx.emit("Reshape", [scale, i64([-1] + [1] * (rank - 1 - axis), "fq_channel")],
                        name=ctx.sub_name(node, "scale_channel"))[0]
    d = shape[axis]
    if not isinstance(d, int):
        raise UnsupportedOpError(f"{node.label}: exporting a per-group scale needs a static dim on axis {axis}")
    idx = i64(np.arange(d) // scheme.group_size, "fq_group_index")
    return ctx.emit("Gather", [scale, idx], axis=axis, name=ctx.sub_name(node, "scale_group"))[0]


def _fq_qdq(ctx: EmitContext, node: Node, scheme: Any, ins: list, outs: list) -> None:
    """Integer and fp8 formats: ONNX QuantizeLinear + DequantizeLinear."""
    dt = scheme.dtype
    need = 13
    if dt in _QDQ_FP8:
        need = 19
    if dt in (dtypes.int4, dtypes.uint4) or scheme.granularity == "group":
        need = 21
    if ctx.opset < need:
        raise UnsupportedOpError(f"{node.label}: {scheme.describe()} needs ONNX QuantizeLinear of opset >= {need}; "
                                 f"target opset is {ctx.opset}")
    attrs: dict[str, Any] = {}
    if scheme.granularity != "tensor":
        attrs["axis"] = int(scheme.axis)
    if scheme.granularity == "group":
        attrs["block_size"] = int(scheme.group_size)
    x, scale = ins[0], ins[1]
    zp = ins[2] if len(ins) > 2 else None
    q_attrs = dict(attrs)
    if zp is None:
        if ctx.opset >= 21:
            q_attrs["output_dtype"] = _onnx_type(dt)
        else:
            s_shape = node.inputs[1].type.shape
            if s_shape is None or not all(isinstance(d, int) for d in s_shape):
                raise UnsupportedOpError(f"{node.label}: before opset 21 a zero point is needed; give one or "
                                         f"a scale of static shape")
            zp = ctx.const(np.zeros(s_shape, dtype=dt.np), dt, "fq_zero_point")
    (q,) = ctx.emit("QuantizeLinear", [x, scale, zp], name=ctx.sub_name(node, "quantize"), **q_attrs)
    ctx.emit("DequantizeLinear", [q, scale, zp], outs, name=node.name or None, **attrs)


def _fq_to_blocks(ctx: EmitContext, node: Node, scheme: Any, x: str) -> tuple[str, Any]:
    """X with the block axis last, padded with zeros to whole blocks and reshaped to
    [..., nb, block]; returns it and a function undoing that on a result."""
    rank, shape = _fq_static(node, scheme.describe())
    if rank == 0:
        raise UnsupportedOpError(f"{node.label}: block formats need an input of rank >= 1")
    axis = scheme.axis % rank
    d = shape[axis]
    if not isinstance(d, int):
        raise UnsupportedOpError(f"{node.label}: exporting {scheme.describe()} needs a static dim on axis {axis}")
    i64 = lambda v, tag: ctx.const(np.asarray(v, np.int64), dtypes.int64, tag)  # noqa: E731
    n = lambda p: ctx.sub_name(node, p)  # noqa: E731
    bs = int(scheme.group_size)
    nb = -(-d // bs)
    perm = [i for i in range(rank) if i != axis] + [axis]
    moved = perm != list(range(rank))
    if moved:
        (x,) = ctx.emit("Transpose", [x], perm=perm, name=n("axis_last"))
    if nb * bs != d:
        (x,) = ctx.emit("Pad", [x, i64([0] * (2 * rank - 1) + [nb * bs - d], "fq_pads")], name=n("pad"))
    (xb,) = ctx.emit("Reshape", [x, i64([0] * (rank - 1) + [nb, bs], "fq_blocks")], name=n("blocks"))

    def undo(yb: str, outs: list) -> None:
        steps: list[tuple[str, list, dict]] = [("Reshape", [i64([0] * (rank - 1) + [nb * bs], "fq_unblock")], {})]
        if nb * bs != d:
            steps.append(("Slice", [i64([0], "fq_0"), i64([d], "fq_len"), i64([-1], "fq_last")], {}))
        if moved:
            steps.append(("Transpose", [], {"perm": [int(i) for i in np.argsort(perm)]}))
        y = yb
        for i, (op, extra, attrs) in enumerate(steps):
            last = i == len(steps) - 1
            (y,) = ctx.emit(op, [y, *extra], outs if last else 1, name=(node.name or None) if last else n(op.lower()),
                            **attrs)

    return xb, undo


def _fq_mx(ctx: EmitContext, node: Node, scheme: Any, ins: list, outs: list) -> None:
    """MXFP4: E8M0 scale 2^max(floor(log2 amax) - 2, -127) per block (NaN for blocks with
    NaN/inf), floor(log2) exact via Log, a table of powers of two and a +-1 correction."""
    f32, f64, i64t = dtypes.float32, dtypes.float64, dtypes.int64
    n = lambda p: ctx.sub_name(node, p)  # noqa: E731
    xb, undo = _fq_to_blocks(ctx, node, scheme, ins[0])
    (a,) = ctx.emit("Abs", [xb], name=n("abs"))
    (nan,) = ctx.emit("IsNaN", [xb], name=n("isnan"))
    (a,) = ctx.emit("Where", [nan, _scalar(ctx, np.inf, f32, "fq_inf32"), a], name=n("nan_as_inf"))
    amax = _fq_reduce_max(ctx, a, [-1], 1, n("amax"))
    (bad,) = ctx.emit("IsInf", [amax], name=n("nonfinite"))
    (am,) = ctx.emit("Where", [bad, _scalar(ctx, 1.0, f32, "fq_one32"), amax], name=n("finite_amax"))
    (am,) = ctx.emit("Max", [am, _scalar(ctx, 2.0**-126, f32, "fq_tiny")], name=n("clamp_amax"))
    (a64,) = ctx.emit("Cast", [am], to=_onnx_type(f64), name=n("amax_f64"))
    (e0,) = ctx.emit("Log", [a64], name=n("log"))
    (e0,) = ctx.emit("Mul", [e0, _scalar(ctx, 1.0 / np.log(2.0), f64, "fq_inv_ln2")], name=n("log2"))
    (e0,) = ctx.emit("Floor", [e0], name=n("floor"))
    (e0,) = ctx.emit("Clip", [e0, _scalar(ctx, -126.0, f64, "fq_emin"), _scalar(ctx, 127.0, f64, "fq_emax")],
                     name=n("clip_exp"))
    pow2 = ctx.const(np.exp2(np.arange(-127, 128, dtype=np.float64)), f64, "fq_pow2")  # 2^-127 .. 2^127
    (idx,) = ctx.emit("Add", [e0, _scalar(ctx, 127.0, f64, "fq_off")], name=n("exp_index"))
    (idx,) = ctx.emit("Cast", [idx], to=_onnx_type(i64t), name=n("exp_index_i64"))
    (p,) = ctx.emit("Gather", [pow2, idx], axis=0, name=n("pow2"))
    (over,) = ctx.emit("Greater", [p, a64], name=n("too_big"))
    (p2,) = ctx.emit("Mul", [p, _scalar(ctx, 2.0, f64, "fq_two")], name=n("pow2_next"))
    (under,) = ctx.emit("LessOrEqual", [p2, a64], name=n("too_small"))
    (over,) = ctx.emit("Cast", [over], to=_onnx_type(f64), name=n("too_big_f64"))
    (under,) = ctx.emit("Cast", [under], to=_onnx_type(f64), name=n("too_small_f64"))
    (e,) = ctx.emit("Sub", [e0, over], name=n("exp_fix_down"))
    (e,) = ctx.emit("Add", [e, under], name=n("exp_fix_up"))
    (shared,) = ctx.emit("Sub", [e, _scalar(ctx, 2.0, f64, "fq_two")], name=n("shared_exp"))
    (shared,) = ctx.emit("Max", [shared, _scalar(ctx, -127.0, f64, "fq_e8m0_min")], name=n("shared_clamp"))
    (idx,) = ctx.emit("Add", [shared, _scalar(ctx, 127.0, f64, "fq_off")], name=n("scale_index"))
    (idx,) = ctx.emit("Cast", [idx], to=_onnx_type(i64t), name=n("scale_index_i64"))
    (scale,) = ctx.emit("Gather", [pow2, idx], axis=0, name=n("scale"))
    (scale,) = ctx.emit("Where", [bad, _scalar(ctx, np.nan, f64, "fq_nan"), scale], name=n("scale_nan"))
    (x64,) = ctx.emit("Cast", [xb], to=_onnx_type(f64), name=n("x_f64"))
    (v,) = ctx.emit("Div", [x64, scale], name=n("scaled"))  # exact: a power-of-two scale
    q = _fq_grid_round(ctx, node, v, dtypes.fp4_e2m1, "e2m1")
    (y,) = ctx.emit("Mul", [q, scale], name=n("dequantize"))
    (y,) = ctx.emit("Cast", [y], to=_onnx_type(f32), name=n("y_f32"))
    undo(y, outs)


def _fq_nv(ctx: EmitContext, node: Node, scheme: Any, ins: list, outs: list) -> None:
    """NVFP4: s_b = e4m3(amax_b / (6 s_t)), d = s_b * s_t, y = e2m1(x / d) * d (float32)."""
    if ctx.opset < 19:
        raise UnsupportedOpError(f"{node.label}: NVFP4 needs Cast to float8e4m3fn (opset >= 19); target {ctx.opset}")
    f32 = dtypes.float32
    n = lambda p: ctx.sub_name(node, p)  # noqa: E731

    def nan_max(x: str, axes: list[int] | None, keepdims: int, tag: str) -> str:
        (a,) = ctx.emit("Abs", [x], name=n(f"{tag}_abs"))
        m = _fq_reduce_max(ctx, a, axes, keepdims, n(f"{tag}_max"))
        (isnan,) = ctx.emit("IsNaN", [x], name=n(f"{tag}_isnan"))
        (isnan,) = ctx.emit("Cast", [isnan], to=_onnx_type(f32), name=n(f"{tag}_isnan_f32"))
        has = _fq_reduce_max(ctx, isnan, axes, keepdims, n(f"{tag}_has_nan"))
        (has,) = ctx.emit("Greater", [has, _scalar(ctx, 0.0, f32, "fq_zero32")], name=n(f"{tag}_nan_flag"))
        return ctx.emit("Where", [has, _scalar(ctx, np.nan, f32, "fq_nan32"), m], name=n(f"{tag}_amax"))[0]

    scale_in = ins[1] if len(ins) > 1 else None
    if scale_in is not None:
        (s_t,) = ctx.emit("Reshape", [scale_in, ctx.const(np.zeros(0, np.int64), dtypes.int64, "fq_scalar")],
                          name=n("tensor_scale"))
    else:
        at = nan_max(ins[0], None, 0, "tensor")
        (s_t,) = ctx.emit("Div", [at, _scalar(ctx, 448.0 * 6.0, f32, "fq_nv_div")], name=n("tensor_scale"))
        (zero,) = ctx.emit("Equal", [s_t, _scalar(ctx, 0.0, f32, "fq_zero32")], name=n("tensor_scale_zero"))
        (s_t,) = ctx.emit("Where", [zero, _scalar(ctx, 1.0, f32, "fq_one32"), s_t], name=n("tensor_scale_guard"))
    xb, undo = _fq_to_blocks(ctx, node, scheme, ins[0])
    amax = nan_max(xb, [-1], 1, "block")
    (t,) = ctx.emit("Mul", [_scalar(ctx, 6.0, f32, "fq_six"), s_t], name=n("six_s_t"))
    (r,) = ctx.emit("Div", [amax, t], name=n("ratio"))
    (s_b,) = ctx.emit("Cast", [r], to=_onnx_type(dtypes.fp8_e4m3), saturate=1, name=n("scale_e4m3"))
    (s_b,) = ctx.emit("Cast", [s_b], to=_onnx_type(f32), name=n("scale_f32"))
    (d,) = ctx.emit("Mul", [s_b, s_t], name=n("divisor"))
    (dz,) = ctx.emit("Equal", [d, _scalar(ctx, 0.0, f32, "fq_zero32")], name=n("divisor_zero"))
    (dd,) = ctx.emit("Where", [dz, _scalar(ctx, 1.0, f32, "fq_one32"), d], name=n("divisor_safe"))
    (v,) = ctx.emit("Div", [xb, dd], name=n("scaled"))
    (v,) = ctx.emit("Where", [dz, _scalar(ctx, 0.0, f32, "fq_zero32"), v], name=n("scaled_zero"))
    q = _fq_grid_round(ctx, node, v, dtypes.fp4_e2m1, "e2m1")
    (q,) = ctx.emit("Cast", [q], to=_onnx_type(f32), name=n("codes_f32"))
    (y,) = ctx.emit("Mul", [q, d], name=n("dequantize"))
    undo(y, outs)


def _fake_quantize(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """FakeQuantize: Q/DQ for int and fp8 formats, an exact emulation for the others."""
    from requant.ir.ops.quant import fake_quantize_scheme

    attrs = _requant_schema(node.op).fill_attrs(node.attrs)
    has_zp = len(ins) > 2 and ins[2] is not None
    scheme = fake_quantize_scheme(attrs, has_zp)
    if scheme.granularity == "mx":
        _fq_mx(ctx, node, scheme, ins, outs)
        return
    if scheme.granularity == "nv":
        _fq_nv(ctx, node, scheme, ins, outs)
        return
    if scheme.dtype.is_integer or scheme.dtype in _QDQ_FP8:
        _fq_qdq(ctx, node, scheme, ins, outs)
        return
    n = lambda p: ctx.sub_name(node, p)  # noqa: E731
    scale = _fq_broadcast_scale(ctx, node, scheme, ins[1])
    (v,) = ctx.emit("Div", [ins[0], scale], name=n("scaled"))
    q = _fq_grid_round(ctx, node, v, scheme.dtype, "grid")
    (q,) = ctx.emit("Cast", [q], to=_onnx_type(dtypes.float32), name=n("codes_f32"))
    ctx.emit("Mul", [q, scale], outs, name=node.name or None)


LOWERINGS.update({
    "QuantizeLinear": _qdq,
    "DequantizeLinear": _qdq,
    "DynamicQuantizeLinear": standard,
    "MatMulInteger": standard,
    "QLinearMatMul": standard,
    "com.microsoft.MatMulIntegerToFloat": _contrib,
    "com.microsoft.DynamicQuantizeMatMul": _contrib,
    "com.microsoft.MatMulNBits": _contrib,
    "com.microsoft.QAttention": _qattention,
    "FakeQuantize": _fake_quantize,
})
