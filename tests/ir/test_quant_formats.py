"""requant.ir.quant_formats: exact codecs of every 8- and 4-bit format, exhaustively over
their codes, against ml_dtypes and against the formats' definitions; MXFP4 / NVFP4
blocks against hand-written definitions; FloatFormat grids enumerated from their
definition; qparams layouts and values; scheme descriptions.

NaN aliases: fp8_e4m3 has the NaN codes 0x7F / 0xFF and fp8_e5m2 0x7D-0x7F / 0xFD-0xFF;
encoding a NaN gives the canonical NaN code of its sign (e4m3 0x7F/0xFF, e5m2 0x7E/0xFE),
so only those round-trip code for code. e5m2's +-inf codes round-trip with saturate=0
(with saturate=1, the default, inf encodes to +-max). fp4_e2m1 and FloatFormat have no
NaN: NaN encodes to +max; integers encode NaN to their lowest code.
"""

from __future__ import annotations

import json
import math

import ml_dtypes
import numpy as np
import pytest

from requant.ir import dtypes
from requant.ir import quant_formats as qf
from requant.ir.dtypes import FloatFormat
from requant.ir.ops.cast import round_to_float_format

EIGHT_AND_FOUR_BIT = ["fp8_e4m3", "fp8_e5m2", "fp4_e2m1", "i8", "u8", "i4", "u4"]
_ML = {
    "fp8_e4m3": ml_dtypes.float8_e4m3fn,
    "fp8_e5m2": ml_dtypes.float8_e5m2,
    "fp4_e2m1": ml_dtypes.float4_e2m1fn,
    "i8": np.int8,
    "u8": np.uint8,
    "i4": ml_dtypes.int4,
    "u4": ml_dtypes.uint4,
}
_CANONICAL_NAN = {"fp8_e4m3": (0x7F, 0xFF), "fp8_e5m2": (0x7E, 0xFE)}
FLOAT_FORMATS = [
    FloatFormat(2, 1, 1.0),  # the e2m1 grid
    FloatFormat(3, 2, 3.0),
    FloatFormat(4, 3, 7.0),
    FloatFormat(2, 2, 0.0),
    FloatFormat(1, 2, 0.0),
    FloatFormat(5, 2, 15.0),
    FloatFormat(3, 1, -2.0),
]
FRACTIONAL = [FloatFormat(3, 2, 2.5), FloatFormat(2, 1, 1.37)]


def codes_of(dt) -> np.ndarray:
    return np.arange(1 << dt.bits)


def ml_values(name: str) -> np.ndarray:
    """ml_dtypes' value of every code (code order)."""
    raw = np.arange(1 << dtypes.dtype(name).bits, dtype=np.uint8)
    return raw.view(_ML[name]).astype(np.float64)


def same_values(a: np.ndarray, b: np.ndarray) -> None:
    """Equal values, NaN where NaN, and equal signs (so -0 != +0)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.signbit(a), np.signbit(b))


# ----------------------------------------------------------------------------- exhaustive code tests


@pytest.mark.parametrize("name", EIGHT_AND_FOUR_BIT)
def test_decode_of_every_code_matches_ml_dtypes(name: str) -> None:
    dt = dtypes.dtype(name)
    same_values(qf.decode_bits(codes_of(dt), dt), ml_values(name))


@pytest.mark.parametrize("name", EIGHT_AND_FOUR_BIT)
def test_bits_and_storage_round_trip(name: str) -> None:
    dt = dtypes.dtype(name)
    storage = qf.from_bits(codes_of(dt), dt)
    assert storage.dtype == dt.np
    same_values(storage.astype(np.float64), qf.decode_bits(codes_of(dt), dt))
    np.testing.assert_array_equal(qf.to_bits(storage, dt), codes_of(dt))


@pytest.mark.parametrize("name", EIGHT_AND_FOUR_BIT)
def test_encode_of_every_decoded_code_gives_the_code(name: str) -> None:
    dt = dtypes.dtype(name)
    codes = codes_of(dt)
    values = qf.decode_bits(codes, dt)
    for saturate in (True, False):
        got = qf.to_bits(qf.encode(values.astype(np.float32), dt, saturate), dt).astype(np.int64)
        nan = np.isnan(values)
        inf = np.isinf(values)
        plain = ~nan & ~inf
        np.testing.assert_array_equal(got[plain], codes[plain])
        if nan.any():
            pos, neg = _CANONICAL_NAN[name]
            want = np.where(np.signbit(values[nan]), neg, pos)
            np.testing.assert_array_equal(got[nan], want)
        if inf.any():
            if saturate:
                top = codes[plain][np.argmax(values[plain])]
                bottom = codes[plain][np.argmin(values[plain])]
                np.testing.assert_array_equal(got[inf], np.where(values[inf] > 0, top, bottom))
            else:
                np.testing.assert_array_equal(got[inf], codes[inf])


def _neighbour_pairs(values: np.ndarray) -> list[tuple[float, float]]:
    """Pairs of adjacent finite values on each side of zero (magnitudes increasing)."""
    finite = np.unique(values[np.isfinite(values)])
    pos = finite[finite >= 0]
    neg = finite[finite <= 0][::-1]
    return list(zip(pos[:-1], pos[1:])) + list(zip(neg[:-1], neg[1:]))


def _code_for(value: float, dt) -> int:
    codes = codes_of(dt)
    values = qf.decode_bits(codes, dt)
    hits = codes[(values == value) & (np.signbit(values) == np.signbit(value))]
    if hits.size == 0:
        hits = codes[values == value]
    return int(hits[0])


@pytest.mark.parametrize("name", EIGHT_AND_FOUR_BIT)
def test_midpoints_round_half_to_even_and_near_midpoints_to_nearest(name: str) -> None:
    dt = dtypes.dtype(name)
    pairs = _neighbour_pairs(qf.decode_bits(codes_of(dt), dt))
    assert pairs
    mids, want_even, just_below, just_above = [], [], [], []
    for a, b in pairs:
        m = (a + b) / 2
        assert np.float32(m) == m  # the midpoints are float32 values: exact ties
        ca, cb = _code_for(a, dt), _code_for(b, dt)
        even = a if ca % 2 == 0 else b
        if dt.is_integer:
            even = a if a % 2 == 0 else b
        mids.append(m)
        want_even.append(even)
        toward_a = np.nextafter(np.float32(m), np.float32(a))
        toward_b = np.nextafter(np.float32(m), np.float32(b))
        just_below.append((toward_a, a))
        just_above.append((toward_b, b))
    got = qf.encode(np.array(mids, np.float32), dt).astype(np.float64)
    np.testing.assert_array_equal(got, want_even)
    for x, want in just_below + just_above:
        assert float(qf.encode(np.array([x], np.float32), dt)[0]) == want, (name, x, want)


@pytest.mark.parametrize("name", EIGHT_AND_FOUR_BIT)
def test_values_past_the_ends_saturate(name: str) -> None:
    dt = dtypes.dtype(name)
    values = qf.decode_bits(codes_of(dt), dt)
    finite = values[np.isfinite(values)]
    top, bottom = finite.max(), finite.min()
    x = np.array([top * 1.01 + 1, top * 1e3 + 100, 3e38, np.inf], np.float32)
    np.testing.assert_array_equal(qf.encode(x, dt).astype(np.float64), [top] * 4)
    lo = np.array([bottom * 1.01 - 1, bottom * 1e3 - 100, -3e38, -np.inf], np.float32)
    np.testing.assert_array_equal(qf.encode(lo, dt).astype(np.float64), [bottom] * 4)


@pytest.mark.parametrize("name,want", [("i8", -128), ("u8", 0), ("i4", -8), ("u4", 0), ("fp4_e2m1", 6.0)])
def test_nan_rule_of_formats_without_nan(name: str, want: float) -> None:
    got = qf.encode(np.array([np.nan, -np.nan], np.float32), dtypes.dtype(name))
    np.testing.assert_array_equal(got.astype(np.float64), [want, want])


def test_fp8_nan_stays_nan_and_overflow_without_saturation() -> None:
    for name in ("fp8_e4m3", "fp8_e5m2"):
        got = qf.encode(np.array([np.nan], np.float32), dtypes.dtype(name))
        assert np.isnan(got.astype(np.float32)[0])
    e4 = qf.encode(np.array([460, 464, 470, 1e9], np.float32), dtypes.fp8_e4m3, saturate=False).astype(np.float32)
    np.testing.assert_array_equal(e4[:2], [448, 448])  # 464 is the tie with the (NaN) code above: even wins
    assert np.isnan(e4[2:]).all()
    e5 = qf.encode(np.array([61439, 61440, -1e9], np.float32), dtypes.fp8_e5m2, saturate=False).astype(np.float32)
    np.testing.assert_array_equal(e5, [57344, np.inf, -np.inf])


def test_int4_storage_is_widened_and_in_range() -> None:
    q = qf.encode(np.array([-100, -8.5, -7.5, 7.5, 100], np.float32), dtypes.int4)
    assert q.dtype == np.int8
    np.testing.assert_array_equal(q, [-8, -8, -8, 7, 7])
    u = qf.encode(np.array([-3, 0.5, 1.5, 14.5, 99], np.float32), dtypes.uint4)
    assert u.dtype == np.uint8
    np.testing.assert_array_equal(u, [0, 0, 2, 14, 15])


# ----------------------------------------------------------------------------- FloatFormat


def definition_values(fmt: FloatFormat) -> np.ndarray:
    """Every value of `fmt` of LLM-FP4's formula, by code: sign, E
    exponent bits, M mantissa bits, real bias b; normal (1 + m/2^M) 2^(e - b), subnormal
    (m/2^M) 2^(1 - b); as stored (float32)."""
    out = []
    for code in range(1 << fmt.bits):
        s = (code >> (fmt.exp_bits + fmt.man_bits)) & 1
        e = (code >> fmt.man_bits) & ((1 << fmt.exp_bits) - 1)
        m = code & ((1 << fmt.man_bits) - 1)
        grid = (m / 2**fmt.man_bits) * 2.0 if e == 0 else (1 + m / 2**fmt.man_bits) * 2.0**e
        v = float(np.float32(grid / 2.0**fmt.bias))
        out.append(-v if s else v)
    return np.array(out)


@pytest.mark.parametrize("fmt", FLOAT_FORMATS + FRACTIONAL, ids=str)
def test_float_format_every_value_is_a_fixed_point_and_round_trips(fmt: FloatFormat) -> None:
    values = definition_values(fmt)
    same_values(qf.decode_bits(codes_of(fmt), fmt), values)
    assert np.float32(values.max()) == np.float32(fmt.max_value)
    got = qf.encode(values.astype(np.float32), fmt)
    same_values(got, values)
    np.testing.assert_array_equal(qf.to_bits(got, fmt), codes_of(fmt))
    np.testing.assert_array_equal(qf.to_bits(qf.from_bits(codes_of(fmt), fmt), fmt), codes_of(fmt))


@pytest.mark.parametrize("fmt", FLOAT_FORMATS, ids=str)
def test_float_format_midpoints_and_saturation(fmt: FloatFormat) -> None:
    values = definition_values(fmt)
    codes = codes_of(fmt)
    for a, b in _neighbour_pairs(values):
        m = np.float32((a + b) / 2)
        assert float(m) == (a + b) / 2
        ca = codes[(values == a)][0]
        cb = codes[(values == b)][0]
        want = a if ca % 2 == 0 else b
        assert float(qf.encode(np.array([m]), fmt)[0]) == want, (fmt, a, b)
        assert float(qf.encode(np.array([np.nextafter(m, np.float32(a))]), fmt)[0]) == a
        assert float(qf.encode(np.array([np.nextafter(m, np.float32(b))]), fmt)[0]) == b
    top = np.float32(fmt.max_value)
    x = np.array([top * 1.5, 1e30, np.inf, -np.inf, -1e30, np.nan], np.float32)
    np.testing.assert_array_equal(qf.encode(x, fmt), [top, top, top, -top, -top, top])


@pytest.mark.parametrize("fmt", FLOAT_FORMATS + FRACTIONAL, ids=str)
def test_float_format_rounds_to_the_nearest_grid_value(fmt: FloatFormat) -> None:
    values = np.unique(definition_values(fmt))
    rng = np.random.default_rng(7)
    top = float(fmt.max_value)
    x = rng.uniform(-1.2 * top, 1.2 * top, 4000).astype(np.float32)
    x = np.concatenate([x, (rng.uniform(-1, 1, 1000) * top * 2.0**-rng.integers(0, 2**fmt.exp_bits + 2, 1000))
                        .astype(np.float32)])
    got = qf.encode(x, fmt).astype(np.float64)
    dist = np.abs(x.astype(np.float64)[:, None] - values[None, :])
    best = dist.min(axis=1)
    np.testing.assert_array_equal(np.abs(got - x.astype(np.float64)) <= best + 1e-300, True)


def test_float_format_agrees_with_fp8_where_the_grids_coincide() -> None:
    x = np.random.default_rng(3).uniform(-448, 448, 20000).astype(np.float32)
    np.testing.assert_array_equal(qf.encode(x, FloatFormat(4, 3, 7)), qf.encode(x, dtypes.fp8_e4m3).astype(np.float32))
    y = (np.random.default_rng(4).uniform(-1, 1, 20000) * 2.0 ** np.random.default_rng(5).integers(-16, 16, 20000))
    y = y.astype(np.float32)
    np.testing.assert_array_equal(qf.encode(y, FloatFormat(5, 2, 15)), qf.encode(y, dtypes.fp8_e5m2).astype(np.float32))
    z = np.linspace(-7, 7, 281, dtype=np.float32)
    np.testing.assert_array_equal(qf.encode(z, FloatFormat(2, 1, 1)), qf.encode(z, dtypes.fp4_e2m1).astype(np.float32))


def test_float_format_bias_is_llm_fp4s_floor_of_log2_plus_bias() -> None:
    """With a fractional bias b the grid is the integer-bias grid scaled by 2^-b
    (floor(log2|x| + b) as in LLM-FP4's code; the paper's floor(log2|x|) + b is the
    same for integer b)."""
    fmt = FloatFormat(3, 2, 2.5)
    base = definition_values(FloatFormat(3, 2, 0.0))
    np.testing.assert_allclose(np.sort(definition_values(fmt)), np.sort(base * 2.0**-2.5), rtol=2**-24)
    assert round_to_float_format(np.array([base[5] * 2.0**-2.5], np.float32), fmt)[0] == np.float32(base[5] * 2.0**-2.5)


# ----------------------------------------------------------------------------- qparams


def test_symmetric_int_qparams() -> None:
    s, z = qf.choose_qparams(qf.INT8_PER_TENSOR, np.float32(-2.0), np.float32(1.0))
    assert s.dtype == np.float32 and s.shape == () and s == np.float32(2.0) / np.float32(127)
    assert z.dtype == np.int8 and z == 0
    s, z = qf.choose_qparams(qf.QuantScheme(dtypes.uint8, symmetric=True), np.float32(-1.0), np.float32(3.0))
    assert s == np.float32(3.0) / np.float32(127) and z == 128 and z.dtype == np.uint8
    s, z = qf.choose_qparams(qf.QuantScheme(dtypes.int4, "tensor"), np.float32(-0.5), np.float32(0.7))
    assert s == np.float32(0.7) / np.float32(7) and z.dtype == np.int8 and z == 0


def test_asymmetric_qparams_widen_to_zero_and_match_dynamic_quantize_linear() -> None:
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    s, z = qf.choose_qparams(qf.UINT8_PER_TENSOR, np.float32(1.0), np.float32(3.0))
    assert s == np.float32(3.0) / np.float32(255) and z == 0
    s, z = qf.choose_qparams(qf.UINT8_PER_TENSOR, np.float32(-3.0), np.float32(-1.0))
    assert z == 255
    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])
    model = helper.make_model(helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info(n, t, None) for n, t in (("y", TensorProto.UINT8), ("s", TensorProto.FLOAT),
                                                                  ("z", TensorProto.UINT8))]),
        opset_imports=[helper.make_opsetid("", 21)])
    ref = ReferenceEvaluator(model)
    rng = np.random.default_rng(11)
    for lo, hi in ((-1.3, 2.9), (-5.0, -0.1), (0.2, 7.0), (-0.001, 1000.0)):
        x = rng.uniform(lo, hi, 257).astype(np.float32)
        _, want_s, want_z = ref.run(None, {"x": x})
        got_s, got_z = qf.choose_qparams(qf.UINT8_PER_TENSOR, *qf.tensor_ranges(x, qf.UINT8_PER_TENSOR))
        assert got_s == want_s and got_z == want_z


def test_zero_and_tiny_ranges_are_guarded() -> None:
    for scheme in (qf.INT8_PER_TENSOR, qf.UINT8_PER_TENSOR, qf.FP8_E4M3_PER_TENSOR):
        s, _ = qf.choose_qparams(scheme, np.float32(0), np.float32(0))
        assert s == 1.0
    s, _ = qf.choose_qparams(qf.INT8_PER_TENSOR, np.float32(0), np.float32(1e-44))
    assert s > 0
    with pytest.raises(ValueError, match="finite"):
        qf.choose_qparams(qf.INT8_PER_TENSOR, np.float32(-np.inf), np.float32(1))
    with pytest.raises(ValueError, match="lo > hi"):
        qf.choose_qparams(qf.INT8_PER_TENSOR, np.float32(2), np.float32(1))
    with pytest.raises(ValueError, match="mx"):
        qf.choose_qparams(qf.MXFP4, np.float32(-1), np.float32(1))


def test_float_format_qparams() -> None:
    lo, hi = np.float32(-3.0), np.float32(2.0)
    for scheme, top in ((qf.FP8_E4M3_PER_TENSOR, 448.0), (qf.FP8_E5M2_PER_TENSOR, 57344.0),
                        (qf.QuantScheme(dtypes.fp4_e2m1), 6.0), (qf.QuantScheme(FloatFormat(3, 2, 3)), 1.75 * 16)):
        s, z = qf.choose_qparams(scheme, lo, hi)
        assert z is None and s == np.float32(3.0) / np.float32(top)
    s, z = qf.choose_qparams(qf.NVFP4, lo, hi)
    assert z is None and s == np.float32(3.0) / np.float32(2688)


def test_per_channel_qparams_layout_and_values() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 5)).astype(np.float32)  # MatMul weight [K, N]
    scheme = qf.int8_per_channel(axis=1)
    lo, hi = qf.tensor_ranges(w, scheme)
    assert lo.shape == hi.shape == (5,)
    s, z = qf.choose_qparams(scheme, lo, hi)
    assert s.shape == z.shape == (5,)
    np.testing.assert_array_equal(s, np.abs(w).max(axis=0) / np.float32(127))
    q = qf.quantize(w, scheme, s, z)
    assert q.dtype == np.int8 and np.abs(q).max() == 127
    np.testing.assert_array_equal(np.abs(q).max(axis=0), 127)  # every column uses its whole range
    np.testing.assert_array_equal(q, qf.quantize_linear(w, s, z, axis=1))
    err = np.abs(qf.fake_quantize(w, scheme, s, z) - w)
    assert np.all(err <= s / 2 * (1 + 1e-6))


def test_per_group_qparams_layout_values_and_partial_block() -> None:
    rng = np.random.default_rng(1)
    w = rng.normal(size=(40, 6)).astype(np.float32)
    scheme = qf.uint4_per_group(group_size=32, axis=0)
    lo, hi = qf.tensor_ranges(w, scheme)
    assert lo.shape == (2, 6)
    np.testing.assert_array_equal(lo[0], w[:32].min(axis=0))
    np.testing.assert_array_equal(hi[1], w[32:].max(axis=0))
    s, z = qf.choose_qparams(scheme, lo, hi)
    assert s.shape == z.shape == (2, 6) and z.dtype == np.uint8 and z.max() <= 15
    q = qf.quantize(w, scheme, s, z)
    assert q.dtype == np.uint8 and q.max() <= 15
    np.testing.assert_array_equal(q, qf.quantize_linear(w, s, z, axis=0, block_size=32, dtype=dtypes.uint4))
    back = qf.dequantize(q, scheme, s, z)
    rows = np.arange(40) // 32
    np.testing.assert_array_equal(back, ((q.astype(np.int64) - z[rows]).astype(np.float32) * s[rows]))
    assert np.all(np.abs(back - w) <= s[rows] / 2 * (1 + 1e-6) + 1e-7)


def test_per_group_int4_symmetric_codes_and_fp4_group() -> None:
    w = np.random.default_rng(2).normal(size=(64, 3)).astype(np.float32)
    scheme = qf.int4_per_group(group_size=16, axis=0)
    s, z = qf.choose_qparams(scheme, *qf.tensor_ranges(w, scheme))
    q = qf.quantize(w, scheme, s, z)
    assert q.dtype == np.int8 and q.min() >= -7 and q.max() <= 7
    fp4 = qf.QuantScheme(dtypes.fp4_e2m1, "group", axis=0, group_size=16)
    s4, z4 = qf.choose_qparams(fp4, *qf.tensor_ranges(w, fp4))
    assert z4 is None and s4.shape == (4, 3)
    codes = qf.quantize(w, fp4, s4)
    assert codes.dtype == ml_dtypes.float4_e2m1fn
    np.testing.assert_array_equal(np.abs(codes.astype(np.float32)).reshape(4, 16, 3).max(axis=1), 6.0)


def test_quantize_linear_ties_nan_and_zero_point() -> None:
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, np.nan, np.inf, -np.inf, 1000], np.float32)
    np.testing.assert_array_equal(qf.quantize_linear(x, np.float32(1), np.uint8(10)), [10, 12, 12, 10, 8, 0, 255, 0, 255])
    np.testing.assert_array_equal(qf.quantize_linear(x, np.float32(1), dtype="i8"), [0, 2, 2, 0, -2, -128, 127, -128, 127])


# ----------------------------------------------------------------------------- MXFP4


_E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6])


def e2m1_by_hand(v: float) -> float:
    """Nearest E2M1 value, ties to the even code (the grid index), saturating at 6."""
    if math.isnan(v):
        return 6.0
    a = min(abs(v), 6.0)
    i = int(np.argmin(np.abs(_E2M1 - a)))
    d = abs(_E2M1[i] - a)
    if i + 1 < len(_E2M1) and abs(_E2M1[i + 1] - a) == d and i % 2 == 1:
        i += 1
    return math.copysign(float(_E2M1[i]), v)


def mx_by_hand(block: np.ndarray) -> tuple[int, list[float]]:
    """OCP MX: X = 2^(floor(log2 amax) - 2), E8M0 code log2(X) + 127 (>= 0), NaN -> 255."""
    amax = float(np.max(np.abs(block.astype(np.float64))))
    if not math.isfinite(amax):
        return 255, [math.nan] * len(block)
    e = -127 if amax == 0 else max(math.floor(math.log2(amax)) - 2, -127)
    x = 2.0**e
    return e + 127, [e2m1_by_hand(float(v) / x) * x for v in block]


def test_mx_blocks_match_the_definition() -> None:
    rng = np.random.default_rng(5)
    x = (rng.normal(size=(3, 70)) * 2.0 ** rng.integers(-20, 20, size=(3, 1))).astype(np.float32)
    x[1, 40:64] = 0.0  # a block that is all zero
    x[2, 64:] = [7.5, -0.1, 3.0, 0, 0, 1e-3]  # partial block whose amax saturates (7.5 -> 6)
    bq = qf.quantize_blocks(x, qf.MXFP4)
    assert bq.codes.dtype == ml_dtypes.float4_e2m1fn and bq.scales.dtype == np.uint8 and bq.tensor_scale is None
    assert bq.scales.shape == (3, 3)
    y = qf.dequantize_blocks(bq, qf.MXFP4)
    for r in range(3):
        for blk, (lo, hi) in enumerate(((0, 32), (32, 64), (64, 70))):
            code, vals = mx_by_hand(x[r, lo:hi])
            assert bq.scales[r, blk] == code
            np.testing.assert_array_equal(y[r, lo:hi], np.array(vals, np.float32))
    assert y[2, 64] == 6.0
    np.testing.assert_array_equal(qf.fake_quantize(x, qf.MXFP4), y)


def test_mx_nan_inf_and_tiny_blocks() -> None:
    x = np.ones((2, 32), np.float32)
    x[0, 3] = np.nan
    x[1, :] = 1e-40  # subnormal amax: the scale clamps at 2^-127
    x = np.concatenate([x, np.full((1, 32), 2.0, np.float32)])
    x[2, 0] = -np.inf
    bq = qf.quantize_blocks(x, qf.MXFP4)
    assert bq.scales[:, 0].tolist() == [255, 0, 255]
    y = qf.dequantize_blocks(bq, qf.MXFP4)
    assert np.isnan(y[0]).all() and np.isnan(y[2]).all()
    assert qf.e8m0_decode(np.uint8(0)) == np.float32(2.0**-127)
    np.testing.assert_array_equal(y[1], np.float32(e2m1_by_hand(1e-40 / 2.0**-127) * 2.0**-127))


def test_mx_along_axis_zero() -> None:
    scheme = qf.QuantScheme(dtypes.fp4_e2m1, "mx", axis=0)
    x = np.random.default_rng(6).normal(size=(64, 5)).astype(np.float32)
    bq = qf.quantize_blocks(x, scheme)
    assert bq.scales.shape == (2, 5)
    np.testing.assert_array_equal(qf.dequantize_blocks(bq, scheme), qf.fake_quantize(x.T, qf.MXFP4).T)


# ----------------------------------------------------------------------------- NVFP4


def nv_by_hand(x: np.ndarray, tensor_scale: float | None = None) -> np.ndarray:
    """NVFP4 from its definition, element by element, float32 arithmetic."""
    f32 = np.float32
    flat = x.reshape(-1, x.shape[-1])
    s_t = f32(np.max(np.abs(x))) / f32(2688) if tensor_scale is None else f32(tensor_scale)
    if s_t == 0:
        s_t = f32(1)
    out = np.empty_like(flat)
    for r, row in enumerate(flat):
        for lo in range(0, row.size, 16):
            blk = row[lo:lo + 16]
            ratio = f32(np.max(np.abs(blk))) / (f32(6) * s_t)
            s_b = f32(np.clip(ratio, -448, 448).astype(ml_dtypes.float8_e4m3fn))
            d = f32(s_b * s_t)
            for j, v in enumerate(blk):
                q = 0.0 if d == 0 else e2m1_by_hand(float(f32(v / d)))
                out[r, lo + j] = f32(f32(q) * d)
    return out.reshape(x.shape)


def test_nv_blocks_match_the_definition() -> None:
    rng = np.random.default_rng(8)
    x = (rng.normal(size=(4, 40)) * 2.0 ** rng.integers(-6, 6, size=(4, 1))).astype(np.float32)
    x[3, 16:32] = 0
    bq = qf.quantize_blocks(x, qf.NVFP4)
    assert bq.scales.dtype == ml_dtypes.float8_e4m3fn and bq.scales.shape == (4, 3)
    assert bq.tensor_scale == np.float32(np.abs(x).max()) / np.float32(2688)
    np.testing.assert_array_equal(qf.dequantize_blocks(bq, qf.NVFP4), nv_by_hand(x))
    given = np.float32(1e-3)  # small: block scales saturate at 448
    bq2 = qf.quantize_blocks(x, qf.NVFP4, tensor_scale=given)
    assert bq2.tensor_scale == given and float(bq2.scales.astype(np.float32).max()) == 448.0
    np.testing.assert_array_equal(qf.fake_quantize(x, qf.NVFP4, given), nv_by_hand(x, given))


def test_nv_all_zero_tensor() -> None:
    x = np.zeros((2, 16), np.float32)
    bq = qf.quantize_blocks(x, qf.NVFP4)
    assert bq.tensor_scale == 1.0 and not bq.scales.astype(np.float32).any()
    np.testing.assert_array_equal(qf.dequantize_blocks(bq, qf.NVFP4), x)


# ----------------------------------------------------------------------------- schemes


SCHEMES = [
    qf.INT8_PER_TENSOR, qf.UINT8_PER_TENSOR, qf.int8_per_channel(1), qf.int4_per_group(128, 0),
    qf.uint4_per_group(32, 0), qf.FP8_E4M3_PER_TENSOR, qf.fp8_per_channel(0, dtypes.fp8_e5m2), qf.MXFP4,
    qf.NVFP4, qf.QuantScheme(FloatFormat(2, 1, 1.5), "channel", axis=1), qf.QuantScheme(dtypes.fp4_e2m1, "group", 0, 16),
]


@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
def test_scheme_attrs_round_trip(scheme: qf.QuantScheme) -> None:
    attrs = scheme.to_attrs()
    assert qf.QuantScheme.from_attrs(json.loads(json.dumps(attrs))) == scheme
    assert qf.QuantScheme.from_op_attrs(scheme.op_attrs(), scheme.symmetric) == scheme
    assert scheme.describe() == str(scheme)


def test_scheme_descriptions_and_parsing() -> None:
    assert qf.int8_per_channel(1).describe() == "int8 per-channel(axis=1) sym"
    assert qf.uint4_per_group(32, 0).describe() == "uint4 per-group(axis=0, size=32) asym"
    assert qf.FP8_E4M3_PER_TENSOR.describe() == "fp8_e4m3 per-tensor"
    assert qf.MXFP4.describe() == "mxfp4(axis=-1, block=32)"
    assert qf.NVFP4.describe() == "nvfp4(axis=-1, block=16)"
    assert qf.parse_scheme("int8") == qf.INT8_PER_TENSOR
    assert qf.parse_scheme("uint8") == qf.UINT8_PER_TENSOR
    assert qf.parse_scheme("int8-channel") == qf.int8_per_channel(1)
    assert qf.parse_scheme("int4-g128") == qf.int4_per_group(128, 0)
    assert qf.parse_scheme("uint4-g32-axis1") == qf.QuantScheme(dtypes.uint4, "group", 1, 32, False)
    assert qf.parse_scheme("mxfp4") == qf.MXFP4 and qf.parse_scheme("nvfp4-axis0") == qf.QuantScheme(dtypes.fp4_e2m1, "nv", 0)
    assert qf.parse_scheme("ff_e3m2_b2.5").dtype == FloatFormat(3, 2, 2.5)
    with pytest.raises(ValueError, match="unknown part"):
        qf.parse_scheme("int8-blocky")


@pytest.mark.parametrize("kwargs,pattern", [
    ({"dtype": dtypes.int8, "granularity": "mx"}, "fp4_e2m1"),
    ({"dtype": dtypes.int8, "granularity": "channel"}, "needs an axis"),
    ({"dtype": dtypes.int8, "granularity": "group", "axis": 0}, "group_size"),
    ({"dtype": dtypes.fp8_e4m3, "symmetric": False}, "symmetric only"),
    ({"dtype": dtypes.float32}, "not a quantization format"),
    ({"dtype": dtypes.int8, "granularity": "row"}, "granularity"),
])
def test_bad_schemes_raise(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        qf.QuantScheme(**kwargs)


def test_block_codecs_refuse_the_wrong_entry_point() -> None:
    x = np.ones((2, 32), np.float32)
    with pytest.raises(ValueError, match="quantize_blocks"):
        qf.quantize(x, qf.MXFP4, np.float32(1))
    with pytest.raises(ValueError, match="not a block format"):
        qf.quantize_blocks(x, qf.INT8_PER_TENSOR)
    with pytest.raises(ValueError, match="needs a scale"):
        qf.fake_quantize(x, qf.INT8_PER_TENSOR)


@pytest.mark.parametrize("shape, axis, block", [((300, 70), 0, 0), ((300, 70), 1, 0), ((300, 70), 1, 16),
                                                 ((300, 70), 0, 32), ((5, 300, 70), 1, 0)])
def test_quantize_linear_in_slices_of_rows_gives_the_codes_of_one_pass(monkeypatch, shape, axis, block) -> None:
    rs = np.random.RandomState(0)
    x = (rs.randn(*shape) * 3).astype(np.float32)
    x.flat[::97] = np.nan
    groups = list(shape)
    groups[axis] = -(-shape[axis] // block) if block else shape[axis]
    if not block:
        groups = [shape[axis]]
    scale = rs.rand(*groups).astype(np.float32) + 0.01
    zp = rs.randint(-5, 5, groups).astype(np.int8)
    whole = qf.quantize_linear(x, scale, zp, axis=axis, block_size=block)
    per_tensor = qf.quantize_linear(x, np.float32(0.3), np.int8(3), axis=axis)
    monkeypatch.setattr(qf, "_QUANTIZE_CHUNK", 100)  # slices of one or two rows
    np.testing.assert_array_equal(qf.quantize_linear(x, scale, zp, axis=axis, block_size=block), whole)
    np.testing.assert_array_equal(qf.quantize_linear(x, np.float32(0.3), np.int8(3), axis=axis), per_tensor)
    assert whole.dtype == np.int8
