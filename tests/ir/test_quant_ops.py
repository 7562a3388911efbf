"""Quantization ops (requant.ir.ops.quant) against an oracle on one-node models:

- ONNX's reference implementation (`onnx.reference.ReferenceEvaluator`) for the standard
  ops: QuantizeLinear / DequantizeLinear (int8/uint8, int4/uint4, fp8, fp4, per tensor,
  per axis, blocked), DynamicQuantizeLinear, MatMulInteger, QLinearMatMul; exact.
- ONNX Runtime for the com.microsoft ops (MatMulIntegerToFloat, DynamicQuantizeMatMul,
  MatMulNBits), and for the standard ops where ONNX's reference computes differently
  from the kernels ORT runs (QLinearMatMul requantizes in float32 in ORT, float64 in the
  reference; f16 QuantizeLinear divides in float32 in ORT). Integer outputs exactly;
  float outputs within FLOAT_TOL (|a - b| <= FLOAT_TOL * max(1, max|ref|)), which only
  covers ORT's different float32 summation order in MatMulNBits; the others agree
  bit for bit and are checked exactly.

Each case also checks the inferred output types against the arrays the kernel gives
(dtype exactly, static dims equal, symbols bound consistently). Error cases check that
bad input raises ShapeInferenceError naming the op. FakeQuantize has no ONNX oracle:
it is checked against `requant.ir.quant_formats` here and against ONNX Runtime through
its lowering in tests/backends/test_onnx_quant_ops.py.
"""

from __future__ import annotations

import re
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from op_testing import ML_STORAGE as _ML_STORAGE
from op_testing import ONNX_DTYPE, check_type, input_bindings, run_one_node
from op_cases import (  # noqa: F401  (the shared case list and its helpers)
    FQ_SCHEMES,
    OPSET,
    UNKNOWN_RANK,
    C,
    Case,
    I,
    In,
    f32,
    ints,
    ties,
)
from op_cases import QUANT_CASES as CASES
from op_cases import build_case

from requant.errors import RequantError, ShapeInferenceError
from requant.ir import Builder, Graph, dtypes, run, tensor_type
from requant.ir import quant_formats as qf
from requant.ir.ops.onnxruntime import pack_low_first, unpack_low_first
from requant.ir.ops.quant import dynamic_qparams_u8
from requant.ir.registry import all_schemas

FLOAT_TOL = 1e-5

_DTYPE_ATTRS = {"output_dtype"}


# ----------------------------------------------------------------------------- harness


def build(case: Case) -> tuple[Graph, list, dict]:
    g, feed = build_case(case)
    return g, list(g.outputs), feed


def run_onnx(case: Case, out_types: list) -> list[np.ndarray]:
    attrs = {k: (ONNX_DTYPE[dtypes.dtype(v).short] if k in _DTYPE_ATTRS else v)
             for k, v in case.attrs.items() if v is not None}
    return run_one_node(case, out_types, attrs, all_schemas()[case.op].domain)


def compare(got: np.ndarray, want: np.ndarray, dt: str, exact_float: bool, where: str) -> None:
    want = np.asarray(want)
    assert got.shape == want.shape, f"{where}: shape {got.shape}, oracle gives {want.shape}"
    if dt in _ML_STORAGE or dt.startswith("fp8") or dt == "fp4_e2m1":
        a, w = got.astype(np.float64), want.astype(np.float64)
        np.testing.assert_array_equal(a, w, err_msg=where)
        np.testing.assert_array_equal(np.signbit(a), np.signbit(w), err_msg=where)
    elif got.dtype.kind == "f":
        a, w = got.astype(np.float64), want.astype(np.float64)
        if exact_float:
            np.testing.assert_array_equal(a, w, err_msg=where)
        else:
            assert np.array_equal(np.isnan(a), np.isnan(w)), where
            tol = FLOAT_TOL * max(1.0, float(np.nanmax(np.abs(w), initial=0)))
            assert float(np.nanmax(np.abs(a - w), initial=0)) <= tol, f"{where}: beyond {tol}"
    else:
        np.testing.assert_array_equal(got, want.astype(got.dtype), err_msg=where)


def check_case(case: Case) -> list[np.ndarray]:
    g, outs, feed = build(case)
    g.verify()
    types = [o.type for o in outs]
    got = run(g, feed)
    bindings = input_bindings(case)
    for j, (t, arr) in enumerate(zip(types, got)):
        check_type(t, arr, bindings, f"{case} output {j}")
    if case.expect is not None:
        assert types[0].shape == tuple(case.expect), f"{case}: inferred {types[0]}, expected {case.expect}"
    if case.oracle != "none":
        want = run_onnx(case, types)
        exact = case.op != "com.microsoft.MatMulNBits"
        for j, (a, w) in enumerate(zip(got, want)):
            compare(a, w, types[j].dtype.short, exact, f"{case} output {j} vs {case.oracle}")
    return got


@pytest.mark.parametrize("case", CASES, ids=[f"{c}#{i}" for i, c in enumerate(CASES)])
def test_against_oracle(case: Case) -> None:
    check_case(case)


@pytest.mark.parametrize("unknown", ["dims", "rank"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c}#{i}" for i, c in enumerate(CASES)])
def test_inference_with_unknown_shapes(case: Case, unknown: str) -> None:
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


def test_every_quant_op_is_tested() -> None:
    ours = {n for n, s in all_schemas().items() if s.kernel.__module__ in ("requant.ir.ops.quant", "requant.ir.ops.onnxruntime")}
    tested = {c.op for c in CASES} | {"FakeQuantize"}  # FakeQuantize: tests below + backend tests
    assert not ours - tested, f"quantization ops without an oracle comparison: {sorted(ours - tested)}"


# ----------------------------------------------------------------------------- semantics the oracles leave open


def run1(op: str, inputs: list[In | None], n_out: int | None = None, **attrs: Any) -> list[np.ndarray]:
    g, outs, feed = build(Case(op, inputs, attrs, n_out=n_out))
    got = run(g, feed)
    for t, a in zip([o.type for o in outs], got):
        check_type(t, a, {}, op)
    return got


def test_quantize_linear_nan_inf_and_zero_scale() -> None:
    x = np.array([np.nan, np.inf, -np.inf, 1.0, -1.0, 0.0], np.float32)
    (y,) = run1("QuantizeLinear", [I(x), C(np.float32(0.5)), C(np.uint8(10))])
    np.testing.assert_array_equal(y, [0, 255, 0, 12, 8, 10])
    (y,) = run1("QuantizeLinear", [I(x), C(np.float32(0.0)), C(np.int8(0))])
    np.testing.assert_array_equal(y, [-128, 127, -128, 127, -128, -128])  # 0/0 is NaN -> lowest code
    (y,) = run1("QuantizeLinear", [I(x), C(np.float32(1.0))], output_dtype="fp4_e2m1")
    np.testing.assert_array_equal(y.astype(np.float32), [6, 6, -6, 1, -1, 0])


def test_matmul_integer_wraps_to_int32() -> None:
    k = 40000
    a = np.full((1, k), 255, np.uint8)
    b = np.full((k, 1), 255, np.uint8)
    (y,) = run1("MatMulInteger", [I(a), I(b)])
    assert y.dtype == np.int32
    want = (255 * 255 * k + 2**31) % 2**32 - 2**31
    assert int(y[0, 0]) == want and want < 0


def test_matmul_integer_per_row_a_zero_point() -> None:
    a, b = ints(3, 5), ints(5, 4, dt="i8")
    zp = np.array([1, 200, 7], np.uint8)
    (y,) = run1("MatMulInteger", [I(a), I(b), C(zp)])
    want = (a.astype(np.int64) - zp[:, None].astype(np.int64)) @ b.astype(np.int64)
    np.testing.assert_array_equal(y, want)


def test_qlinear_matmul_requantizes_in_float32_like_ort() -> None:
    """acc * multiplier in float32 with multiplier = f32(f32(sa * sb) / sy)."""
    a, b = ints(4, 8), ints(8, 3, dt="i8")
    sa, sb, sy = np.float32(0.0173), np.float32(0.00311), np.float32(0.0457)
    (y,) = run1("QLinearMatMul", [I(a), C(sa), C(np.uint8(131)), I(b), C(sb), C(np.int8(2)), C(sy), C(np.uint8(99))])
    acc = (a.astype(np.int64) - 131) @ (b.astype(np.int64) - 2)
    mult = np.float32(np.float32(sa * sb) / sy)
    want = np.clip(np.rint(acc.astype(np.float32) * mult).astype(np.int64) + 99, 0, 255)
    np.testing.assert_array_equal(y, want)


def test_dynamic_qparams_match_the_codec() -> None:
    x = f32(50, lo=-2, hi=5)
    s, z = dynamic_qparams_u8(x)
    s2, z2 = qf.choose_qparams(qf.UINT8_PER_TENSOR, x.min(), x.max())
    assert s == s2 and z == z2


def test_nbits_packing_is_low_bits_first() -> None:
    packed = pack_low_first(np.array([[1, 2, 3, 4, 15]]), 4)
    np.testing.assert_array_equal(packed, [[0x21, 0x43, 0x0F]])
    np.testing.assert_array_equal(unpack_low_first(packed, 4)[:, :5], [[1, 2, 3, 4, 15]])
    two = pack_low_first(np.array([[1, 2, 3, 0]]), 2)
    np.testing.assert_array_equal(two, [[0b00111001]])


def test_matmul_nbits_matches_an_explicit_dequantization() -> None:
    n, k, block = 3, 40, 16
    codes = ints(n, 48, lo=0, hi=15)
    scales = f32(n, 3, lo=0.01, hi=0.1)
    zps = ints(n, 3, lo=0, hi=15)
    a = f32(2, k)
    (y,) = run1("com.microsoft.MatMulNBits", [I(a), C(pack_low_first(codes, 4).reshape(n, 3, 8)), C(scales),
                                C(pack_low_first(zps, 4))], K=k, N=n, bits=4, block_size=block)
    blk = np.arange(k) // block
    w = ((codes[:, :k].astype(np.float32) - zps[:, blk]) * scales[:, blk]).T
    np.testing.assert_allclose(y, a @ w, rtol=1e-6, atol=1e-6)
    (y8,) = run1("com.microsoft.MatMulNBits", [I(a), C(pack_low_first(codes, 4).reshape(n, 3, 8)), C(scales)],
                 K=k, N=n, bits=4, block_size=block)
    w8 = ((codes[:, :k].astype(np.float32) - 8) * scales[:, blk]).T
    np.testing.assert_allclose(y8, a @ w8, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("scheme,needs_scale", FQ_SCHEMES, ids=[str(s) for s, _ in FQ_SCHEMES])
def test_fake_quantize_is_the_codec(scheme: qf.QuantScheme, needs_scale: bool) -> None:
    x = f32(4, 40, lo=-4, hi=4)
    inputs: list[In | None] = [I(x, shape=("B", 40))]
    scale = zp = None
    if needs_scale:
        scale, zp = qf.choose_qparams(scheme, *qf.tensor_ranges(x, scheme))
        inputs.append(C(scale))
        if scheme.dtype.is_integer and not scheme.symmetric:
            inputs.append(C(zp, scheme.dtype.short))
        else:
            zp = None
    (y,) = run1("FakeQuantize", inputs, **scheme.op_attrs())
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, qf.fake_quantize(x, scheme, scale, zp))


def test_fake_quantize_nv_with_a_calibrated_tensor_scale() -> None:
    x = f32(2, 32)
    (y,) = run1("FakeQuantize", [I(x), C(np.float32(0.004))], **qf.NVFP4.op_attrs())
    np.testing.assert_array_equal(y, qf.fake_quantize(x, qf.NVFP4, np.float32(0.004)))


def test_text_form_round_trips() -> None:
    from requant.ir import parse

    g = Graph("quant_text")
    b = Builder(g)
    x = b.input("x", tensor_type("f32", ("n", 32)))
    outs = [
        b.FakeQuantize(x, **qf.MXFP4.op_attrs()),
        b.FakeQuantize(x, b.const(np.float32(0.1)), b.const(np.int8(1), dtype=dtypes.int4), dtype="i4"),
        b.QuantizeLinear(x, b.const(np.float32(0.5)), output_dtype="fp8_e4m3", saturate=0),
        b["com.microsoft.MatMulNBits"](x, b.const(pack_low_first(ints(4, 32, lo=0, hi=15), 4).reshape(4, 2, 8)),
                      b.const(f32(4, 2)), K=32, N=4, block_size=16, accuracy_level=4),
    ]
    g.outputs.extend(outs)
    g.verify()
    assert parse(g.to_text()).to_text() == g.to_text()


def test_kernel_errors_name_the_node() -> None:
    with pytest.raises(RequantError, match="QuantizeLinear.*zero point must be 0"):
        run1("QuantizeLinear", [I(f32(3)), C(np.float32(1)), I(np.ones((), ml_dtypes.float8_e4m3fn))])


# ----------------------------------------------------------------------------- errors

ERRORS = [
    ("QuantizeLinear", [I(ints(3)), C(np.float32(1))], {}, None, "dtype u8, expected"),
    ("QuantizeLinear", [I(f32(3, 4)), C(f32(5)), C(ints(5))], {"axis": 1}, None, "axis 1 of input .* has 4"),
    ("QuantizeLinear", [I(f32(3, 4)), C(f32(3, 4))], {}, None, "scalar or 1-D"),
    ("QuantizeLinear", [I(f32(3, 4)), C(f32(4)), C(ints(3))], {"axis": 1}, None, "y_scale and y_zero_point"),
    ("QuantizeLinear", [I(f32(3, 4)), C(f32(2, 4))], {"axis": 0, "block_size": 3}, None, "dim 0 must be 1"),
    ("QuantizeLinear", [I(f32(3, 4)), C(f32(2))], {"axis": 0, "block_size": 2}, None, "input's rank"),
    ("QuantizeLinear", [I(f32(3, 4)), C(f32(4))], {"axis": 5}, None, "axis 5 out of range"),
    ("QuantizeLinear", [I(f32(3)), C(np.float32(1)), C(np.int8(0))], {"output_dtype": "u8"}, None, "differs"),
    ("QuantizeLinear", [I(f32(3)), C(np.float32(1))], {"output_dtype": "f32"}, None, "output_dtype f32"),
    ("QuantizeLinear", [I(f32(3)), C(np.float32(1)), C(np.ones((), ml_dtypes.float8_e4m3fn))], {}, None, "must be 0"),
    ("QuantizeLinear", [I(f32(3)), C(np.float32(1))], {"output_dtype": 3}, None, "dtype name"),
    ("QuantizeLinear", [I(f32(3)), C(np.float32(1))], {"saturate": 2}, None, "saturate"),
    ("DequantizeLinear", [I(ints(3)), C(np.float32(1)), C(np.int8(0))], {}, None, "must match"),
    ("DequantizeLinear", [I(f32(3)), C(np.float32(1))], {}, None, "x has dtype f32"),
    ("DequantizeLinear", [I(ints(3)), C(np.int32(1))], {}, None, "x_scale has dtype i32"),
    ("DynamicQuantizeLinear", [I(f32(3).astype(np.float16))], {}, 3, "expected f32"),
    ("MatMulInteger", [I(ints(3, 4)), I(ints(5, 6))], {}, None, "inner dims"),
    ("MatMulInteger", [I(f32(3, 4)), I(ints(4, 6))], {}, None, "A has dtype f32"),
    ("MatMulInteger", [I(ints(3, 4)), I(ints(4, 6)), C(ints(5))], {}, None, "per row of A needs 3"),
    ("MatMulInteger", [I(ints(3, 4)), I(ints(4, 6)), None, C(ints(5))], {}, None, "per column of B needs 6"),
    ("QLinearMatMul", [I(ints(3, 4)), C(np.float32(1)), C(np.int8(0)), I(ints(4, 2)), C(np.float32(1)),
                       C(np.uint8(0)), C(np.float32(1)), C(np.uint8(0))], {}, None, "must match"),
    ("QLinearMatMul", [I(ints(3, 4)), C(np.float64(1)), C(np.uint8(0)), I(ints(4, 2)), C(np.float32(1)),
                       C(np.uint8(0)), C(np.float32(1)), C(np.uint8(0))], {}, None, "a_scale has dtype f64"),
    ("com.microsoft.MatMulIntegerToFloat", [I(ints(3, 4)), I(ints(4, 2)), C(f32(3)), C(np.float32(1))], {}, None, "one value"),
    ("com.microsoft.MatMulIntegerToFloat", [I(ints(3, 4)), I(ints(4, 2)), C(np.float32(1)), C(f32(3))], {}, None, "needs 2"),
    ("com.microsoft.MatMulIntegerToFloat", [I(ints(3, 4)), I(ints(4, 2)), C(np.float32(1)), C(np.float32(1)), None, None, C(f32(3))],
     {}, None, "bias has 3 values"),
    ("com.microsoft.DynamicQuantizeMatMul", [I(f32(3, 4)), I(f32(4, 2)), C(np.float32(1))], {}, None, "B has dtype f32"),
    ("com.microsoft.MatMulNBits", [I(f32(2, 32)), C(ints(3, 2, 8)), C(f32(3, 2))], {"K": 32, "N": 3}, None, "missing required attribute"),
    ("com.microsoft.MatMulNBits", [I(f32(2, 32)), C(ints(3, 2, 8)), C(f32(3, 2))], {"K": 32, "N": 3, "block_size": 24}, None,
     "power of two"),
    ("com.microsoft.MatMulNBits", [I(f32(2, 32)), C(ints(3, 2, 8)), C(f32(3, 2))], {"K": 32, "N": 3, "block_size": 16, "bits": 3},
     None, "bits=3"),
    ("com.microsoft.MatMulNBits", [I(f32(2, 32)), C(ints(3, 4, 8)), C(f32(3, 2))], {"K": 32, "N": 3, "block_size": 16}, None,
     r"B has shape \(3, 4, 8\)"),
    ("com.microsoft.MatMulNBits", [I(f32(2, 30)), C(ints(3, 2, 8)), C(f32(3, 2))], {"K": 32, "N": 3, "block_size": 16}, None,
     "last dim is 30"),
    ("com.microsoft.MatMulNBits", [I(f32(2, 32)), C(ints(3, 2, 8)), C(f32(3, 2).astype(np.float16))],
     {"K": 32, "N": 3, "block_size": 16}, None, "scales has dtype f16"),
    ("FakeQuantize", [I(f32(3, 4)), C(np.float32(1))], {}, None, "missing required attribute.*dtype"),
    ("FakeQuantize", [I(f32(3, 4)), C(np.float32(1))], {"dtype": "f32"}, None, "not a quantization format"),
    ("FakeQuantize", [I(f32(3, 4))], {"dtype": "i8"}, None, "needs the scale"),
    ("FakeQuantize", [I(f32(3, 4)), C(np.float32(1))], {"dtype": "i8", "granularity": "mx"}, None, "fp4_e2m1"),
    ("FakeQuantize", [I(f32(3, 32)), C(np.float32(1))], {"dtype": "fp4_e2m1", "granularity": "mx"}, None,
     "no scale input"),
    ("FakeQuantize", [I(f32(3, 4)), C(f32(3))], {"dtype": "i8", "granularity": "channel", "axis": 1}, None,
     "axis 1 of input"),
    ("FakeQuantize", [I(f32(3, 4)), C(f32(4))], {"dtype": "i8"}, None, "per-tensor scale must hold one value"),
    ("FakeQuantize", [I(f32(3, 4)), C(np.float32(1)), C(np.int8(0))], {"dtype": "fp8_e4m3"}, None, "no zero point"),
    ("FakeQuantize", [I(f32(3, 4)), C(np.float32(1)), C(np.uint8(0))], {"dtype": "i8"}, None, "zero_point has dtype u8"),
    ("FakeQuantize", [I(f32(3, 4)), C(f32(3, 1))], {"dtype": "i4", "granularity": "group", "axis": 1}, None,
     "group_size"),
    ("FakeQuantize", [I(f32(3, 4).astype(np.float16)), C(np.float32(1))], {"dtype": "i8"}, None, "X has dtype f16"),
]


@pytest.mark.parametrize("op,inputs,attrs,n_out,pattern", ERRORS, ids=[f"{e[0]}-{i}" for i, e in enumerate(ERRORS)])
def test_bad_input_raises(op: str, inputs: list, attrs: dict, n_out: int | None, pattern: str) -> None:
    with pytest.raises(ShapeInferenceError) as info:
        build(Case(op, inputs, attrs, n_out=n_out))
    message = str(info.value)
    assert message.startswith(f"{op}:"), message
    assert re.search(pattern, message), message
