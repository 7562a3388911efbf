"""Every standard op in requant's registry against ONNX's reference implementation
(`onnx.reference.ReferenceEvaluator`) on a one-node model, with seeded random inputs.

Each case builds the node twice, with `requant.ir.Builder` and with `onnx.helper`, runs
both, and checks (1) the values agree within the dtype's tolerance below (exact for
integers and bools), (2) the inferred output types match the arrays the kernel gave
(dtype exactly; every static dim equal, every symbol bound consistently with the
inputs' symbols), (3) where the case states it, the inferred shape exactly, symbols
included. Error cases check that bad input raises ShapeInferenceError naming the op.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from op_testing import check_type, run_oracle

from requant.errors import RequantError, ShapeInferenceError
from requant.ir import Builder, Graph, dtypes, run, shapes, tensor_type
from requant.ir.ops.cast import cast_to, round_to_float_format
from requant.ir.registry import all_schemas, get_schema

OPSET = 23
INT_MAX = 2**63 - 1

# (rtol, atol) per dtype; integers, bools and fp8/fp4 compare exactly.
TOL: dict[str, tuple[float, float]] = {
    "f64": (1e-12, 1e-12),
    "f32": (1e-5, 1e-6),
    "f16": (2e-3, 2e-3),  # about two f16 ulps
    "bf16": (1.6e-2, 1.6e-2),  # about two bf16 ulps
}

ONNX_DTYPE = {
    "f64": TensorProto.DOUBLE,
    "f32": TensorProto.FLOAT,
    "f16": TensorProto.FLOAT16,
    "bf16": TensorProto.BFLOAT16,
    "i64": TensorProto.INT64,
    "i32": TensorProto.INT32,
    "i16": TensorProto.INT16,
    "i8": TensorProto.INT8,
    "u64": TensorProto.UINT64,
    "u32": TensorProto.UINT32,
    "u16": TensorProto.UINT16,
    "u8": TensorProto.UINT8,
    "bool": TensorProto.BOOL,
    "fp8_e4m3": TensorProto.FLOAT8E4M3FN,
    "fp8_e5m2": TensorProto.FLOAT8E5M2,
    "fp4_e2m1": TensorProto.FLOAT4E2M1,
    "i4": TensorProto.INT4,
    "u4": TensorProto.UINT4,
}
_ML_STORAGE = {"i4": ml_dtypes.int4, "u4": ml_dtypes.uint4}

_RNG = np.random.default_rng(20240607)
UNKNOWN_RANK = "unknown rank"  # In.shape marker: declare the input with shape None


# ----------------------------------------------------------------------------- harness


@dataclass
class In:
    """One operand: a graph input (declared `shape` may hold symbols) or a constant."""

    value: np.ndarray
    const: bool = False
    dtype: str | None = None
    shape: tuple | None = None

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
    oracle: str = "reference"  # or "ort" where ONNX's reference implementation is wrong

    def __str__(self) -> str:
        return f"{self.op}{'-' + self.label if self.label else ''}"


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


def _onnx_attr(op: str, name: str, value: Any) -> Any:
    if op == "Cast" and name == "to":
        return ONNX_DTYPE[dtypes.dtype(value).short]
    if isinstance(value, (np.ndarray, np.generic)):
        return numpy_helper.from_array(np.asarray(value))
    return value


def build(case: Case) -> tuple[Graph, list, dict]:
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
    return g, list(node.outputs), feed


def run_onnx(case: Case, out_types: list) -> list[np.ndarray]:
    names, inits, graph_inputs, feed = [], [], [], {}
    for i, x in enumerate(case.inputs):
        if x is None:
            names.append("")
            continue
        name = f"x{i}"
        names.append(name)
        arr = x.value.astype(_ML_STORAGE[x.dt]) if x.dt in _ML_STORAGE else x.value
        if x.const:
            inits.append(numpy_helper.from_array(arr, name))
        else:
            graph_inputs.append(helper.make_tensor_value_info(name, ONNX_DTYPE[x.dt], list(arr.shape)))
            feed[name] = arr
    while names and names[-1] == "":
        names.pop()
    outs = [f"y{j}" for j in range(len(out_types))]
    attrs = {k: _onnx_attr(case.op, k, v) for k, v in case.attrs.items() if v is not None}
    if case.onnx_attrs is not None:
        attrs.update(case.onnx_attrs)
    node = helper.make_node(case.op, names, outs, **attrs)
    graph = helper.make_graph(
        [node],
        "case",
        graph_inputs,
        [helper.make_tensor_value_info(o, ONNX_DTYPE[t.dtype.short], None) for o, t in zip(outs, out_types)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", case.opset)])
    return run_oracle(model, feed, case.oracle)


def compare(got: np.ndarray, want: np.ndarray, dt: str, where: str) -> None:
    if dt in _ML_STORAGE:
        want = np.asarray(want).astype(np.int64)
        got = got.astype(np.int64)
    assert got.shape == np.shape(want), f"{where}: shape {got.shape}, ONNX gives {np.shape(want)}"
    if dt in TOL:
        rtol, atol = TOL[dt]
        np.testing.assert_allclose(
            got.astype(np.float64), np.asarray(want).astype(np.float64), rtol=rtol, atol=atol, equal_nan=True, err_msg=where
        )
    elif got.dtype.kind == "V" or dt.startswith("fp"):
        np.testing.assert_array_equal(got.astype(np.float64), np.asarray(want).astype(np.float64), err_msg=where)
    else:
        np.testing.assert_array_equal(got, np.asarray(want).astype(got.dtype), err_msg=where)


def check_case(case: Case) -> list[np.ndarray]:
    g, outs, feed = build(case)
    g.verify()
    types = [o.type for o in outs]
    got = run(g, feed)
    bindings: dict[str, int] = {}
    for x in case.inputs:
        if x is not None and not x.const and isinstance(x.shape, tuple):
            for d, n in zip(x.shape, x.value.shape):
                if isinstance(d, str):
                    bindings[d] = n
    for j, (t, arr) in enumerate(zip(types, got)):
        check_type(t, arr, bindings, f"{case} output {j}")
    if case.expect is not None:
        assert types[0].shape == tuple(case.expect), f"{case}: inferred {types[0]}, expected {case.expect}"
    # the kernel itself must give the declared dtypes (run_kernel's cast is a safety net)
    schema = get_schema(case.op)
    arrays = [None if x is None else x.value for x in case.inputs]
    raw = schema.kernel(arrays, schema.fill_attrs(case.attrs), types)
    raw = list(raw) if isinstance(raw, (list, tuple)) else [raw]
    for j, (t, arr) in enumerate(zip(types, raw)):
        assert isinstance(arr, np.ndarray) and arr.dtype == t.dtype.np, (
            f"{case} output {j}: kernel returned {type(arr).__name__} {getattr(arr, 'dtype', '')}, declared {t.dtype}"
        )
    want = run_onnx(case, types)
    assert len(want) == len(got)
    for j, (a, w) in enumerate(zip(got, want)):
        compare(a, w, types[j].dtype.short, f"{case} output {j}")
    return got


# ----------------------------------------------------------------------------- cases

CASES: list[Case] = []


def case(*args: Any, **kw: Any) -> None:
    CASES.append(Case(*args, **kw))


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


def _ids(c: Case) -> str:
    return str(c)


@pytest.mark.parametrize("case", CASES, ids=[f"{c}#{i}" for i, c in enumerate(CASES)])
def test_against_onnx_reference(case: Case) -> None:
    check_case(case)


@pytest.mark.parametrize("unknown", ["dims", "rank"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c}#{i}" for i, c in enumerate(CASES)])
def test_inference_with_unknown_shapes(case: Case, unknown: str) -> None:
    """Graph inputs declared with unknown dims (or unknown rank): inference still works
    and what it claims holds for the arrays the kernel gives."""
    blurred = [
        x if x is None or x.const else In(x.value, False, x.dtype, UNKNOWN_RANK if unknown == "rank" else (None,) * x.value.ndim)
        for x in case.inputs
    ]
    c = Case(case.op, blurred, case.attrs, n_out=case.n_out)
    g, outs, feed = build(c)
    g.verify()
    got = run(g, feed)
    for j, (o, arr) in enumerate(zip(outs, got)):
        check_type(o.type, arr, {}, f"{c} output {j}")


def test_every_op_is_tested() -> None:
    ours = {n for n, s in all_schemas().items() if s.kernel.__module__.startswith("requant.ir.ops.") and not s.domain}
    ours -= {n for n, s in all_schemas().items() if s.kernel.__module__ == "requant.ir.ops.quant"}  # test_quant_ops.py
    tested = {c.op for c in CASES}
    assert not ours - tested, f"ops without an ONNX comparison: {sorted(ours - tested)}"


# ----------------------------------------------------------------------------- semantics ONNX's reference leaves open


def run1(op: str, inputs: list[In | None], n_out: int | None = None, **attrs: Any) -> list[np.ndarray]:
    g, outs, feed = build(Case(op, inputs, attrs, n_out=n_out))
    got = run(g, feed)
    bindings: dict[str, int] = {}
    for t, a in zip([o.type for o in outs], got):
        check_type(t, a, bindings, op)
    return got


def test_pad_negative_crops() -> None:
    x = r(4, 5)
    (y,) = run1("Pad", [I(x), C(i64(-1, 2, 1, -2))])
    want = np.pad(x[1:, :3], [(0, 1), (2, 0)])
    np.testing.assert_array_equal(y, want)


def test_integer_pow_negative_exponent() -> None:
    (y,) = run1("Pow", [I(np.array([1, -1, -1, 2, -3], np.int32)), I(np.array([-2, -3, -2, -1, -1], np.int32))])
    np.testing.assert_array_equal(y, [1, -1, 1, 0, 0])


def test_integer_div_by_zero_raises() -> None:
    with pytest.raises(RequantError, match="Div"):
        run1("Div", [I(np.array([1, 2], np.int32)), I(np.array([1, 0], np.int32))])


def test_cast_float_to_int_saturates() -> None:
    (y,) = run1("Cast", [I(np.array([1e10, -1e10, np.nan, 3.9, -3.9], np.float32))], to="i32")
    np.testing.assert_array_equal(y, [2**31 - 1, -(2**31), 0, 3, -3])
    (y,) = run1("Cast", [I(np.array([100.0, -100.0, 7.9], np.float32))], to="i4")
    np.testing.assert_array_equal(y, [7, -8, 7])


def test_cast_int4_wraps() -> None:
    (y,) = run1("Cast", [I(np.array([9, -9, 16, 7], np.int32))], to="i4")
    np.testing.assert_array_equal(y, [-7, 7, 0, 7])
    (y,) = run1("Cast", [I(np.array([17, -1, 15], np.int32))], to="u4")
    np.testing.assert_array_equal(y, [1, 15, 15])


def test_cast_fp4_nan_and_saturation() -> None:
    (y,) = run1("Cast", [I(np.array([np.nan, np.inf, -np.inf, 6.5], np.float32))], to="fp4_e2m1")
    np.testing.assert_array_equal(y.astype(np.float32), [6, 6, -6, 6])


def test_float_format_grid() -> None:
    x = np.linspace(-8, 8, 161, dtype=np.float32)
    fmt = dtypes.FloatFormat(2, 1, 1)  # the e2m1 grid
    np.testing.assert_array_equal(round_to_float_format(x, fmt), cast_to(x, "fp4_e2m1").astype(np.float32))
    (y,) = run1("Cast", [I(x)], to="ff_e2m1_b1")
    np.testing.assert_array_equal(y, cast_to(x, "fp4_e2m1").astype(np.float32))
    # a shifted bias scales the grid; e4m3-like with 3 mantissa bits keeps 4 significant bits
    y = round_to_float_format(np.array([1.0, 1.06, 1.07, 0.3], np.float32), dtypes.FloatFormat(4, 3, 7))
    np.testing.assert_array_equal(y, np.array([1.0, 1.0, 1.125, 0.3125], np.float32))
    big = dtypes.FloatFormat(3, 2, 2.5)
    assert round_to_float_format(np.array([1e9], np.float32), big)[0] == np.float32(big.max_value)


def test_dropout_training_mode_refused() -> None:
    with pytest.raises(ShapeInferenceError, match="^Dropout: .*inference"):
        run1("Dropout", [I(r(3)), C(np.float32(0.5)), C(np.array(True))])


def test_split_from_output_count() -> None:
    """Opset-13 form: no split, no num_outputs; the node's output count splits evenly."""
    ys = run1("Split", [I(r(6, 2))], n_out=3)
    assert [y.shape for y in ys] == [(2, 2)] * 3


def test_layer_norm_stats_types() -> None:
    g, outs, _ = build(Case("LayerNormalization", [I(r(2, 3, 8), shape=("B", 3, 8)), C(r(8))], n_out=3))
    assert [str(o.type) for o in outs] == ["f32[B,3,8]", "f32[B,3,1]", "f32[B,3,1]"]
    g, outs, _ = build(Case("LayerNormalization", [I(r(2, 3, 8)), C(r(3, 8))], {"axis": 1}, n_out=2))
    assert outs[1].type.shape == (2, 1, 1)


def test_symbolic_slice_and_squeeze_without_axes() -> None:
    g, outs, _ = build(Case("Slice", [I(r(2, 6), shape=("B", 6)), C(i64(1)), C(i64(INT_MAX)), C(i64(0))]))
    assert outs[0].type.shape == (None, 6)
    g, outs, _ = build(Case("Squeeze", [I(r(2, 1), shape=("B", 1))]))
    assert outs[0].type.shape is None


def test_unknown_rank_propagates() -> None:
    g = Graph()
    b = Builder(g)
    x = b.input("x", tensor_type("f32", None))
    assert b.Relu(x).type.shape is None
    assert b.Reshape(x, b.const(i64(2, -1))).type.shape == (2, None)
    assert b.Softmax(x).type.shape is None
    assert b.ReduceSum(x, b.const(i64(0)), keepdims=0).type.shape is None
    assert b.Shape(x).type.shape == (None,)


# ----------------------------------------------------------------------------- shape arithmetic


@pytest.mark.parametrize(
    "src,target,allowzero,want",
    [
        ((2, 3, 4), [6, -1], False, (6, 4)),
        (("B", "S", 768), [0, 0, 12, 64], False, ("B", "S", 12, 64)),
        (("B", 12, 64), [0, -1], False, ("B", 768)),
        (("B", 12, 64), [-1, 768], False, ("B", 768)),
        (("B", "S", 64), [-1, 64], False, (None, 64)),
        (("B", "S", 64), [0, -1], False, ("B", None)),
        (("B", "S", 12, 64), [0, 0, -1], False, ("B", "S", 768)),
        (("B", 4, 6), [-1, 4, 6], False, ("B", 4, 6)),
        ((None, 4), [-1], False, (None,)),
        ((0, 3), [3, 0], True, (3, 0)),
        ((4, 3), [2, 0, 2], False, (2, 3, 2)),
        (None, [0, -1], False, (None, None)),
    ],
)
def test_reshape_shape(src, target, allowzero, want) -> None:
    assert shapes.reshape_shape(src, target, allowzero) == want


@pytest.mark.parametrize(
    "dim,start,end,step,want",
    [
        (10, 0, INT_MAX, 1, 10),
        (10, -3, INT_MAX, 1, 3),
        (10, -1, -INT_MAX, -1, 10),
        (10, 8, 1, -3, 3),
        (10, 20, 30, 1, 0),
        (10, -100, 100, 4, 3),
        ("B", 0, INT_MAX, 1, "B"),
        ("B", 0, 2**31 - 1, 1, "B"),
        ("B", -1, -INT_MAX, -1, "B"),
        ("B", 1, INT_MAX, 1, None),
        ("B", 0, 5, 1, None),
        (None, 0, INT_MAX, 1, None),
    ],
)
def test_slice_dim(dim, start, end, step, want) -> None:
    assert shapes.slice_dim(dim, start, end, step) == want


def test_symbolic_products_and_windows() -> None:
    assert shapes.symbolic_product(("B", 1, 1)) == "B"
    assert shapes.symbolic_product(("B", 2)) is None
    assert shapes.symbolic_product(("B", 0)) == 0
    assert shapes.dim_add("B", 0) == "B" and shapes.dim_add("B", 1) is None
    assert shapes.unify_dims("B", 4) == 4 and shapes.unify_dims(None, "B") == "B"
    with pytest.raises(ShapeInferenceError):
        shapes.unify_dims(3, 4, "Concat")
    # kernel 3, stride 1, pads 1+1 keep a symbolic extent; stride 2 loses it
    assert shapes.window_out_dim("H", 3, 1, 1, (1, 1), "NOTSET") == "H"
    assert shapes.window_out_dim("H", 3, 2, 1, (1, 1), "NOTSET") is None
    assert shapes.window_out_dim(7, 2, 2, 1, (0, 0), "NOTSET", ceil_mode=True) == 4
    assert shapes.window_out_dim(6, 3, 2, 1, (1, 1), "NOTSET", ceil_mode=True) == 4
    assert shapes.window_out_dim(4, 2, 3, 1, (1, 1), "NOTSET", ceil_mode=True) == 2  # a 3rd window would start in the padding
    assert shapes.resolve_pads((7,), [4], [2], [1], None, "SAME_LOWER") == [(2, 1)]
    assert shapes.resolve_pads((7,), [4], [2], [1], None, "SAME_UPPER") == [(1, 2)]


# ----------------------------------------------------------------------------- errors

ERRORS = [
    # (op, inputs, attrs, n_out, message pattern)
    ("Add", [I(r(3)), I(ri(3))], {}, None, "dtypes differ"),
    ("Add", [I(r(3)), I(r(4))], {}, None, "do not broadcast"),
    ("Add", [I(rb(3)), I(rb(3))], {}, None, "expected a number"),
    ("Add", [I(r(3).astype(ml_dtypes.float8_e4m3fn)), I(r(3).astype(ml_dtypes.float8_e4m3fn))], {}, None, "storage format"),
    ("Exp", [I(ri(3))], {}, None, "expected a float"),
    ("Relu", [I(r(3))], {"foo": 1}, None, "unknown attribute"),
    ("Concat", [I(r(3)), I(r(3))], {}, None, "missing required attribute.*axis"),
    ("Concat", [I(r(3, 2)), I(r(3))], {"axis": 0}, None, "different ranks"),
    ("Concat", [I(r(3, 2)), I(r(3, 4))], {"axis": 0}, None, "differ"),
    ("Cast", [I(r(3))], {}, None, "missing required attribute.*to"),
    ("Cast", [I(r(3))], {"to": 1}, None, "dtype name"),
    ("Cast", [I(r(3))], {"to": "float99"}, None, "unknown dtype"),
    ("MaxPool", [I(r(1, 1, 4, 4))], {}, None, "missing required attribute.*kernel_shape"),
    ("MaxPool", [I(r(1, 4, 4))], {"kernel_shape": [2, 2]}, None, "kernel_shape"),
    ("Einsum", [I(r(3))], {}, None, "missing required attribute.*equation"),
    ("Einsum", [I(r(3, 4)), I(r(5, 6))], {"equation": "ij,jk->ik"}, None, "differ"),
    ("Conv", [I(r(3, 4)), I(r(2, 3, 3))], {}, None, "rank"),
    ("Conv", [I(r(1, 3, 5, 5)), I(r(2, 4, 3, 3))], {}, None, "channels"),
    ("Conv", [I(r(1, 3, 5, 5)), I(r(2, 3, 3, 3))], {"strides": [1]}, None, "strides"),
    ("Conv", [I(r(1, 3, 5, 5)), I(r(2, 3, 3, 3))], {"auto_pad": "SAME"}, None, "auto_pad"),
    ("Gemm", [I(r(2, 3, 4)), I(r(4, 5))], {}, None, "2-D"),
    ("Gemm", [I(r(3, 4)), I(r(5, 6))], {}, None, "inner dims"),
    ("MatMul", [I(r(3, 4)), I(r(5, 6))], {}, None, "inner dims"),
    ("Transpose", [I(r(3, 4))], {"perm": [0, 2]}, None, "permutation"),
    ("Transpose", [I(r(3, 4))], {"perm": "01"}, None, "list of ints"),
    ("Reshape", [I(r(3, 4)), C(i64(5, -1))], {}, None, "cannot reshape"),
    ("Reshape", [I(r(3, 4)), C(i64(-1, -1))], {}, None, "more than one -1"),
    ("Reshape", [I(r(3, 4)), C(np.array([12], np.int32))], {}, None, "i64"),
    ("Squeeze", [I(r(3, 4)), C(i64(0))], {}, None, "cannot squeeze"),
    ("Unsqueeze", [I(r(3, 4)), C(i64(5))], {}, None, "out of range"),
    ("Split", [I(r(6, 2)), C(i64(2, 2))], {}, None, "sums to"),
    ("Split", [I(r(7, 2))], {}, 2, "evenly"),
    ("Split", [I(r(6, 2))], {}, None, "num_outputs"),
    ("Softmax", [I(r(3, 4))], {"axis": 2}, None, "out of range"),
    ("Gather", [I(r(3, 4)), I(r(2))], {}, None, "i32 or i64"),
    ("LayerNormalization", [I(r(2, 8)), I(r(4))], {}, None, "does not broadcast|broadcast"),
    ("LayerNormalization", [I(r(2, 8)), I(r(8))], {"stash_type": 10}, None, "stash_type"),
    ("LayerNormalization", [I(r(2, 8)), I(r(8, dt="f16"))], {}, None, "dtype"),
    ("BatchNormalization", [I(r(2, 3, 4)), I(r(3)), I(r(3)), I(r(3)), I(r(3))], {"training_mode": 1}, None, "training_mode=1 is not supported"),
    ("BatchNormalization", [I(r(2, 3, 4)), I(r(4)), I(r(4)), I(r(4)), I(r(4))], {}, None, "channel sizes differ"),
    ("Mod", [I(r(3)), I(r(3))], {}, None, "fmod=1"),
    ("Gelu", [I(r(3))], {"approximate": "fast"}, None, "approximate"),
    ("Where", [I(r(3)), I(r(3)), I(r(3))], {}, None, "condition"),
    ("Where", [I(rb(3)), I(r(3)), I(ri(3))], {}, None, "dtypes differ"),
    ("Slice", [I(r(3, 4)), C(i64(0)), C(i64(2)), C(i64(0)), C(i64(0))], {}, None, "steps"),
    ("Pad", [I(r(3, 4)), C(i64(1, 1))], {}, None, "pads has 2 values"),
    ("Pad", [I(r(3, 4)), C(i64(1, 1, 1, 1))], {"mode": "mirror"}, None, "mode"),
    ("TopK", [I(r(3, 4)), C(i64(5))], {}, None, "out of range"),
    ("Range", [I(r(2)), I(np.float32(1)), I(np.float32(1))], {}, None, "scalar"),
    ("ConstantOfShape", [C(i64(2))], {"value": 1.5}, None, "numpy array"),
    ("Clip", [I(r(3)), C(r(2))], {}, None, "scalar"),
    ("Relu", [I(r(3)), I(r(3))], {}, None, "takes 1 inputs"),
    ("LayerNormalization", [I(r(2, 8)), I(r(8))], {}, 4, "outputs"),
]


@pytest.mark.parametrize("op,inputs,attrs,n_out,pattern", ERRORS, ids=[f"{e[0]}-{i}" for i, e in enumerate(ERRORS)])
def test_bad_input_raises(op: str, inputs: list, attrs: dict, n_out: int | None, pattern: str) -> None:
    with pytest.raises(ShapeInferenceError) as info:
        build(Case(op, inputs, attrs, n_out=n_out))
    message = str(info.value)
    assert message.startswith(f"{op}:"), message
    assert re.search(pattern, message), message
