"""IR -> Relax (`requant.backends.tvm.to_relax`) against requant's interpreter.

Every per-op case of tests/ir/test_ops.py and tests/ir/test_quant_ops.py (shared in
tests/op_cases.py), plus the FakeQuantize schemes and attention cases below, is built as
a one-node graph, lowered to Relax, compiled with `tvm.compile` for {"kind": "llvm"}
(default pipeline) and run on the CPU on the case's seeded inputs. The outputs must match
`requant.ir.run`:

- integer, bool and low-bit float (fp8/fp4/FloatFormat, emulated in float32) outputs
  exactly, NaNs in the same places;
- float outputs within `|got - want| <= atol * max(1, max|want|) + rtol * |want|` with
  (rtol, atol) per dtype in TOL: f32/f64 1e-5 (summation order of reductions and
  matmuls; TVM evaluates the same formulas), f16 and bf16 one unit in the last place of
  the format (the reference and TVM both compute in float32 and round once, so they
  differ by at most one rounding flip);
- transcendental functions (Exp, Tanh, Erf, Gelu, Softmax, trigonometric, ...) get no
  looser tolerance: TVM's llvm implementations stay within the f32 bound above.

Cases a lowering refuses on purpose (node-level checks: a shape input computed at run
time, MaxPool's Indices output, ...) are listed in REFUSED; the test checks that they
raise `UnsupportedOpError` naming the op. Other tests: one error for several unsupported
ops, one compiled module run at two batch sizes, and a small transformer block.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from op_cases import FQ_SCHEMES, OP_CASES, QUANT_CASES, C, Case, I, In, build_case  # noqa: E402

from requant.backends.tvm import to_relax  # noqa: E402
from requant.backends.tvm.emit import from_relax_array, to_relax_array  # noqa: E402
from requant.errors import UnsupportedOpError  # noqa: E402
from requant.ir import Builder, Graph, dtypes, run, tensor_type  # noqa: E402
from requant.ir import quant_formats as qf  # noqa: E402

TOL: dict[str, tuple[float, float]] = {
    "f64": (1e-5, 1e-5),
    "f32": (1e-5, 1e-5),
    "f16": (2.0**-10, 2.0**-10),
    "bf16": (2.0**-7, 2.0**-7),
}

# case ids (str(case)) whose node a lowering refuses on purpose
REFUSED: dict[str, str] = {
    "MaxPool-indices": "Indices output",
    "MaxPool-indices_colmajor": "Indices output",
    "Reshape-dynamic": "computed shape input",
    "Expand-dynamic": "computed shape input",
    "Slice-dynamic": "computed starts/ends",
    "ReduceSum-dynamic": "computed axes",
    "ConstantOfShape-dynamic": "computed shape input",
    "Range": "computed range bounds",
    "Conv-sym_same": "auto_pad SAME on symbolic spatial dims",
    "Einsum-ii->i": "diagonal",
}

_TARGET = None


def target() -> Any:
    global _TARGET
    if _TARGET is None:
        _TARGET = tvm.target.Target({"kind": "llvm"})
    return _TARGET


def compile_graph(graph: Graph, bind_dims: dict[str, int] | None = None) -> Any:
    ex = tvm.compile(to_relax(graph, bind_dims=bind_dims), target())
    return tvm.relax.VirtualMachine(ex, tvm.cpu())


def run_tvm(vm: Any, graph: Graph, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(np.asarray(to_relax_array(feed[v.name], v.dtype), order="C"), dev) for v in graph.inputs]
    outs = vm["main"](*args)
    return [from_relax_array(o.numpy(), v.dtype) for o, v in zip(outs, graph.outputs)]


def compare(got: np.ndarray, want: np.ndarray, dt: Any, where: str) -> None:
    want = np.asarray(want)
    assert got.shape == want.shape, f"{where}: shape {got.shape}, interpreter gives {want.shape}"
    assert got.dtype == want.dtype, f"{where}: dtype {got.dtype}, interpreter gives {want.dtype}"
    short = dt.short
    if short not in TOL:  # integers, bools, emulated low-bit floats: exact
        if got.dtype.kind in "iub":
            np.testing.assert_array_equal(got, want, err_msg=where)
        else:
            a, w = got.astype(np.float64), want.astype(np.float64)
            np.testing.assert_array_equal(a, w, err_msg=where)
        return
    rtol, atol = TOL[short]
    a, w = got.astype(np.float64), want.astype(np.float64)
    assert np.array_equal(np.isnan(a), np.isnan(w)), f"{where}: NaNs differ\n{a}\n{w}"
    finite = np.isfinite(w)
    np.testing.assert_array_equal(a[~finite], w[~finite], err_msg=f"{where}: non-finite values differ")
    if not finite.any():
        return
    scale = max(1.0, float(np.max(np.abs(w[finite]))))
    err = np.abs(a[finite] - w[finite])
    bound = atol * scale + rtol * np.abs(w[finite])
    worst = int(np.argmax(err - bound))
    assert np.all(err <= bound), (
        f"{where}: |got - want| up to {err.max():.3g} (bound {bound[worst]:.3g}, rtol {rtol}, atol {atol} x {scale:.3g})"
    )


def check_against_interpreter(graph: Graph, feed: dict[str, np.ndarray], where: str,
                              bind_dims: dict[str, int] | None = None) -> list[np.ndarray]:
    want = run(graph, feed)
    vm = compile_graph(graph, bind_dims)
    got = run_tvm(vm, graph, feed)
    for j, (a, w, v) in enumerate(zip(got, want, graph.outputs)):
        compare(a, w, v.dtype, f"{where} output {j}")
    return got


# ----------------------------------------------------------------------------- extra cases

_RNG = np.random.default_rng(7)


def _f32(*shape: int) -> np.ndarray:
    return _RNG.uniform(-2, 2, size=shape).astype(np.float32)


EXTRA: list[Case] = [
    Case("ScaledDotProductAttention", [I(_f32(2, 4, 5, 8)), I(_f32(2, 4, 6, 8)), I(_f32(2, 4, 6, 8))], label="plain"),
    Case("ScaledDotProductAttention", [I(_f32(1, 4, 5, 8)), I(_f32(1, 2, 5, 8)), I(_f32(1, 2, 5, 3))],
         {"is_causal": 1}, label="gqa_causal"),
    Case("ScaledDotProductAttention", [I(_f32(1, 2, 3, 4)), I(_f32(1, 2, 3, 4)), I(_f32(1, 2, 3, 4)),
                                       I(np.array([[True, False, True], [False, False, False], [True, True, True]]))],
         {"scale": 0.3}, label="bool_mask_fully_masked_row"),
    Case("ScaledDotProductAttention", [I(_f32(2, 2, 3, 4), shape=("B", 2, "S", 4)), I(_f32(2, 2, 3, 4), shape=("B", 2, "S", 4)),
                                       I(_f32(2, 2, 3, 4), shape=("B", 2, "S", 4)), I(_f32(1, 1, 3, 3))],
         {"is_causal": 1}, label="sym_additive_mask"),
    Case("ScaledDotProductAttention", [I(_f32(1, 2, 3, 4).astype(np.float16)), I(_f32(1, 2, 3, 4).astype(np.float16)),
                                       I(_f32(1, 2, 3, 4).astype(np.float16))], label="f16"),
    Case("BitShift", [I(np.array([-100, -1, 5, 7, 1 << 20, -(1 << 30)], np.int32)), I(np.array([3, 40, -1, 31, 4, 2], np.int32))],
         {"direction": "RIGHT"}, label="signed_right_out_of_range"),
    Case("BitShift", [I(np.array([-100, -1, 5, 7, 1 << 20, 3], np.int32)), I(np.array([3, 40, -1, 31, 12, 30], np.int32))],
         {"direction": "LEFT"}, label="signed_left_wraps"),
    Case("Div", [I(np.array([7, -7, 7, -7, 100, -128], np.int8)), I(np.array([2, 2, -2, -2, 7, 3], np.int8))], label="trunc_i8"),
    Case("Pow", [I(np.array([1, -1, -1, 2, -3, 3, 7], np.int32)), I(np.array([-2, -3, -2, -1, -1, 5, 40], np.int32))],
         label="int_negative_and_wrap"),
    Case("Pow", [I(np.array([2, -3, 5, 100], np.int16)), I(np.array([0.5, 2.0, 3.7, 4.0], np.float32))], label="int_float_exp"),
    Case("Cast", [I(np.array([1e10, -1e10, np.nan, 3.9, -3.9, 2.0**62, -(2.0**63), 2.0**63], np.float64))], {"to": "i64"},
         label="f64_i64_saturate"),
    Case("Cast", [I(np.array([9, -9, 16, 7, 17, -1, 15], np.int32))], {"to": "i4"}, label="i4_wrap"),
    Case("Cast", [I(np.array([9, -9, 16, 7, 17, -1, 15], np.int32))], {"to": "u4"}, label="u4_wrap"),
    Case("Cast", [I(np.linspace(-8, 8, 161, dtype=np.float32))], {"to": "ff_e3m2_b2.5"}, label="float_format"),
    Case("Cast", [I(np.array([np.nan, np.inf, -np.inf, 6.5, -0.2, 0.25, 2.5e-3], np.float32))], {"to": "fp4_e2m1"},
         label="fp4_specials"),
    Case("Cast", [I(np.array([np.nan, 1e-3, 2.0**-9, 3 * 2.0**-10, 465, 479, 481, -500, 1e30], np.float32))],
         {"to": "fp8_e4m3", "saturate": 0}, label="fp8_e4m3_subnormal_overflow"),
    Case("Cast", [I(np.array([np.nan, 2.0**-16, 3 * 2.0**-17, 6e4, 61440, 61439, -7e4], np.float32))],
         {"to": "fp8_e5m2", "saturate": 0}, label="fp8_e5m2_subnormal_overflow"),
    Case("QuantizeLinear", [I(np.array([np.nan, np.inf, -np.inf, 1.0, -1.0, 0.0, 2.5, 3.5], np.float32)), C(np.float32(0.5)),
                            C(np.uint8(10))], label="nan_inf"),
    Case("MatMulInteger", [I(np.full((1, 40000), 255, np.uint8)), I(np.full((40000, 1), 255, np.uint8))], label="wraps_i32"),
    Case("Reshape", [I(_f32(2, 3, 4), shape=("B", 3, 4)), C(np.array([0, -1], np.int64))], label="sym_fallback"),
]

for _scheme, _needs_scale in FQ_SCHEMES:
    _x = _RNG.uniform(-4, 4, size=(4, 40)).astype(np.float32)
    _ins: list[In | None] = [I(_x, shape=("B", 40))]
    if _needs_scale:
        _s, _z = qf.choose_qparams(_scheme, *qf.tensor_ranges(_x, _scheme))
        _ins.append(C(_s))
        if _scheme.dtype.is_integer and not _scheme.symmetric:
            _ins.append(C(_z, _scheme.dtype.short))
    EXTRA.append(Case("FakeQuantize", _ins, _scheme.op_attrs(), label=str(_scheme).replace(" ", "_")))
EXTRA.append(Case("FakeQuantize", [I(_RNG.uniform(-4, 4, size=(3, 40)).astype(np.float32)), C(np.float32(0.004))],
                  qf.NVFP4.op_attrs(), label="nv_calibrated"))
EXTRA.append(Case("FakeQuantize", [I(_RNG.uniform(-4, 4, size=(40, 3)).astype(np.float32))],
                  dict(qf.MXFP4.op_attrs(), axis=0), label="mx_axis0_partial_block"))

ALL_CASES = OP_CASES + QUANT_CASES + EXTRA


@pytest.mark.parametrize("case", ALL_CASES, ids=[f"{c}#{i}" for i, c in enumerate(ALL_CASES)])
def test_op_matches_interpreter(case: Case) -> None:
    graph, feed = build_case(case)
    if str(case) in REFUSED:
        with pytest.raises(UnsupportedOpError, match=case.op):
            to_relax(graph)
        return
    check_against_interpreter(graph, feed, str(case))


def test_every_lowered_op_is_checked_numerically() -> None:
    from requant.backends.tvm.lowering import LOWERINGS, Unsupported

    lowered = {op for op, entry in LOWERINGS.items() if not isinstance(entry, Unsupported)}
    checked = {c.op for c in ALL_CASES if str(c) not in REFUSED}
    assert not lowered - checked, f"ops with an emitter but no numeric case: {sorted(lowered - checked)}"


# ----------------------------------------------------------------------------- whole graphs


def test_unsupported_ops_are_listed_in_one_error() -> None:
    g = Graph("two_bad")
    b = Builder(g)
    x = b.input("x", tensor_type("f32", (1, 2, 6, 6)))
    y, _idx = b.MaxPool(x, kernel_shape=[2, 2], _outputs=2, _name="pool_with_indices")
    shape = b.Shape(y)
    z = b.Reshape(y, b.Concat(shape, axis=0), _name="computed_reshape")
    z2 = b.Reshape(z, b.Concat(shape, axis=0), _name="computed_reshape_2")
    g.outputs = [z2]
    with pytest.raises(UnsupportedOpError) as info:
        to_relax(g)
    msg = str(info.value)
    assert "MaxPool" in msg and "pool_with_indices" in msg and "Indices" in msg
    assert "Reshape (x2" in msg and "computed_reshape" in msg
    assert msg.count("\n  - ") == 2, msg


def test_symbolic_batch_runs_at_two_sizes() -> None:
    g = Graph("sym")
    b = Builder(g)
    x = b.input("x", tensor_type("f32", ("batch", "seq", 8)))
    w = b.const(_RNG.standard_normal((8, 4)).astype(np.float32))
    y = b.Softmax(b.MatMul(x, w), axis=-1)
    g.outputs = [b.ReduceSum(y, b.const(np.array([1], np.int64)), keepdims=0), b.Shape(x)]
    vm = compile_graph(g)
    for batch, seq in ((1, 3), (5, 7)):
        feed = {"x": _RNG.standard_normal((batch, seq, 8)).astype(np.float32)}
        got = run_tvm(vm, g, feed)
        want = run(g, feed)
        assert got[0].shape == (batch, 4)
        compare(got[0], want[0], dtypes.float32, f"batch {batch}")
        np.testing.assert_array_equal(got[1], [batch, seq, 8])


def test_integer_mean_over_some_axes_of_a_symbolic_tensor() -> None:
    """An integer ReduceMean divides by the reduced axes' sizes only, also when another
    axis is symbolic (the count comes from the run-time shape)."""
    g = Graph("int_mean")
    b = Builder(g)
    x = b.input("x", tensor_type("int32", ("batch", "seq", 6)))
    g.outputs = [b.ReduceMean(x, b.const(np.array([2], np.int64)), keepdims=0),
                 b.ReduceMean(x, b.const(np.array([1, 2], np.int64)), keepdims=1)]
    vm = compile_graph(g)
    for batch, seq in ((2, 3), (4, 5)):
        feed = {"x": _RNG.integers(-50, 50, (batch, seq, 6)).astype(np.int32)}
        for got, want in zip(run_tvm(vm, g, feed), run(g, feed)):
            compare(got, want, dtypes.int32, f"batch {batch} seq {seq}")


@pytest.mark.parametrize("strides,dilations,output_padding", [
    ((1, 1), (2, 2), (1, 1)),  # output_padding >= stride, allowed by ONNX since < dilation
    ((2, 2), (3, 3), (2, 2)),
    ((2, 2), (1, 1), (1, 1)),  # below the stride: Relax's own output_padding
])
def test_conv_transpose_output_padding_up_to_the_dilation(strides, dilations, output_padding) -> None:
    g = Graph("convt")
    b = Builder(g)
    x = b.input("x", tensor_type("f32", (1, 2, 5, 5)))
    w = b.const(_RNG.standard_normal((2, 3, 3, 3)).astype(np.float32))
    g.outputs = [b.ConvTranspose(x, w, strides=list(strides), dilations=list(dilations),
                                 output_padding=list(output_padding))]
    check_against_interpreter(g, {"x": _f32(1, 2, 5, 5)}, f"strides {strides} dilations {dilations}")


def test_bind_dims_fixes_a_symbol() -> None:
    g = Graph("bind")
    b = Builder(g)
    x = b.input("x", tensor_type("f32", ("batch", 4)))
    g.outputs = [b.Relu(x)]
    mod = to_relax(g, bind_dims={"batch": 3})
    assert [int(d) for d in mod["main"].params[0].ty.shape.values] == [3, 4]
    feed = {"x": _f32(3, 4)}
    check_against_interpreter(g, feed, "bound", bind_dims={"batch": 3})


def _transformer_block() -> tuple[Graph, dict[str, np.ndarray]]:
    """A pre-LN block with quantized linears: LN, QKV (int8 weights, dynamic int8
    activations), SDPA with a causal mask, output projection, residual, LN, Gelu FFN."""
    rng = np.random.default_rng(3)
    d, f, heads = 16, 32, 2
    g = Graph("block")
    b = Builder(g)
    x = b.input("x", tensor_type("f32", ("B", "S", d)))

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) / math.sqrt(shape[0])).astype(np.float32)

    def qlinear(v: Any, k: int, n: int) -> Any:
        wf = w(k, n)
        scale = (np.abs(wf).max(axis=0) / 127).astype(np.float32)
        wq = np.clip(np.rint(wf / scale), -127, 127).astype(np.int8)
        return b.Add(b["com.microsoft.DynamicQuantizeMatMul"](v, b.const(wq), b.const(scale)), b.const(w(n)))

    def ln(v: Any) -> Any:
        return b.LayerNormalization(v, b.const(np.ones(d, np.float32)), b.const(np.zeros(d, np.float32)))

    def heads_of(v: Any) -> Any:
        return b.Transpose(b.Reshape(v, b.const(np.array([0, 0, heads, d // heads], np.int64))), perm=[0, 2, 1, 3])

    h = ln(x)
    q, k, v = (heads_of(qlinear(h, d, d)) for _ in range(3))
    att = b.ScaledDotProductAttention(q, k, v, is_causal=1)
    att = b.Reshape(b.Transpose(att, perm=[0, 2, 1, 3]), b.const(np.array([0, 0, d], np.int64)))
    h1 = b.Add(x, b.MatMul(att, b.const(w(d, d))))
    ff = b.MatMul(b.Gelu(b.Add(b.MatMul(ln(h1), b.const(w(d, f))), b.const(w(f)))), b.const(w(f, d)))
    g.outputs = [b.Add(h1, ff)]
    g.verify()
    return g, {"x": rng.standard_normal((2, 5, d)).astype(np.float32)}


def test_transformer_block_matches_interpreter() -> None:
    g, feed = _transformer_block()
    vm = compile_graph(g)
    got = run_tvm(vm, g, feed)
    want = run(g, feed)
    # dynamic int8 quantization may round one activation code differently after a float32
    # reassociation; one code is scale/2 of a weight row: bound the error accordingly
    np.testing.assert_allclose(got[0], want[0], rtol=0, atol=2e-3 * float(np.abs(want[0]).max()))
    feed2 = {"x": np.random.default_rng(4).standard_normal((1, 3, 16)).astype(np.float32)}
    want2 = run(g, feed2)[0]
    np.testing.assert_allclose(run_tvm(vm, g, feed2)[0], want2, rtol=0, atol=2e-3 * float(np.abs(want2).max()))


def test_constants_and_outputs_pass_through() -> None:
    g = Graph("passthrough")
    b = Builder(g)
    x = b.input("x", tensor_type("i8", (3,)))
    c = b.const(np.array([1, 2, 3], np.int8))
    g.outputs = [x, c, b.Add(x, c)]
    check_against_interpreter(g, {"x": np.array([127, -128, 5], np.int8)}, "passthrough")
    mod = to_relax(g)
    assert [p.name for p in mod["main"].params] == ["x"]
    assert isinstance(mod["main"].ret_ty, tvm.ir.type.TupleType)


def test_out_of_range_gather_indices_are_clamped_not_read_out_of_bounds() -> None:
    """The interpreter refuses them; the built module must not crash or read past the
    table (a token id past the vocabulary): it clamps to the last row."""
    g = Graph("gather")
    b = Builder(g)
    ids = b.input("ids", tensor_type("i64", (4,)))
    table = np.arange(12, dtype=np.float32).reshape(6, 2)
    g.outputs = [b.Gather(b.const(table), ids, axis=0)]
    got = run_tvm(compile_graph(g), g, {"ids": np.array([0, 5, 6, 1_000_000], np.int64)})[0]
    np.testing.assert_array_equal(got, table[[0, 5, 5, 5]])
    got = run_tvm(compile_graph(g), g, {"ids": np.array([-1, -6, 2, 3], np.int64)})[0]
    np.testing.assert_array_equal(got, table[[5, 0, 2, 3]])  # negative indices count from the end
