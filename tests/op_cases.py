"""Per-op test cases shared by the one-node op tests (tests/ir/test_ops.py against ONNX's
reference, tests/ir/test_quant_ops.py against ONNX's reference / ONNX Runtime) and the
TVM backend tests (tests/backends/tvm/test_tvm_emit.py against requant's interpreter).

`OP_CASES` covers the standard ops, `QUANT_CASES` the quantization ops, `FQ_SCHEMES`
the FakeQuantize schemes. A `Case` is one node: its op, its operands (`In`: a graph
input with an optional declared shape that may hold symbols, or a constant), its
attributes and what the oracle tests need (opset, oracle, the expected inferred shape).
Inputs are drawn from two seeded generators, one per list, in a fixed order, so every
run sees the same values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
import numpy as np

from requant.ir import Builder, Graph, dtypes, tensor_type
from requant.ir import quant_formats as qf
from requant.ir.ops.onnxruntime import pack_low_first

__all__ = [
    "OPSET", "INT_MAX", "UNKNOWN_RANK", "In", "Case", "I", "C", "r", "ri", "rq", "rb", "i64",
    "f32", "ints", "ties", "OP_CASES", "QUANT_CASES", "FQ_SCHEMES", "build_case",
]

OPSET = 23
INT_MAX = 2**63 - 1
UNKNOWN_RANK = "unknown rank"  # In.shape marker: declare the input with shape None

_RNG = np.random.default_rng(20240607)  # OP_CASES and the helpers r, ri, rq, rb
_QRNG = np.random.default_rng(20250101)  # QUANT_CASES and the helpers f32, ints, ties


@dataclass
class In:
    """One operand: a graph input (declared `shape` may hold symbols) or a constant."""

    value: np.ndarray
    const: bool = False
    dtype: str | None = None
    shape: tuple | str | None = None

    @property
    def dt(self) -> str:
        return self.dtype or dtypes.from_numpy(self.value.dtype).short


@dataclass
class Case:
    op: str
    inputs: list[In | None]
    attrs: dict[str, Any] = field(default_factory=dict)
    n_out: int | None = None
    onnx_attrs: dict[str, Any] | None = None
    opset: int = OPSET
    expect: tuple | None = None  # inferred shape of output 0, exactly
    label: str = ""
    oracle: str = "reference"  # or "ort" where ONNX's reference is wrong, or "none" (types only)

    def __str__(self) -> str:
        return f"{self.op}{'-' + self.label if self.label else ''}"


# ----------------------------------------------------------------------------- operand helpers

def r(*shape: int, dt: str = "f32", lo: float = -3.0, hi: float = 3.0) -> np.ndarray:
    return _RNG.uniform(lo, hi, size=shape).astype(dtypes.dtype(dt).np)


def ri(*shape: int, dt: str = "i32", lo: int = -10, hi: int = 10) -> np.ndarray:
    return _RNG.integers(lo, hi, size=shape, endpoint=True).astype(dtypes.dtype(dt).np)


def rq(*shape: int, dt: str = "f32") -> np.ndarray:
    """Random multiples of 1/8 in [-2, 2]: products and sums of a few thousand of them are
    exact in f32, so accumulating ops compare exactly whatever their summation order."""
    return (_RNG.integers(-16, 16, size=shape, endpoint=True) / 8).astype(dtypes.dtype(dt).np)


def rb(*shape: int) -> np.ndarray:
    return _RNG.random(shape) < 0.5


def I(value: Any, dtype: str | None = None, shape: tuple | None = None) -> In:  # noqa: E743
    return In(np.asarray(value), False, dtype, shape)


def C(value: Any, dtype: str | None = None) -> In:
    return In(np.asarray(value), True, dtype)


def i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def f32(*shape: int, lo: float = -3.0, hi: float = 3.0) -> np.ndarray:
    return _QRNG.uniform(lo, hi, size=shape).astype(np.float32)


def ints(*shape: int, dt: str = "u8", lo: int | None = None, hi: int | None = None) -> np.ndarray:
    d = dtypes.dtype(dt)
    a, b = d.int_range
    return _QRNG.integers(a if lo is None else lo, (b if hi is None else hi) + 1, size=shape).astype(d.np)


# ----------------------------------------------------------------------------- standard ops

OP_CASES: list[Case] = []


def case(*args: Any, **kw: Any) -> None:
    OP_CASES.append(Case(*args, **kw))


# elementwise binary
for _op in ("Add", "Sub", "Mul", "Div"):
    case(_op, [I(r(3, 4)), I(r(4))], label="bcast")
    case(_op, [I(r(2, 1, 4)), I(r(3, 1))], label="bcast2")
    case(_op, [I(r(5, dt="f16")), I(r(5, dt="f16"))], label="f16")
    case(_op, [I(r(5, dt="bf16")), I(r(5, dt="bf16"))], label="bf16")
    case(_op, [I(r(5, dt="f64")), I(r(5, dt="f64"))], label="f64")
    case(_op, [I(ri(3, 4, lo=-50, hi=50)), I(ri(4, lo=1, hi=9) * np.array([1, -1, 1, -1], np.int32))], label="i32")
    case(_op, [I(ri(6, dt="i8", lo=-128, hi=127)), I(ri(6, dt="i8", lo=1, hi=127))], label="i8_wrap")
    case(_op, [I(r(4, 3), shape=("B", 3)), I(r(3))], expect=("B", 3), label="sym")
case("Div", [I(ri(8, dt="i64", lo=-20, hi=20)), I(np.array([3, -3, 7, -7, 1, -1, 5, -5], np.int64))], label="trunc")
case("Pow", [I(r(3, 4, lo=0.1, hi=3)), I(r(3, 4))])
case("Pow", [I(r(3, 4)), I(np.array([2, 3, 0, 1], np.int64))], label="int_exp")
case("Pow", [I(r(6, dt="f16", lo=0.5, hi=2)), I(r(6, lo=-2, hi=2))], label="f16_f32exp")
case("Pow", [I(ri(6, lo=-5, hi=5)), I(ri(6, lo=0, hi=4))], label="i32")
case("Mod", [I(ri(12, lo=-20, hi=20)), I(np.array([3, -3, 7, -7] * 3, np.int32))], label="floor")
case("Mod", [I(ri(12, lo=-20, hi=20)), I(np.array([3, -3, 7, -7] * 3, np.int32))], {"fmod": 1}, label="fmod")
case("Mod", [I(r(3, 4)), I(r(4, lo=0.5, hi=2))], {"fmod": 1}, label="float")
case("BitShift", [I(ri(8, dt="u8", lo=0, hi=255)), I(ri(8, dt="u8", lo=0, hi=7))], {"direction": "LEFT"})
case("BitShift", [I(ri(8, dt="u32", lo=0, hi=10**6)), I(ri(8, dt="u32", lo=0, hi=40))], {"direction": "RIGHT"})
for _op in ("Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual"):
    _a = ri(3, 4, lo=-3, hi=3).astype(np.float32)
    case(_op, [I(_a), I(ri(4, lo=-3, hi=3).astype(np.float32))])
    case(_op, [I(ri(3, 4, dt="i64", lo=-3, hi=3)), I(ri(1, dt="i64", lo=-3, hi=3))], label="i64")
case("Equal", [I(rb(3, 4)), I(rb(4))], label="bool")
for _op in ("And", "Or", "Xor"):
    case(_op, [I(rb(3, 4)), I(rb(4))])
case("Not", [I(rb(3, 4))])
case("Where", [I(rb(3, 1)), I(r(3, 4)), I(r(4))])
case("Where", [I(rb(5)), I(ri(5, dt="i64")), I(ri(1, dt="i64"))], label="i64")
case("Where", [I(rb(2, 3), shape=("B", 3)), I(r(2, 3), shape=("B", 3)), I(r(3))], expect=("B", 3), label="sym")
for _op in ("Max", "Min"):
    case(_op, [I(r(3, 4))], label="one")
    case(_op, [I(r(3, 4)), I(r(4)), I(r(3, 1))], label="three")
    case(_op, [I(ri(3, 4)), I(ri(4))], label="i32")
for _op in ("Sum", "Mean"):
    case(_op, [I(r(3, 4)), I(r(4)), I(r(3, 1))])
    case(_op, [I(r(3, 4, dt="f16")), I(r(3, 4, dt="f16"))], label="f16")

# unary
_DOMAINS = {
    "Log": (0.05, 5),
    "Sqrt": (0, 5),
    "Reciprocal": (0.2, 4),
    "Asin": (-0.99, 0.99),
    "Acos": (-0.99, 0.99),
    "Atanh": (-0.95, 0.95),
    "Acosh": (1.0, 5),
    "Tan": (-1.3, 1.3),
}
for _op in ("Exp", "Log", "Sqrt", "Reciprocal", "Tanh", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan",
            "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Floor", "Ceil", "Erf"):
    _lo, _hi = _DOMAINS.get(_op, (-3, 3))
    case(_op, [I(r(3, 5, lo=_lo, hi=_hi))])
for _op in ("Exp", "Tanh", "Erf", "Sqrt", "Sin"):
    _lo, _hi = _DOMAINS.get(_op, (-3, 3))
    case(_op, [I(r(4, 5, dt="f16", lo=_lo, hi=_hi))], label="f16")
    case(_op, [I(r(4, 5, dt="bf16", lo=_lo, hi=_hi))], label="bf16")
case("Exp", [I(r(4, 5), shape=("B", 5))], expect=("B", 5), label="sym")
case("Round", [I(np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.4, -0.6, 3.7], np.float32))])
for _op in ("Neg", "Abs", "Sign"):
    case(_op, [I(r(3, 4))])
    case(_op, [I(ri(3, 4))], label="i32")
    case(_op, [I(np.array([-128, -1, 0, 1, 127], np.int8))], label="i8")
case("IsNaN", [I(np.array([1.0, np.nan, np.inf, -np.inf, 0.0], np.float32))])
case("IsInf", [I(np.array([1.0, np.nan, np.inf, -np.inf, 0.0], np.float32))])
case("IsInf", [I(np.array([1.0, np.nan, np.inf, -np.inf, 0.0], np.float32))], {"detect_negative": 0}, label="pos")

# activations
case("Relu", [I(r(3, 4))])
case("Relu", [I(ri(3, 4, dt="i8"))], label="i8")
case("LeakyRelu", [I(r(3, 4))], {"alpha": 0.2})
case("LeakyRelu", [I(r(3, 4))], label="default")
case("PRelu", [I(r(2, 3, 4, 4)), I(r(3, 1, 1))])
case("PRelu", [I(r(2, 5)), I(r(5))], label="vec")
case("Elu", [I(r(3, 4))], {"alpha": 0.5})
case("Selu", [I(r(3, 4))])
case("Celu", [I(r(3, 4))], {"alpha": 2.0})
case("ThresholdedRelu", [I(r(3, 4))], {"alpha": 0.5})
for _approx in ("none", "tanh"):
    case("Gelu", [I(r(3, 7, lo=-5, hi=5))], {"approximate": _approx}, label=_approx)
    case("Gelu", [I(r(3, 7, dt="f16", lo=-5, hi=5))], {"approximate": _approx}, label=_approx + "_f16")
case("Gelu", [I(r(4, 7))], label="default")
case("Sigmoid", [I(r(3, 4, lo=-20, hi=20))])
case("Sigmoid", [I(r(3, 4, dt="f16", lo=-8, hi=8))], label="f16")
case("HardSigmoid", [I(r(3, 4))])
case("HardSigmoid", [I(r(3, 4))], {"alpha": 0.3, "beta": 0.4}, label="attrs")
case("HardSwish", [I(r(3, 8, lo=-5, hi=5))])
case("Softplus", [I(r(3, 4, lo=-10, hi=10))])
case("Softsign", [I(r(3, 4))])
case("Swish", [I(r(3, 4))], opset=24)
case("Swish", [I(r(3, 4))], {"alpha": 1.702}, opset=24, label="alpha")
case("Mish", [I(r(3, 4))])
case("Clip", [I(r(3, 4)), C(np.float32(-1)), C(np.float32(0.5))])
case("Clip", [I(r(3, 4)), None, C(np.float32(0.5))], label="max_only")
case("Clip", [I(r(3, 4)), C(np.float32(-0.5))], label="min_only")
case("Clip", [I(r(3, 4))], label="none")
case("Clip", [I(ri(3, 4)), I(np.int32(-2)), I(np.int32(3))], label="i32")
case("Clip", [I(r(6)), C(np.float32(1)), C(np.float32(-1))], label="min_gt_max")
for _op in ("Softmax", "LogSoftmax"):
    case(_op, [I(r(2, 3, 5, lo=-10, hi=10))])
    case(_op, [I(r(2, 3, 5))], {"axis": 1}, label="axis1")
    case(_op, [I(r(2, 3, 5))], {"axis": 0}, label="axis0")
    case(_op, [I(r(2, 3, 5, dt="f16"))], label="f16")
    case(_op, [I(r(2, 3, 5), shape=("B", "S", 5))], expect=("B", "S", 5), label="sym")

# normalization
case("LayerNormalization", [I(r(2, 3, 8)), I(r(8)), I(r(8))])
case("LayerNormalization", [I(r(2, 3, 8)), I(r(8))], label="nobias")
case("LayerNormalization", [I(r(2, 3, 8)), I(r(3, 8)), I(r(3, 8))], {"axis": -2, "epsilon": 1e-3}, label="axis-2")
case("LayerNormalization", [I(r(2, 3, 8)), I(r(8)), I(r(8))], n_out=3, label="stats")
case("LayerNormalization", [I(r(2, 3, 8, dt="f16")), I(r(8, dt="f16")), I(r(8, dt="f16"))], label="f16")
case("LayerNormalization", [I(r(2, 3, 8), shape=("B", "S", 8)), C(r(8)), C(r(8))], expect=("B", "S", 8), label="sym")
case("RMSNormalization", [I(r(2, 3, 8)), I(r(8))])
case("RMSNormalization", [I(r(2, 3, 8)), I(r(3, 8))], {"axis": -2, "epsilon": 1e-3}, label="axis-2")
case("RMSNormalization", [I(r(2, 3, 8, dt="f16")), I(r(8, dt="f16"))], label="f16")
case("BatchNormalization", [I(r(2, 3, 4, 5)), I(r(3)), I(r(3)), I(r(3)), I(r(3, lo=0.1, hi=2))])
case("BatchNormalization", [I(r(2, 3, 4)), I(r(3)), I(r(3)), I(r(3)), I(r(3, lo=0.1, hi=2))], {"epsilon": 1e-3}, label="3d")
case("InstanceNormalization", [I(r(2, 3, 4, 5)), I(r(3)), I(r(3))])
case("GroupNormalization", [I(r(2, 6, 4, 5)), I(r(6)), I(r(6))], {"num_groups": 3})

# shape ops
case("Reshape", [I(r(2, 3, 4)), C(i64(6, 4))])
case("Reshape", [I(r(2, 3, 4)), C(i64(0, -1))], label="zero_minus1")
case("Reshape", [I(r(2, 3, 4)), C(i64(-1))], label="flat")
case("Reshape", [I(r(0, 3)), C(i64(3, 0))], {"allowzero": 1}, label="allowzero")
case("Reshape", [I(r(2, 3, 4)), I(i64(4, 6))], expect=(None, None), label="dynamic")
case("Reshape", [I(r(2, 5, 24), shape=("B", "S", 24)), C(i64(0, 0, 4, 6))], expect=("B", "S", 4, 6), label="sym_heads")
case("Reshape", [I(r(2, 4, 6), shape=("B", 4, 6)), C(i64(0, -1))], expect=("B", 24), label="sym_merge")
case("Reshape", [I(r(2, 5, 6), shape=("B", "S", 6)), C(i64(-1, 6))], expect=(None, 6), label="sym_unknown")
case("Reshape", [I(r(2, 4, 6), shape=("B", 4, 6)), C(i64(-1, 4, 6))], expect=("B", 4, 6), label="sym_minus1")
for _axis in (0, 1, 2, 3, -1):
    case("Flatten", [I(r(2, 3, 4))], {"axis": _axis}, label=f"axis{_axis}")
case("Flatten", [I(r(2, 3, 4), shape=("B", 3, 4))], expect=("B", 12), label="sym")
case("Squeeze", [I(r(1, 3, 1, 4)), C(i64(0, 2))])
case("Squeeze", [I(r(1, 3, 1, 4)), C(i64(-2))], label="neg")
case("Squeeze", [I(r(1, 3, 1, 4))], label="all")
case("Squeeze", [I(r(1, 3, 1, 4)), C(np.zeros(0, np.int64))], expect=(1, 3, 1, 4), label="empty_axes")
case("Squeeze", [I(r(2, 1, 4), shape=("B", 1, 4)), C(i64(1))], expect=("B", 4), label="sym")
case("Unsqueeze", [I(r(3, 4)), C(i64(0))])
case("Unsqueeze", [I(r(3, 4)), C(i64(-1, 0))], label="two")
case("Unsqueeze", [I(r(3, 4), shape=("B", 4)), C(i64(1, 3))], expect=("B", 1, 4, 1), label="sym")
case("Transpose", [I(r(2, 3, 4))], {"perm": [1, 0, 2]})
case("Transpose", [I(r(2, 3, 4))], label="default")
case("Transpose", [I(ri(2, 3, dt="i8", lo=-8, hi=7), dtype="i4")], {"perm": [1, 0]}, label="i4")
case("Transpose", [I(r(2, 3, 4, 5), shape=("B", "S", 4, 5))], {"perm": [0, 2, 1, 3]}, expect=("B", 4, "S", 5), label="sym")
case("Expand", [I(r(3, 1)), C(i64(2, 3, 4))])
case("Expand", [I(r(3, 4)), C(i64(1, 1))], label="keep")
case("Expand", [I(r(2, 1, 4), shape=("B", 1, 4)), C(i64(1, 3, 4))], expect=("B", 3, 4), label="sym")
case("Expand", [I(r(3, 1)), I(i64(2, 3, 4))], expect=(None, 3, None), label="dynamic")
case("Identity", [I(r(3, 4))])
case("Identity", [I(r(3, 4).astype(ml_dtypes.float8_e4m3fn))], label="fp8")
case("Shape", [I(r(2, 3, 4))])
case("Shape", [I(r(2, 3, 4))], {"start": 1}, label="start")
case("Shape", [I(r(2, 3, 4))], {"start": -2, "end": -1}, label="neg")
case("Shape", [I(r(2, 3, 4))], {"start": 5, "end": 10}, label="empty")
case("Shape", [I(r(2, 3), shape=("B", 3))], expect=(2,), label="sym")
case("Size", [I(r(2, 3, 4))])

# indexing
case("Concat", [I(r(2, 3)), I(r(4, 3)), I(r(1, 3))], {"axis": 0})
case("Concat", [I(r(2, 3)), I(r(2, 1))], {"axis": -1}, label="neg")
case("Concat", [I(ri(2, 3, dt="i64"))], {"axis": 1}, label="one")
case("Concat", [I(r(2, 3).astype(ml_dtypes.float8_e5m2)), I(r(2, 2).astype(ml_dtypes.float8_e5m2))], {"axis": 1}, label="fp8")
case("Concat", [I(r(2, 3), shape=("B", 3)), I(r(2, 4), shape=("B", 4))], {"axis": 1}, expect=("B", 7), label="sym")
case("Concat", [I(r(2, 3), shape=("B", 3)), I(r(2, 3))], {"axis": 0}, expect=(None, 3), label="sym_axis")
case("Split", [I(r(2, 6)), C(i64(1, 2, 3))], {"axis": 1})
case("Split", [I(r(6, 2))], {"num_outputs": 3}, label="even")
case("Split", [I(r(7, 2))], {"num_outputs": 3}, label="uneven")
case("Split", [I(r(2, 6), shape=("B", 6))], {"axis": -1, "num_outputs": 2}, expect=("B", 3), label="sym")
case("Slice", [I(r(5, 6)), C(i64(1, 0)), C(i64(4, 6))])
case("Slice", [I(r(5, 6)), C(i64(1)), C(i64(INT_MAX)), C(i64(1))], label="intmax")
case("Slice", [I(r(5, 6)), C(i64(-1)), C(i64(-INT_MAX)), C(i64(1)), C(i64(-1))], label="reverse")
case("Slice", [I(r(5, 6)), C(i64(4, -2)), C(i64(0, 100)), C(i64(0, 1)), C(i64(-2, 1))], label="negstep")
case("Slice", [I(r(5, 6)), C(i64(0)), C(i64(6)), C(i64(-1)), C(i64(2))], label="step2")
case("Slice", [I(r(5, 6)), C(i64(-100)), C(i64(100)), C(i64(0))], label="clamp")
case("Slice", [I(r(5, 6)), C(i64(3)), C(i64(1)), C(i64(0))], label="empty")
case("Slice", [I(r(5, 6)), C(np.array([1], np.int32)), C(np.array([3], np.int32))], label="i32")
case("Slice", [I(r(5, 6)), I(i64(1)), I(i64(3)), C(i64(1))], expect=(5, None), label="dynamic")
case("Slice", [I(r(3, 6), shape=("B", 6)), C(i64(0, 2)), C(i64(INT_MAX, 4)), C(i64(0, 1))], expect=("B", 2), label="sym")
case("Gather", [I(r(5, 4)), I(np.array([[0, 2], [4, -1]], np.int64))])
case("Gather", [I(r(5, 4)), I(np.array([3, -4, 0], np.int32))], {"axis": 1}, label="axis1")
case("Gather", [I(r(5, 4)), C(np.int64(2))], label="scalar")
case("Gather", [C(r(10, 4)), I(ri(2, 3, dt="i64", lo=0, hi=9), shape=("B", "S"))], expect=("B", "S", 4), label="sym")
case("GatherElements", [I(r(3, 4)), I(ri(3, 2, dt="i64", lo=-4, hi=3))], {"axis": 1})
case("GatherElements", [I(r(3, 4)), I(ri(2, 4, dt="i64", lo=0, hi=2))], label="axis0")
case("GatherND", [I(r(3, 4, 5)), I(ri(2, 2, dt="i64", lo=0, hi=2))])
case("GatherND", [I(r(2, 4, 5)), I(ri(2, 3, 1, dt="i64", lo=0, hi=3))], {"batch_dims": 1}, label="batch")
case("ScatterElements", [I(r(3, 4)), C(np.array([[1, 0], [3, 2], [0, 1]], np.int64)), I(r(3, 2))], {"axis": 1})
case("ScatterElements", [I(r(3, 4)), C(np.array([[1, 1], [0, 0], [2, 2]], np.int64)), I(r(3, 2))], {"axis": 1, "reduction": "add"}, label="add")
case("ScatterND", [I(r(4, 3)), C(np.array([[1], [3]], np.int64)), I(r(2, 3))])
case("ScatterND", [I(r(4, 3)), C(np.array([[1, 2], [3, 0]], np.int64)), I(r(2))], {"reduction": "mul"}, label="mul")
case("Pad", [I(r(2, 3)), C(i64(1, 0, 2, 3))])
case("Pad", [I(r(2, 3)), C(i64(1, 2, 0, 1)), C(np.float32(1.5))], label="value")
for _mode in ("reflect", "edge", "wrap"):
    case("Pad", [I(r(3, 4)), C(i64(1, 2, 2, 1))], {"mode": _mode}, label=_mode)
case("Pad", [I(r(2, 3, 4)), C(i64(1, 2)), None, C(i64(-1))], label="axes")
case("Pad", [I(ri(2, 3, dt="i64")), C(i64(0, 1, 0, 1)), C(np.int64(7))], label="i64")
case("Pad", [I(r(2, 3, 4, 4), shape=("B", 3, 4, 4)), C(i64(0, 0, 1, 1, 0, 0, 1, 1))], expect=("B", 3, 6, 6), label="sym")
case("Tile", [I(r(2, 3)), C(i64(2, 3))])
case("Tile", [I(r(2, 3), shape=("B", 3)), C(i64(1, 2))], expect=("B", 6), label="sym")
case("Trilu", [I(r(2, 4, 5))])
case("Trilu", [I(r(4, 5)), C(np.int64(1))], {"upper": 0}, label="lower_k1")
case("Trilu", [I(r(4, 5)), C(np.int64(-2))], label="upper_k-2")

# reductions
_RED = ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
        "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp")
for _op in _RED:
    _x = r(2, 3, 4, lo=0.2, hi=2) if _op == "ReduceLogSum" else r(2, 3, 4)
    case(_op, [I(_x), C(i64(1))], label="axis1")
    case(_op, [I(_x), C(i64(0, -1))], {"keepdims": 0}, label="two_axes")
    case(_op, [I(_x)], label="all")
    case(_op, [I(_x)], {"noop_with_empty_axes": 1}, label="noop")
    case(_op, [I(_x, shape=("B", 3, 4)), C(i64(-1))], {"keepdims": 1}, expect=("B", 3, 1), label="sym")
for _op in ("ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceSumSquare", "ReduceL1"):
    case(_op, [I(ri(2, 3, 4, lo=-4, hi=4)), C(i64(2))], label="i32")
case("ReduceMean", [I(r(2, 3, 4, dt="f16")), C(i64(-1))], label="f16")
case("ReduceSum", [I(r(2, 3, 4)), I(i64(1))], expect=(None, None, None), label="dynamic")
for _op in ("ArgMax", "ArgMin"):
    _x = ri(3, 4, 5, lo=-2, hi=2).astype(np.float32)  # ties
    case(_op, [I(_x)])
    case(_op, [I(_x)], {"axis": -1, "keepdims": 0}, label="last")
    case(_op, [I(_x)], {"axis": 1, "select_last_index": 1}, label="select_last")
    case(_op, [I(ri(3, 4))], {"axis": 1}, label="i32")
for _ex in (0, 1):
    for _rev in (0, 1):
        case("CumSum", [I(r(3, 4)), C(np.int64(1))], {"exclusive": _ex, "reverse": _rev}, label=f"ex{_ex}_rev{_rev}")
case("CumSum", [I(ri(3, 4)), C(np.int32(0))], label="i32")
case("TopK", [I(r(3, 6)), C(i64(3))])
case("TopK", [I(ri(3, 6, lo=0, hi=3).astype(np.float32)), C(i64(2))], {"largest": 0, "axis": 0}, label="smallest_ties")
case("TopK", [I(ri(3, 6, lo=0, hi=2)), C(i64(2))], {"axis": 1}, label="ties_i32")

# linear algebra
case("MatMul", [I(rq(3, 4)), I(rq(4, 5))])
case("MatMul", [I(rq(2, 1, 3, 4)), I(rq(5, 4, 6))], label="batched")
case("MatMul", [I(rq(4)), I(rq(2, 4, 3))], label="vec_left")
case("MatMul", [I(rq(2, 3, 4)), I(rq(4))], label="vec_right")
case("MatMul", [I(rq(3, 4, dt="f16")), I(rq(4, 5, dt="f16"))], label="f16")
case("MatMul", [I(ri(3, 4)), I(ri(4, 5))], label="i32")
case("MatMul", [I(rq(2, 5, 8), shape=("B", "S", 8)), C(rq(8, 3))], expect=("B", "S", 3), label="sym")
case("Gemm", [I(rq(3, 4)), I(rq(4, 5)), I(rq(5))])
case("Gemm", [I(rq(4, 3)), I(rq(5, 4)), I(rq(3, 5))], {"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0}, label="trans")
case("Gemm", [I(rq(3, 4)), I(rq(4, 5))], label="noC")
case("Gemm", [I(rq(3, 4)), I(rq(4, 5)), I(rq(1, 5))], {"beta": 0.0}, label="beta0")
case("Gemm", [I(rq(3, 4), shape=("B", 4)), C(rq(5, 4)), C(rq(5))], {"transB": 1}, expect=("B", 5), label="sym")
for _eq, _shapes in (
    ("ij,jk->ik", [(3, 4), (4, 5)]),
    ("bhqd,bhkd->bhqk", [(2, 3, 4, 5), (2, 3, 6, 5)]),
    ("ii->i", [(4, 4)]),
    ("ij->", [(3, 4)]),
    ("ij->ji", [(3, 4)]),
    ("...ij,...jk->...ik", [(2, 3, 4), (4, 5)]),
    ("ij,jk", [(3, 4), (4, 5)]),
    ("i,j->ij", [(3,), (4,)]),
):
    case("Einsum", [I(rq(*s)) for s in _shapes], {"equation": _eq}, label=_eq)
case("Einsum", [I(rq(2, 3, 4), shape=("B", 3, 4)), C(rq(4, 5))], {"equation": "bij,jk->bik"}, expect=("B", 3, 5), label="sym")

# convolution
case("Conv", [I(rq(2, 3, 7, 8)), I(rq(4, 3, 3, 3)), I(rq(4))])
case("Conv", [I(rq(1, 3, 9, 9)), I(rq(4, 3, 3, 3))], {"strides": [2, 2], "pads": [1, 1, 1, 1]}, label="stride_pad")
case("Conv", [I(rq(1, 2, 9, 10)), I(rq(3, 2, 3, 2))], {"dilations": [2, 3], "pads": [0, 1, 2, 3]}, label="dilation")
case("Conv", [I(rq(1, 4, 6, 6)), I(rq(4, 1, 3, 3)), I(rq(4))], {"group": 4, "pads": [1, 1, 1, 1]}, label="depthwise")
case("Conv", [I(rq(1, 4, 6, 6)), I(rq(6, 2, 3, 3))], {"group": 2}, label="group2")
for _ap in ("SAME_UPPER", "SAME_LOWER", "VALID"):
    case("Conv", [I(rq(1, 2, 7, 6)), I(rq(3, 2, 4, 3))], {"auto_pad": _ap, "strides": [2, 1]}, label=_ap)
case("Conv", [I(rq(2, 3, 10)), I(rq(5, 3, 3)), I(rq(5))], {"strides": [2], "pads": [1, 1]}, label="1d")
case("Conv", [I(rq(1, 3, 6, 6)), I(rq(2, 3, 3, 3))], {"kernel_shape": [3, 3]}, label="kernel_shape")
case("Conv", [I(rq(1, 2, 5, 5, dt="f16")), I(rq(3, 2, 3, 3, dt="f16"))], label="f16")
case("Conv", [I(rq(2, 3, 8, 8), shape=("B", 3, 8, 8)), C(rq(4, 3, 3, 3))], {"pads": [1, 1, 1, 1]}, expect=("B", 4, 8, 8), label="sym")
case("Conv", [I(rq(2, 3, 8, 8), shape=("B", 3, "H", "W")), C(rq(4, 3, 3, 3))], {"auto_pad": "SAME_UPPER"}, expect=("B", 4, "H", "W"), label="sym_same")
case("ConvTranspose", [I(rq(1, 3, 4, 4)), I(rq(3, 2, 3, 3))])
case("ConvTranspose", [I(rq(1, 3, 4, 5)), I(rq(3, 2, 3, 3)), I(rq(2))], {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 0]}, label="stride")
case("ConvTranspose", [I(rq(1, 4, 3, 3)), I(rq(4, 1, 2, 2))], {"group": 2, "strides": [2, 2], "dilations": [2, 1]}, label="group", oracle="ort")
case("ConvTranspose", [I(rq(1, 2, 3, 3)), I(rq(2, 2, 3, 3))], {"strides": [2, 2], "output_shape": [6, 7]}, label="output_shape", oracle="ort")
case("ConvTranspose", [I(rq(1, 2, 3, 3)), I(rq(2, 2, 3, 3))], {"strides": [2, 2], "auto_pad": "SAME_UPPER"}, label="same_upper")
case("ConvTranspose", [I(rq(2, 3, 6)), I(rq(3, 4, 3))], {"strides": [3]}, label="1d")

# pooling
case("MaxPool", [I(r(2, 3, 7, 8))], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]})
case("MaxPool", [I(r(1, 2, 7, 7))], {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}, label="ceil")
case("MaxPool", [I(r(1, 2, 8, 8))], {"kernel_shape": [2, 3], "dilations": [2, 2]}, label="dilation")
case("MaxPool", [I(r(1, 2, 4, 4))], {"kernel_shape": [2, 2], "strides": [3, 3], "pads": [1, 1, 1, 1], "ceil_mode": 1}, expect=(1, 2, 2, 2), label="ceil_drop")
case("MaxPool", [I(r(1, 2, 7, 8))], {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}, label="same")
case("MaxPool", [I(r(2, 3, 9))], {"kernel_shape": [3], "strides": [2]}, label="1d")
case("MaxPool", [I(ri(1, 2, 5, 5, dt="i8", lo=-128, hi=127))], {"kernel_shape": [2, 2]}, label="i8", oracle="ort")
case("MaxPool", [I(r(2, 3, 6, 5))], {"kernel_shape": [2, 2], "strides": [2, 1], "pads": [1, 0, 0, 1]}, n_out=2, label="indices")
case("MaxPool", [I(r(1, 2, 5, 6))], {"kernel_shape": [3, 2], "storage_order": 1}, n_out=2, label="indices_colmajor", oracle="ort")
case("MaxPool", [I(r(2, 3, 8, 8), shape=("B", 3, 8, 8))], {"kernel_shape": [2, 2], "strides": [2, 2]}, expect=("B", 3, 4, 4), label="sym")
for _cip in (0, 1):
    case("AveragePool", [I(r(2, 3, 7, 8))], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": _cip}, label=f"cip{_cip}")
    case("AveragePool", [I(r(1, 2, 7, 7))], {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1, "pads": [1, 1, 0, 0], "count_include_pad": _cip}, label=f"ceil_cip{_cip}")
case("AveragePool", [I(r(1, 2, 8, 8))], {"kernel_shape": [2, 2], "dilations": [2, 2]}, label="dilation")
for _cip in (0, 1):
    case("AveragePool", [I(r(1, 2, 4, 5))], {"kernel_shape": [2, 2], "strides": [3, 3], "pads": [1, 1, 1, 1], "ceil_mode": 1, "count_include_pad": _cip}, label=f"ceil_drop_cip{_cip}")
case("AveragePool", [I(r(1, 2, 7, 8))], {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}, label="same")
case("AveragePool", [I(r(2, 3, 9))], {"kernel_shape": [4], "strides": [2]}, label="1d")
for _op in ("GlobalAveragePool", "GlobalMaxPool"):
    case(_op, [I(r(2, 3, 4, 5))])
    case(_op, [I(r(2, 3, 7))], label="1d", oracle="ort")
    case(_op, [I(r(2, 3, 4, 5), shape=("B", 3, "H", "W"))], expect=("B", 3, 1, 1), label="sym")

# cast
_CAST_X = np.array([-300.0, -2.7, -1.5, -0.4, 0.0, 0.3, 0.5, 1.5, 2.5, 3.9, 100.0, 500.0], np.float32)
_CAST_X_SMALL = np.array([-100.0, -2.7, -1.5, -0.4, 0.0, 0.3, 0.5, 1.5, 2.5, 3.9, 100.0, 120.0], np.float32)
for _to in ("f16", "bf16", "f64", "fp8_e4m3", "fp8_e5m2", "bool"):
    case("Cast", [I(_CAST_X)], {"to": _to}, label=_to)
for _to in ("i32", "i64", "i8", "u8", "i16"):
    case("Cast", [I(_CAST_X_SMALL if _to in ("i8",) else np.abs(_CAST_X_SMALL) if _to == "u8" else _CAST_X)], {"to": _to}, label=_to)
case("Cast", [I(_CAST_X)], {"to": "fp8_e4m3", "saturate": 0}, label="fp8_nosat")
case("Cast", [I(np.array([np.inf, -np.inf, np.nan, 1e6], np.float32))], {"to": "fp8_e4m3"}, label="fp8_inf")
case("Cast", [I(np.array([np.inf, -np.inf, np.nan, 1e6], np.float32))], {"to": "fp8_e5m2"}, label="fp8_e5m2_inf")
case("Cast", [I(np.array([np.inf, -np.inf, 1e6], np.float32))], {"to": "fp8_e5m2", "saturate": 0}, label="fp8_e5m2_nosat")
case("Cast", [I(np.array([-7, -6.5, -3.2, -0.3, 0, 0.25, 0.75, 1.25, 2.5, 5, 7, 100], np.float32))], {"to": "fp4_e2m1"}, label="fp4")
case("Cast", [I(np.array([-8, -3, 0, 2, 7], np.float32))], {"to": "i4"}, label="i4")
case("Cast", [I(np.array([200, -200, 127, -129, 5], np.int32))], {"to": "i8"}, label="int_wrap")
case("Cast", [I(ri(6, dt="i64", lo=-1000, hi=1000))], {"to": "f32"}, label="i64_f32")
case("Cast", [I(rb(6))], {"to": "f32"}, label="bool_f32")
case("Cast", [I(rb(6))], {"to": "i64"}, label="bool_i64")
case("Cast", [I(_CAST_X.astype(ml_dtypes.float8_e4m3fn))], {"to": "f32"}, label="fp8_f32")
case("Cast", [I(_CAST_X.astype(ml_dtypes.bfloat16))], {"to": "fp8_e5m2"}, label="bf16_fp8")
case("Cast", [I(r(3, 4), shape=("B", 4))], {"to": "f16"}, expect=("B", 4), label="sym")
case("CastLike", [I(_CAST_X), I(np.zeros(1, np.float16))], label="f16")
case("CastLike", [I(_CAST_X), I(np.zeros(1, ml_dtypes.float8_e4m3fn))], {"saturate": 0}, label="fp8_nosat")

# sources and no-ops
case("Constant", [], {"value": r(2, 3)})
case("Constant", [], {"value": np.array(7, np.int64)}, label="scalar_i64")
case("ConstantOfShape", [C(i64(2, 3))])
case("ConstantOfShape", [C(i64(2, 3))], {"value": np.array([5], np.int64)}, label="i64")
case("ConstantOfShape", [I(i64(2, 3))], {"value": np.array([1.5], np.float16)}, expect=(None, None), label="dynamic")
case("Range", [I(np.float32(1.0)), I(np.float32(5.5)), I(np.float32(0.5))])
case("Range", [C(np.int64(10)), C(np.int64(-3)), C(np.int64(-4))], expect=(4,), label="i64_neg")
case("Range", [C(np.int32(5)), C(np.int32(1)), C(np.int32(1))], expect=(0,), label="empty")
case("Dropout", [I(r(3, 4))])
case("Dropout", [I(r(3, 4)), C(np.float32(0.3))], n_out=2, label="mask")


# ----------------------------------------------------------------------------- quantization ops

QUANT_CASES: list[Case] = []


def qcase(*args: Any, **kw: Any) -> None:
    QUANT_CASES.append(Case(*args, **kw))


def ties(*shape: int) -> np.ndarray:
    """Multiples of 1/8 in [-20, 20]: divided by 0.25 many land exactly on .5."""
    return (_QRNG.integers(-160, 161, size=shape) / 8).astype(np.float32)


# QuantizeLinear
qcase("QuantizeLinear", [I(ties(3, 8)), C(np.float32(0.25)), C(np.uint8(100))], label="u8_ties")
qcase("QuantizeLinear", [I(f32(3, 8, lo=-80, hi=80)), C(np.float32(0.3)), C(np.int8(-5))], label="i8_saturate")
qcase("QuantizeLinear", [I(f32(4, 5)), C(np.float32(0.02))], label="default_u8")
qcase("QuantizeLinear", [I(ties(4, 5)), C(np.float32(0.25))], {"output_dtype": "i8"}, label="output_dtype")
qcase("QuantizeLinear", [I(f32(4, 6)), C(f32(4, lo=0.01, hi=0.1)), C(ints(4, dt="i8"))], {"axis": 0}, label="per_axis0")
qcase("QuantizeLinear", [I(f32(2, 3, 6)), C(f32(6, lo=0.01, hi=0.1)), C(ints(6, dt="u8"))], {"axis": -1}, label="per_axis_neg")
qcase("QuantizeLinear", [I(f32(2, 3, 4), shape=("B", 3, 4)), C(f32(3, lo=0.01, hi=0.1)), C(ints(3, dt="i8"))],
     {"axis": 1}, expect=("B", 3, 4), label="sym")
qcase("QuantizeLinear", [I(ties(4, 6)), C(f32(4, lo=0.1, hi=2)), C(ints(4, dt="i8", lo=-8, hi=7), "i4")], {"axis": 0},
     label="i4_axis")
qcase("QuantizeLinear", [I(ties(4, 6)), C(np.float32(0.5)), C(np.uint8(3), "u4")], label="u4")
qcase("QuantizeLinear", [I(ties(6, 4)), C(f32(2, 4, lo=0.2, hi=2)), C(ints(2, 4, dt="i8", lo=-8, hi=7), "i4")],
     {"axis": 0, "block_size": 3}, label="i4_blocked")
qcase("QuantizeLinear", [I(f32(5, 8)), C(f32(5, 3, lo=0.2, hi=2)), C(ints(5, 3, dt="u8", lo=0, hi=15), "u4")],
     {"axis": 1, "block_size": 3}, label="u4_blocked_partial")
qcase("QuantizeLinear", [I(f32(4, 8, lo=-600, hi=600)), C(np.float32(1.0))], {"output_dtype": "fp8_e4m3"}, label="fp8_e4m3")
qcase("QuantizeLinear", [I(f32(4, 8, lo=-600, hi=600)), C(np.float32(0.5)), C(np.zeros((), ml_dtypes.float8_e4m3fn))],
     {"saturate": 0}, label="fp8_e4m3_no_saturate")
qcase("QuantizeLinear", [I(f32(4, 8, lo=-1e5, hi=1e5)), C(f32(8, lo=0.5, hi=2)), C(np.zeros(8, ml_dtypes.float8_e5m2))],
     label="fp8_e5m2_axis")
qcase("QuantizeLinear", [I(f32(4, 8, lo=-10, hi=10)), C(np.float32(0.5))], {"output_dtype": "fp4_e2m1"}, label="fp4")
qcase("QuantizeLinear", [I(f32(3, 5).astype(np.float16)), C(np.float16(0.07)), C(np.uint8(9))],
     oracle="ort", opset=21, label="f16_divides_in_f32")

# DequantizeLinear
qcase("DequantizeLinear", [I(ints(3, 8)), C(np.float32(0.05)), C(np.uint8(128))], label="u8")
qcase("DequantizeLinear", [I(ints(3, 8, dt="i8")), C(f32(8, lo=0.01, hi=0.1)), C(ints(8, dt="i8"))], label="i8_axis")
qcase("DequantizeLinear", [I(ints(3, 8, dt="i32", lo=-10**6, hi=10**6)), C(np.float32(0.001))], label="i32")
qcase("DequantizeLinear", [I(ints(6, 4, dt="i8", lo=-8, hi=7), "i4"), C(f32(2, 4, lo=0.1, hi=1)),
                          C(ints(2, 4, dt="i8", lo=-8, hi=7), "i4")], {"axis": 0, "block_size": 3}, label="i4_blocked")
qcase("DequantizeLinear", [I(ints(4, 6, dt="u8", lo=0, hi=15), "u4"), C(f32(6, lo=0.1, hi=1)),
                          C(ints(6, dt="u8", lo=0, hi=15), "u4")], label="u4_axis")
qcase("DequantizeLinear", [I(qf.from_bits(np.arange(256).reshape(16, 16), dtypes.fp8_e4m3)), C(np.float32(0.5))],
     label="fp8_e4m3_every_code")
qcase("DequantizeLinear", [I(qf.from_bits(np.arange(256).reshape(16, 16), dtypes.fp8_e5m2)), C(f32(16, lo=0.5, hi=2))],
     label="fp8_e5m2_every_code")
qcase("DequantizeLinear", [I(qf.from_bits(np.arange(16).reshape(2, 8), dtypes.fp4_e2m1)), C(np.float32(0.75))],
     label="fp4_every_code")
qcase("DequantizeLinear", [I(ints(3, 4)), C(np.float16(0.01)), C(np.uint8(3))], label="f16_scale")
qcase("DequantizeLinear", [I(ints(2, 3, 4), shape=("N", 3, 4)), C(np.float32(0.1))], expect=("N", 3, 4), label="sym")

# DynamicQuantizeLinear
qcase("DynamicQuantizeLinear", [I(f32(4, 9))], n_out=3)
qcase("DynamicQuantizeLinear", [I(f32(4, 9, lo=0.5, hi=3))], n_out=3, label="positive")
qcase("DynamicQuantizeLinear", [I(f32(4, 9, lo=-3, hi=-0.5))], n_out=3, label="negative")
# all zeros: the spec's formula gives scale 0; ORT gives 1, ONNX's reference 1/255 (it
# divides the 1 by 255 too): requant follows ORT
qcase("DynamicQuantizeLinear", [I(np.zeros((2, 3), np.float32))], n_out=3, oracle="ort", opset=21, label="zeros")
qcase("DynamicQuantizeLinear", [I(ties(3, 7), shape=("B", 7))], n_out=3, expect=("B", 7), label="sym")

# MatMulInteger
qcase("MatMulInteger", [I(ints(3, 5)), I(ints(5, 4))], label="u8u8")
qcase("MatMulInteger", [I(ints(3, 5)), I(ints(5, 4, dt="i8")), C(np.uint8(128)), C(np.int8(-3))], label="u8i8_zp")
qcase("MatMulInteger", [I(ints(2, 3, 5, dt="i8")), I(ints(5, 4, dt="i8")), C(np.int8(4))], label="i8_batched")
qcase("MatMulInteger", [I(ints(3, 5)), I(ints(5, 4, dt="i8")), None, C(ints(4, dt="i8"))], label="b_zp_per_column")
qcase("MatMulInteger", [I(ints(5)), I(ints(2, 5, 4))], label="vector_a")
qcase("MatMulInteger", [I(ints(2, 3, 5), shape=("B", "S", 5)), I(ints(5, 4, dt="i8"))], expect=("B", "S", 4), label="sym")

# QLinearMatMul (reference requantizes in float64, ORT in float32: both checked)
_QL = [I(ints(2, 3, 6)), C(np.float32(0.02)), C(np.uint8(128)), C(ints(6, 5, dt="i8")), C(np.float32(0.004)),
       C(np.int8(0)), C(np.float32(0.03)), C(np.uint8(120))]
qcase("QLinearMatMul", _QL, label="u8_i8")
qcase("QLinearMatMul", _QL, oracle="ort", label="u8_i8_ort")
_QL2 = [I(ints(4, 6, dt="i8")), C(np.float32(0.05)), C(np.int8(2)), I(ints(6, 3, dt="i8")),
        C(f32(3, lo=0.001, hi=0.01)), C(np.zeros(3, np.int8)), C(np.float32(0.2)), C(np.int8(-7))]
qcase("QLinearMatMul", _QL2, oracle="ort", label="i8_per_column_ort")
qcase("QLinearMatMul", [I(ints(3, 6), shape=("M", 6))] + _QL[1:], expect=("M", 5), oracle="none", label="sym")

# contrib ops (oracle: ONNX Runtime)
_B = ints(16, 5, dt="i8")
qcase("com.microsoft.MatMulIntegerToFloat", [I(ints(2, 3, 16)), C(_B), C(np.float32(0.02)), C(np.float32(0.003))], oracle="ort")
qcase("com.microsoft.MatMulIntegerToFloat", [I(ints(3, 16)), C(_B), C(np.float32(0.02)), C(f32(5, lo=0.001, hi=0.01)),
                              C(np.uint8(128)), C(ints(5, dt="i8", lo=-3, hi=3)), C(f32(5))], oracle="ort",
     label="per_column_bias")
qcase("com.microsoft.MatMulIntegerToFloat", [I(ints(3, 16, dt="i8")), C(_B), C(np.float32(0.02)), C(np.float32(0.003)),
                              C(np.int8(1)), C(np.int8(-2))], oracle="ort", label="i8i8")
qcase("com.microsoft.MatMulIntegerToFloat", [I(ints(2, 3, 16), shape=("B", "S", 16)), C(_B), C(np.float32(0.02)),
                              C(np.float32(0.003))], expect=("B", "S", 5), oracle="ort", label="sym")
qcase("com.microsoft.DynamicQuantizeMatMul", [I(f32(2, 3, 16)), C(_B), C(np.float32(0.004))], oracle="ort")
qcase("com.microsoft.DynamicQuantizeMatMul", [I(f32(3, 16)), C(ints(16, 5)), C(f32(5, lo=0.001, hi=0.01)),
                               C(ints(5, lo=100, hi=140)), C(f32(5))], oracle="ort", label="u8_per_column_bias")
qcase("com.microsoft.DynamicQuantizeMatMul", [I(f32(2, 3, 16), shape=("B", "S", 16)), C(_B), C(np.float32(0.004)), C(np.int8(3))],
     expect=("B", "S", 5), oracle="ort", label="sym")


def _nbits(n: int, k: int, block: int, bits: int, zp: str | None, lead: tuple = (3,), bias: bool = False,
           label: str = "", sym: tuple | None = None) -> None:
    k_blocks = -(-k // block)
    codes = ints(n, k_blocks * block, lo=0, hi=(1 << bits) - 1)
    packed = pack_low_first(codes, bits).reshape(n, k_blocks, block * bits // 8)
    ins = [I(f32(*lead, k), shape=sym), C(packed), C(f32(n, k_blocks, lo=0.01, hi=0.1))]
    if zp == "packed":
        ins.append(C(pack_low_first(ints(n, k_blocks, lo=0, hi=(1 << bits) - 1), bits)))
    elif zp == "float":
        ins.append(C(f32(n, k_blocks, lo=0, hi=(1 << bits) - 1)))
    elif bias:
        ins.append(None)
    if bias:
        ins += [None, C(f32(n))]
    qcase("com.microsoft.MatMulNBits", ins, {"K": k, "N": n, "bits": bits, "block_size": block}, oracle="ort", label=label,
         expect=None if sym is None else tuple(sym[:-1]) + (n,))


_nbits(6, 64, 32, 4, None, label="4bit_default_zp")
_nbits(6, 40, 16, 4, "packed", lead=(2, 3), bias=True, label="4bit_partial_block_zp_bias")
_nbits(5, 48, 16, 4, "float", label="4bit_float_zp")
_nbits(4, 32, 16, 8, "packed", label="8bit")
_nbits(4, 64, 32, 2, "packed", label="2bit")
_nbits(3, 32, 16, 4, None, lead=(2, 5), sym=("B", "S", 32), label="sym")


# ----------------------------------------------------------------------------- FakeQuantize schemes (scheme, needs a scale input)

FQ_SCHEMES = [
    (qf.INT8_PER_TENSOR, True), (qf.UINT8_PER_TENSOR, True), (qf.int8_per_channel(1), True),
    (qf.uint4_per_group(16, 1), True), (qf.FP8_E4M3_PER_TENSOR, True), (qf.fp8_per_channel(0, dtypes.fp8_e5m2), True),
    (qf.QuantScheme(dtypes.fp4_e2m1, "group", 1, 16), True), (qf.QuantScheme(dtypes.dtype("ff_e3m2_b2.5")), True),
    (qf.MXFP4, False), (qf.NVFP4, False),
]


def build_case(case: Case) -> tuple[Graph, dict[str, np.ndarray]]:
    """The one-node graph of `case` (inputs x0, x1, ... or constants c0, c1, ...; the
    node's outputs are the graph's) and the feed of its graph inputs."""
    g = Graph("case")
    b = Builder(g)
    values, feed = [], {}
    for i, x in enumerate(case.inputs):
        if x is None:
            values.append(None)
        elif x.const:
            values.append(b.const(x.value, name=f"c{i}", dtype=dtypes.dtype(x.dt)))
        else:
            shape = None if x.shape == UNKNOWN_RANK else x.shape if x.shape is not None else x.value.shape
            values.append(b.input(f"x{i}", tensor_type(x.dt, shape)))
            feed[f"x{i}"] = x.value
    node = b.node(case.op, *values, _outputs=case.n_out, **case.attrs)
    g.outputs = list(node.outputs)
    return g, feed
