"""Cases of the quantization ops (requant.ir.ops.quant): QuantizeLinear and
DequantizeLinear (int8/uint8, int4/uint4, fp8, fp4; per tensor, per axis, blocked),
DynamicQuantizeLinear, MatMulInteger, QLinearMatMul, and requant's FakeQuantize over
every scheme (oracle: the numpy reference in tests/op_references.py).

Every output compares exactly (floats bit for bit): the kernels, ONNX's reference, ONNX
Runtime and TVM evaluate the same float32 formulas in the same order.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from op_cases.case import EXACT, QDQ_OPSET, C, CaseList, Draws, I, with_specials

from requant.ir import dtypes
from requant.ir import quant_formats as qf

__all__ = ["CASES", "FQ_SCHEMES"]

CASES = CaseList(tol=EXACT)
add = CASES.add
_d = Draws(113)
r, ints, ties = _d.r, _d.ints, _d.ties

_QDQ8 = (None, QDQ_OPSET, 21, 13)  # to_onnx's default, ORT's newest Q/DQ, blocked/int4 (21), the oldest
_QDQ4 = (QDQ_OPSET, 21)  # int4/uint4 and blocked scales exist from opset 21
_QDQ_FP8 = (QDQ_OPSET, 21)
# NaN -> the lowest code, +-inf -> the ends, as ONNX Runtime (ONNX's reference turns +inf
# into 0 for uint8); 4-bit outputs have no oracle (ORT cannot hand int4 to Python), the
# ONNX export check runs them in ORT
_SPECIALS_ORACLE = "ort"
_NO_ORT_FP4 = {"onnxruntime": "ONNX Runtime has no fp4_e2m1 QuantizeLinear / DequantizeLinear kernel"}

# ----------------------------------------------------------------------------- QuantizeLinear

add("QuantizeLinear", [I(ties(3, 8)), C(np.float32(0.25)), C(np.uint8(100))], label="u8_ties", export_opsets=_QDQ8)
add("QuantizeLinear", [I(with_specials(ties(3, 6)), shape=("n", 6)), C(np.float32(0.25)), C(np.uint8(100))],
    label="u8_specials", oracle=_SPECIALS_ORACLE, export_opsets=_QDQ8)
add("QuantizeLinear", [I(r(3, 8, lo=-80, hi=80)), C(np.float32(0.3)), C(np.int8(-5))], label="i8_saturate")
add("QuantizeLinear", [I(r(4, 5)), C(np.float32(0.02))], label="default_u8")
add("QuantizeLinear", [I(ties(4, 5)), C(np.float32(0.25))], {"output_dtype": "i8"}, label="output_dtype")
add("QuantizeLinear", [I(r(4, 6)), C(r(4, lo=0.01, hi=0.1)), C(ints(4, dt="i8"))], {"axis": 0}, label="per_axis0")
add("QuantizeLinear", [I(r(2, 3, 6)), C(r(6, lo=0.01, hi=0.1)), C(ints(6, dt="u8"))], {"axis": -1}, label="per_axis_neg")
add("QuantizeLinear", [I(with_specials(ties(3, 6)), shape=("n", 6)), C(r(6, lo=0.01, hi=0.1)), C(ints(6, dt="i8"))],
    {"axis": 1}, label="i8_axis_specials", oracle=_SPECIALS_ORACLE, export_opsets=_QDQ8)
add("QuantizeLinear", [I(r(2, 3, 4), shape=("B", 3, 4)), C(r(3, lo=0.01, hi=0.1)), C(ints(3, dt="i8"))],
    {"axis": 1}, expect=("B", 3, 4), label="sym")
add("QuantizeLinear", [I(ties(4, 6)), C(r(4, lo=0.1, hi=2)), C(ints(4, dt="i8", lo=-8, hi=7), "i4")], {"axis": 0},
    label="i4_axis", export_opsets=_QDQ4)
add("QuantizeLinear", [I(ties(4, 6)), C(np.float32(0.5)), C(np.uint8(3), "u4")], label="u4", export_opsets=_QDQ4)
add("QuantizeLinear", [I(with_specials(r(6, 4, lo=-8, hi=8))), C(np.float32(0.5))], {"output_dtype": "u4"},
    label="u4_specials", oracle="none", export_opsets=_QDQ4)
add("QuantizeLinear", [I(ties(6, 4)), C(r(2, 4, lo=0.2, hi=2)), C(ints(2, 4, dt="i8", lo=-8, hi=7), "i4")],
    {"axis": 0, "block_size": 3}, label="i4_blocked", export_opsets=_QDQ4)
add("QuantizeLinear", [I(with_specials(r(6, 4, lo=-8, hi=8))), C(r(2, 4, lo=0.2, hi=1)),
                       C(ints(2, 4, dt="i8", lo=-8, hi=7), "i4")],
    {"axis": 0, "block_size": 3}, label="i4_blocked_specials", oracle="none", export_opsets=_QDQ4)
add("QuantizeLinear", [I(r(5, 8)), C(r(5, 3, lo=0.2, hi=2)), C(ints(5, 3, dt="u8", lo=0, hi=15), "u4")],
    {"axis": 1, "block_size": 3}, label="u4_blocked_partial", export_opsets=_QDQ4)
add("QuantizeLinear", [I(r(4, 8, lo=-600, hi=600)), C(np.float32(1.0))], {"output_dtype": "fp8_e4m3"}, label="fp8_e4m3",
    export_opsets=_QDQ_FP8)
add("QuantizeLinear", [I(r(4, 8, lo=-600, hi=600)), C(np.float32(0.5)), C(np.zeros((), ml_dtypes.float8_e4m3fn))],
    {"saturate": 0}, label="fp8_e4m3_no_saturate")
add("QuantizeLinear", [I(r(4, 8, lo=-1e5, hi=1e5)), C(r(8, lo=0.5, hi=2)), C(np.zeros(8, ml_dtypes.float8_e5m2))],
    label="fp8_e5m2_axis", export_opsets=_QDQ_FP8)
# past the top of the formats, NaN and inf; saturate=0 away from the bands where ONNX
# Runtime differs (tests/backends/test_onnx_quant_ops.py::test_fp8_without_saturation_near_the_top)
_FP8_X = r(4, 8, lo=-470, hi=470)
_FP8_X[1] = [446, 460, 464, 470, 500, 1e9, 60000, -1e5]
_FP8_X = with_specials(_FP8_X)
add("QuantizeLinear", [I(_FP8_X), C(np.float32(1.0)), C(np.zeros((), ml_dtypes.float8_e4m3fn))],
    label="fp8_e4m3_specials", export_opsets=_QDQ_FP8)
add("QuantizeLinear", [I(_FP8_X), C(r(8, lo=1e-3, hi=1e-2)), C(np.zeros(8, ml_dtypes.float8_e5m2))],
    label="fp8_e5m2_axis_specials", export_opsets=_QDQ_FP8)
for code in ("fp8_e4m3", "fp8_e5m2"):
    add("QuantizeLinear", [I(_FP8_X), C(np.float32(1.0))], {"output_dtype": code, "saturate": 0},
        label=f"{code}_no_saturate_specials", export_opsets=_QDQ_FP8)
add("QuantizeLinear", [I(r(4, 8, lo=-10, hi=10)), C(np.float32(0.5))], {"output_dtype": "fp4_e2m1"}, label="fp4",
    refused=_NO_ORT_FP4)
# ORT divides float16 x by the scale in float32 (ONNX's reference in float16)
add("QuantizeLinear", [I(r(3, 5).astype(np.float16)), C(np.float16(0.07)), C(np.uint8(9))],
    oracle="ort", oracle_opset=21, label="f16_divides_in_f32", export_opsets=(QDQ_OPSET, 21, 19))
add("QuantizeLinear", [I(np.array([np.nan, np.inf, -np.inf, 1.0, -1.0, 0.0, 2.5, 3.5], np.float32)), C(np.float32(0.5)),
                       C(np.uint8(10))], label="nan_inf", oracle=_SPECIALS_ORACLE)

# ----------------------------------------------------------------------------- DequantizeLinear

add("DequantizeLinear", [I(ints(3, 8)), C(np.float32(0.05)), C(np.uint8(128))], label="u8", export_opsets=_QDQ8)
add("DequantizeLinear", [I(ints(3, 8, dt="i8")), C(r(8, lo=0.01, hi=0.1)), C(ints(8, dt="i8"))], label="i8_axis",
    export_opsets=_QDQ8)
add("DequantizeLinear", [I(ints(3, 6, dt="i8"), shape=("n", 6)), C(r(6, lo=0.01, hi=0.1)), C(ints(6, dt="i8"))],
    {"axis": -1}, label="i8_axis_neg", export_opsets=_QDQ8)
add("DequantizeLinear", [I(ints(3, 8, dt="i32", lo=-10**6, hi=10**6)), C(np.float32(0.001))], label="i32",
    export_opsets=(QDQ_OPSET, 21, 19))
add("DequantizeLinear", [I(ints(6, 4, dt="i8", lo=-8, hi=7), "i4"), C(r(2, 4, lo=0.1, hi=1)),
                         C(ints(2, 4, dt="i8", lo=-8, hi=7), "i4")], {"axis": 0, "block_size": 3}, label="i4_blocked",
    export_opsets=_QDQ4)
add("DequantizeLinear", [I(ints(4, 6, dt="u8", lo=0, hi=15), "u4"), C(r(6, lo=0.1, hi=1)),
                         C(ints(6, dt="u8", lo=0, hi=15), "u4")], label="u4_axis", export_opsets=_QDQ4)
add("DequantizeLinear", [I(qf.from_bits(np.arange(256).reshape(16, 16), dtypes.fp8_e4m3)), C(np.float32(0.5))],
    label="fp8_e4m3_every_code", export_opsets=_QDQ_FP8)
add("DequantizeLinear", [I(qf.from_bits(np.arange(256).reshape(16, 16), dtypes.fp8_e5m2)), C(r(16, lo=0.5, hi=2))],
    label="fp8_e5m2_every_code", export_opsets=_QDQ_FP8)
add("DequantizeLinear", [I(qf.from_bits(np.arange(16).reshape(2, 8), dtypes.fp4_e2m1)), C(np.float32(0.75))],
    label="fp4_every_code", refused=_NO_ORT_FP4)
add("DequantizeLinear", [I(ints(3, 4)), C(np.float16(0.01)), C(np.uint8(3))], label="f16_scale")
add("DequantizeLinear", [I(ints(2, 3, 4), shape=("N", 3, 4)), C(np.float32(0.1))], expect=("N", 3, 4), label="sym")

# ----------------------------------------------------------------------------- DynamicQuantizeLinear

add("DynamicQuantizeLinear", [I(r(4, 9))], n_out=3, export_opsets=(None, 13))
add("DynamicQuantizeLinear", [I(r(4, 9, lo=0.5, hi=3))], n_out=3, label="positive")
add("DynamicQuantizeLinear", [I(r(4, 9, lo=-3, hi=-0.5))], n_out=3, label="negative")
# all zeros: the spec's formula gives scale 0; ORT gives 1, ONNX's reference 1/255 (it
# divides the 1 by 255 too): requant follows ORT
add("DynamicQuantizeLinear", [I(np.zeros((2, 3), np.float32))], n_out=3, oracle="ort", oracle_opset=21, label="zeros")
add("DynamicQuantizeLinear", [I(ties(3, 7), shape=("B", 7))], n_out=3, expect=("B", 7), label="sym",
    export_opsets=(None, 13))

# ----------------------------------------------------------------------------- MatMulInteger

add("MatMulInteger", [I(ints(3, 5)), I(ints(5, 4))], label="u8u8", export_opsets=(None, 13))
add("MatMulInteger", [I(ints(3, 5)), I(ints(5, 4, dt="i8")), C(np.uint8(128)), C(np.int8(-3))], label="u8i8_zp",
    export_opsets=(None, 13))
add("MatMulInteger", [I(ints(2, 3, 5, dt="i8")), I(ints(5, 4, dt="i8")), C(np.int8(4))], label="i8_batched",
    export_opsets=(None, 13))
add("MatMulInteger", [I(ints(3, 5)), I(ints(5, 4, dt="i8")), None, C(ints(4, dt="i8"))], label="b_zp_per_column")
add("MatMulInteger", [I(ints(2, 3, 16), shape=("b", 3, 16)), C(ints(16, 5, dt="i8")), C(np.uint8(128)),
                      C(ints(5, dt="i8"))], label="sym_const_b_per_column", export_opsets=(None, 13))
add("MatMulInteger", [I(ints(5)), I(ints(2, 5, 4))], label="vector_a")
add("MatMulInteger", [I(ints(2, 3, 5), shape=("B", "S", 5)), I(ints(5, 4, dt="i8"))], expect=("B", "S", 4), label="sym")
# int32 accumulators wrap (two's complement), as ORT's do
add("MatMulInteger", [I(np.full((1, 40000), 255, np.uint8)), I(np.full((40000, 1), 255, np.uint8))], label="wraps_i32")

# ----------------------------------------------------------------------------- QLinearMatMul

# ONNX's reference requantizes in float64, ORT in float32: both checked
_QL = [I(ints(2, 3, 6)), C(np.float32(0.02)), C(np.uint8(128)), C(ints(6, 5, dt="i8")), C(np.float32(0.004)),
       C(np.int8(0)), C(np.float32(0.03)), C(np.uint8(120))]
add("QLinearMatMul", _QL, label="u8_i8", export_opsets=(None, 21, 13))
add("QLinearMatMul", _QL, oracle="ort", label="u8_i8_ort")
_QL2 = [I(ints(4, 6, dt="i8")), C(np.float32(0.05)), C(np.int8(2)), I(ints(6, 3, dt="i8")),
        C(r(3, lo=0.001, hi=0.01)), C(np.zeros(3, np.int8)), C(np.float32(0.2)), C(np.int8(-7))]
add("QLinearMatMul", _QL2, oracle="ort", label="i8_per_column_ort", export_opsets=(None, 21, 13))
add("QLinearMatMul", [I(ints(2, 3, 16), shape=("b", 3, 16)), C(np.float32(0.02)), C(np.uint8(128)),
                      C(ints(16, 5, dt="i8")), C(r(5, lo=1e-3, hi=1e-2)), C(np.zeros(5, np.int8)),
                      C(np.float32(0.05)), C(np.uint8(120))], oracle="ort", label="sym_per_column_ort",
    export_opsets=(None, 21, 13))
add("QLinearMatMul", [I(ints(3, 6), shape=("M", 6))] + _QL[1:], expect=("M", 5), oracle="none", label="sym")

# ----------------------------------------------------------------------------- FakeQuantize

FQ_SCHEMES = [
    (qf.INT8_PER_TENSOR, True), (qf.UINT8_PER_TENSOR, True), (qf.int8_per_channel(1), True),
    (qf.uint4_per_group(16, 1), True), (qf.FP8_E4M3_PER_TENSOR, True), (qf.fp8_per_channel(0, dtypes.fp8_e5m2), True),
    (qf.QuantScheme(dtypes.fp4_e2m1, "group", 1, 16), True), (qf.QuantScheme(dtypes.dtype("ff_e3m2_b2.5")), True),
    (qf.MXFP4, False), (qf.NVFP4, False),
]
"""(scheme, whether its FakeQuantize takes a scale input): one of each kind."""


def _fq_export_opsets(scheme: qf.QuantScheme) -> tuple:
    """Q/DQ formats export as QuantizeLinear/DequantizeLinear (int4 and blocked scales
    from 21, fp8 from 19); fp4, FloatFormat, mx and nv as float arithmetic (nv's e4m3
    block scales through Q/DQ from 19)."""
    dt, g = scheme.dtype, scheme.granularity
    if g == "nv":
        return (None, 19)
    if g == "token":
        return (None, 13)
    if dt in (dtypes.int4, dtypes.uint4) or g == "group" and dt.is_integer:
        return (QDQ_OPSET, 21)
    if dt.is_integer or dt in (dtypes.fp8_e4m3, dtypes.fp8_e5m2):
        return (QDQ_OPSET, 21, 19)
    return (None, 13)


def _fake_quantize(x: np.ndarray, scheme: qf.QuantScheme, label: str, *, sample: np.ndarray | None = None,
                   shape: tuple | None = None, scale=None, needs_scale: bool = True, **attrs) -> None:
    """A FakeQuantize case: `x` quantized with the scale (and zero point, for asymmetric
    integer schemes) that `sample` (default: x) calibrates to, or the given `scale`."""
    inputs = [I(x, shape=shape)]
    if needs_scale:
        zp = None
        if scale is None:
            scale, zp = qf.choose_qparams(scheme, *qf.tensor_ranges(x if sample is None else sample, scheme))
        inputs.append(C(scale))
        if scheme.dtype.is_integer and not scheme.symmetric:
            inputs.append(C(zp, scheme.dtype.short))
    add("FakeQuantize", inputs, {**scheme.op_attrs(), **attrs}, label=label, oracle="numpy",
        export_opsets=_fq_export_opsets(scheme))


for scheme, needs_scale in FQ_SCHEMES:
    _fake_quantize(r(4, 40, lo=-4, hi=4), scheme, str(scheme).replace(" ", "_"), shape=("B", 40), needs_scale=needs_scale)
_fake_quantize(r(3, 40, lo=-4, hi=4), qf.NVFP4, "nv_calibrated", scale=np.float32(0.004))
_fake_quantize(r(40, 3, lo=-4, hi=4), qf.QuantScheme(dtypes.fp4_e2m1, "mx", axis=0), "mx_axis0_partial_block",
               needs_scale=False)

# NaN, +-inf and -0 through every kind of scheme (scales calibrated on the finite values)
_SAMPLE = r(4, 40, lo=-4, hi=4)
for scheme in (qf.INT8_PER_TENSOR, qf.UINT8_PER_TENSOR, qf.int8_per_channel(1), qf.int8_per_channel(-1, symmetric=False),
               qf.FP8_E4M3_PER_TENSOR, qf.fp8_per_channel(1, dtypes.fp8_e5m2),
               qf.QuantScheme(dtypes.fp4_e2m1), qf.QuantScheme(dtypes.fp4_e2m1, "channel", 1),
               qf.QuantScheme(dtypes.fp4_e2m1, "group", 1, 16), qf.QuantScheme(dtypes.dtype("ff_e3m2_b2.5")),
               qf.QuantScheme(dtypes.dtype("ff_e4m3_b7"), "channel", -1), qf.QuantScheme(dtypes.dtype("ff_e2m1_b0"))):
    label = str(scheme).replace(" ", "_") + ("_asym" if scheme.dtype.is_integer and not scheme.symmetric else "")
    _fake_quantize(with_specials(_SAMPLE), scheme, label + "_specials", sample=_SAMPLE, shape=("n", 40))
# values halfway between two codes: ties go to the even code
_fake_quantize(ties(4, 10), qf.INT8_PER_TENSOR, "i8_ties", scale=np.float32(0.25))
_FP4_TIES = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -0.75, -1.25, -2.5, -5.0], np.float32)
_fake_quantize(_FP4_TIES, qf.QuantScheme(dtypes.fp4_e2m1), "fp4_ties", scale=np.float32(1.0))
_FP8_TIES = np.array([1.0625, 1.1875, 1.3125, 2.0**-10, 3 * 2.0**-10, 5 * 2.0**-10], np.float32)  # normal, subnormal
_fake_quantize(np.concatenate([_FP8_TIES, -_FP8_TIES]), qf.FP8_E4M3_PER_TENSOR, "fp8_e4m3_ties", scale=np.float32(1.0))
_GROUPED = r(40, 6, lo=-4, hi=4)
for scheme in (qf.int4_per_group(16, 0), qf.uint4_per_group(32, 0), qf.QuantScheme(dtypes.int4, "channel", 1)):
    _fake_quantize(_GROUPED, scheme, str(scheme).replace(" ", "_") + "_40x6")
# mx: blocks whose amax spans 2^-30 .. 2^30, an all-zero block, a block of float32 subnormals
_MX = (r(3, 70) * 2.0 ** _d.rng.integers(-30, 30, (3, 1))).astype(np.float32)
_MX[1, 40:64] = 0
_MX[2, 32:64] = 1e-40
_fake_quantize(with_specials(_MX), qf.MXFP4, "mx_wide_range_specials", shape=("n", 70), needs_scale=False)
_fake_quantize(r(70, 5), qf.QuantScheme(dtypes.fp4_e2m1, "mx", axis=0), "mx_axis0", needs_scale=False)
_fake_quantize(r(3, 40), qf.NVFP4, "nv_computed_scale", shape=("n", 40), needs_scale=False)
_fake_quantize(r(3, 40), qf.NVFP4, "nv_given_scale", shape=("n", 40), scale=np.float32(2e-4))
_fake_quantize(with_specials(r(40, 5)), qf.QuantScheme(dtypes.fp4_e2m1, "nv", axis=0), "nv_axis0_specials",
               needs_scale=False)
_fake_quantize(np.zeros((2, 16), np.float32), qf.NVFP4, "nv_zeros", needs_scale=False)
# per-token dynamic: rows of different magnitudes, an all-zero row, NaN / +-inf / -0 in
# rows, a clip ratio (values past it saturate), int8, a token axis that is not the last
_TOKENS = (r(4, 40, lo=-4, hi=4) * np.float32([[1e-3], [1.0], [0.0], [1e3]])).astype(np.float32)
_TOKEN_SPECIALS = np.array(_TOKENS, copy=True)
_TOKEN_SPECIALS[0, :2] = [np.nan, -0.0]  # NaN: the lowest code; the row's scale from the rest
_TOKEN_SPECIALS[1, 3] = np.inf  # an infinite amax: the row is NaN
_TOKEN_SPECIALS[2, 5] = -0.0
_fake_quantize(_TOKEN_SPECIALS, qf.QuantScheme(dtypes.int4, "token"), "i4_token_specials", shape=("n", 40),
               needs_scale=False)
_fake_quantize(_TOKENS, qf.QuantScheme(dtypes.int4, "token"), "i4_token_clip", shape=("n", 40), needs_scale=False,
               clip=0.8)
_fake_quantize(r(2, 3, 16), qf.QuantScheme(dtypes.int8, "token"), "i8_token_3d", shape=("B", 3, 16), needs_scale=False)
_fake_quantize(r(16, 5), qf.QuantScheme(dtypes.int4, "token", axis=0), "i4_token_axis0", needs_scale=False)
