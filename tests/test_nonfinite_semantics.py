"""One float semantics for NaN and Inf (issue 16, item 6): every float op gives, on
every backend, what the interpreter gives for NaN, +-Inf and signed zeros (TVM's
max/min/sign family ignored NaN, ONNX Runtime's reductions and max pools a NaN that
does not come first: backends/*/lowering/_nan.py); a target that
quantizes activations does what its report says with them, on each backend.

Equality is NaN-for-NaN and, elsewhere, within float32 rounding of different kernels
(rtol 1e-5, atol 1e-6)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

import requant
import requant.ir as ir

# The ops whose kernels select between values (max/min/sign/where: where NaN got lost)
# and a transcendental of each kind; each more op costs TVM a kernel to build.
_UNARY = ["Relu", "Sigmoid", "Exp", "Sqrt", "Erf", "Softplus", "LeakyRelu", "Elu", "Selu", "Celu", "HardSigmoid",
          "HardSwish", "Gelu", "Sign", "Log", "Reciprocal", "ThresholdedRelu"]


def float_ops_graph() -> ir.Graph:
    """x -> one output per op (unary ops, Max/Min/Clip against constants, softmax and
    reductions along the last axis, ArgMax/ArgMin, max pools over windows holding NaN)."""
    outs = [f"%u{i}" for i in range(len(_UNARY))]
    lines = [f"  %u{i} = {op}(%x)" for i, op in enumerate(_UNARY)]
    lines += ["  %mx = Max(%x, %zero)", "  %mn = Min(%x, %zero)", "  %cl = Clip(%x, %lo, %hi)",
              "  %sm = Softmax(%x) {axis=-1}", "  %rmax = ReduceMax(%x, %axis) {keepdims=1}",
              "  %rmin = ReduceMin(%x, %axis) {keepdims=1}", "  %amax = ArgMax(%x) {axis=1}",
              "  %amin = ArgMin(%x) {axis=1}", "  %gmp = GlobalMaxPool(%x4)",
              "  %mp = MaxPool(%x4) {kernel_shape=[2,1], strides=[2,1]}"]
    outs += ["%mx", "%mn", "%cl", "%sm", "%rmax", "%rmin", "%amax", "%amin", "%gmp", "%mp"]
    zeros = ",".join(["0.0"] * 8)
    text = (f"graph main(%x: f32[3,8], %x4: f32[1,3,8,1]) -> ({', '.join(outs)}) {{\n"
            f"  const %zero: f32[1,8] = [[{zeros}]]\n  const %lo: f32[] = -1.0\n  const %hi: f32[] = 1.0\n"
            f"  const %axis: i64[1] = [1]\n" + "\n".join(lines) + "\n}\n")
    return ir.parse(text)


def nonfinite_inputs() -> dict[str, np.ndarray]:
    x = np.array([[np.nan, np.inf, -np.inf, -1.5, 0.0, 2.0, -0.0, 3.0],
                  [0.5, -np.inf, 1.0, np.inf, -2.0, 0.25, 4.0, -3.0],
                  [1.0, -1.0, 0.5, np.nan, 2.0, -0.5, np.nan, 0.0]], np.float32)
    return {"x": x, "x4": x.reshape(1, 3, 8, 1)}


def assert_same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, what
    if not np.issubdtype(want.dtype, np.floating):
        np.testing.assert_array_equal(got, want, err_msg=what)
        return
    assert np.array_equal(np.isnan(got), np.isnan(want)), f"{what}: NaN at {np.argwhere(np.isnan(want)).tolist()} " \
                                                         f"expected, got {got.ravel()}"
    keep = ~np.isnan(want)
    np.testing.assert_allclose(got[keep], want[keep], rtol=1e-5, atol=1e-6, err_msg=what)


@pytest.fixture(scope="module")
def reference() -> list[np.ndarray]:
    return ir.run(float_ops_graph(), nonfinite_inputs())


@pytest.mark.parametrize("target", ["cpu-fp32", "tvm-cpu-fp32"])
def test_float_ops_treat_nan_and_inf_as_the_interpreter(target, reference) -> None:
    g = float_ops_graph()
    names = [v.name for v in g.outputs]
    got = requant.compile(g, target)(**nonfinite_inputs())
    for name, y, want in zip(names, got, reference):
        assert_same(y, want, f"{target} {name}")
    assert np.isnan(reference[0]).any()  # the inputs do reach NaN outputs


def _literal(a: np.ndarray) -> str:
    return json.dumps(np.round(a.astype(np.float64), 4).tolist())


def mlp() -> ir.Graph:
    """x[4,8] -> MatMul -> Add -> Relu -> MatMul -> y[4,4], seeded weights."""
    rs = np.random.RandomState(0)
    w1, b1, w2 = rs.randn(8, 16), rs.randn(16), rs.randn(16, 4)
    return ir.parse(f"""
graph mlp(%x: f32[4,8]) -> (%y) {{
  const %w1: f32[8,16] = {_literal(w1)}
  const %b1: f32[16] = {_literal(b1)}
  const %w2: f32[16,4] = {_literal(w2)}
  %h = MatMul(%x, %w1)
  %a = Add(%h, %b1)
  %r = Relu(%a)
  %y = MatMul(%r, %w2)
}}
""")


@pytest.mark.parametrize("target, kind", [("cpu-int8", "integer"), ("tvm-cpu-int8", "integer"),
                                          ("cpu-fp8", "float"), ("cpu-fp4", "float")])
def test_quantized_targets_do_what_their_report_says(target, kind) -> None:
    rs = np.random.RandomState(0)
    calib = [(rs.randn(4, 8).astype(np.float32),) for _ in range(4)]
    logging.getLogger("requant").setLevel(logging.ERROR)
    cm = requant.compile(mlp(), target, calibration=calib)
    x = rs.randn(4, 8).astype(np.float32)
    x[0, 0], x[1, 1], x[2, 2] = np.nan, np.inf, -np.inf
    y = cm(x)[0]
    assert_same(y, ir.run(cm.graph, {cm.graph.inputs[0].name: x})[0], f"{target} vs its graph in the interpreter")
    report = cm.report()
    if kind == "integer":
        assert "integer-quantized activations turn NaN into the lowest code" in report
        assert np.isfinite(y).all()
    else:
        assert "low-bit float activations keep NaN and saturate +-Inf" in report
        assert np.isnan(y[0]).all() and np.isfinite(y[1:]).all()
    assert np.isfinite(y[3]).all()


def test_float_targets_say_nothing_about_quantizers() -> None:
    assert requant.compile(float_ops_graph(), "cpu-fp32").stats["nonfinite"] is None
