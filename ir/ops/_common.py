"""Helpers shared by the op declarations: dtype classes, attribute checks, reading
constant inputs in type rules, and the compute dtype of the reference kernels.

Dtype classes (what ONNX's type constraints allow, mapped onto requant's dtypes):
- "float": the compute floats f64, f32, f16, bf16. fp8/fp4 and `FloatFormat` values are
  storage formats: only data-movement ops, `Cast`/`CastLike`, `Where` and `Identity` take
  them (as in ONNX); Cast them to a compute float first.
- "int": i8..i64 and u8..u64. int4/uint4 are storage formats like fp8.
- "signed": the floats and the signed ints. "numeric": "float" and "int".
- "bool", "index" (i32, i64), "any" (every dtype).

Reference kernels compute f16/bf16 in float32 and round once at the end (ONNX's
function bodies and ONNX Runtime do the same for the ops where it matters); f32 stays
in f32 and f64 in f64.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from requant.ir import dtypes
from requant.ir.dtypes import DType
from requant.ir.registry import InferContext
from requant.ir.types import TensorType

__all__ = [
    "COMPUTE_FLOATS",
    "INTS",
    "dtype_in",
    "check_input",
    "same_dtype",
    "attr_int",
    "attr_float",
    "attr_str",
    "attr_ints",
    "const_ints",
    "const_scalar",
    "compute_dtype",
    "opt",
]

COMPUTE_FLOATS = frozenset({dtypes.float64, dtypes.float32, dtypes.float16, dtypes.bfloat16})
SIGNED_INTS = frozenset({dtypes.int8, dtypes.int16, dtypes.int32, dtypes.int64})
UNSIGNED_INTS = frozenset({dtypes.uint8, dtypes.uint16, dtypes.uint32, dtypes.uint64})
INTS = SIGNED_INTS | UNSIGNED_INTS
INDEX = frozenset({dtypes.int32, dtypes.int64})

_CLASSES: dict[str, frozenset[DType] | None] = {
    "float": COMPUTE_FLOATS,
    "int": INTS,
    "signed": COMPUTE_FLOATS | SIGNED_INTS,
    "numeric": COMPUTE_FLOATS | INTS,
    "bool": frozenset({dtypes.bool_}),
    "index": INDEX,
    "numeric_or_bool": COMPUTE_FLOATS | INTS | frozenset({dtypes.bool_}),
    "any": None,
}

_CLASS_WORDS = {
    "float": "a float (f64, f32, f16, bf16)",
    "int": "an integer (i8..i64, u8..u64)",
    "signed": "a float or signed integer",
    "numeric": "a number (float or i8..i64, u8..u64)",
    "bool": "bool",
    "index": "i32 or i64",
    "numeric_or_bool": "a number or bool",
    "any": "any dtype",
}


def dtype_in(dt: DType, cls: str) -> bool:
    allowed = _CLASSES[cls]
    return allowed is None or dt in allowed


def check_input(ctx: InferContext, i: int, cls: str) -> TensorType:
    """Input `i` (must be present) with its dtype checked against class `cls`."""
    t = ctx.input(i)
    name = _input_name(ctx, i)
    if t is None:
        raise ctx.fail(f"input {name} is missing")
    if not dtype_in(t.dtype, cls):
        hint = ""
        if t.dtype.is_float and cls in ("float", "signed", "numeric", "numeric_or_bool"):
            hint = f"; {t.dtype} is a storage format, Cast it to f32/f16/bf16 first"
        raise ctx.fail(f"input {name} has dtype {t.dtype}, expected {_CLASS_WORDS[cls]}{hint}")
    return t


def _input_name(ctx: InferContext, i: int) -> str:
    params = ctx.schema.inputs
    if params and params[-1].variadic and i >= len(params) - 1:
        return f"{params[-1].name}[{i - len(params) + 1}]"
    return params[i].name if i < len(params) else str(i)


def same_dtype(ctx: InferContext, indices: Sequence[int]) -> DType:
    """The common dtype of the present inputs among `indices`; raises when they differ."""
    present = [(i, ctx.input(i)) for i in indices if ctx.input(i) is not None]
    first_i, first = present[0]
    for i, t in present[1:]:
        if t.dtype != first.dtype:
            raise ctx.fail(
                f"dtypes differ: {_input_name(ctx, first_i)} is {first.dtype}, {_input_name(ctx, i)} is {t.dtype}"
            )
    return first.dtype


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer))


def attr_int(ctx: InferContext, name: str, choices: Sequence[int] | None = None, lo: int | None = None) -> int:
    v = ctx.attrs[name]
    if not _is_int(v):
        raise ctx.fail(f"attribute {name} must be an int, got {v!r}")
    v = int(v)
    if choices is not None and v not in choices:
        raise ctx.fail(f"attribute {name}={v} is not one of {list(choices)}")
    if lo is not None and v < lo:
        raise ctx.fail(f"attribute {name}={v} must be >= {lo}")
    return v


def attr_float(ctx: InferContext, name: str) -> float:
    v = ctx.attrs[name]
    if not (_is_int(v) or isinstance(v, (float, np.floating))):
        raise ctx.fail(f"attribute {name} must be a float, got {v!r}")
    return float(v)


def attr_str(ctx: InferContext, name: str, choices: Sequence[str] | None = None) -> str:
    v = ctx.attrs[name]
    if not isinstance(v, str):
        raise ctx.fail(f"attribute {name} must be a string, got {v!r}")
    if choices is not None and v not in choices:
        raise ctx.fail(f"attribute {name}={v!r} is not one of {', '.join(map(repr, choices))}")
    return v


def attr_ints(ctx: InferContext, name: str, length: int | None = None, lo: int | None = None) -> list[int] | None:
    """A list-of-ints attribute (None when unset); checks its length and bound."""
    v = ctx.attrs[name]
    if v is None:
        return None
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if not isinstance(v, (list, tuple)) or not all(_is_int(x) for x in v):
        raise ctx.fail(f"attribute {name} must be a list of ints, got {v!r}")
    out = [int(x) for x in v]
    if length is not None and len(out) != length:
        raise ctx.fail(f"attribute {name} has {len(out)} values, {length} expected")
    if lo is not None and any(x < lo for x in out):
        raise ctx.fail(f"attribute {name}={out} must be >= {lo}")
    return out


def const_ints(ctx: InferContext, i: int) -> list[int] | None:
    """The values of input `i` when it is a constant integer tensor (flattened)."""
    c = ctx.const(i)
    if c is None:
        return None
    c = np.asarray(c)
    if not np.issubdtype(c.dtype, np.integer):
        raise ctx.fail(f"input {_input_name(ctx, i)} must hold integers, got {c.dtype}")
    return [int(x) for x in c.reshape(-1)]


def const_scalar(ctx: InferContext, i: int) -> Any:
    c = ctx.const(i)
    if c is None:
        return None
    c = np.asarray(c)
    if c.size != 1:
        raise ctx.fail(f"input {_input_name(ctx, i)} must hold one value, got shape {c.shape}")
    return c.reshape(-1)[0].item()


def compute_dtype(x: np.ndarray | np.dtype) -> np.dtype:
    """float64 stays, every other float computes in float32; integers keep their dtype."""
    dt = np.dtype(x.dtype if isinstance(x, np.ndarray) else x)
    if dt == np.float64 or dt.kind in "iub":
        return dt
    return np.dtype(np.float32)


def opt(ins: Sequence[Any], i: int) -> Any:
    """Input `i` of a kernel, or None when it was omitted."""
    return ins[i] if i < len(ins) else None
