"""canonicalize_norm: decomposed LayerNorm / RMSNorm -> LayerNormalization /
RMSNormalization. Each case checks (a) changed flag and rule counts, (b) the structure
and attributes (epsilon recovered exactly, axis, stash type, scale/bias wired in; Before/
Expected text where the graph is small: tests/rewrite_testing.py), (c) the interpreter's
outputs before vs after, (d) near misses left alone.

Tolerance: NORM_RTOL/NORM_ATOL for float32. The fused kernels compute the same mean,
variance and reciprocal square root in float32, but in another order (and x * (1/s)
instead of x / s), so results differ by float rounding: a few ulps, 1e-5 relative is
well above that and far below any real mistake (a wrong axis or epsilon is off by
1e-2 or more). F16_RTOL/F16_ATOL for the float16 cast sandwich: both graphs round the
float32 result to float16 once, so they agree to about one float16 ulp.
"""

from __future__ import annotations

import numpy as np
import pytest

from canonical_testing import (
    assert_same_outputs,
    build_graph,
    only_node,
    ops,
    outputs_before_after,
    rule_counts,
)
from rewrite_testing import check_rewrite, check_unchanged

PASS = "canonicalize_norm"
F32 = "float32"
NORM_RTOL, NORM_ATOL = 1e-5, 1e-6
F16_RTOL, F16_ATOL = 1e-3, 1e-3

RNG = np.random.default_rng(3)
GAMMA = RNG.uniform(0.5, 1.5, 8).astype(np.float32)
BETA = RNG.uniform(-0.5, 0.5, 8).astype(np.float32)
EPS = np.float32(1e-5)


def i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def square(b, d, form: str):
    return b.Pow(d, b.const(np.float32(2))) if form == "pow2" else b.Mul(d, d)


def normalize(b, d, den, form: str):
    if form == "div_sqrt":
        return b.Div(d, b.Sqrt(den))
    return b.Mul(b.Reciprocal(b.Sqrt(den)), d)  # reciprocal first: the rule commutes


def decomposed_layer_norm(b, x, sq="pow2", norm="div_sqrt", affine="both", axes=(-1,), eps=EPS,
                          var_axes=None, extra=None):
    axes_c = b.const(i64(*axes))
    mean = b.ReduceMean(x, axes_c, keepdims=1)
    d = b.Sub(x, mean)
    var = b.ReduceMean(square(b, d, sq), b.const(i64(*(var_axes or axes))), keepdims=1)
    den = b.Add(var, eps) if isinstance(eps, type(x)) else b.Add(b.const(np.float32(eps)), var)
    y = normalize(b, d, den, norm)
    if affine in ("both", "scale"):
        y = b.Mul(b.const(GAMMA), y)
    if affine in ("both", "bias"):
        y = b.Add(y, b.const(BETA))
    if extra is not None:
        scope = locals()
        return [y] + [scope[name] for name in extra]
    return y


@pytest.mark.parametrize("sq", ["pow2", "mul_self"])
@pytest.mark.parametrize("norm", ["div_sqrt", "mul_rsqrt"])
def test_layer_norm_spellings_fuse_with_epsilon_exact(sq: str, norm: str) -> None:
    g = build_graph({"x": (F32, [2, 3, 8])}, lambda b, x: decomposed_layer_norm(b, x, sq, norm))
    result, pairs = outputs_before_after(PASS, g)
    assert result.changed
    assert rule_counts(result.stats) == {f"layer_norm[{sq},{norm}]": 1, "norm_absorb_scale[LayerNormalization]": 1,
                                         "layer_norm_absorb_bias[2]": 1}
    ln = only_node(g, "LayerNormalization")
    assert ops(g) == ["LayerNormalization"]
    assert ln.attrs["axis"] == -1 and ln.attrs["epsilon"] == float(EPS)  # the constant's value, bit for bit
    np.testing.assert_array_equal(ln.inputs[1].const, GAMMA)
    np.testing.assert_array_equal(ln.inputs[2].const, BETA)
    assert_same_outputs(pairs, NORM_RTOL, NORM_ATOL)


@pytest.mark.parametrize("affine", ["scale", "bias", "none"])
def test_layer_norm_without_full_affine(affine: str) -> None:
    g = build_graph({"x": (F32, [4, 8])}, lambda b, x: decomposed_layer_norm(b, x, affine=affine))
    result, pairs = outputs_before_after(PASS, g)
    ln = only_node(g, "LayerNormalization")
    assert ops(g) == ["LayerNormalization"]
    scale = ln.inputs[1].const
    np.testing.assert_array_equal(scale, GAMMA if affine == "scale" else np.ones(8, np.float32))
    assert (len(ln.inputs) == 3) == (affine == "bias")
    assert_same_outputs(pairs, NORM_RTOL, NORM_ATOL)


def test_layer_norm_over_the_last_two_axes() -> None:
    check_rewrite(PASS, """
    graph main(%x: f32[2,3,8]) -> (%y) {
      const %axes: i64[2] = [2, 1]
      const %var_axes: i64[2] = [2, 1]
      const %two: f32[] = 2.0
      const %eps: f32[] = 1e-05
      %mean: f32[2,1,1] = ReduceMean(%x, %axes) {keepdims=1}
      %d: f32[2,3,8] = Sub(%x, %mean)
      %sq: f32[2,3,8] = Pow(%d, %two)
      %var: f32[2,1,1] = ReduceMean(%sq, %var_axes) {keepdims=1}
      %den: f32[2,1,1] = Add(%eps, %var)
      %s: f32[2,1,1] = Sqrt(%den)
      %y: f32[2,3,8] = Div(%d, %s)
    }""", """
    graph main(%x: f32[2,3,8]) -> (%y) {
      const %axes: i64[2] = [2, 1]             // left for dce
      const %var_axes: i64[2] = [2, 1]
      const %two: f32[] = 2.0
      const %eps: f32[] = 1e-05
      const %unit_scale: f32[3,8] = 1.0        // one scale per normalised element
      // epsilon: the f32 constant's value, bit for bit
      %y: f32[2,3,8] = LayerNormalization(%x, %unit_scale) {axis=-2, epsilon=9.999999747378752e-06}
    }""", rules={"layer_norm[pow2,div_sqrt]": 1}, tolerances={"float32": (NORM_RTOL, NORM_ATOL)})


def test_layer_norm_over_a_leading_axis_is_left_alone() -> None:
    g = build_graph({"x": (F32, [2, 3, 8])}, lambda b, x: decomposed_layer_norm(b, x, axes=(1,)))
    before = g.to_text()
    result, _ = outputs_before_after(PASS, g)
    assert not result.changed and g.to_text() == before


def test_layer_norm_with_an_escaping_variance_is_left_alone() -> None:
    g = build_graph({"x": (F32, [2, 8])}, lambda b, x: decomposed_layer_norm(b, x, extra=["var"]))
    result, _ = outputs_before_after(PASS, g)
    assert not result.changed
    assert "LayerNormalization" not in ops(g) and "RMSNormalization" not in ops(g)


def test_layer_norm_with_a_variable_epsilon_is_left_alone() -> None:
    g = build_graph({"x": (F32, [2, 8]), "eps": (F32, [])},
                    lambda b, x, eps: decomposed_layer_norm(b, x, eps=eps, affine="none"))
    result, _ = outputs_before_after(PASS, g)
    assert not result.changed


def test_mean_and_variance_over_different_axes_is_not_a_layer_norm() -> None:
    # the variance is over the last axis of x - mean(x, 1): an RMSNorm of that difference
    g = build_graph({"x": (F32, [2, 3, 8])},
                    lambda b, x: decomposed_layer_norm(b, x, axes=(1,), var_axes=(-1,), affine="none"))
    result, pairs = outputs_before_after(PASS, g)
    assert rule_counts(result.stats) == {"rms_norm[pow2,div_sqrt]": 1}
    assert sorted(ops(g)) == ["RMSNormalization", "ReduceMean", "Sub"]
    assert_same_outputs(pairs, NORM_RTOL, NORM_ATOL)


# -- RMSNorm --------------------------------------------------------------------------------------


def decomposed_rms_norm(b, x, weight, sq="pow2", norm="mul_rsqrt", eps=1e-6, cast_to_f32=False):
    """Llama's LlamaRMSNorm: weight * (x * rsqrt(mean(x^2) + eps)), optionally in float32."""
    h = b.Cast(x, to="float32") if cast_to_f32 else x
    ms = b.ReduceMean(square(b, h, sq), b.const(i64(-1)), keepdims=1)
    den = b.Add(ms, b.const(np.float32(eps)))
    y = normalize(b, h, den, norm) if norm != "mul_rsqrt" else b.Mul(h, b.Reciprocal(b.Sqrt(den)))
    if cast_to_f32:
        y = b.Cast(y, to=x.dtype.name)
    return b.Mul(b.const(weight), y)


@pytest.mark.parametrize("sq", ["pow2", "mul_self"])
@pytest.mark.parametrize("norm", ["div_sqrt", "mul_rsqrt"])
def test_rms_norm_spellings_fuse_with_the_weight(sq: str, norm: str) -> None:
    g = build_graph({"x": (F32, [2, 5, 8])}, lambda b, x: decomposed_rms_norm(b, x, GAMMA, sq, norm))
    result, pairs = outputs_before_after(PASS, g)
    assert rule_counts(result.stats) == {f"rms_norm[{sq},{norm}]": 1, "norm_absorb_scale[RMSNormalization]": 1}
    rms = only_node(g, "RMSNormalization")
    assert ops(g) == ["RMSNormalization"]
    assert rms.attrs["axis"] == -1 and rms.attrs["epsilon"] == float(np.float32(1e-6))
    np.testing.assert_array_equal(rms.inputs[1].const, GAMMA)
    assert_same_outputs(pairs, NORM_RTOL, NORM_ATOL)


def test_rms_norm_computed_in_float32_for_a_float16_model() -> None:
    # Llama's LlamaRMSNorm in a float16 model: weight * (x * rsqrt(mean(x^2) + eps)) in float32
    check_rewrite(PASS, """
    graph main(%x: f16[2,5,8]) -> (%y) {
      const %two: f32[] = 2.0
      const %axes: i64[1] = [-1]
      const %eps: f32[] = 1e-06
      const %weight: f16[8] = [0.5, 0.75, 1.0, 1.25, 1.5, 0.625, 0.875, 1.125]
      %h: f32[2,5,8] = Cast(%x) {to="float32"}
      %sq: f32[2,5,8] = Pow(%h, %two)
      %ms: f32[2,5,1] = ReduceMean(%sq, %axes) {keepdims=1}
      %den: f32[2,5,1] = Add(%ms, %eps)
      %s: f32[2,5,1] = Sqrt(%den)
      %r: f32[2,5,1] = Reciprocal(%s)
      %n: f32[2,5,8] = Mul(%h, %r)
      %n16: f16[2,5,8] = Cast(%n) {to="float16"}
      %y: f16[2,5,8] = Mul(%weight, %n16)
    }""", """
    graph main(%x: f16[2,5,8]) -> (%y) {
      const %two: f32[] = 2.0                  // left for dce
      const %axes: i64[1] = [-1]
      const %eps: f32[] = 1e-06
      const %weight: f16[8] = [0.5, 0.75, 1.0, 1.25, 1.5, 0.625, 0.875, 1.125]
      const %unit_f32: f32[8] = 1.0            // the scales of the intermediate forms
      const %unit_f16: f16[8] = 1.0
      // the casts become stash_type=1 (float32 statistics); epsilon: the f32 constant's value
      %y: f16[2,5,8] = RMSNormalization(%x, %weight) {axis=-1, epsilon=9.999999974752427e-07, stash_type=1}
    }""", rules={"rms_norm[pow2,mul_rsqrt]": 1, "norm_cast_sandwich[RMSNormalization]": 1,
                 "norm_absorb_scale[RMSNormalization]": 1},
        tolerances={"float16": (F16_RTOL, F16_ATOL)})


def test_rms_norm_weight_that_is_not_per_feature_stays_a_mul() -> None:
    per_row = RNG.uniform(0.5, 1.5, (5, 1)).astype(np.float32)  # scales rows, not features
    g = build_graph({"x": (F32, [2, 5, 8])}, lambda b, x: decomposed_rms_norm(b, x, per_row))
    result, pairs = outputs_before_after(PASS, g)
    assert rule_counts(result.stats) == {"rms_norm[pow2,mul_rsqrt]": 1}
    assert sorted(ops(g)) == ["Mul", "RMSNormalization"]
    np.testing.assert_array_equal(only_node(g, "RMSNormalization").inputs[1].const, np.ones(8, np.float32))
    assert_same_outputs(pairs, NORM_RTOL, NORM_ATOL)


def test_rms_norm_of_a_centred_input_becomes_a_layer_norm() -> None:
    check_rewrite(PASS, """
    graph main(%x: f32[3,8]) -> (%y) {
      const %axes: i64[1] = [-1]
      const %gamma: f32[8] = [0.5, 0.75, 1.0, 1.25, 1.5, 0.625, 0.875, 1.125]
      %mean: f32[3,1] = ReduceMean(%x, %axes) {keepdims=1}
      %centred: f32[3,8] = Sub(%x, %mean)
      %y: f32[3,8] = RMSNormalization(%centred, %gamma) {epsilon=1e-05}
    }""", """
    graph main(%x: f32[3,8]) -> (%y) {
      const %axes: i64[1] = [-1]
      const %gamma: f32[8] = [0.5, 0.75, 1.0, 1.25, 1.5, 0.625, 0.875, 1.125]
      %y: f32[3,8] = LayerNormalization(%x, %gamma) {epsilon=1e-05}
    }""", rules={"rms_of_centered_to_layer_norm": 1}, tolerances={"float32": (NORM_RTOL, NORM_ATOL)})


def test_norm_with_its_scale_already_set_does_not_absorb_another() -> None:
    check_unchanged(PASS, """
    graph main(%x: f32[3,8]) -> (%y) {
      const %gamma: f32[8] = [0.5, 0.75, 1.0, 1.25, 1.5, 0.625, 0.875, 1.125]
      const %other: f32[8] = [-0.5, 0.25, 0.0, 0.5, -0.25, 0.125, -0.125, 0.375]
      %n: f32[3,8] = LayerNormalization(%x, %gamma)
      %y: f32[3,8] = Mul(%n, %other)
    }""", stats={"rewrites": 0}, rules={})
