"""The op registry: every op is declared here once, with its schema, its type/shape rule
and its numpy reference kernel.

Ops are declared with `define_op` in the modules of `requant.ir.ops`, keyed by (domain,
name). Standard ops follow ONNX names and semantics (domain ""); requant's own ops use
domain "requant"; a runtime's own kernels use that runtime's domain (ONNX Runtime's
"com.microsoft"). A node names its op by the op's id (`op_id`): the bare name for the
default and requant domains, which share one namespace (a requant op may not take an
ONNX name), and "<domain>.<name>" for any other domain, so ONNX Runtime's
`com.microsoft.Gelu` and ONNX's `Gelu` are two ops. Backends keep their own lowering
tables keyed by op id.

An input or output spec is a name, with `?` for optional and `*` for variadic:
`("X", "W", "B?")`, `("inputs*",)`. Attributes map a name to its default, or to
`REQUIRED`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from requant.errors import ShapeInferenceError, UnsupportedOpError
from requant.ir.types import TensorType

__all__ = [
    "REQUIRED",
    "CORE_DOMAINS",
    "op_id",
    "Param",
    "OpSchema",
    "InferContext",
    "define_op",
    "get_schema",
    "is_registered",
    "all_schemas",
    "infer_types",
    "run_kernel",
]


CORE_DOMAINS = ("", "requant")
"""The domains whose ops are named by their bare names (`op_id`)."""


def op_id(domain: str, name: str) -> str:
    """How nodes, patterns and lowering tables name the op `name` of `domain`."""
    return name if domain in CORE_DOMAINS else f"{domain}.{name}"


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


@dataclass(frozen=True)
class Param:
    name: str
    optional: bool = False
    variadic: bool = False

    @staticmethod
    def parse(spec: str) -> Param:
        if spec.endswith("?"):
            return Param(spec[:-1], optional=True)
        if spec.endswith("*"):
            return Param(spec[:-1], variadic=True)
        return Param(spec)


class InferContext:
    """What a shape rule sees: input types (None for an omitted optional input), the
    attributes with defaults filled in, constant inputs' payloads, the output count."""

    def __init__(
        self,
        schema: OpSchema,
        input_types: Sequence[TensorType | None],
        attrs: Mapping[str, Any],
        consts: Sequence[np.ndarray | None],
        num_outputs: int | None,
    ) -> None:
        self.schema = schema
        self.inputs = list(input_types)
        self.attrs = attrs
        self._consts = list(consts)
        self.num_outputs = num_outputs
        self.read_consts = False  # whether the rule looked at a payload (then not memoised)

    def input(self, i: int) -> TensorType | None:
        return self.inputs[i] if i < len(self.inputs) else None

    def const(self, i: int) -> np.ndarray | None:
        """The payload of input `i` when it is a constant, else None."""
        self.read_consts = True
        return self._consts[i] if i < len(self._consts) else None

    def fail(self, message: str) -> ShapeInferenceError:
        return ShapeInferenceError(f"{self.schema.id}: {message}")


InferFn = Callable[[InferContext], Sequence[TensorType]]
KernelFn = Callable[[list, dict, list], Any]


@dataclass(frozen=True)
class OpSchema:
    name: str
    inputs: tuple[Param, ...]
    outputs: tuple[Param, ...]
    attrs: Mapping[str, Any]
    infer: InferFn
    kernel: KernelFn
    domain: str = ""
    doc: str = ""
    commutative: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """The name nodes use for this op (`op_id`)."""
        return op_id(self.domain, self.name)

    @cached_property
    def min_inputs(self) -> int:
        return sum(1 for p in self.inputs if not p.optional and not p.variadic)

    @cached_property
    def max_inputs(self) -> int | None:
        return None if any(p.variadic for p in self.inputs) else len(self.inputs)

    @cached_property
    def _required_attrs(self) -> tuple[str, ...]:
        return tuple(k for k, v in self.attrs.items() if v is REQUIRED)

    def fill_attrs(self, attrs: Mapping[str, Any]) -> dict[str, Any]:
        """`attrs` with defaults added; raises on unknown or missing required attrs."""
        if not attrs and not self._required_attrs:  # the common case, kept cheap
            return dict(self.attrs)
        unknown = sorted(set(attrs) - set(self.attrs))
        if unknown:
            raise ShapeInferenceError(
                f"{self.id}: unknown attribute(s) {', '.join(unknown)}; known: {', '.join(sorted(self.attrs)) or 'none'}"
            )
        full = dict(self.attrs)
        full.update(attrs)
        missing = [k for k in self._required_attrs if full[k] is REQUIRED]
        if missing:
            raise ShapeInferenceError(f"{self.id}: missing required attribute(s) {', '.join(missing)}")
        return full

    def check_arity(self, n_inputs: int) -> None:
        hi = self.max_inputs
        if n_inputs == hi:
            return
        if n_inputs < self.min_inputs or (hi is not None and n_inputs > hi):
            want = f"{self.min_inputs}" if hi == self.min_inputs else f"{self.min_inputs}..{hi if hi is not None else 'n'}"
            raise ShapeInferenceError(f"{self.id}: takes {want} inputs, got {n_inputs}")


_REGISTRY: dict[str, OpSchema] = {}  # by op id; ids are unique per (domain, name)


def define_op(
    name: str,
    *,
    inputs: Sequence[str],
    outputs: Sequence[str] = ("Y",),
    attrs: Mapping[str, Any] | None = None,
    infer: InferFn,
    kernel: KernelFn,
    domain: str = "",
    doc: str = "",
    commutative: bool = False,
    **extra: Any,
) -> OpSchema:
    """Declare op `name` of `domain`. `kernel(inputs, attrs, output_types)` returns an
    array or a sequence of arrays; `infer(ctx)` returns the output types."""
    key = op_id(domain, name)
    if key in _REGISTRY:
        other = _REGISTRY[key].domain
        clash = "" if other == domain else f" (domain '{other or 'ai.onnx'}' has it: the core domains share names)"
        raise ValueError(f"op {key} is declared twice{clash}")
    schema = OpSchema(
        name=name,
        inputs=tuple(Param.parse(s) for s in inputs),
        outputs=tuple(Param.parse(s) for s in outputs),
        attrs=dict(attrs or {}),
        infer=infer,
        kernel=kernel,
        domain=domain,
        doc=doc,
        commutative=commutative,
        extra=extra,
    )
    _REGISTRY[key] = schema
    return schema


_loaded = False


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        import requant.ir.ops  # noqa: F401  (declares the ops)


def get_schema(op: str) -> OpSchema:
    """The schema of the op whose id (`op_id`) is `op`."""
    schema = _REGISTRY.get(op)
    if schema is None and not _loaded:
        _ensure_loaded()
        schema = _REGISTRY.get(op)
    if schema is None:
        raise UnsupportedOpError(f"unknown op '{op}': it is not in requant's op registry")
    return schema


def is_registered(op: str) -> bool:
    _ensure_loaded()
    return op in _REGISTRY


def all_schemas() -> dict[str, OpSchema]:
    """Every declared op, by op id."""
    _ensure_loaded()
    return dict(_REGISTRY)


def infer_types(
    op: str,
    inputs: Sequence[Any],
    attrs: Mapping[str, Any],
    num_outputs: int | None = None,
) -> list[TensorType]:
    """Output types of `op` applied to `inputs` (Values, or None for omitted inputs)."""
    types = tuple(None if v is None else v.type for v in inputs)
    key = _memo_key(op, types, attrs, num_outputs)
    if key is not None:
        hit = _INFER_MEMO.get(key)
        if hit is not None:
            return list(hit)
    schema = get_schema(op)
    schema.check_arity(len(inputs))
    full = schema.fill_attrs(attrs)
    consts = [None if v is None else v.const for v in inputs]
    for p, t in zip(schema.inputs, types):
        if t is None and not (p.optional or p.variadic):
            raise ShapeInferenceError(f"{op}: required input {p.name} is missing")
    ctx = InferContext(schema, types, full, consts, num_outputs)
    out = list(schema.infer(ctx))
    if num_outputs is not None and len(out) != num_outputs:
        raise ShapeInferenceError(f"{op}: gives {len(out)} outputs, {num_outputs} were asked for")
    if key is not None and not ctx.read_consts:
        if len(_INFER_MEMO) >= _INFER_MEMO_SIZE:
            _INFER_MEMO.clear()
        _INFER_MEMO[key] = tuple(out)
    return out


# Type rules are pure functions of (op, input types, attrs) unless they read a constant
# payload, so results are memoised: graphs repeat the same shapes block after block, and
# the rewrite driver re-infers every node a rule creates.
_INFER_MEMO: dict[tuple, tuple[TensorType, ...]] = {}
_INFER_MEMO_SIZE = 1 << 14
_HASHABLE = (int, float, str, bool, type(None))


def _memo_key(op: str, types: tuple, attrs: Mapping[str, Any], num_outputs: int | None) -> tuple | None:
    if not attrs:
        return (op, types, (), num_outputs)
    items = []
    for k, v in attrs.items():
        if type(v) in _HASHABLE:
            items.append((k, type(v), v))
        elif type(v) in (list, tuple) and all(type(x) in _HASHABLE for x in v):
            items.append((k, type(v), tuple(v)))
        else:
            return None  # array-valued attributes: not worth hashing
    return (op, types, tuple(sorted(items)), num_outputs)


def run_kernel(
    op: str,
    inputs: Sequence[np.ndarray | None],
    attrs: Mapping[str, Any],
    output_types: Sequence[TensorType],
) -> list[np.ndarray]:
    """Run the reference kernel; results are cast to the declared output dtypes."""
    schema = get_schema(op)
    full = schema.fill_attrs(attrs)
    result = schema.kernel(list(inputs), full, list(output_types))
    results = list(result) if isinstance(result, (list, tuple)) else [result]
    if len(results) != len(output_types):
        raise ShapeInferenceError(f"{op}: kernel gave {len(results)} outputs for {len(output_types)} declared")
    out = []
    for arr, t in zip(results, output_types):
        arr = np.asarray(arr)
        if arr.dtype != t.dtype.np:
            arr = arr.astype(t.dtype.np)
        out.append(arr)
    return out
