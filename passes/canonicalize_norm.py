"""Pass "canonicalize_norm": decomposed LayerNorm and RMSNorm -> LayerNormalization and
RMSNormalization (ONNX semantics, axis = -k over the k normalised trailing axes).

Recognition goes in stages, so each rule stays small and every exporter's spelling of
the affine part composes with every spelling of the normalisation:

1. the normalisation itself becomes the fused op with a unit scale (rule: from -> to):
   - layer_norm[square,normalize]: (x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps)
     -> LayerNormalization(x, ones, axis=-k, epsilon=eps); the square is Pow(d, 2) or
     Mul(d, d), the division Div(d, Sqrt(.)) or Mul(d, Reciprocal(Sqrt(.)));
   - rms_norm[square,normalize]: x / sqrt(mean(x^2) + eps) (same spellings)
     -> RMSNormalization(x, ones, axis=-k, epsilon=eps);
   - rms_of_centered_to_layer_norm: RMSNormalization(x - mean(x)) -> LayerNormalization(x)
     (what the RMS rule leaves when it fires first on a LayerNorm's inner part).
2. mixed-precision sandwiches fold into the op's stash type (Llama's
   `x.to(float32) ... .to(input_dtype)`):
   - norm_cast_sandwich[LayerNormalization|RMSNormalization]:
     Cast(Norm(Cast(x, f32), ones), to=dtype(x)) -> Norm(x, ones, stash_type=1)
3. the affine part is absorbed (both exact: the ops multiply and add in this order):
   - norm_absorb_scale[LayerNormalization|RMSNormalization]: Norm(x, ones) * g -> Norm(x, g)
   - layer_norm_absorb_bias[2|3 inputs]: LayerNormalization(x, s) + b -> LayerNormalization(x, s, b)
   g and b must be per-feature (broadcast only over the normalised axes) and of x's dtype.

Exactness: the fused ops compute mean, variance and the reciprocal square root in the
stash type (float32) like the decomposed graphs do; results differ by float rounding
(a division vs a multiplication by the reciprocal), about 1e-7 relative.
"""

from __future__ import annotations

import logging

import numpy as np

from requant.ir import dtypes
from requant.ir.builder import Builder
from requant.ir.graph import Value
from requant.ir.pattern import Const, Match, Var, op
from requant.ir.rewrite import Rule
from requant.passes.canonicalize_common import param_fits, scalar, trailing_axes, variant_rules
from requant.passes.rule_pass import register_rule_pass

__all__ = ["NORM_RULES"]

logger = logging.getLogger(__name__)

_STASH_FLOAT32 = 1  # ONNX dtype code of the normalisation ops' stash_type

# The alternatives each rule is built from: (tag, piece) per slot.
_SQUARES = [
    ("pow2", lambda d: op.Pow(d, Const("two", value=2))),  # d ** 2
    ("mul_self", lambda d: op.Mul(d, d)),  # d * d
]
_NORMALIZERS = [
    ("div_sqrt", lambda d, den: op.Div(d, op.Sqrt(den))),  # d / sqrt(den)
    ("mul_rsqrt", lambda d, den: op.Mul(d, op.Reciprocal(op.Sqrt(den)), _commute=True)),  # d * (1 / sqrt(den))
]


def _ones_scale(b: Builder, x: Value, k: int) -> Value:
    """A unit scale over the normalised axes (1 for a symbolic dim: it broadcasts)."""
    shape = [d if isinstance(d, int) else 1 for d in x.type.shape[-k:]]
    return b.const(np.ones(shape, dtype=x.dtype.np))


def _epsilon(m: Match) -> float | str:
    eps = scalar(m.eps)
    if eps is None or not eps >= 0.0:
        return "epsilon is not a non-negative scalar constant"
    return eps


# -- stage 1: the normalisation ---------------------------------------------------------------


def _check_layer_norm(m: Match):
    if not m.x.dtype.is_float:
        return f"{m.x.dtype} input"
    k = trailing_axes(m.axes, m.x.type.rank)
    if k is None or trailing_axes(m.var_axes, m.x.type.rank) != k:
        return "mean and variance do not both reduce the same trailing axes"
    eps = _epsilon(m)
    return eps if isinstance(eps, str) else None


def _replace_layer_norm(op: Builder, m: Match):
    k = trailing_axes(m.axes, m.x.type.rank)
    return op.LayerNormalization(m.x, _ones_scale(op, m.x, k), axis=-k, epsilon=_epsilon(m))


def _layer_norm_pattern(square, normalize):
    x = Var("x")
    d = op.Sub(x, op.ReduceMean(x, Const("axes"), keepdims=1), _bind="d")
    den = op.Add(op.ReduceMean(square(d), Const("var_axes"), keepdims=1), Const("eps"), _commute=True)
    return normalize(d, den)


# (x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) -> LayerNormalization(x, ones, axis=-k, epsilon=eps)
LAYER_NORM = variant_rules("layer_norm", [_SQUARES, _NORMALIZERS], _layer_norm_pattern, _replace_layer_norm,
                           _check_layer_norm)


def _check_rms_norm(m: Match):
    if not m.x.dtype.is_float:
        return f"{m.x.dtype} input"
    if trailing_axes(m.axes, m.x.type.rank) is None:
        return "the mean of squares does not reduce trailing axes"
    eps = _epsilon(m)
    return eps if isinstance(eps, str) else None


def _replace_rms_norm(op: Builder, m: Match):
    k = trailing_axes(m.axes, m.x.type.rank)
    return op.RMSNormalization(m.x, _ones_scale(op, m.x, k), axis=-k, epsilon=_epsilon(m))


def _rms_norm_pattern(square, normalize):
    x = Var("x")
    den = op.Add(op.ReduceMean(square(x), Const("axes"), keepdims=1), Const("eps"), _commute=True)
    return normalize(x, den)


# x / sqrt(mean(x^2) + eps) -> RMSNormalization(x, ones, axis=-k, epsilon=eps)
RMS_NORM = variant_rules("rms_norm", [_SQUARES, _NORMALIZERS], _rms_norm_pattern, _replace_rms_norm, _check_rms_norm)


def _check_rms_of_centered(m: Match):
    k = _normalised_axes(m.root.attrs, m.x.type.rank)
    if k is None or trailing_axes(m.axes, m.x.type.rank) != k:
        return "the mean is not over the normalised axes"
    return None


# RMSNormalization(x - mean(x), s) -> LayerNormalization(x, s)   (same axes, epsilon)
RMS_OF_CENTERED_TO_LAYER_NORM = Rule(
    "rms_of_centered_to_layer_norm",
    pattern=lambda x, s: op.RMSNormalization(op.Sub(x, op.ReduceMean(x, Const("axes"), keepdims=1)), s),
    check=_check_rms_of_centered,
    replace=lambda op, m: op.LayerNormalization(m.x, m.s, **_norm_attrs(m.root.attrs)),
)


# -- stage 2: casts around a float32 normalisation ------------------------------------------------


def _norm_attrs(attrs: dict) -> dict:
    return {k: attrs[k] for k in ("axis", "epsilon", "stash_type") if k in attrs}


def _is_all_ones(v: Value | None) -> bool:
    return v is not None and v.const is not None and v.const.size > 0 and bool(np.all(v.const == 1))


def _check_sandwich(m: Match):
    x, xf = m.x, m.cast_in.outputs[0]
    if xf.dtype != dtypes.float32 or not x.dtype.is_float or x.dtype == dtypes.float32:
        return "not a float32 computation of a narrower float"
    if dtypes.dtype(m.root.attrs["to"]) != x.dtype:
        return "the result is not cast back to the input's dtype"
    if not _is_all_ones(m.scale):
        return "the norm already has a scale (the cast would come between)"
    return None


def _sandwich_rule(norm_op: str) -> Rule:
    def replace(b: Builder, m: Match):
        ones = b.const(np.ones(m.scale.const.shape, dtype=m.x.dtype.np))
        attrs = dict(_norm_attrs(m.norm.attrs), stash_type=_STASH_FLOAT32)
        return b.node(norm_op, m.x, ones, **attrs).outputs[0]

    pattern = op.Cast(getattr(op, norm_op)(op.Cast(Var("x"), _bind="cast_in"), Const("scale"), _bind="norm"))
    return Rule(f"norm_cast_sandwich[{norm_op}]", pattern=pattern, check=_check_sandwich, replace=replace)


# Cast(Norm(Cast(x, f32), ones), to=dtype(x)) -> Norm(x, ones, stash_type=float32)
NORM_CAST_SANDWICH = [_sandwich_rule("LayerNormalization"), _sandwich_rule("RMSNormalization")]


# -- stage 3: the affine part ------------------------------------------------------------------------


def _normalised_axes(norm_attrs: dict, rank: int | None) -> int | None:
    axis = int(norm_attrs.get("axis", -1))
    if axis < 0:
        return -axis
    return None if rank is None else rank - axis


def _check_absorb_scale(m: Match):
    if len(m.norm.outputs) != 1:
        return "the norm also returns its statistics"
    if not _is_all_ones(m.scale):
        return "the norm's scale is not all ones"
    k = _normalised_axes(m.norm.attrs, m.x.type.rank)
    if k is None or not param_fits(m.g, m.x, k):
        return "the factor is not a per-feature scale of x's dtype"
    if m.norm.op == "LayerNormalization" and len(m.norm.inputs) > 2 and m.norm.inputs[2] is not None:
        return "the LayerNormalization already adds a bias"
    return None


def _absorb_scale_rule(norm_op: str) -> Rule:
    pattern = op.Mul(getattr(op, norm_op)(Var("x"), Const("scale"), _bind="norm"), Var("g"), _commute=True)
    return Rule(
        f"norm_absorb_scale[{norm_op}]",
        pattern=pattern,
        check=_check_absorb_scale,
        replace=lambda b, m: b.node(norm_op, m.x, m.g, **_norm_attrs(m.norm.attrs)).outputs[0],
    )


# Norm(x, ones) * g -> Norm(x, g)
NORM_ABSORB_SCALE = [_absorb_scale_rule("LayerNormalization"), _absorb_scale_rule("RMSNormalization")]


def _check_absorb_bias(m: Match):
    if len(m.norm.outputs) != 1:
        return "the norm also returns its statistics"
    k = _normalised_axes(m.norm.attrs, m.x.type.rank)
    if k is None or not param_fits(m.b, m.x, k):
        return "the addend is not a per-feature bias of x's dtype"
    return None


# LayerNormalization(x, s) + b -> LayerNormalization(x, s, b)
LAYER_NORM_ABSORB_BIAS = [
    Rule(
        "layer_norm_absorb_bias[2]",
        pattern=lambda x, s, b: op.Add(op.LayerNormalization(x, s, _bind="norm"), b, _commute=True),
        check=_check_absorb_bias,
        replace=lambda op, m: op.LayerNormalization(m.x, m.s, m.b, **_norm_attrs(m.norm.attrs)),
    ),
    Rule(
        "layer_norm_absorb_bias[3]",
        pattern=lambda x, s, b: op.Add(op.LayerNormalization(x, s, None, _bind="norm"), b, _commute=True),
        check=_check_absorb_bias,
        replace=lambda op, m: op.LayerNormalization(m.x, m.s, m.b, **_norm_attrs(m.norm.attrs)),
    ),
]

# LayerNorm before RMSNorm: at the normalising node both patterns can fit (a LayerNorm
# is an RMSNorm of x - mean(x)); the LayerNorm reading is the one wanted.
NORM_RULES: list[Rule] = [
    *LAYER_NORM,
    *RMS_NORM,
    RMS_OF_CENTERED_TO_LAYER_NORM,
    *NORM_CAST_SANDWICH,
    *NORM_ABSORB_SCALE,
    *LAYER_NORM_ABSORB_BIAS,
]

register_rule_pass(
    "canonicalize_norm",
    "decomposed LayerNorm / RMSNorm (with casts, scale, bias) -> LayerNormalization / RMSNormalization",
    NORM_RULES,
)
