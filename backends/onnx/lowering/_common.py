"""What every ONNX lowering family shares: the one table (`LOWERINGS`), the context
emitters write into (`EmitContext`), the emitter of standard ops (`standard`, with the
conversion of attribute values to ONNX's attribute types and the adaptation to older
opsets), and the helpers of decompositions (`native_or`, `scalar_const`).

An emitter is `emit(ctx, node, ins, outs)`: `ins` are the ONNX names of the node's
inputs (None for an omitted optional input), `outs` the names its outputs must have; it
appends ONNX nodes (and small initializers) to the `EmitContext`, which knows the target
opset.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from requant.backends.lowering_table import LoweringTable, Unsupported
from requant.backends.onnx.onnx_types import dtype_to_onnx, tensor_from_array
from requant.errors import RequantError, UnsupportedOpError
from requant.ir import dtypes
from requant.ir.dtypes import DType
from requant.ir.graph import Node
from requant.ir.registry import get_schema

__all__ = [
    "LOWERINGS",
    "Unsupported",
    "EmitContext",
    "Emitter",
    "standard",
    "onnx_schema",
    "native_or",
    "scalar_const",
]

logger = logging.getLogger(__name__)

LOWERINGS = LoweringTable("ONNX lowering table (backends/onnx/lowering/)", cannot="cannot be exported to ONNX")
"""{op id: emitter | Unsupported}; each family module registers its ops beside their emitters."""


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
    """Emit a standard op as the same ONNX op, adapting attributes to the target opset.

    Converts attribute values to ONNX's attribute types (dtype names -> element-type
    codes, arrays -> tensors) and, for older target opsets, turns inputs back into the
    attributes those opsets had (`axes` of Reduce* before 18, ...). A family registers
    an op with `standard` only once the registry's definition of it has been checked
    against ONNX's modern one; an op with requant-specific extensions needs its own
    emitter."""
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
    req_inputs = [p.name for p in get_schema(node.op).inputs]
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


def native_or(since: int, fallback: Emitter, native: Emitter | None = None) -> Emitter:
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


def scalar_const(ctx: EmitContext, value: float, dt: DType, base: str) -> str:
    """A new scalar initializer holding `value` as `dt`; returns its name."""
    return ctx.const(np.array(value, dtype=dt.np), dt, base)
