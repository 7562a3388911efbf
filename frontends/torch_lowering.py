"""The machinery every aten lowering uses: the lowering table, the `LoweringContext`
through which a lowering reads its torch arguments and emits IR nodes, and the torch ->
requant dtype map.

A lowering is a small function `lower(cx, *args, **kwargs)` registered with
`@lowers("aten.add.Tensor", ...)`; it receives the FX node's own arguments (FX nodes,
Python numbers, lists of either) and returns the IR value(s) standing for the node's
result: a `Value`, a tuple of them (multi-output ops; `None` where an output is not
produced), or `None` for nodes without a result (assertions). It never touches the
graph directly: `cx.emit(...)` makes a node tagged with the source module path and the
torch op, `cx.const(...)` a constant.

Conventions that keep lowerings short:
- A SymInt (a size that is symbolic under `dynamic_dims`) is a 0-d int64 IR value.
- `cx.tensor(arg, dtype)` turns any operand (tensor, SymInt, Python number) into an IR
  value of `dtype`, casting where torch's type promotion would.
- `cx.int_vector(items)` builds a 1-D int64 shape/axes operand: a constant when every
  item is static, a Concat of constants and SymInt values otherwise.
A lowering that meets a variant it cannot express raises `NotLowerable(reason)`; the
converter collects those with the unknown ops into one `UnsupportedOpError`.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from requant.ir import dtypes
from requant.ir.dtypes import DType
from requant.ir.graph import Graph, Node, Value

__all__ = [
    "LOWERINGS",
    "lowers",
    "target_name",
    "NotLowerable",
    "LoweringContext",
    "ir_dtype",
    "to_numpy",
    "INT64_MAX",
]

logger = logging.getLogger(__name__)

INT64_MAX = 2**63 - 1

LOWERINGS: dict[str, Callable[..., Any]] = {}

_TORCH_TO_IR: dict[torch.dtype, DType] = {
    torch.float64: dtypes.float64,
    torch.float32: dtypes.float32,
    torch.float16: dtypes.float16,
    torch.bfloat16: dtypes.bfloat16,
    torch.int64: dtypes.int64,
    torch.int32: dtypes.int32,
    torch.int16: dtypes.int16,
    torch.int8: dtypes.int8,
    torch.uint8: dtypes.uint8,
    torch.bool: dtypes.bool_,
    torch.float8_e4m3fn: dtypes.fp8_e4m3,
    torch.float8_e5m2: dtypes.fp8_e5m2,
}

# Constants at most this large are shared between nodes that ask for equal payloads, so
# a graph does not carry hundreds of copies of "0" and "-1".
_SHARED_CONST_MAX_ELEMENTS = 16


class NotLowerable(Exception):
    """A lowering met a variant of its op it cannot express; the message says which."""


def lowers(*targets: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated function as the lowering of each named torch op."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        for target in targets:
            if target in LOWERINGS:
                raise ValueError(f"two lowerings for {target}")
            LOWERINGS[target] = fn
        return fn

    return register


def target_name(target: Any) -> str:
    """How the table and messages name an FX call target: "aten.add.Tensor",
    "operator.getitem", "torch.sym_float", "mylib.my_op.default"."""
    if isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return str(target)
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", None) or repr(target)
    if module in ("_operator", "operator"):
        module = "operator"
    if module.startswith("torch"):
        module = "torch"
    return f"{module}.{name}" if module else name


def ir_dtype(dt: torch.dtype) -> DType:
    found = _TORCH_TO_IR.get(dt)
    if found is None:
        raise NotLowerable(f"torch dtype {dt} has no requant equivalent")
    return found


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A read-only numpy array of a tensor's values (bf16 and fp8 through ml_dtypes, which
    numpy lacks). A contiguous CPU tensor is not copied: the array is a view of its
    storage, so a graph holds a model's weights once, not a second time beside the
    caller's model (`requant.frontends.torch_shared` finds such views and whether torch
    wrote to them since); anything else (strided, on another device) is copied."""
    t = t.detach()
    if t.device.type != "cpu" or not t.is_contiguous():
        t = t.cpu().contiguous()  # a new tensor either way: nothing of the caller's is shared
    if t.dtype == torch.bfloat16:
        arr = t.view(torch.int16).numpy().view(dtypes.bfloat16.np)
    elif t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        arr = t.view(torch.uint8).numpy().view(ir_dtype(t.dtype).np)
    elif t.dtype not in _TORCH_TO_IR:
        raise NotLowerable(f"torch dtype {t.dtype} has no requant equivalent")
    else:
        arr = t.numpy()
    arr.flags.writeable = False
    return arr


class LazyConstant:
    """A parameter, buffer or lifted constant not yet in the graph: models
    often carry weights their forward never reads (poolers, unused heads)."""

    __slots__ = ("tensor", "name", "value")

    def __init__(self, tensor: torch.Tensor, name: str) -> None:
        self.tensor = tensor
        self.name = name
        self.value: Value | None = None


class LoweringContext:
    """What a lowering sees: the graph being built, the FX node being lowered and the
    values of the nodes before it."""

    def __init__(self, graph: Graph, env: dict[fx.Node, Any]) -> None:
        self.graph = graph
        self.env = env
        self.node: fx.Node | None = None
        self.meta: dict[str, Any] = {}
        self.created: list[Node] = []
        self._const_cache: dict[tuple, Value] = {}
        self._shape_cache: dict[int, Value] = {}
        # every value of the graph is named here (the graph starts empty), so names can be
        # derived from torch's without asking the graph, whose fresh_name claims them
        self._names: set[str] = set()
        self._counters: dict[str, int] = {}

    def unique_name(self, base: str) -> str:
        """`base`, or `base_<n>` with the first n that no value of the graph uses."""
        if base not in self._names:
            self._names.add(base)
            return base
        n = self._counters.get(base, 0)
        while True:
            n += 1
            candidate = f"{base}_{n}"
            if candidate not in self._names:
                self._counters[base] = n
                self._names.add(candidate)
                return candidate

    # -- the node being lowered ------------------------------------------------------------
    def begin(self, node: fx.Node, source: str, op_name: str) -> None:
        self.node = node
        self.meta = {"source": source, "torch_op": op_name}
        self.created: list[Node] = []

    @property
    def out(self) -> Any:
        """torch's metadata for the current node's result (a FakeTensor, SymInt, ...)."""
        return self.node.meta.get("val")

    @property
    def out_dtype(self) -> DType:
        val = self.out
        if isinstance(val, (list, tuple)):
            val = next(v for v in val if isinstance(v, torch.Tensor))
        return ir_dtype(val.dtype)

    def used_outputs(self) -> set[int]:
        """Indices of the current multi-output node's results that something reads."""
        used: set[int] = set()
        for user in self.node.users:
            if user.target is operator.getitem and user.users:
                used.add(int(user.args[1]))
            elif user.target is not operator.getitem:
                return set(range(len(self.out)))
        return used

    # -- emitting ----------------------------------------------------------------------------
    def emit(self, op: str, *inputs: Value | None, _outputs: int | None = None, **attrs: Any) -> Any:
        """Make one node; return its output, or a tuple of outputs when `_outputs` is given."""
        n = 1 if _outputs is None else _outputs
        # intermediates are named "<fx name>_<op>"; the converter gives the final value
        # the FX node's own name
        base = f"{self.node.name}_{op.lower()}" if self.node is not None else "t"
        names = [self.unique_name(base) for _ in range(n)]
        node = self.graph.create_node(
            op, list(inputs), attrs, num_outputs=_outputs, output_names=names, meta=dict(self.meta)
        )
        self.created.append(node)
        return node.outputs[0] if _outputs is None else tuple(node.outputs)

    def const(self, array: Any, dtype: DType | None = None) -> Value:
        arr = np.asarray(array)
        if dtype is not None and arr.dtype != dtype.np:
            arr = arr.astype(dtype.np)
        key = None
        if arr.size <= _SHARED_CONST_MAX_ELEMENTS:
            key = (str(dtype or arr.dtype), arr.shape, arr.tobytes())
            found = self._const_cache.get(key)
            if found is not None:
                return found
        v = self.graph.add_constant(arr, name=self.unique_name("const"), dtype=dtype)
        if key is not None:
            self._const_cache[key] = v
        return v

    # -- reading arguments ---------------------------------------------------------------
    def val(self, arg: Any) -> Any:
        """torch's metadata for an argument (FX node), or the argument itself."""
        if isinstance(arg, fx.Node):
            return arg.meta.get("val")
        return arg

    def value(self, arg: Any) -> Value:
        """The IR value of a tensor or SymInt argument."""
        if not isinstance(arg, fx.Node):
            raise NotLowerable(f"expected a tensor argument, got {arg!r}")
        found = self.env[arg]
        if isinstance(found, LazyConstant):
            if found.value is None:
                found.value = self.graph.add_constant(to_numpy(found.tensor), name=self.unique_name(found.name))
                found.value.meta["torch_fqn"] = found.name
            return found.value
        if not isinstance(found, Value):
            raise NotLowerable(f"argument {arg.name} is {type(found).__name__}, not a tensor")
        return found

    def maybe_value(self, arg: Any) -> Value | None:
        return None if arg is None else self.value(arg)

    def dtype_of(self, arg: Any) -> DType:
        val = self.val(arg)
        if isinstance(val, torch.Tensor):
            return ir_dtype(val.dtype)
        return self.value(arg).dtype

    def rank(self, arg: Any) -> int:
        val = self.val(arg)
        if isinstance(val, torch.Tensor):
            return val.dim()
        return self.value(arg).type.rank

    def shape(self, arg: Any) -> tuple:
        """torch's shape of a tensor argument: ints, and SymInts where dynamic."""
        return tuple(self.val(arg).shape)

    def tensor(self, arg: Any, dtype: DType) -> Value:
        """Any operand (tensor, SymInt, Python number) as an IR value of `dtype`."""
        if isinstance(arg, fx.Node):
            return self.cast(self.value(arg), dtype)
        if isinstance(arg, (bool, int, float, np.number)):
            return self.const(np.asarray(arg).astype(dtype.np))
        raise NotLowerable(f"cannot use {arg!r} as a tensor operand")

    def cast(self, v: Value, dtype: DType) -> Value:
        if v.dtype == dtype:
            return v
        return self.emit("Cast", v, to=dtype.short)

    # -- ints, shapes and axes ------------------------------------------------------------
    @staticmethod
    def static_int(item: Any) -> int | None:
        """An int argument's value when it is known at conversion time."""
        if isinstance(item, (bool, np.bool_)):
            return int(item)
        if isinstance(item, (int, np.integer)):
            return int(item)
        if isinstance(item, fx.Node):
            val = item.meta.get("val")
            if isinstance(val, int):
                return val
            if isinstance(val, torch.SymInt):
                expr = val.node.expr
                if expr.is_number:
                    return int(expr)
        if isinstance(item, torch.SymInt) and item.node.expr.is_number:
            return int(item.node.expr)
        return None

    def static_ints(self, items: Sequence[Any]) -> list[int] | None:
        out = [self.static_int(i) for i in items]
        return None if any(v is None for v in out) else out

    def scalar_i64(self, item: Any) -> Value:
        """An int, SymInt argument or 0-d IR value as a 0-d int64 value."""
        if isinstance(item, Value):
            return self.cast(item, dtypes.int64)
        static = self.static_int(item)
        if static is not None:
            return self.const(np.array(static, dtype=np.int64))
        return self.cast(self.value(item), dtypes.int64)

    def int_vector(self, items: Sequence[Any]) -> Value:
        """A 1-D int64 value from ints, SymInts and 0-d values (a constant when all are
        static)."""
        static = self.static_ints(items)
        if static is not None:
            return self.const(np.array(static, dtype=np.int64))
        parts: list[Value] = []
        run: list[int] = []
        for item in items:
            s = self.static_int(item)
            if s is not None:
                run.append(s)
                continue
            if run:
                parts.append(self.const(np.array(run, dtype=np.int64)))
                run = []
            parts.append(self.emit("Unsqueeze", self.scalar_i64(item), self.axes([0])))
        if run:
            parts.append(self.const(np.array(run, dtype=np.int64)))
        return parts[0] if len(parts) == 1 else self.emit("Concat", *parts, axis=0)

    def axes(self, axes: Sequence[int]) -> Value:
        return self.const(np.array(list(axes), dtype=np.int64))

    def shape_of(self, v: Value) -> Value:
        """`Shape(v)`, shared by every lowering that asks for the same value's shape."""
        found = self._shape_cache.get(id(v))
        if found is None:
            found = self.emit("Shape", v)
            self._shape_cache[id(v)] = found
        return found

    def dim_size(self, v: Value, dim: int) -> Value:
        """One extent of `v` as a 0-d int64 value (a constant when static)."""
        if v.shape is not None and isinstance(v.shape[dim], int):
            return self.const(np.array(v.shape[dim], dtype=np.int64))
        return self.emit("Gather", self.shape_of(v), self.const(np.array(dim, dtype=np.int64)), axis=0)


