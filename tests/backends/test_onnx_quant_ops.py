"""ONNX backend for the quantization ops: one-node graphs of every quantization op
(requant.ir.ops.quant, onnxruntime, onnxruntime_attention) exported with `to_onnx` (full onnx.checker) and run in ONNX
Runtime, against the interpreter, at the default opset and older ones; the graph reads
back unchanged with `from_onnx`.

Every output compares exactly (floats bit for bit, NaN where NaN) except MatMulNBits and
QAttention, whose float32 sums ORT orders differently: |ort - ref| <= NBITS_TOL (QATTENTION_TOL)
* max(1, max|ref|).
FakeQuantize is exact through both of its lowerings: Q/DQ for int8/uint8/int4/uint4
and fp8, the float emulation for fp4_e2m1, FloatFormat, MXFP4 and NVFP4.

Graphs with QuantizeLinear / DequantizeLinear run at `QDQ_OPSET`, the newest opset at
which this ONNX Runtime has Q/DQ kernels: to_onnx's default opset can be newer (see
`test_default_opset_exports_qdq_that_ort_loads`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import ml_dtypes
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import requant.ir as ir  # noqa: E402
from requant.backends.onnx import LOWERINGS, OnnxRuntimeSession, Unsupported, max_supported_opset, to_onnx  # noqa: E402
from requant.errors import RequantError, UnsupportedOpError  # noqa: E402
from requant.frontends.onnx_frontend import from_onnx  # noqa: E402
from requant.ir import Builder, Graph, dtypes, tensor_type  # noqa: E402
from requant.ir import quant_formats as qf  # noqa: E402
from requant.ir.ops.onnxruntime import pack_low_first  # noqa: E402

NBITS_TOL = 1e-5
QATTENTION_TOL = 1e-5  # float32 attention, ORT's GEMMs sum in another order


@lru_cache(maxsize=1)
def qdq_opset() -> int:
    """Newest opset <= max_supported_opset() whose QuantizeLinear and DequantizeLinear
    ONNX Runtime loads (ORT matches a kernel registered "since v" only to op version v)."""
    from onnx import TensorProto, helper, numpy_helper

    for opset in range(max_supported_opset(), 12, -1):
        nodes = [helper.make_node("QuantizeLinear", ["x", "s"], ["q"]), helper.make_node("DequantizeLinear", ["q", "s"], ["y"])]
        graph = helper.make_graph(nodes, "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
                                  [numpy_helper.from_array(np.array(0.5, np.float32), "s")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        try:
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            return opset
        except Exception:
            continue
    raise RuntimeError("ONNX Runtime runs QuantizeLinear at no opset")


QDQ = "qdq"  # opset marker: qdq_opset()


def assert_same(actual: np.ndarray, ref: np.ndarray, tol: float | None, what: str) -> None:
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


def check_against_ort(graph: Graph, feeds: dict[str, np.ndarray], opset: int | None, tol: float | None = None) -> None:
    model = to_onnx(graph, opset=opset)
    ref = ir.run(graph, feeds)
    got = OnnxRuntimeSession(model)(**feeds)
    assert len(got) == len(ref)
    for i, (a, r) in enumerate(zip(got, ref)):
        assert_same(a, r, tol, f"{graph.name} output {i} at opset {opset or 'default'}")
    back = from_onnx(model)
    assert back.to_text() == graph.to_text()


# ----------------------------------------------------------------------------- cases


@dataclass
class Case:
    id: str
    graph: Graph
    feeds: dict[str, np.ndarray]
    opsets: tuple
    tol: float | None = None
    ops: set[str] = field(default_factory=set)


_WRITTEN: list[Callable[[], Case]] = []


def written(fn: Callable) -> Callable:
    """`fn(b, rng)` builds the graph and returns (outputs, feeds, opsets[, tol])."""

    def make() -> Case:
        g = Graph(fn.__name__)
        b = Builder(g)
        res = fn(b, np.random.default_rng(99))
        outs, feeds, opsets = res[0], res[1], res[2]
        g.outputs.extend(outs if isinstance(outs, (list, tuple)) else [outs])
        g.verify()
        return Case(fn.__name__, g, feeds, opsets, res[3] if len(res) > 3 else None, set(g.op_histogram()))

    _WRITTEN.append(make)
    return fn


def f32(rng: np.random.Generator, *shape: int, lo: float = -3.0, hi: float = 3.0) -> np.ndarray:
    return rng.uniform(lo, hi, shape).astype(np.float32)


def ints(rng: np.random.Generator, *shape: int, dt: str = "u8", lo: int | None = None, hi: int | None = None) -> np.ndarray:
    d = dtypes.dtype(dt)
    a, z = d.int_range
    return rng.integers(a if lo is None else lo, (z if hi is None else hi) + 1, shape).astype(d.np)


def inp(b: Builder, name: str, dt: str, shape: tuple):
    return b.input(name, tensor_type(dt, shape))


def specials(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    x.flat[:5] = [np.nan, np.inf, -np.inf, 0.0, -0.0]
    return x


@written
def qdq_int8_uint8(b, rng):
    x = inp(b, "x", "f32", ("n", 6))
    q1 = b.QuantizeLinear(x, b.const(np.float32(0.25)), b.const(np.uint8(100)))
    q2 = b.QuantizeLinear(x, b.const(f32(rng, 6, lo=0.01, hi=0.1)), b.const(ints(rng, 6, dt="i8")), axis=1)
    y1 = b.DequantizeLinear(q1, b.const(np.float32(0.25)), b.const(np.uint8(100)))
    y2 = b.DequantizeLinear(q2, b.const(f32(rng, 6, lo=0.01, hi=0.1)), b.const(ints(rng, 6, dt="i8")), axis=-1)
    xs = specials((rng.integers(-200, 200, (3, 6)) / 8).astype(np.float32))
    return [q1, q2, y1, y2], {"x": xs}, (QDQ, 21, 13)


@written
def qdq_int4_blocked(b, rng):
    x = inp(b, "x", "f32", (6, 4))
    s = b.const(f32(rng, 2, 4, lo=0.2, hi=1.0))
    z = b.const(ints(rng, 2, 4, dt="i8", lo=-8, hi=7), dtype=dtypes.int4)
    q = b.QuantizeLinear(x, s, z, axis=0, block_size=3)
    u = b.QuantizeLinear(x, b.const(np.float32(0.5)), output_dtype="u4")
    y = b.DequantizeLinear(q, s, z, axis=0, block_size=3)
    return [b.Cast(q, to="i8"), b.Cast(u, to="u8"), y], {"x": specials(f32(rng, 6, 4, lo=-8, hi=8))}, (QDQ, 21)


@written
def qdq_fp8(b, rng):
    x = inp(b, "x", "f32", (4, 8))
    outs = []
    q = b.QuantizeLinear(x, b.const(np.float32(1.0)), b.const(np.zeros((), ml_dtypes.float8_e4m3fn)))
    outs.append(b.DequantizeLinear(q, b.const(np.float32(1.0))))
    q5 = b.QuantizeLinear(x, b.const(f32(rng, 8, lo=1e-3, hi=1e-2)), b.const(np.zeros(8, ml_dtypes.float8_e5m2)))
    outs.append(b.DequantizeLinear(q5, b.const(np.float32(2.0))))
    # saturate=0 away from the bands where ORT differs (test_fp8_without_saturation_near_the_top)
    for code in ("fp8_e4m3", "fp8_e5m2"):
        q = b.QuantizeLinear(x, b.const(np.float32(1.0)), output_dtype=code, saturate=0)
        outs.append(b.DequantizeLinear(q, b.const(np.float32(1.0))))
    xs = f32(rng, 4, 8, lo=-470, hi=470)
    xs[1, :8] = [446, 460, 464, 470, 500, 1e9, 60000, -1e5]
    return outs, {"x": specials(xs)}, (QDQ, 21)


@written
def qdq_f16_and_i32(b, rng):
    x = inp(b, "x", "f16", (3, 5))
    q = b.QuantizeLinear(x, b.const(np.float16(0.07)), b.const(np.uint8(9)))
    d = b.DequantizeLinear(inp(b, "acc", "i32", (3, 5)), b.const(np.float32(1e-4)))
    return [q, d], {"x": f32(rng, 3, 5).astype(np.float16), "acc": ints(rng, 3, 5, dt="i32", lo=-10**6, hi=10**6)}, (QDQ, 21, 19)


@written
def dynamic_quantize_linear(b, rng):
    x = inp(b, "x", "f32", ("n", 7))
    y, s, z = b.DynamicQuantizeLinear(x, _outputs=3)
    return [y, s, z], {"x": f32(rng, 3, 7, lo=-1, hi=4)}, (None, 13)


@written
def matmul_integer(b, rng):
    a = inp(b, "a", "u8", ("b", 3, 16))
    y1 = b.MatMulInteger(a, b.const(ints(rng, 16, 5, dt="i8")), b.const(np.uint8(128)), b.const(ints(rng, 5, dt="i8")))
    y2 = b.MatMulInteger(a, b.const(ints(rng, 16, 4)))
    c = inp(b, "c8", "i8", (3, 16))
    y3 = b.MatMulInteger(c, b.const(ints(rng, 16, 4, dt="i8")), b.const(np.int8(-2)))
    return [y1, y2, y3], {"a": ints(rng, 2, 3, 16), "c8": ints(rng, 3, 16, dt="i8")}, (None, 13)


@written
def qlinear_matmul(b, rng):
    a = inp(b, "a", "u8", ("b", 3, 16))
    y1 = b.QLinearMatMul(a, b.const(np.float32(0.02)), b.const(np.uint8(128)), b.const(ints(rng, 16, 5, dt="i8")),
                         b.const(f32(rng, 5, lo=1e-3, hi=1e-2)), b.const(np.zeros(5, np.int8)),
                         b.const(np.float32(0.05)), b.const(np.uint8(120)))
    c = inp(b, "c8", "i8", (3, 16))
    y2 = b.QLinearMatMul(c, b.const(np.float32(0.03)), b.const(np.int8(1)), b.const(ints(rng, 16, 4, dt="i8")),
                         b.const(np.float32(0.004)), b.const(np.int8(0)), b.const(np.float32(0.1)), b.const(np.int8(-5)))
    return [y1, y2], {"a": ints(rng, 2, 3, 16), "c8": ints(rng, 3, 16, dt="i8")}, (None, 21, 13)


@written
def contrib_integer_to_float(b, rng):
    a = inp(b, "a", "u8", ("b", 3, 16))
    w = b.const(ints(rng, 16, 5, dt="i8"))
    y1 = b["com.microsoft.MatMulIntegerToFloat"](a, w, b.const(np.float32(0.02)), b.const(f32(rng, 5, lo=1e-3, hi=1e-2)),
                                b.const(np.uint8(128)), b.const(ints(rng, 5, dt="i8", lo=-3, hi=3)), b.const(f32(rng, 5)))
    c = inp(b, "c8", "i8", (3, 16))
    y2 = b["com.microsoft.MatMulIntegerToFloat"](c, w, b.const(np.float32(0.02)), b.const(np.float32(0.003)))
    x = inp(b, "x", "f32", ("b", 3, 16))
    y3 = b["com.microsoft.DynamicQuantizeMatMul"](x, w, b.const(np.float32(0.004)), b.const(np.int8(2)), b.const(f32(rng, 5)))
    y4 = b["com.microsoft.DynamicQuantizeMatMul"](x, b.const(ints(rng, 16, 5)), b.const(f32(rng, 5, lo=1e-3, hi=1e-2)),
                                 b.const(ints(rng, 5, lo=120, hi=136)))
    return ([y1, y2, y3, y4], {"a": ints(rng, 2, 3, 16), "c8": ints(rng, 3, 16, dt="i8"), "x": f32(rng, 2, 3, 16)},
            (None, 17))


@written
def contrib_matmul_nbits(b, rng):
    n, k, block = 6, 40, 16
    outs = []
    x = inp(b, "x", "f32", ("b", 3, k))
    for bits in (4, 8, 2):
        codes = ints(rng, n, 48, lo=0, hi=(1 << bits) - 1)
        packed = b.const(pack_low_first(codes, bits).reshape(n, 3, 16 * bits // 8))
        scales = b.const(f32(rng, n, 3, lo=0.01, hi=0.1))
        zps = b.const(pack_low_first(ints(rng, n, 3, lo=0, hi=(1 << bits) - 1), bits))
        outs.append(b["com.microsoft.MatMulNBits"](x, packed, scales, zps, None, b.const(f32(rng, n)), K=k, N=n, bits=bits,
                                  block_size=block))
        outs.append(b["com.microsoft.MatMulNBits"](x, packed, scales, K=k, N=n, bits=bits, block_size=block))
    fzp = b.const(f32(rng, n, 3, lo=0, hi=15))
    codes = ints(rng, n, 48, lo=0, hi=15)
    outs.append(b["com.microsoft.MatMulNBits"](x, b.const(pack_low_first(codes, 4).reshape(n, 3, 8)), b.const(f32(rng, n, 3, lo=0.01, hi=0.1)),
                              fzp, K=k, N=n, block_size=block, accuracy_level=1))
    return outs, {"x": f32(rng, 2, 3, k)}, (None,), NBITS_TOL


@written
def contrib_qattention(b, rng):
    """ORT's fused QAttention: per-column int8 weights with zero points and a [B, S] mask;
    uint8 per-tensor weights, a custom scale and a [B, S, S] mask with one fully masked
    row (ORT adds mask_filter_value, so that row attends to every key); no mask."""
    bsz, s, d_in, n, heads = 2, 5, 16, 12, 3
    x = inp(b, "x", "u8", ("b", s, d_in))
    m2 = inp(b, "mask2", "i32", ("b", s))
    m3 = inp(b, "mask3", "i32", ("b", s, s))
    bias = b.const(f32(rng, 3 * n, lo=-0.5, hi=0.5))
    w8 = b.const(ints(rng, d_in, 3 * n, dt="i8"))
    y1 = b["com.microsoft.QAttention"](x, w8, bias, b.const(np.float32(0.02)), b.const(f32(rng, 3 * n, lo=1e-3, hi=1e-2)), m2,
                      b.const(np.uint8(131)), b.const(ints(rng, 3 * n, dt="i8", lo=-3, hi=3)), num_heads=heads)
    y2 = b["com.microsoft.QAttention"](x, b.const(ints(rng, d_in, 3 * n)), bias, b.const(np.float32(0.02)), b.const(np.float32(0.004)),
                      m3, b.const(np.uint8(120)), b.const(np.uint8(128)), num_heads=heads, scale=0.3)
    y3 = b["com.microsoft.QAttention"](x, w8, bias, b.const(np.float32(0.03)), b.const(np.float32(0.005)), num_heads=heads,
                      mask_filter_value=-1e9)
    mask2 = np.ones((bsz, s), np.int32)
    mask2[1, 3:] = 0
    mask3 = np.ones((bsz, s, s), np.int32)
    mask3[0, :, 4] = 0
    mask3[1, 2, :] = 0
    return ([y1, y2, y3], {"x": ints(rng, bsz, s, d_in), "mask2": mask2, "mask3": mask3}, (None, 17),
            QATTENTION_TOL)


def _fake(b, x, scheme: qf.QuantScheme, scale=None, zp=None):
    ins = [x]
    if scale is not None or zp is not None:
        ins.append(None if scale is None else b.const(scale))
    if zp is not None:
        ins.append(b.const(zp, dtype=scheme.dtype))
    return b.FakeQuantize(*ins, **scheme.op_attrs())


def _qparams(x: np.ndarray, scheme: qf.QuantScheme):
    s, z = qf.choose_qparams(scheme, *qf.tensor_ranges(x, scheme))
    return s, (z if scheme.dtype.is_integer and not scheme.symmetric else None)


@written
def fake_quantize_qdq_formats(b, rng):
    sample = f32(rng, 4, 40, lo=-4, hi=4)
    x = inp(b, "x", "f32", ("n", 40))
    outs = []
    for scheme in (qf.INT8_PER_TENSOR, qf.UINT8_PER_TENSOR, qf.int8_per_channel(1), qf.int8_per_channel(-1, symmetric=False),
                   qf.FP8_E4M3_PER_TENSOR, qf.fp8_per_channel(1, dtypes.fp8_e5m2)):
        outs.append(_fake(b, x, scheme, *_qparams(sample, scheme)))
    return outs, {"x": specials(sample)}, (QDQ, 21, 19)


@written
def fake_quantize_int4_groups(b, rng):
    sample = f32(rng, 40, 6, lo=-4, hi=4)
    x = inp(b, "x", "f32", (40, 6))
    outs = [_fake(b, x, scheme, *_qparams(sample, scheme))
            for scheme in (qf.int4_per_group(16, 0), qf.uint4_per_group(32, 0), qf.QuantScheme(dtypes.int4, "channel", 1))]
    return outs, {"x": sample}, (QDQ, 21)


@written
def fake_quantize_float_grids(b, rng):
    sample = f32(rng, 4, 40, lo=-4, hi=4)
    x = inp(b, "x", "f32", ("n", 40))
    outs = []
    for scheme in (qf.QuantScheme(dtypes.fp4_e2m1), qf.QuantScheme(dtypes.fp4_e2m1, "channel", 1),
                   qf.QuantScheme(dtypes.fp4_e2m1, "group", 1, 16), qf.QuantScheme(dtypes.dtype("ff_e3m2_b2.5")),
                   qf.QuantScheme(dtypes.dtype("ff_e4m3_b7"), "channel", -1), qf.QuantScheme(dtypes.dtype("ff_e2m1_b0"))):
        outs.append(_fake(b, x, scheme, *_qparams(sample, scheme)))
    return outs, {"x": specials(sample)}, (None, 13)


@written
def fake_quantize_mx(b, rng):
    x = inp(b, "x", "f32", ("n", 70))
    sample = (f32(rng, 3, 70) * 2.0 ** rng.integers(-30, 30, (3, 1))).astype(np.float32)
    sample[1, 40:64] = 0
    sample[2, 32:64] = 1e-40
    y1 = _fake(b, x, qf.MXFP4)
    w = inp(b, "w", "f32", (70, 5))
    y2 = _fake(b, w, qf.QuantScheme(dtypes.fp4_e2m1, "mx", axis=0))
    return [y1, y2], {"x": specials(sample), "w": f32(rng, 70, 5)}, (None, 13)


@written
def fake_quantize_nv(b, rng):
    x = inp(b, "x", "f32", ("n", 40))
    y1 = _fake(b, x, qf.NVFP4)
    y2 = _fake(b, x, qf.NVFP4, np.float32(2e-4))
    w = inp(b, "w", "f32", (40, 5))
    y3 = _fake(b, w, qf.QuantScheme(dtypes.fp4_e2m1, "nv", axis=0))
    z = inp(b, "z", "f32", (2, 16))
    y4 = _fake(b, z, qf.NVFP4)
    return ([y1, y2, y3, y4], {"x": f32(rng, 3, 40), "w": specials(f32(rng, 40, 5)), "z": np.zeros((2, 16), np.float32)},
            (None, 19))


def all_cases() -> list[Case]:
    return [make() for make in _WRITTEN]


_CASES = all_cases()
_PARAMS = [pytest.param(c, o, id=f"{c.id}-opset{o or 'default'}") for c in _CASES for o in c.opsets]


@pytest.mark.parametrize("case,opset", _PARAMS)
def test_ort_matches_interpreter(case: Case, opset) -> None:
    check_against_ort(case.graph, case.feeds, qdq_opset() if opset == QDQ else opset, case.tol)


def test_every_lowered_quant_op_has_a_case() -> None:
    modules = ("requant.ir.ops.quant", "requant.ir.ops.onnxruntime", "requant.ir.ops.onnxruntime_attention")
    ours = {op for op, s in ir.all_schemas().items() if s.kernel.__module__ in modules}
    lowered = {op for op in ours if not isinstance(LOWERINGS.get(op), Unsupported)}
    covered = set().union(*(c.ops for c in _CASES))
    assert not lowered - covered, f"quantization ops with an ONNX lowering but no case: {sorted(lowered - covered)}"


def test_contrib_ops_use_the_microsoft_domain_and_fake_quantize_none() -> None:
    case = next(c for c in _CASES if c.id == "contrib_integer_to_float")
    model = to_onnx(case.graph)
    assert {n.domain for n in model.graph.node} == {"com.microsoft"}
    assert {o.domain: o.version for o in model.opset_import}["com.microsoft"] == 1
    fq = next(c for c in _CASES if c.id == "fake_quantize_mx")
    assert all(n.domain in ("", None) for n in to_onnx(fq.graph).graph.node)


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
    case = next(c for c in _CASES if c.id == "qdq_int8_uint8")
    check_against_ort(case.graph, case.feeds, None)


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
