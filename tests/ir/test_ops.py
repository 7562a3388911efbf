"""Op semantics the op cases cannot state (their oracles leave them open, or they are
errors), for the standard ops: exact values where requant defines what ONNX leaves open
(negative Pad crops, integer Pow with negative exponents, Cast saturation and int4
wrap, fp4 NaN, FloatFormat grids), the inferred types of multi-output and symbolic
nodes, unknown ranks, the shape arithmetic of `requant.ir.shapes`, and bad input
raising ShapeInferenceError naming the op.

Every op's cases against ONNX's reference, ONNX Runtime or a numpy reference are in
tests/op_cases/, run by tests/ir/test_op_cases.py.
"""

from __future__ import annotations

import re
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from op_cases import INT_MAX, C, Case, Draws, I, In, build_case, i64
from op_testing import ML_STORAGE, check_type

from requant.errors import RequantError, ShapeInferenceError
from requant.ir import Builder, Graph, dtypes, run, shapes, tensor_type
from requant.ir.ops.cast import cast_to, round_to_float_format

_d = Draws(201)
r, ri, rb = _d.r, _d.ri, _d.rb


def build(case: Case) -> tuple[Graph, list, dict]:
    g, feed = build_case(case)
    return g, list(g.outputs), feed


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


def test_integer_pow_wraps_and_float_exponents_truncate() -> None:
    (y,) = run1("Pow", [I(np.array([3, 7], np.int32)), I(np.array([5, 40], np.int32))])
    np.testing.assert_array_equal(y, [243, pow(7, 40, 2**32) - 2**32])  # int32 two's complement
    (y,) = run1("Pow", [I(np.array([2, -3, 5, 100], np.int16)), I(np.array([0.5, 2.0, 3.7, 4.0], np.float32))])
    np.testing.assert_array_equal(y, [1, 9, 385, 2**15 - 1])  # the float power truncated, saturating


def test_signed_bitshift_out_of_range_counts() -> None:
    """Counts outside [0, 31] give 0, or -1 for a negative shifted right; left shifts wrap."""
    x = np.array([-100, -1, 5, 7, 1 << 20, -(1 << 30)], np.int32)
    (y,) = run1("BitShift", [I(x), I(np.array([3, 40, -1, 31, 4, 2], np.int32))], direction="RIGHT")
    np.testing.assert_array_equal(y, [-13, -1, 0, 0, 1 << 16, -(1 << 28)])
    x = np.array([-100, -1, 5, 7, 1 << 20, 3], np.int32)
    (y,) = run1("BitShift", [I(x), I(np.array([3, 40, -1, 31, 12, 30], np.int32))], direction="LEFT")
    np.testing.assert_array_equal(y, [-800, 0, 0, -(2**31), 0, -(2**30)])


@pytest.mark.parametrize("dt", ["i4", "u4"])
def test_int4_inputs_from_onnx_numpy_helper(dt: str) -> None:
    """onnx.numpy_helper reads INT4/UINT4 tensors as ml_dtypes arrays; the interpreter
    takes them as well as its own int8/uint8 storage (it said "dtype int4, expected int4")."""
    from onnx import helper, numpy_helper

    values = [-8, -1, 0, 7] if dt == "i4" else [0, 3, 9, 15]
    code = helper.np_dtype_to_tensor_dtype(np.dtype(ML_STORAGE[dt]))
    arr = numpy_helper.to_array(helper.make_tensor("x", code, [4], values))
    assert arr.dtype == ML_STORAGE[dt]
    g, _, _ = build(Case("Cast", [I(np.array(values, dtypes.dtype(dt).np), dt)], {"to": "f32"}))
    (y,) = run(g, {"x0": arr})
    np.testing.assert_array_equal(y, np.array(values, np.float32))
    with pytest.raises(RequantError, match=r"dtype int16, expected int4 \(held as int8\)" if dt == "i4" else
                       r"dtype int16, expected uint4 \(held as uint8\)"):
        run(g, {"x0": np.array(values, np.int16)})


@pytest.mark.parametrize("dt", [np.int8, np.int16, np.int32, np.int64])
def test_signed_bitshift_past_the_width(dt: type) -> None:
    """x >> s for s >= the width or s < 0 is -1 for a negative x, else 0 (ONNX's node
    suite finding: [-8, 4, -1] >> [32, 33, 100] is [-1, 0, -1])."""
    bits = np.dtype(dt).itemsize * 8
    x = np.array([-8, 4, -1, -8, 4], dt)
    (y,) = run1("BitShift", [I(x), I(np.array([bits, bits + 1, 100, -1, -3], dt))], direction="RIGHT")
    np.testing.assert_array_equal(y, [-1, 0, -1, -1, 0])
    (y,) = run1("BitShift", [I(x), I(np.array([bits, bits + 1, 100, -1, -3], dt))], direction="LEFT")
    np.testing.assert_array_equal(y, [0, 0, 0, 0, 0])


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
