"""canonicalize_norm: decomposed LayerNorm / RMSNorm -> LayerNormalization /
RMSNormalization. Each case checks (a) changed flag and rule counts, (b) the structure
and attributes (epsilon recovered exactly, axis, stash type, scale/bias wired in),
(c) the interpreter's outputs before vs after, (d) near misses left alone.

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
    g = build_graph({"x": (F32, [2, 3, 8])}, lambda b, x: decomposed_layer_norm(b, x, axes=(2, 1), affine="none"))
    result, pairs = outputs_before_after(PASS, g)
    ln = only_node(g, "LayerNormalization")
    assert ln.attrs["axis"] == -2 and ln.inputs[1].const.shape == (3, 8)
    assert_same_outputs(pairs, NORM_RTOL, NORM_ATOL)


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
    gamma16 = GAMMA.astype(np.float16)
    g = build_graph({"x": ("float16", [2, 5, 8])}, lambda b, x: decomposed_rms_norm(b, x, gamma16, cast_to_f32=True))
    result, pairs = outputs_before_after(PASS, g)
    assert rule_counts(result.stats) == {"rms_norm[pow2,mul_rsqrt]": 1, "norm_cast_sandwich[RMSNormalization]": 1,
                                         "norm_absorb_scale[RMSNormalization]": 1}
    rms = only_node(g, "RMSNormalization")
    assert ops(g) == ["RMSNormalization"] and rms.inputs[0] is g.inputs[0]
    assert rms.attrs["stash_type"] == 1 and rms.inputs[1].dtype.name == "float16"
    assert_same_outputs(pairs, F16_RTOL, F16_ATOL)


def test_rms_norm_weight_that_is_not_per_feature_stays_a_mul() -> None:
    per_row = RNG.uniform(0.5, 1.5, (5, 1)).astype(np.float32)  # scales rows, not features
    g = build_graph({"x": (F32, [2, 5, 8])}, lambda b, x: decomposed_rms_norm(b, x, per_row))
    result, pairs = outputs_before_after(PASS, g)
    assert rule_counts(result.stats) == {"rms_norm[pow2,mul_rsqrt]": 1}
    assert sorted(ops(g)) == ["Mul", "RMSNormalization"]
    np.testing.assert_array_equal(only_node(g, "RMSNormalization").inputs[1].const, np.ones(8, np.float32))
    assert_same_outputs(pairs, NORM_RTOL, NORM_ATOL)


def test_rms_norm_of_a_centred_input_becomes_a_layer_norm() -> None:
    def body(b, x):
        centred = b.Sub(x, b.ReduceMean(x, b.const(i64(-1)), keepdims=1))
        return b.RMSNormalization(centred, b.const(GAMMA), epsilon=1e-5)

    g = build_graph({"x": (F32, [3, 8])}, body)
    result, pairs = outputs_before_after(PASS, g)
    assert rule_counts(result.stats) == {"rms_of_centered_to_layer_norm": 1}
    ln = only_node(g, "LayerNormalization")
    assert ops(g) == ["LayerNormalization"] and ln.attrs["epsilon"] == 1e-5
    assert_same_outputs(pairs, NORM_RTOL, NORM_ATOL)


def test_norm_with_its_scale_already_set_does_not_absorb_another() -> None:
    def body(b, x):
        return b.Mul(b.LayerNormalization(x, b.const(GAMMA)), b.const(BETA))

    g = build_graph({"x": (F32, [3, 8])}, body)
    result, _ = outputs_before_after(PASS, g)
    assert not result.changed and ops(g) == ["LayerNormalization", "Mul"]
