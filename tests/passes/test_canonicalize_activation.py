"""canonicalize_activation: decomposed GELU (erf and tanh forms) and softmax -> Gelu and
Softmax. Each case checks (a) changed flag and rule counts, (b) the structure and
attributes (Before/Expected text where one spelling is shown: tests/rewrite_testing.py),
(c) the interpreter's outputs before vs after, (d) near misses (a wrong constant, a
different operand, an escaping inner value) left alone.

Tolerance: ACT_RTOL/ACT_ATOL for float32: the fused kernels evaluate the same formula
in float32 with the constants in another order (x * 0.7071 vs x / 1.4142, 0.5 applied
first or last), a few ulps apart; a wrong constant or form is off by 1e-3 or more.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from requant.ir.rewrite import explain
from requant.passes.canonicalize_activation import GELU_ERF

from canonical_testing import (
    assert_same_outputs,
    build_graph,
    only_node,
    ops,
    outputs_before_after,
    rule_counts,
)
from rewrite_testing import check_rewrite, check_unchanged

PASS = "canonicalize_activation"
F32 = "float32"
ACT_RTOL, ACT_ATOL = 1e-5, 1e-6


def f32(v: float):
    return np.float32(v)


def product(b, x, p, form: str):
    """x * 0.5 * p in the grouping and operand order each exporter writes."""
    half = b.const(f32(0.5))
    if form == "x*(half*P)":  # the ONNX exporter: Mul(x, Mul(0.5, P))
        return b.Mul(x, b.Mul(half, p))
    if form == "(x*P)*half":  # the TorchScript exporter: Mul(Mul(x, P), 0.5)
        return b.Mul(b.Mul(x, p), half)
    if form == "(x*half)*P":  # GPT-2 through torch.export: Mul(Mul(x, 0.5), P), here swapped
        return b.Mul(p, b.Mul(half, x))
    return b.Mul(b.Div(x, b.const(f32(2))), p)  # (x / 2) * P


PRODUCTS = ["x*(half*P)", "(x*P)*half", "(x*half)*P", "(x/2)*P"]


def gelu_erf(b, x, arg="div_sqrt2", form="x*(half*P)", sqrt2=math.sqrt(2), y=None):
    z = b.Div(x, b.const(f32(sqrt2))) if arg == "div_sqrt2" else b.Mul(b.const(f32(1 / sqrt2)), x)
    p = b.Add(b.const(f32(1)), b.Erf(z))
    return product(b, y if y is not None else x, p, form)


@pytest.mark.parametrize("arg", ["div_sqrt2", "mul_rsqrt2"])
@pytest.mark.parametrize("form", PRODUCTS)
def test_gelu_erf_spellings_fuse(arg: str, form: str) -> None:
    g = build_graph({"x": (F32, [4, 16])}, lambda b, x: gelu_erf(b, x, arg, form))
    result, pairs = outputs_before_after(PASS, g)
    assert result.changed and rule_counts(result.stats) == {f"gelu_erf[{arg},{form}]": 1}
    gelu = only_node(g, "Gelu")
    assert ops(g) == ["Gelu"] and gelu.attrs["approximate"] == "none" and gelu.inputs[0] is g.inputs[0]
    assert_same_outputs(pairs, ACT_RTOL, ACT_ATOL)


def test_gelu_erf_with_a_wrong_constant_is_left_alone() -> None:
    g = build_graph({"x": (F32, [8])}, lambda b, x: gelu_erf(b, x, sqrt2=1.5))
    result, _ = outputs_before_after(PASS, g)
    assert not result.changed and "Gelu" not in ops(g)
    why = explain(GELU_ERF[0], g.nodes[-1])  # gelu_erf[div_sqrt2,x*(half*P)]
    assert "the erf argument is not x / sqrt(2)" in why


def test_gelu_erf_of_another_value_is_left_alone() -> None:
    check_unchanged(PASS, """
    graph main(%x: f32[8], %y: f32[8]) -> (%out) {
      const %sqrt2: f32[] = 1.4142135
      const %half: f32[] = 0.5
      const %one: f32[] = 1.0
      %z: f32[8] = Div(%x, %sqrt2)
      %e: f32[8] = Erf(%z)
      %p: f32[8] = Add(%one, %e)
      %hp: f32[8] = Mul(%half, %p)
      %out: f32[8] = Mul(%y, %hp)             // y * Phi(x), not x * Phi(x)
    }""", rules={})


def test_gelu_erf_whose_inner_value_escapes_is_left_alone() -> None:
    check_unchanged(PASS, """
    graph main(%x: f32[8]) -> (%y0, %y1) {
      const %sqrt2: f32[] = 1.4142135
      const %half: f32[] = 0.5
      const %one: f32[] = 1.0
      %z: f32[8] = Div(%x, %sqrt2)
      %y1: f32[8] = Erf(%z)                   // read outside the pattern: a graph output
      %p: f32[8] = Add(%y1, %one)
      %hp: f32[8] = Mul(%half, %p)
      %y0: f32[8] = Mul(%x, %hp)
    }""", rules={})


def gelu_tanh(b, x, inner="pow3", form="(x*half)*P", k=math.sqrt(2 / math.pi), c=0.044715):
    if inner == "fast":  # sqrt(2/pi) * x * (1 + 0.044715 * x * x)
        t = b.Mul(b.Mul(x, b.const(f32(k))), b.Add(b.const(f32(1)), b.Mul(b.const(f32(c)), b.Mul(x, x))))
    else:
        cube = b.Pow(x, b.const(f32(3))) if inner == "pow3" else b.Mul(b.Mul(x, x), x)
        t = b.Mul(b.Add(x, b.Mul(cube, b.const(f32(c)))), b.const(f32(k)))
    return product(b, x, b.Add(b.Tanh(t), b.const(f32(1))), form)


@pytest.mark.parametrize("inner", ["pow3", "mul_cube", "fast"])
@pytest.mark.parametrize("form", ["(x*half)*P", "x*(half*P)"])
def test_gelu_tanh_spellings_fuse(inner: str, form: str) -> None:
    g = build_graph({"x": (F32, [4, 16])}, lambda b, x: gelu_tanh(b, x, inner, form))
    result, pairs = outputs_before_after(PASS, g)
    assert rule_counts(result.stats) == {f"gelu_tanh[{inner},{form}]": 1}
    assert ops(g) == ["Gelu"] and only_node(g, "Gelu").attrs["approximate"] == "tanh"
    assert_same_outputs(pairs, ACT_RTOL, ACT_ATOL)


@pytest.mark.parametrize("k,c", [(0.8, 0.044715), (math.sqrt(2 / math.pi), 0.05)])
def test_gelu_tanh_with_a_wrong_constant_is_left_alone(k: float, c: float) -> None:
    g = build_graph({"x": (F32, [8])}, lambda b, x: gelu_tanh(b, x, k=k, c=c))
    result, _ = outputs_before_after(PASS, g)
    assert not result.changed and "Gelu" not in ops(g)


# -- softmax ----------------------------------------------------------------------------------


def decomposed_softmax(b, x, axis=-1, sum_axis=None, reciprocal=False, extra=False):
    e = b.Exp(b.Sub(x, b.ReduceMax(x, b.const(np.array([axis], np.int64)), keepdims=1)))
    total = b.ReduceSum(e, b.const(np.array([axis if sum_axis is None else sum_axis], np.int64)), keepdims=1)
    y = b.Mul(b.Reciprocal(total), e) if reciprocal else b.Div(e, total)
    return (y, e) if extra else y


@pytest.mark.parametrize("reciprocal", [False, True])
@pytest.mark.parametrize("axis,want", [(-1, -1), (1, -2), (0, -3)])
def test_softmax_fuses_with_a_negative_axis(reciprocal: bool, axis: int, want: int) -> None:
    g = build_graph({"x": (F32, [2, 3, 5])}, lambda b, x: decomposed_softmax(b, x, axis, reciprocal=reciprocal))
    result, pairs = outputs_before_after(PASS, g)
    tag = "mul_recip_sum" if reciprocal else "div_sum"
    assert rule_counts(result.stats) == {f"softmax[{tag}]": 1}
    assert ops(g) == ["Softmax"] and only_node(g, "Softmax").attrs["axis"] == want
    assert_same_outputs(pairs, ACT_RTOL, ACT_ATOL)


def test_softmax_with_max_and_sum_over_different_axes_is_left_alone() -> None:
    g = build_graph({"x": (F32, [2, 3, 5])}, lambda b, x: decomposed_softmax(b, x, -1, sum_axis=1))
    result, _ = outputs_before_after(PASS, g)
    assert not result.changed and "Softmax" not in ops(g)


def test_softmax_whose_exponentials_escape_is_left_alone() -> None:
    check_unchanged(PASS, """
    graph main(%x: f32[2,5]) -> (%y0, %y1) {
      const %max_axes: i64[1] = [-1]
      const %sum_axes: i64[1] = [-1]
      %m: f32[2,1] = ReduceMax(%x, %max_axes) {keepdims=1}
      %d: f32[2,5] = Sub(%x, %m)
      %y1: f32[2,5] = Exp(%d)                 // read outside the pattern: a graph output
      %total: f32[2,1] = ReduceSum(%y1, %sum_axes) {keepdims=1}
      %y0: f32[2,5] = Div(%y1, %total)
    }""", rules={})


def test_softmax_axis_is_spelled_negative() -> None:
    # the same kernel on the same axis: bit for bit (no tolerance)
    check_rewrite(PASS, """
    graph main(%x: f32[2,5]) -> (%y) {
      %s: f32[2,5] = Softmax(%x) {axis=1}
      %y: f32[2,5] = Relu(%s)
    }""", """
    graph main(%x: f32[2,5]) -> (%y) {
      %s: f32[2,5] = Softmax(%x) {axis=-1}
      %y: f32[2,5] = Relu(%s)
    }""", rules={"softmax_negative_axis": 1})


# -- hard sigmoid / hard swish (MobileNetV3) ------------------------------------------------------


def relu6_of_x_plus_3(b, x, form: str, three: float = 3.0):
    t = b.Add(x, b.const(f32(three)))
    zero, six = b.const(f32(0)), b.const(f32(6))
    if form == "clip":
        return b.Clip(t, zero, six)
    return b.Clip(b.Clip(t, zero, None), None, six)  # torch: clamp(min=0) then clamp(max=6)


def sixth(b, r, form: str):
    return b.Div(r, b.const(f32(6))) if form == "div6" else b.Mul(b.const(f32(1 / 6)), r)


@pytest.mark.parametrize("relu6", ["clip", "clip_clip"])
@pytest.mark.parametrize("scale", ["div6", "mul_sixth"])
def test_hard_sigmoid_spellings_fuse(relu6: str, scale: str) -> None:
    g = build_graph({"x": (F32, [2, 4, 5])}, lambda b, x: sixth(b, relu6_of_x_plus_3(b, x, relu6), scale))
    result, pairs = outputs_before_after(PASS, g, seeds=(0, 1, 2))
    assert rule_counts(result.stats) == {f"hardsigmoid[{relu6},{scale}]": 1}
    hsig = only_node(g, "HardSigmoid")
    assert ops(g) == ["HardSigmoid"] and hsig.inputs[0] is g.inputs[0]
    assert hsig.attrs["alpha"] == pytest.approx(1 / 6) and hsig.attrs["beta"] == 0.5
    assert_same_outputs(pairs, ACT_RTOL, ACT_ATOL)


@pytest.mark.parametrize("relu6", ["clip", "clip_clip"])
@pytest.mark.parametrize("form", ["(x*r)/6", "x*(r/6)"])
def test_hard_swish_spellings_fuse(relu6: str, form: str) -> None:
    def body(b, x):
        r = relu6_of_x_plus_3(b, x, relu6)
        return sixth(b, b.Mul(x, r), "div6") if form == "(x*r)/6" else b.Mul(x, sixth(b, r, "div6"))

    g = build_graph({"x": (F32, [2, 4, 5])}, body)
    result, pairs = outputs_before_after(PASS, g)
    # x * (r / 6): the hard sigmoid may fuse first, then x * HardSigmoid(x) does
    counts = rule_counts(result.stats)
    assert counts in ({f"hardswish[{relu6},div6,{form}]": 1},
                      {f"hardsigmoid[{relu6},div6]": 1, "hardswish[hardsigmoid]": 1})
    assert ops(g) == ["HardSwish"] and only_node(g, "HardSwish").inputs[0] is g.inputs[0]
    assert_same_outputs(pairs, ACT_RTOL, ACT_ATOL)


def test_hard_swish_of_a_hard_sigmoid_fuses() -> None:
    check_rewrite(PASS, """
    graph main(%x: f32[2,8]) -> (%y) {
      %g: f32[2,8] = HardSigmoid(%x) {alpha=0.16666667, beta=0.5}
      %y: f32[2,8] = Mul(%g, %x)
    }""", """
    graph main(%x: f32[2,8]) -> (%y) {
      %y: f32[2,8] = HardSwish(%x)
    }""", rules={"hardswish[hardsigmoid]": 1}, tolerances={"float32": (ACT_RTOL, ACT_ATOL)})


def test_hard_sigmoid_with_other_constants_is_left_alone() -> None:
    # relu6(x + 2) / 6 and ONNX's default HardSigmoid (alpha 0.2) are other functions
    g = build_graph({"x": (F32, [8])}, lambda b, x: sixth(b, relu6_of_x_plus_3(b, x, "clip", three=2.0), "div6"))
    result, _ = outputs_before_after(PASS, g)
    assert not result.changed and "HardSigmoid" not in ops(g)
    check_unchanged(PASS, """
    graph main(%x: f32[2,8]) -> (%y) {
      %g: f32[2,8] = HardSigmoid(%x) {alpha=0.2, beta=0.5}
      %y: f32[2,8] = Mul(%g, %x)
    }""", rules={})
