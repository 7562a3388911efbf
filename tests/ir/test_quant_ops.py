"""Semantics of the quantization ops (requant.ir.ops.quant, onnxruntime) the op cases
cannot state: NaN/inf/zero-scale QuantizeLinear, int32 wrap-around and per-row zero
points of MatMulInteger, QLinearMatMul's float32 requantization, the dynamic
quantization parameters against the codec, MatMulNBits' packing and its explicit
dequantization, FakeQuantize against requant's codec (`requant.ir.quant_formats`,
which the passes use: op and codec must agree), the text form, and bad input raising
ShapeInferenceError (or a kernel error) naming the op.

Every op's cases against ONNX's reference, ONNX Runtime or a numpy reference are in
tests/op_cases/ (quant.py, onnxruntime.py, onnxruntime_attention.py), run by
tests/ir/test_op_cases.py.
"""

from __future__ import annotations

import re
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from op_cases import FQ_SCHEMES, C, Case, Draws, I, In, build_case
from op_testing import check_type

from requant.errors import RequantError, ShapeInferenceError
from requant.ir import Builder, Graph, dtypes, run, tensor_type
from requant.ir import quant_formats as qf
from requant.ir.ops.onnxruntime import pack_low_first, unpack_low_first
from requant.ir.ops.quant import dynamic_qparams_u8

_d = Draws(202)
f32, ints = _d.r, _d.ints


def build(case: Case) -> tuple[Graph, list, dict]:
    g, feed = build_case(case)
    return g, list(g.outputs), feed


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
    ("FakeQuantize", [I(f32(3, 4)), C(np.float32(1))], {"dtype": "i4", "granularity": "token"}, None,
     "computes its scales from the data"),
    ("FakeQuantize", [I(f32(3, 4)), None, C(np.int8(0), "i4")], {"dtype": "i4", "granularity": "token"}, None,
     "symmetric"),
    ("FakeQuantize", [I(f32(3, 4))], {"dtype": "u4", "granularity": "token"}, None, "signed integer formats"),
    ("FakeQuantize", [I(f32(3, 4))], {"dtype": "i4", "granularity": "token", "clip": 0.0}, None, "clip must be in"),
    ("FakeQuantize", [I(f32(3, 4)), C(np.float32(1))], {"dtype": "i8", "clip": 0.9}, None,
     "applies to granularity 'token' only"),
    ("FakeQuantize", [I(np.float32(1))], {"dtype": "i4", "granularity": "token"}, None, "rank >= 1"),
]


@pytest.mark.parametrize("op,inputs,attrs,n_out,pattern", ERRORS, ids=[f"{e[0]}-{i}" for i, e in enumerate(ERRORS)])
def test_bad_input_raises(op: str, inputs: list, attrs: dict, n_out: int | None, pattern: str) -> None:
    with pytest.raises(ShapeInferenceError) as info:
        build(Case(op, inputs, attrs, n_out=n_out))
    message = str(info.value)
    assert message.startswith(f"{op}:"), message
    assert re.search(pattern, message), message
