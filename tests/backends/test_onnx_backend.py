"""ONNX backend: `to_onnx` writes models that pass `onnx.checker` (full check) and that
ONNX Runtime runs to the interpreter's results, for one-node graphs of every registered
op with a lowering (generated for simple ops, written out for the rest), at the default
opset and at older ones (13, 17, 18, 21, 23) where decompositions kick in; external
data; and the runner's session settings."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import requant.ir as ir  # noqa: E402
from requant.backends.onnx import (  # noqa: E402
    LOWERINGS,
    OnnxRuntimeSession,
    Unsupported,
    make_session_options,
    max_supported_opset,
    physical_cores,
    save_onnx,
    to_onnx,
)
from requant.backends.onnx.export import ort_supports  # noqa: E402
from requant.errors import RequantError, UnsupportedOpError  # noqa: E402
from requant.frontends.onnx_frontend import from_onnx  # noqa: E402
from requant.ir import Builder, Graph, dtypes, tensor_type  # noqa: E402

FP32_TOL = 1e-4
"""ORT vs interpreter on float32: max|a-b| <= FP32_TOL * max(1, max|ref|)."""

TOLERANCES = {dtypes.float32: FP32_TOL, dtypes.float64: 1e-9, dtypes.float16: 2e-3, dtypes.bfloat16: 1.6e-2}


def assert_matches(actual: np.ndarray, ref: np.ndarray, what: str = "") -> None:
    """Floats within the dtype's tolerance (NaN where the reference has NaN); every other
    dtype exactly."""
    actual = np.asarray(actual)
    ref = np.asarray(ref)
    assert actual.shape == ref.shape, f"{what}: shape {actual.shape} != {ref.shape}"
    dt = ir.dtypes.from_numpy(ref.dtype)
    if dt.is_float:
        a = actual.astype(np.float64)
        r = ref.astype(np.float64)
        nan = np.isnan(r)
        assert np.array_equal(np.isnan(a), nan), f"{what}: NaN positions differ"
        a, r = a[~nan], r[~nan]
        if r.size == 0:
            return
        inf = np.isinf(r)
        assert np.array_equal(a[inf], r[inf]), f"{what}: infinities differ"
        a, r = a[~inf], r[~inf]
        if r.size == 0:
            return
        tol = TOLERANCES.get(dt, FP32_TOL) * max(1.0, float(np.max(np.abs(r))))
        err = float(np.max(np.abs(a - r)))
        assert err <= tol, f"{what}: max|ort - ref| = {err:.3g} > {tol:.3g}"
    else:
        assert actual.dtype == ref.dtype, f"{what}: dtype {actual.dtype} != {ref.dtype}"
        np.testing.assert_array_equal(actual, ref, err_msg=what)


def check_against_ort(graph: Graph, feeds: dict[str, np.ndarray], opset: int | None = None) -> onnx.ModelProto:
    model = to_onnx(graph, opset=opset)  # runs check_model(full_check=True)
    ref = ir.run(graph, feeds)
    got = OnnxRuntimeSession(model)(**feeds)
    assert len(got) == len(ref)
    for i, (a, r) in enumerate(zip(got, ref)):
        assert_matches(a, r, f"output {i} ({graph.outputs[i].name}) at opset {opset or 'default'}")
    return model


# ----------------------------------------------------------------------------- cases


@dataclass
class Case:
    id: str
    graph: Graph
    feeds: dict[str, np.ndarray]
    opsets: tuple = (None,)
    ops: set[str] = field(default_factory=set)


_RNG_SEED = 1234
_POSITIVE_DOMAIN = {"Log", "Sqrt", "Acos", "Asin", "Atanh", "Reciprocal", "ReduceLogSum", "Pow", "Div"}
_ABOVE_ONE = {"Acosh"}


def _values(rng: np.random.Generator, op: str, shape: tuple, dt: str) -> np.ndarray:
    if dt == "bool":
        return rng.random(shape) > 0.5
    if op in _ABOVE_ONE:
        v = rng.uniform(1.1, 3.0, shape)
    elif op in _POSITIVE_DOMAIN:
        v = rng.uniform(0.1, 0.9, shape)
    else:  # signed, away from 0 and from the kinks of the piecewise activations
        v = rng.uniform(0.1, 2.0, shape) * rng.choice([-1.0, 1.0], shape)
    return v.astype(ir.dtype(dt).np)


def _auto_case(op: str, schema) -> Case | None:
    """A one-node graph on (2,3,4) inputs of one dtype with default attributes, for the
    ops whose inputs are all plain data (indices, shapes and axes need written cases)."""
    n = schema.min_inputs if schema.max_inputs is not None else 2
    if n == 0:
        return None
    rng = np.random.default_rng(_RNG_SEED)
    for dt in ("f32", "bool"):
        g = Graph(f"auto_{op}")
        ins = [g.add_input(f"x{i}", tensor_type(dt, (2, 3, 4))) for i in range(n)]
        try:
            node = g.create_node(op, ins, {}, name=f"{op.lower()}_node")
        except RequantError:
            continue
        g.outputs.extend(node.outputs)
        feeds = {v.name: _values(rng, op, (2, 3, 4), dt) for v in ins}
        return Case(f"auto-{op}", g, feeds, ops={op})
    return None


_WRITTEN: list[Callable[[], Case]] = []
# Ops whose auto case would be wrong (indices, shift counts, zero divisors): written only.
_NO_AUTO = {"BitShift", "Mod", "Gather", "GatherElements", "ScatterElements", "ScatterND", "Conv", "Where"}


def written(fn: Callable[[Builder, np.random.Generator], tuple]) -> Callable[[Builder, np.random.Generator], tuple]:
    """Register a case: `fn(b, rng)` builds the graph and returns (outputs, feeds[, opsets])."""

    def make() -> Case:
        g = Graph(fn.__name__)
        b = Builder(g)
        rng = np.random.default_rng(_RNG_SEED)
        res = fn(b, rng)
        outs, feeds = res[0], res[1]
        opsets = res[2] if len(res) > 2 else (None,)
        g.outputs.extend(outs if isinstance(outs, (list, tuple)) else [outs])
        g.verify()
        return Case(fn.__name__, g, feeds, opsets, ops=set(g.op_histogram()))

    make.__name__ = fn.__name__
    _WRITTEN.append(make)
    return fn


def f32(rng: np.random.Generator, *shape: int, lo: float = -2.0, hi: float = 2.0) -> np.ndarray:
    return rng.uniform(lo, hi, shape).astype(np.float32)


def inp(b: Builder, name: str, dt: str, shape: tuple):
    return b.input(name, tensor_type(dt, shape))


def i64(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


OLD = (None, 13, 17, 18, 21, 23)


@written
def pool_max_avg(b, rng):
    x = inp(b, "x", "f32", (1, 2, 6, 6))
    y1 = b.MaxPool(x, kernel_shape=[2, 2], strides=[2, 2])
    y2 = b.AveragePool(x, kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], count_include_pad=0)
    y3 = b.GlobalAveragePool(x)
    y4 = b.GlobalMaxPool(x)
    return [y1, y2, y3, y4], {"x": f32(rng, 1, 2, 6, 6)}, (None, 13, 21)


@written
def conv_and_transpose(b, rng):
    x = inp(b, "x", "f32", ("n", 2, 5, 5))
    w = b.const(f32(rng, 4, 2, 3, 3), name="w")
    bias = b.const(f32(rng, 4), name="bias")
    y = b.Conv(x, w, bias, pads=[1, 1, 1, 1], strides=[2, 2])
    wt = b.const(f32(rng, 4, 3, 2, 2), name="wt")
    z = b.ConvTranspose(y, wt, strides=[2, 2])
    g = b.Conv(x, b.const(f32(rng, 2, 1, 3, 3), name="wg"), group=2)
    return [y, z, g], {"x": f32(rng, 2, 2, 5, 5)}


@written
def batch_instance_group_norm(b, rng):
    x = inp(b, "x", "f32", (2, 4, 3, 3))
    p = [b.const(f32(rng, 4, lo=0.5, hi=1.5), name=f"p{i}") for i in range(4)]
    y1 = b.BatchNormalization(x, p[0], p[1], p[2], p[3], epsilon=1e-3)
    y2 = b.InstanceNormalization(x, p[0], p[1])
    y3 = b.GroupNormalization(x, p[0], p[1], num_groups=2)
    return [y1, y2, y3], {"x": f32(rng, 2, 4, 3, 3)}, (None, 21, 23)


@written
def layer_norm_three_outputs(b, rng):
    x = inp(b, "x", "f32", ("batch", 3, 8))
    s = b.const(f32(rng, 8), name="scale")
    bias = b.const(f32(rng, 8), name="bias")
    y, mean, inv = b.LayerNormalization(x, s, bias, axis=-1, epsilon=1e-5, _outputs=3)
    return [y, mean, inv], {"x": f32(rng, 2, 3, 8)}, (None, 17, 21)


@written
def layer_norm_decomposed(b, rng):
    x = inp(b, "x", "f32", (2, 3, 8))
    y = b.LayerNormalization(x, b.const(f32(rng, 8), name="s"), b.const(f32(rng, 8), name="b"), axis=-2)
    z = b.LayerNormalization(x, b.const(f32(rng, 8), name="s2"))
    return [y, z], {"x": f32(rng, 2, 3, 8)}, (None, 13, 17, 18)


@written
def rms_norm(b, rng):
    x = inp(b, "x", "f32", (2, 3, 8))
    y = b.RMSNormalization(x, b.const(f32(rng, 8), name="s"), epsilon=1e-6)
    return [y], {"x": f32(rng, 2, 3, 8)}, OLD


@written
def gelu_swish_mish(b, rng):
    x = inp(b, "x", "f32", (2, 8))
    return ([b.Gelu(x), b.Gelu(x, approximate="tanh"), b.Swish(x), b.Swish(x, alpha=1.7), b.Mish(x)],
            {"x": f32(rng, 2, 8, lo=-4, hi=4)}, OLD)


@written
def casts(b, rng):
    x = inp(b, "x", "f32", (3, 5))
    outs = [b.Cast(x, to=t) for t in ("i32", "i64", "f16", "bool", "u8", "f64")]
    outs.append(b.Cast(b.Cast(x, to="bf16"), to="f32"))
    outs.append(b.Cast(b.Cast(x, to="fp8_e4m3"), to="f32"))
    outs.append(b.Cast(b.Cast(x, to="fp8_e5m2"), to="f32"))
    outs.append(b.CastLike(x, b.const(np.zeros(1, np.float16), name="like")))
    v = f32(rng, 3, 5, lo=-20, hi=200)
    return outs, {"x": v}, (None, 21)


@written
def cast_int4(b, rng):
    x = inp(b, "x", "f32", (3, 5))
    z = b.Cast(b.Cast(x, to="i4"), to="f32")
    u = b.Cast(b.Cast(b.Abs(x), to="u4"), to="f32")
    return [z, u], {"x": f32(rng, 3, 5, lo=-7, hi=7)}


@written
def bf16_and_fp8_graph_io(b, rng):
    x = inp(b, "x", "bf16", (4,))
    y = b.Cast(x, to="fp8_e4m3")
    return [b.Cast(x, to="f32"), y], {"x": f32(rng, 4).astype(dtypes.bfloat16.np)}


@written
def concat_split(b, rng):
    x = inp(b, "x", "f32", ("n", 3, 4))
    y = inp(b, "y", "f32", ("n", 2, 4))
    c = b.Concat(x, y, axis=1)
    a1, a2 = b.Split(c, axis=2, num_outputs=2)
    s1, s2, s3 = b.Split(c, b.const(i64([1, 3, 1]), name="sizes"), axis=1, _outputs=3)
    return [c, a1, a2, s1, s2, s3], {"x": f32(rng, 2, 3, 4), "y": f32(rng, 2, 2, 4)}, OLD


@written
def constant_nodes(b, rng):
    c = b.Constant(value=np.arange(6, dtype=np.float32).reshape(2, 3))
    s = b.ConstantOfShape(b.const(i64([2, 3]), name="shape"), value=np.array([1.5], np.float32))
    x = inp(b, "x", "f32", (2, 3))
    return [b.Add(x, c), b.Mul(x, s)], {"x": f32(rng, 2, 3)}


@written
def cumsum_topk_arg(b, rng):
    x = inp(b, "x", "f32", (3, 6))
    cs = b.CumSum(x, b.const(np.array(1, np.int64), name="axis"), exclusive=1, reverse=1)
    v, idx = b.TopK(x, b.const(i64([2]), name="k"), axis=1)
    am = b.ArgMax(x, axis=1, keepdims=0)
    return [cs, v, idx, am], {"x": f32(rng, 3, 6)}


@written
def einsum_matmul_gemm(b, rng):
    a = inp(b, "a", "f32", (2, 3))
    m = inp(b, "m", "f32", ("b", 4, 3))
    e = b.Einsum(a, b.const(f32(rng, 3, 5), name="k"), equation="ij,jk->ik")
    mm = b.MatMul(m, b.const(f32(rng, 3, 5), name="w"))
    gm = b.Gemm(a, b.const(f32(rng, 4, 3), name="wt"), b.const(f32(rng, 4), name="c"), transB=1, alpha=0.5, beta=2.0)
    return [e, mm, gm], {"a": f32(rng, 2, 3), "m": f32(rng, 2, 4, 3)}


@written
def shapes(b, rng):
    x = inp(b, "x", "f32", ("n", 3, 4))
    r = b.Reshape(x, b.const(i64([0, -1]), name="shape"))
    ex = b.Expand(b.const(f32(rng, 3, 1), name="col"), b.const(i64([2, 3, 4]), name="eshape"))
    t = b.Tile(x, b.const(i64([1, 2, 1]), name="reps"))
    u = b.Unsqueeze(x, b.const(i64([0, 3]), name="uaxes"))
    sq = b.Squeeze(u, b.const(i64([0]), name="saxes"))
    fl = b.Flatten(x, axis=2)
    tr = b.Transpose(x, perm=[2, 0, 1])
    sh = b.Shape(x, start=1)
    sz = b.Size(x)
    idn = b.Identity(x)
    return [r, ex, t, u, sq, fl, tr, sh, sz, idn], {"x": f32(rng, 2, 3, 4)}, OLD


@written
def slicing_and_padding(b, rng):
    x = inp(b, "x", "f32", (4, 6))
    s = b.Slice(x, b.const(i64([1, 5]), name="st"), b.const(i64([4, 0]), name="en"),
                b.const(i64([0, 1]), name="ax"), b.const(i64([2, -2]), name="sp"))
    p = b.Pad(x, b.const(i64([1, 0, 0, 2]), name="pads"), b.const(np.array(0.5, np.float32), name="pv"))
    r = b.Pad(x, b.const(i64([1, 2, 1, 2]), name="pads2"), mode="reflect")
    tri = b.Trilu(x, b.const(np.array(1, np.int64), name="k"), upper=0)
    return [s, p, r, tri], {"x": f32(rng, 4, 6)}, (None, 14, 18)


@written
def gathers_scatters(b, rng):
    x = inp(b, "x", "f32", (3, 4))
    g = b.Gather(x, b.const(i64([2, 0, -1]), name="gi"), axis=0)
    ge = b.GatherElements(x, b.const(i64([[0, 3], [1, 1], [2, 0]]), name="gei"), axis=1)
    gnd = b.GatherND(x, b.const(i64([[1], [2]]), name="gndi"))
    se = b.ScatterElements(x, b.const(i64([[0, 3], [1, 2], [2, 0]]), name="sei"),
                           b.const(f32(rng, 3, 2), name="seu"), axis=1)
    snd = b.ScatterND(x, b.const(i64([[2], [0]]), name="sndi"), b.const(f32(rng, 2, 4), name="sndu"))
    sadd = b.ScatterElements(x, b.const(i64([[0], [1], [0]]), name="sai"),
                             b.const(f32(rng, 3, 1), name="sau"), axis=0, reduction="add")
    return [g, ge, gnd, se, snd, sadd], {"x": f32(rng, 3, 4)}


@written
def gather_computed_indices(b, rng):
    x = inp(b, "x", "f32", (5, 3))
    i = inp(b, "i", "i64", (2, 2))
    return [b.Gather(x, i, axis=0)], {"x": f32(rng, 5, 3), "i": i64([[0, 4], [3, 3]])}


@written
def reductions_with_axes(b, rng):
    x = inp(b, "x", "f32", (2, 3, 4))
    axes = b.const(i64([1]), name="axes")
    outs = [getattr(b, op)(x, axes, keepdims=0) for op in
            ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
             "ReduceSumSquare", "ReduceLogSumExp")]
    outs.append(b.ReduceLogSum(b.Abs(x), axes))
    outs.append(b.ReduceSum(x))
    return outs, {"x": f32(rng, 2, 3, 4)}, OLD


@written
def integer_arithmetic(b, rng):
    a = inp(b, "a", "i32", (3, 4))
    c = inp(b, "c", "i32", (3, 4))
    outs = [b.Add(a, c), b.Sub(a, c), b.Mul(a, c), b.Div(a, c), b.Mod(a, c), b.Mod(a, c, fmod=1),
            b.Neg(a), b.Abs(a), b.Max(a, c), b.Min(a, c), b.Relu(a), b.Sign(a), b.Equal(a, c), b.Less(a, c)]
    va = rng.integers(-50, 50, (3, 4)).astype(np.int32)
    vc = rng.integers(1, 9, (3, 4)).astype(np.int32) * rng.choice([-1, 1], (3, 4)).astype(np.int32)
    return outs, {"a": va, "c": vc}


@written
def float_mod_and_pow(b, rng):
    a = inp(b, "a", "f32", (3, 4))
    c = inp(b, "c", "f32", (3, 4))
    ipow = b.Pow(inp(b, "ib", "i64", (4,)), b.const(i64([0, 1, 2, 3]), name="ie"))
    return ([b.Mod(a, c, fmod=1), b.Pow(b.Abs(a), c), ipow],
            {"a": f32(rng, 3, 4), "c": f32(rng, 3, 4, lo=0.5, hi=2), "ib": i64([3, -2, 5, 7])})


@written
def bitshift_unsigned_and_signed(b, rng):
    u = inp(b, "u", "u8", (6,))
    s = inp(b, "s", "i32", (6,))
    su = b.const(np.array([0, 1, 2, 3, 7, 4], np.uint8), name="su")
    ss = b.const(np.array([0, 1, 5, 31, 3, 4], np.int32), name="ss")
    outs = [b.BitShift(u, su, direction="LEFT"), b.BitShift(u, su, direction="RIGHT"),
            b.BitShift(s, ss, direction="LEFT"), b.BitShift(s, ss, direction="RIGHT")]
    vu = np.array([1, 255, 128, 7, 3, 200], np.uint8)
    vs = np.array([1, -1, -100, 12345, -2**31, 2**31 - 1], np.int32)
    return outs, {"u": vu, "s": vs}


@written
def variadic_and_where(b, rng):
    x = inp(b, "x", "f32", (2, 3))
    y = inp(b, "y", "f32", (3,))
    z = inp(b, "z", "f32", (2, 1))
    cond = inp(b, "cond", "bool", (2, 3))
    outs = [b.Max(x, y, z), b.Min(x, y, z), b.Sum(x, y, z), b.Mean(x, y, z), b.Where(cond, x, y)]
    return outs, {"x": f32(rng, 2, 3), "y": f32(rng, 3), "z": f32(rng, 2, 1), "cond": rng.random((2, 3)) > 0.5}


@written
def clip_softmax_dropout_range(b, rng):
    x = inp(b, "x", "f32", (2, 5))
    c = b.Clip(x, b.const(np.array(-0.5, np.float32), name="lo"), b.const(np.array(0.7, np.float32), name="hi"))
    sm = b.Softmax(x, axis=0)
    ls = b.LogSoftmax(x, axis=1)
    d = b.Dropout(x)
    r = b.Range(b.const(np.array(1.0, np.float32), name="r0"), b.const(np.array(4.0, np.float32), name="r1"),
                b.const(np.array(0.5, np.float32), name="rd"))
    ri = b.Range(b.const(np.array(5, np.int64), name="i0"), b.const(np.array(-3, np.int64), name="i1"),
                 b.const(np.array(-2, np.int64), name="id"))
    return [c, sm, ls, d, r, ri], {"x": f32(rng, 2, 5)}


@written
def attention_mha_bool_mask(b, rng):
    q = inp(b, "q", "f32", (2, 4, 3, 8))
    k = inp(b, "k", "f32", (2, 4, 5, 8))
    v = inp(b, "v", "f32", (2, 4, 5, 6))
    mask = inp(b, "mask", "bool", (2, 1, 3, 5))
    m = rng.random((2, 1, 3, 5)) > 0.3
    m[0, 0, 1, :] = False  # a query row that sees no key: 0, not NaN
    y = b.ScaledDotProductAttention(q, k, v, mask)
    return [y], {"q": f32(rng, 2, 4, 3, 8), "k": f32(rng, 2, 4, 5, 8), "v": f32(rng, 2, 4, 5, 6), "mask": m}, OLD


@written
def attention_gqa_causal_additive(b, rng):
    q = inp(b, "q", "f32", (1, 4, 5, 8))
    k = inp(b, "k", "f32", (1, 2, 5, 8))
    v = inp(b, "v", "f32", (1, 2, 5, 8))
    bias = b.const(f32(rng, 1, 1, 5, 5), name="bias")
    y = b.ScaledDotProductAttention(q, k, v, bias, is_causal=1, scale=0.3)
    z = b.ScaledDotProductAttention(q, k, v, is_causal=1)
    return [y, z], {"q": f32(rng, 1, 4, 5, 8), "k": f32(rng, 1, 2, 5, 8), "v": f32(rng, 1, 2, 5, 8)}, OLD


@written
def attention_symbolic_lengths(b, rng):
    q = inp(b, "q", "f32", ("batch", 2, "s", "d"))
    k = inp(b, "k", "f32", ("batch", 2, "s", "d"))
    y = b.ScaledDotProductAttention(q, k, k, is_causal=1)
    return [y], {"q": f32(rng, 2, 2, 4, 8), "k": f32(rng, 2, 2, 4, 8)}, (None, 13, 21)


@written
def isinf_isnan(b, rng):
    x = inp(b, "x", "f32", (6,))
    return ([b.IsInf(x), b.IsInf(x, detect_negative=0), b.IsNaN(x)],
            {"x": np.array([1.0, np.inf, -np.inf, np.nan, 0.0, -2.0], np.float32)})


def all_cases() -> list[Case]:
    cases = [make() for make in _WRITTEN]
    for op, schema in sorted(ir.all_schemas().items()):
        if op in _NO_AUTO or isinstance(LOWERINGS.get(op), Unsupported):
            continue
        c = _auto_case(op, schema)
        if c is not None:
            cases.append(c)
    return cases


_CASES = all_cases()
_PARAMS = [pytest.param(c, opset, id=f"{c.id}-opset{opset or 'default'}") for c in _CASES for opset in c.opsets]


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("case,opset", _PARAMS)
def test_ort_matches_interpreter(case: Case, opset: int | None) -> None:
    check_against_ort(case.graph, case.feeds, opset)


def test_every_lowered_op_has_a_case() -> None:
    covered = set().union(*(c.ops for c in _CASES))
    lowered = {op for op in ir.all_schemas() if not isinstance(LOWERINGS.get(op), Unsupported)}
    in_quant_tests = ("requant.ir.ops.quant", "requant.ir.ops.onnxruntime", "requant.ir.ops.onnxruntime_attention")  # test_onnx_quant_ops.py
    lowered -= {op for op, s in ir.all_schemas().items() if s.kernel.__module__ in in_quant_tests}
    missing = sorted(lowered - covered)
    assert not missing, f"ops with an ONNX lowering but no backend test case: {missing}"


@pytest.mark.parametrize("case,opset", _PARAMS)
def test_roundtrip_keeps_graph(case: Case, opset: int | None) -> None:
    """graph -> ONNX -> graph is the identity, decomposed ops included (the backend
    records them and the frontend restores them)."""
    back = from_onnx(to_onnx(case.graph, opset=opset))
    assert back.op_histogram() == case.graph.op_histogram()
    assert back.to_text() == case.graph.to_text()


def test_roundtrip_keeps_graph_node_and_value_meta() -> None:
    g = Graph("with_meta")
    g.meta["source"] = "hand-built"
    b = Builder(g, meta={"created_by": "rule_x"})
    x = inp(b, "x", "f32", (2, 8))
    x.meta["calibration"] = {"min": -1.5, "max": 2.0}
    w = b.const(np.ones((8, 8), np.float32), name="w")
    w.meta["scale"] = np.array([0.5, 0.25], np.float32)
    h = b.MatMul(x, w)
    h.meta["dtype_hint"] = dtypes.int8
    y = b.Gelu(h)  # decomposed at opset 17: its meta rides in the provenance record
    y.meta["note"] = "output"
    g.outputs.append(y)
    for opset in (None, 17):
        back = from_onnx(to_onnx(g, opset=opset))
        assert back.to_text() == g.to_text()
        assert back.meta == {"source": "hand-built"}
        assert next(iter(back.constants)).meta["scale"].tolist() == [0.5, 0.25]
        assert all(n.meta == {"created_by": "rule_x"} for n in back)


def test_decomposed_op_reads_back_node_by_node_when_edited() -> None:
    g = Graph("edited")
    b = Builder(g)
    x = inp(b, "x", "f32", (2, 8))
    g.outputs.append(b.Gelu(x, _name="act"))
    model = to_onnx(g, opset=17)
    assert len(model.graph.node) > 1
    assert from_onnx(model).op_histogram() == {"Gelu": 1}
    # another tool rewired a helper value to a new graph output: no longer one Gelu
    helper = model.graph.node[0].output[0]
    model.graph.output.append(onnx.helper.make_tensor_value_info(helper, onnx.TensorProto.FLOAT, None))
    back = from_onnx(model)
    assert "Gelu" not in back.op_histogram() and "Erf" in back.op_histogram()
    feeds = {"x": f32(np.random.default_rng(0), 2, 8)}
    assert_matches(ir.run(back, feeds)[0], ir.run(g, feeds)[0], "decomposed Gelu")


def test_full_check_passes_and_default_opset_is_ort_max() -> None:
    g = Graph("tiny")
    b = Builder(g)
    x = inp(b, "x", "f32", ("batch", 4))
    g.outputs.append(b.Relu(x))
    model = to_onnx(g)
    onnx.checker.check_model(model, full_check=True)
    (default,) = [o.version for o in model.opset_import if o.domain == ""]
    assert default == max_supported_opset()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and dims[1].dim_value == 4


def test_opset_is_lowered_when_rms_norm_needs_decomposition() -> None:
    g = Graph("rms")
    b = Builder(g)
    x = inp(b, "x", "f32", (2, 8))
    g.outputs.append(b.RMSNormalization(x, b.const(np.ones(8, np.float32), name="s")))
    native = to_onnx(g, opset=23)
    assert [n.op_type for n in native.graph.node] == ["RMSNormalization"]
    old = to_onnx(g, opset=21)
    assert "RMSNormalization" not in {n.op_type for n in old.graph.node}
    assert {"ReduceMean", "Sqrt", "Div"} <= {n.op_type for n in old.graph.node}


def test_constants_become_initializers_and_unknown_dims_stay_unknown() -> None:
    g = Graph("consts")
    b = Builder(g)
    x = b.input("x", ir.TensorType((None, 3), dtypes.float32))
    y = b.Add(x, b.const(np.float32(2.0), name="two"))
    g.outputs.append(b.Reshape(y, b.const(i64([-1]), name="flat")))
    model = to_onnx(g)
    assert {t.name for t in model.graph.initializer} == {"two", "flat"}
    assert not any(n.op_type == "Constant" for n in model.graph.node)
    d0 = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert not d0.HasField("dim_value") and not d0.HasField("dim_param")


def test_unknown_rank_output_gets_its_rank_from_onnx_inference() -> None:
    g = Graph("unknown_rank")
    b = Builder(g)
    x = inp(b, "x", "f32", (2, 3))
    shape = inp(b, "shape", "i64", (2,))
    y = b.Reshape(x, shape)
    assert y.type.shape == (None, None)
    z = b.Relu(y)
    z.type = ir.TensorType(None, dtypes.float32)  # as if inference had lost the rank
    g.outputs.append(z)
    model = to_onnx(g)
    assert len(model.graph.output[0].type.tensor_type.shape.dim) == 2
    (got,) = OnnxRuntimeSession(model)(x=np.ones((2, 3), np.float32), shape=i64([3, 2]))
    assert got.shape == (3, 2)


def test_unknown_rank_input_is_a_clear_error() -> None:
    g = Graph("no_rank")
    b = Builder(g)
    x = b.input("x", ir.TensorType(None, dtypes.float32))
    g.outputs.append(b.Relu(x))
    with pytest.raises(RequantError, match="rank of every graph input and output.*input %x"):
        to_onnx(g)


def test_intermediate_types_are_recorded_for_the_round_trip() -> None:
    g = Graph("symbolic")
    b = Builder(g)
    x = inp(b, "x", "f32", ("batch", 4))
    y = b.Relu(x)
    g.outputs.append(b.Exp(y))
    model = to_onnx(g)
    (info,) = model.graph.value_info
    assert info.name == y.name and info.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert not to_onnx(g, value_info=False).graph.value_info


def test_unsupported_ops_are_reported_together(monkeypatch) -> None:
    g = Graph("bad")
    b = Builder(g)
    x = inp(b, "x", "f32", (2,))
    y = b.Relu(b.Exp(b.Relu(x, _name="r1"), _name="e1"), _name="r2")
    g.outputs.append(y)
    monkeypatch.setitem(LOWERINGS, "Relu", Unsupported("testing the report"))
    monkeypatch.delitem(LOWERINGS, "Exp")
    with pytest.raises(UnsupportedOpError) as info:
        to_onnx(g)
    msg = str(info.value)
    assert "Relu: 2 node(s)" in msg and "'r1'" in msg and "'r2'" in msg and "testing the report" in msg
    assert "Exp: 1 node(s)" in msg and "no entry in the ONNX lowering table" in msg


def _cast_node_and_types():
    node = onnx.helper.make_node("Cast", ["a"], ["b"], to=onnx.TensorProto.FLOAT4E2M1)
    return node, {"a": tensor_type("f32", (4,)), "b": tensor_type("fp4_e2m1", (4,))}


def test_fp4_cast_exports_but_ort_has_no_kernel(caplog) -> None:
    g = Graph("fp4")
    b = Builder(g)
    x = inp(b, "x", "f32", (4,))
    g.outputs.append(b.Cast(b.Cast(x, to="fp4_e2m1"), to="f32"))
    if ort_supports("Cast", max_supported_opset(), "", *_cast_node_and_types()):
        pytest.skip("this ONNX Runtime build casts to FLOAT4E2M1")
    with caplog.at_level("WARNING"):
        model = to_onnx(g)  # valid ONNX (checker passes)...
    assert "Cast(f32 -> fp4_e2m1)" in caplog.text
    with pytest.raises(RequantError, match="Cast"):  # ...that this ORT build cannot run
        OnnxRuntimeSession(model)


def test_op_newer_than_requested_opset_is_a_clear_error() -> None:
    g = Graph("gn")
    b = Builder(g)
    x = inp(b, "x", "f32", (1, 4, 2))
    g.outputs.append(b.GroupNormalization(x, b.const(np.ones(4, np.float32)), b.const(np.zeros(4, np.float32)),
                                          num_groups=2))
    with pytest.raises(UnsupportedOpError, match="opset 21"):
        to_onnx(g, opset=18)


# ----------------------------------------------------------------------------- external data


def _weighted_graph() -> tuple[Graph, dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    g = Graph("weighted")
    b = Builder(g)
    x = inp(b, "x", "f32", ("batch", 64))
    h = b.Relu(b.MatMul(x, b.const(f32(rng, 64, 128), name="w1")))
    y = b.Add(b.MatMul(h, b.const(f32(rng, 128, 32), name="w2")), b.const(f32(rng, 32), name="b2"))
    g.outputs.append(y)
    return g, {"x": f32(rng, 3, 64)}


def test_external_data_forced_on_a_small_model(tmp_path) -> None:
    g, feeds = _weighted_graph()
    model = to_onnx(g)
    before = model.SerializeToString()
    path = tmp_path / "sub" / "model.onnx"
    save_onnx(model, path, external_data=True)
    assert model.SerializeToString() == before, "save_onnx must not modify the given model"
    data = tmp_path / "sub" / "model.onnx.data"
    assert data.is_file() and data.stat().st_size >= (64 * 128 + 128 * 32) * 4
    assert path.stat().st_size < 4096, "weights must not be inside the .onnx file"
    skeleton = onnx.load(str(path), load_external_data=False)
    locations = {
        t.name: {e.key: e.value for e in t.external_data}["location"]
        for t in skeleton.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
    }
    assert set(locations) == {"w1", "w2"}  # b2 (128 bytes) stays inline
    assert set(locations.values()) == {"model.onnx.data"}
    onnx.checker.check_model(str(path), full_check=True)
    ref = ir.run(g, feeds)
    (got,) = OnnxRuntimeSession(path)(**feeds)
    assert_matches(got, ref[0], "ORT from a file with external data")
    back = from_onnx(path)
    assert back.to_text() == g.to_text()
    # the directory moves as a whole: the relative location still resolves
    moved = tmp_path / "moved"
    (tmp_path / "sub").rename(moved)
    assert_matches(ir.run(from_onnx(moved / "model.onnx"), feeds)[0], ref[0], "after moving")


def test_to_onnx_with_path_and_graph_save(tmp_path) -> None:
    g, feeds = _weighted_graph()
    to_onnx(g, path=tmp_path / "a.onnx", external_data=True)
    assert (tmp_path / "a.onnx.data").is_file()
    save_onnx(g, tmp_path / "b.onnx")  # small: no external data by default
    assert not (tmp_path / "b.onnx.data").exists()
    for name in ("a.onnx", "b.onnx"):
        (got,) = OnnxRuntimeSession(tmp_path / name)(feeds["x"])
        assert_matches(got, ir.run(g, feeds)[0], name)


def test_automatic_external_data_above_the_threshold(tmp_path, monkeypatch) -> None:
    import requant.backends.onnx.export as export

    monkeypatch.setattr(export, "AUTO_EXTERNAL_DATA_BYTES", 1000)
    g, feeds = _weighted_graph()
    model = to_onnx(g)  # checked from a temporary file, as a >2 GB model would be
    save_onnx(model, tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx.data").is_file()
    with pytest.raises(RequantError, match="external_data=True"):
        save_onnx(model, tmp_path / "n.onnx", external_data=False)
    (got,) = OnnxRuntimeSession(model)(**feeds)  # served to ORT from a temporary file
    assert_matches(got, ir.run(g, feeds)[0], "auto external")


# ----------------------------------------------------------------------------- runner


def test_runner_thread_settings() -> None:
    opts = make_session_options()
    assert opts.intra_op_num_threads == physical_cores()
    assert 1 <= physical_cores() <= (os.cpu_count() or 1)
    assert opts.inter_op_num_threads == 1
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    g, feeds = _weighted_graph()
    s = OnnxRuntimeSession(g, intra_op_threads=1)
    assert s.options.intra_op_num_threads == 1
    assert s.session.get_providers() == ["CPUExecutionProvider"]


def test_runner_call_forms() -> None:
    g = Graph("two_inputs")
    b = Builder(g)
    x = inp(b, "x", "f32", (2,))
    y = inp(b, "y", "f32", (2,))
    g.outputs.extend([b.Sub(x, y), b.Mul(x, y)])
    s = OnnxRuntimeSession(to_onnx(g))
    a, c = np.array([1, 2], np.float32), np.array([3, 5], np.float32)
    for got in (s(a, c), s(x=a, y=c), s(a, y=c), s({"x": a, "y": c}), tuple(s.run([a, c]))):
        assert isinstance(got, tuple) and len(got) == 2
        np.testing.assert_array_equal(got[0], a - c)
        np.testing.assert_array_equal(got[1], a * c)
    with pytest.raises(RequantError, match="missing model input"):
        s(a)
    with pytest.raises(RequantError, match="no input 'z'"):
        s(a, c, z=a)


def test_backends_package_import_is_cheap() -> None:
    import subprocess
    import sys

    code = ("import sys, requant.backends as b; "
            "assert 'onnx' not in sys.modules and 'onnxruntime' not in sys.modules; "
            "assert callable(b.to_onnx) and callable(b.save_onnx) and b.OnnxRuntimeSession")
    subprocess.run([sys.executable, "-c", code], check=True)


def _optimized_ops(session: OnnxRuntimeSession, model: bytes, tmp_path) -> list[str]:
    """The node types ORT's optimised graph holds under `session`'s settings."""
    opts = make_session_options()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model, opts, providers=session.providers,
                         disabled_optimizers=list(session.disabled_optimizers))
    return [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]


def test_runner_turns_off_slow_skip_layernorm_fusion(tmp_path) -> None:
    from requant.backends.onnx.runtime import SLOW_ORT_FUSIONS

    g = Graph("residual_layernorm")
    b = Builder(g)
    x = inp(b, "x", "f32", (2, 5, 16))
    skip = inp(b, "skip", "f32", (2, 5, 16))
    rng = np.random.default_rng(0)
    gamma = b.const(rng.standard_normal(16).astype(np.float32), "gamma")
    beta = b.const(rng.standard_normal(16).astype(np.float32), "beta")
    g.outputs.append(b.LayerNormalization(b.Add(x, skip), gamma, beta, axis=-1, epsilon=1e-5))
    model = to_onnx(g).SerializeToString()
    ours, anchor = OnnxRuntimeSession(model), OnnxRuntimeSession(model, disabled_optimizers=())
    assert ours.disabled_optimizers == SLOW_ORT_FUSIONS == ("SkipLayerNormFusion",)
    assert _optimized_ops(ours, model, tmp_path) == ["Add", "LayerNormalization"]
    # the case that must not match: ORT's defaults fuse the residual into SkipLayerNormalization
    assert _optimized_ops(anchor, model, tmp_path) == ["SkipLayerNormalization"]
    feeds = {n: rng.standard_normal((2, 5, 16)).astype(np.float32) for n in ("x", "skip")}
    expected = ir.run(g, feeds)[0]
    for session in (ours, anchor):  # fp32: 1e-5 relative to the output's scale
        np.testing.assert_allclose(session(**feeds)[0], expected, rtol=0, atol=1e-5 * np.abs(expected).max())
