"""IR -> Relax (`requant.backends.tvm.to_relax`) on whole graphs, against requant's
interpreter: one error naming every unsupported node, one compiled module run at two
run-time shapes (symbolic batch, integer ReduceMean over a symbolic tensor), ConvTranspose
output padding up to the dilation, bind_dims, a small quantized transformer block,
constants and inputs passed through as outputs, out-of-range Gather indices, and large
results of constants left to run time instead of Relax's constant folding.

Built with `tvm.compile` for {"kind": "llvm"} and run on the CPU (tests/tvm_testing.py).
Float outputs within `WHOLE_GRAPH_TOL` (|got - want| <= atol * max(1, max|want|) +
rtol * |want|: summation order across several fused ops), integers exactly.

Every op's cases (tests/op_cases/) are built and checked one node at a time by
tests/backends/tvm/test_tvm_op_cases.py.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from op_cases import Tol  # noqa: E402
from op_testing import compare  # noqa: E402
from tvm_testing import compile_graph, run_tvm  # noqa: E402

from requant.backends.tvm import emit, to_relax  # noqa: E402
from requant.errors import UnsupportedOpError  # noqa: E402
from requant.ir import Builder, Graph, run, tensor_type  # noqa: E402

WHOLE_GRAPH_TOL = {
    "f64": Tol(1e-5, 1e-5, scale_atol=True),
    "f32": Tol(1e-5, 1e-5, scale_atol=True),
    "f16": Tol(2.0**-10, 2.0**-10, scale_atol=True),
    "bf16": Tol(2.0**-7, 2.0**-7, scale_atol=True),
}

_RNG = np.random.default_rng(7)


def _f32(*shape: int) -> np.ndarray:
    return _RNG.uniform(-2, 2, size=shape).astype(np.float32)


def check_against_interpreter(graph: Graph, feed: dict[str, np.ndarray], where: str,
                              bind_dims: dict[str, int] | None = None) -> list[np.ndarray]:
    want = run(graph, feed)
    got = run_tvm(compile_graph(graph, bind_dims), graph, feed)
    for j, (a, w, v) in enumerate(zip(got, want, graph.outputs)):
        assert a.dtype == w.dtype, f"{where} output {j}: dtype {a.dtype}, interpreter gives {w.dtype}"
        compare(a, w, v.dtype.short, WHOLE_GRAPH_TOL, f"{where} output {j}")
    return got


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
        compare(got[0], want[0], "f32", WHOLE_GRAPH_TOL, f"batch {batch}")
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
            compare(got, want, "i32", WHOLE_GRAPH_TOL, f"batch {batch} seq {seq}")


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
def _relative_bias_graph(n: int) -> Graph:
    """x * exp(bias[i - j + n - 1]) over [2, n, n]: the [n, n] bias is computable from
    constants alone (the relative-position pattern)."""
    g = Graph("relative_bias")
    b = Builder(g)
    x = b.input("x", tensor_type("f32", (2, n, n)))
    offsets = b.Sub(b.const(np.arange(n, dtype=np.int64)[:, None]), b.const(np.arange(n, dtype=np.int64)[None, :]))
    index = b.Add(offsets, b.const(np.int64(n - 1)))
    table = np.linspace(-1.0, 1.0, 2 * n - 1, dtype=np.float32)
    g.outputs = [b.Mul(x, b.Exp(b.Gather(b.const(table), index, axis=0)))]
    return g


def _folded_constant_sizes(mod: Any) -> list[int]:
    """Element counts of the constants left in `mod` after Relax's FoldConstant."""
    folded = tvm.relax.transform.FoldConstant()(mod)
    sizes: list[int] = []

    def visit(expr: Any) -> None:
        if isinstance(expr, tvm.ir.expr.GenericConst):
            sizes.append(int(np.prod(expr.value.shape)))

    tvm.relax.analysis.post_order_visit(folded["main"], visit)
    return sizes


def test_large_results_of_constants_are_computed_at_run_time(monkeypatch) -> None:
    """A constant-only subgraph whose result exceeds FOLD_LIMIT_BYTES reads its inputs
    through an opaque identity: Relax's FoldConstant would otherwise fold the [n, n] bias
    into the module (gigabytes for a long sequence); the numbers stay the interpreter's."""
    n = 32
    g = _relative_bias_graph(n)
    feed = {"x": _f32(2, n, n)}
    monkeypatch.setattr(emit, "FOLD_LIMIT_BYTES", 1024)  # the [32, 32] int64 offsets take 8 KiB
    mod = to_relax(g)
    assert "vm.builtin.copy" in mod.script()
    assert max(_folded_constant_sizes(mod)) < n * n
    check_against_interpreter(g, feed, "relative bias computed at run time")
    # under the limit (the default's 256 MiB): folded at compile time as before
    monkeypatch.setattr(emit, "FOLD_LIMIT_BYTES", 1 << 28)
    mod = to_relax(g)
    assert "vm.builtin.copy" not in mod.script()
    assert max(_folded_constant_sizes(mod)) == n * n
    check_against_interpreter(g, feed, "relative bias folded")


def test_a_large_constant_expand_keeps_its_shape_input_constant(monkeypatch) -> None:
    """Only data inputs go through the opaque identity: Expand's float row does, its
    shape (a rank-1 integer input, which the lowering needs as a constant) does not, and
    ConstantOfShape, which has no data input, folds as before."""
    n = 32
    g = Graph("expanded_row")
    b = Builder(g)
    x = b.input("x", tensor_type("f32", (n, n)))
    row = b.const(np.linspace(0.0, 1.0, n, dtype=np.float32)[None, :])
    filled = b.ConstantOfShape(b.const(np.array([n, n], np.int64)), value=np.array([0.5], np.float32))
    g.outputs = [b.Add(b.Mul(x, b.Expand(row, b.const(np.array([n, n], np.int64)))), filled)]
    monkeypatch.setattr(emit, "FOLD_LIMIT_BYTES", 1024)
    mod = to_relax(g)
    assert mod.script().count("vm.builtin.copy") == 1
    check_against_interpreter(g, {"x": _f32(n, n)}, "expanded row computed at run time")
