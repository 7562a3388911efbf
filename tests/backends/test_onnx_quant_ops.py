"""ONNX backend for the quantization ops, beyond single op cases: ONNX Runtime's
kernels are written in the com.microsoft domain and FakeQuantize in none of its own; a
com.microsoft model written by another tool reads into the interpreter; to_onnx's
default opset exports Q/DQ that ONNX Runtime loads; old opsets and dynamic block axes
are refused with a reason; and where ONNX Runtime's non-saturating fp8 conversion
differs from ONNX's reference (and requant).

Every quantization op's export, round trip and ONNX Runtime results against the
interpreter (Q/DQ at `op_testing.qdq_opset()`, the newest opset at which this ONNX
Runtime has Q/DQ kernels, and older ones; every output exactly but MatMulNBits and
QAttention) are checked on the op cases (tests/op_cases/quant.py, onnxruntime.py,
onnxruntime_attention.py) by tests/backends/onnx/test_onnx_op_cases.py.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import requant.ir as ir  # noqa: E402
from op_cases import CASES, build_case  # noqa: E402
from op_testing import qdq_opset  # noqa: E402
from requant.backends.onnx import OnnxRuntimeSession, to_onnx  # noqa: E402
from requant.errors import UnsupportedOpError  # noqa: E402
from requant.frontends.onnx_frontend import from_onnx  # noqa: E402
from requant.ir import Builder, Graph, dtypes, tensor_type  # noqa: E402
from requant.ir import quant_formats as qf  # noqa: E402
from requant.ir.ops.onnxruntime import pack_low_first  # noqa: E402

NBITS_TOL = 1e-5


def assert_same(actual: np.ndarray, ref: np.ndarray, tol: float | None, what: str) -> None:
    """Exactly (tol None), or floats within tol * max(1, max|ref|), NaN where NaN."""
    actual, ref = np.asarray(actual), np.asarray(ref)
    assert actual.shape == ref.shape, f"{what}: shape {actual.shape} != {ref.shape}"
    if ref.dtype.kind == "f" or ref.dtype.kind == "V":
        a, r = actual.astype(np.float64), ref.astype(np.float64)
        if tol is None:
            np.testing.assert_array_equal(a, r, err_msg=what)
            return
        assert np.array_equal(np.isnan(a), np.isnan(r)), f"{what}: NaN positions differ"
        bound = tol * max(1.0, float(np.nanmax(np.abs(r), initial=0)))
        err = float(np.nanmax(np.abs(a - r), initial=0))
        assert err <= bound, f"{what}: max|ort - ref| = {err:.3g} > {bound:.3g}"
    else:
        assert actual.dtype == ref.dtype, f"{what}: dtype {actual.dtype} != {ref.dtype}"
        np.testing.assert_array_equal(actual, ref, err_msg=what)


def f32(rng: np.random.Generator, *shape: int, lo: float = -3.0, hi: float = 3.0) -> np.ndarray:
    return rng.uniform(lo, hi, shape).astype(np.float32)


def ints(rng: np.random.Generator, *shape: int, dt: str = "u8", lo: int | None = None, hi: int | None = None) -> np.ndarray:
    d = dtypes.dtype(dt)
    a, z = d.int_range
    return rng.integers(a if lo is None else lo, (z if hi is None else hi) + 1, shape).astype(d.np)


def inp(b: Builder, name: str, dt: str, shape: tuple):
    return b.input(name, tensor_type(dt, shape))


def _case_graph(case_id: str) -> Graph:
    (case,) = [c for c in CASES if str(c) == case_id]
    return build_case(case)[0]


def test_contrib_ops_use_the_microsoft_domain_and_fake_quantize_none() -> None:
    for case_id in ("com.microsoft.MatMulIntegerToFloat-per_column_bias", "com.microsoft.DynamicQuantizeMatMul-sym_zp_bias"):
        model = to_onnx(_case_graph(case_id))
        assert {n.domain for n in model.graph.node} == {"com.microsoft"}, case_id
        assert {o.domain: o.version for o in model.opset_import}["com.microsoft"] == 1
    model = to_onnx(_case_graph("FakeQuantize-mx_wide_range_specials"))
    assert all(n.domain in ("", None) for n in model.graph.node)


def test_onnx_runtime_contrib_model_reads_into_the_interpreter() -> None:
    """A com.microsoft node written by another tool (no requant provenance) is read as
    requant's op and computes what ONNX Runtime computes."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    packed = pack_low_first(ints(rng, 4, 32, lo=0, hi=15), 4).reshape(4, 2, 8)
    scales = f32(rng, 4, 2, lo=0.01, hi=0.1)
    node = helper.make_node("MatMulNBits", ["x", "w", "s"], ["y"], domain="com.microsoft", K=32, N=4, bits=4,
                            block_size=16)
    graph = helper.make_graph([node], "nbits", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])],
                              [numpy_helper.from_array(packed, "w"), numpy_helper.from_array(scales, "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    g = from_onnx(model)
    assert g.op_histogram() == {"com.microsoft.MatMulNBits": 1}
    x = f32(rng, 3, 32)
    assert_same(OnnxRuntimeSession(model)(x=x)[0], ir.run(g, {"x": x})[0], NBITS_TOL, "MatMulNBits read from ONNX")


def test_default_opset_exports_qdq_that_ort_loads() -> None:
    """to_onnx(opset=None) picks the newest opset ORT has kernels for. ORT matches a
    kernel registered "since v, no end" only to op version v, so QuantizeLinear-28 has no
    kernel even though QuantizeLinear's kernel is registered from 25 on."""
    g = Graph("qdq_default_opset")
    b = Builder(g)
    x = inp(b, "x", "f32", ("n", 6))
    q = b.QuantizeLinear(x, b.const(np.float32(0.25)), b.const(np.uint8(100)))
    g.outputs.extend([q, b.DequantizeLinear(q, b.const(np.float32(0.25)), b.const(np.uint8(100)))])
    xs = (np.random.default_rng(99).integers(-200, 200, (3, 6)) / 8).astype(np.float32)
    model = to_onnx(g)
    for got, want in zip(OnnxRuntimeSession(model)(x=xs), ir.run(g, {"x": xs})):
        assert_same(got, want, None, "Q/DQ at the default opset")
    assert from_onnx(model).to_text() == g.to_text()


@pytest.mark.parametrize("build,opset,pattern", [
    (lambda b, x: b.QuantizeLinear(x, b.const(np.float32(1)), output_dtype="i4"), 19, "opset 21"),
    (lambda b, x: b.QuantizeLinear(x, b.const(np.float32(1)), b.const(np.zeros((), ml_dtypes.float8_e4m3fn))), 17,
     "fp8_e4m3 codes only from opset 19"),
    (lambda b, x: b.QuantizeLinear(x, b.const(np.ones((1, 4), np.float32)), axis=0, block_size=2), 19, "block_size"),
    (lambda b, x: b.FakeQuantize(x, dtype="fp4_e2m1", granularity="nv"), 17, "opset >= 19"),
    (lambda b, x: b.FakeQuantize(x, b.const(np.ones((1, 4), np.float32)), dtype="i4", granularity="group", axis=0,
                                 group_size=2), 19, "opset >= 21"),
])
def test_old_opsets_are_refused_with_a_reason(build, opset: int, pattern: str) -> None:
    g = Graph("old")
    b = Builder(g)
    x = inp(b, "x", "f32", (2, 4))
    g.outputs.append(build(b, x))
    with pytest.raises(UnsupportedOpError, match=pattern):
        to_onnx(g, opset=opset)


def test_block_emulation_needs_a_static_axis() -> None:
    g = Graph("dyn")
    b = Builder(g)
    x = inp(b, "x", "f32", (2, "k"))
    g.outputs.append(b.FakeQuantize(x, dtype="fp4_e2m1", granularity="mx"))
    with pytest.raises(UnsupportedOpError, match="static dim on axis 1"):
        to_onnx(g)


# ORT's non-saturating fp8 conversion, where it differs from ONNX's reference (ml_dtypes):
# e4m3 |x| in [480, 496) -> +-448 (reference: NaN), e5m2 |x| in [61440, 65536) -> NaN
# (reference: +-inf). requant's kernels follow ONNX's reference, like Cast(saturate=0).
_ORT_FP8_NO_SATURATION_BANDS = {dtypes.fp8_e4m3: (480.0, 496.0), dtypes.fp8_e5m2: (61440.0, 65536.0)}


@pytest.mark.parametrize("code", sorted(_ORT_FP8_NO_SATURATION_BANDS, key=str), ids=str)
def test_fp8_without_saturation_near_the_top(code) -> None:
    lo, hi = _ORT_FP8_NO_SATURATION_BANDS[code]
    g = Graph("fp8_no_sat")
    b = Builder(g)
    x = inp(b, "x", "f32", ("n",))
    g.outputs.append(b.DequantizeLinear(b.QuantizeLinear(x, b.const(np.float32(1.0)), output_dtype=code.short,
                                                         saturate=0), b.const(np.float32(1.0))))
    top = qf.format_max(code)
    xs = np.concatenate([np.linspace(top * 0.9, hi * 1.2, 4001), [1e30, np.inf]]).astype(np.float32)
    xs = np.concatenate([xs, -xs])
    ref = ir.run(g, {"x": xs})[0]
    got = OnnxRuntimeSession(to_onnx(g, opset=qdq_opset()))(x=xs)[0]
    want_ref = xs.astype(code.np).astype(np.float32)  # ONNX's reference casts with ml_dtypes
    np.testing.assert_array_equal(ref, want_ref)
    differ = ~((got == ref) | (np.isnan(got) & np.isnan(ref)))
    assert np.all((np.abs(xs[differ]) >= lo) & (np.abs(xs[differ]) < hi)), "ORT differs outside the known band"
