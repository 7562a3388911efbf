"""Pass "canonicalize_activation": decomposed GELU, softmax, hard sigmoid and hard swish
-> Gelu, Softmax, HardSigmoid and HardSwish.

Rewrites (rule name: from -> to):
- gelu_erf[erf_arg,product]: x * 0.5 * (1 + erf(x / sqrt(2))) -> Gelu(x, approximate="none")
  erf_arg: x / 1.4142.. or x * 0.7071..; product: any grouping and operand order of the
  three factors x, 0.5 (or x / 2) and (1 + erf(.)), as torch and the ONNX exporters write it.
- gelu_tanh[inner,product]: 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))
  -> Gelu(x, approximate="tanh") (GPT-2's "gelu_new"); inner: x^3 as Pow(x, 3) or
  x * (x * x), or the factored "fast" form sqrt(2/pi) * x * (1 + 0.044715 * x * x).
- softmax[normalize]: Exp(x - ReduceMax(x, a)) / ReduceSum(Exp(.), a) (or * Reciprocal)
  -> Softmax(x, axis=a)
- softmax_negative_axis: Softmax(x, axis=a >= 0) -> Softmax(x, axis=a - rank): one
  spelling of the axis (torch writes -1, some exporters rank - 1).
- hardsigmoid[relu6,scale]: relu6(x + 3) / 6 -> HardSigmoid(x, alpha=1/6, beta=0.5)
  (MobileNetV3's gate, Howard et al., "Searching for MobileNetV3", ICCV 2019); relu6:
  Clip(., 0, 6) or torch's Clip(Clip(., 0, _), _, 6); scale: / 6 or * (1/6).
- hardswish[relu6,product]: x * relu6(x + 3) / 6 in torch's grouping ((x * r) / 6) or
  as x * (r / 6), and x * HardSigmoid(x, 1/6, 0.5) -> HardSwish(x).

Constants must be the textbook values within FLOAT_CONST_RTOL (float32 rounding);
0.5, 1, 2, 3, 0 and 6 must be exact. Exactness: the fused ops compute the same function
in one kernel (float32 for f16/bf16), so results differ from the decomposed graphs by
float rounding only (HardSigmoid computes x / 6 + 0.5 where the graph computed
(x + 3) / 6).
"""

from __future__ import annotations

import logging
import math

from requant.ir.pattern import Const, Match, Var, op
from requant.ir.rewrite import Rule
from requant.passes.canonicalize_common import FLOAT_CONST_RTOL, ints, is_scalar_close, variant_rules
from requant.passes.rule_pass import register_rule_pass

__all__ = ["ACTIVATION_RULES"]

logger = logging.getLogger(__name__)

SQRT_2 = math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
GELU_TANH_CUBIC = 0.044715

_X = Var("x")
_ONE = Const("one", value=1)

# x * 0.5 * g(x) in every grouping exporters write: (tag, product of x and the factor P)
_GELU_PRODUCTS = [
    ("x*(half*P)", lambda p: op.Mul(_X, op.Mul(Const("half", value=0.5), p, _commute=True), _commute=True)),
    ("(x*P)*half", lambda p: op.Mul(op.Mul(_X, p, _commute=True), Const("half", value=0.5), _commute=True)),
    ("(x*half)*P", lambda p: op.Mul(op.Mul(_X, Const("half", value=0.5), _commute=True), p, _commute=True)),
    ("(x/2)*P", lambda p: op.Mul(op.Div(_X, Const("two", value=2)), p, _commute=True)),
]

# -- GELU, erf form ------------------------------------------------------------------------------

_ERF_ARGS = [
    ("div_sqrt2", op.Div(_X, Const("sqrt2"))),  # x / sqrt(2)
    ("mul_rsqrt2", op.Mul(_X, Const("rsqrt2"), _commute=True)),  # x * (1 / sqrt(2))
]


def _gelu_erf_pattern(erf_arg, product):
    return product(op.Add(op.Erf(erf_arg), _ONE, _commute=True))


def _check_gelu_erf(m: Match):
    if not m.x.dtype.is_float:
        return f"{m.x.dtype} input"
    ok = is_scalar_close(m.sqrt2, SQRT_2) if "sqrt2" in m.bindings else is_scalar_close(m.rsqrt2, 1 / SQRT_2)
    return None if ok else "the erf argument is not x / sqrt(2)"


# x * 0.5 * (1 + erf(x / sqrt(2))) -> Gelu(x)
GELU_ERF = variant_rules(
    "gelu_erf", [_ERF_ARGS, _GELU_PRODUCTS], _gelu_erf_pattern,
    lambda op, m: op.Gelu(m.x, approximate="none"), _check_gelu_erf,
)

# -- GELU, tanh form -------------------------------------------------------------------------------

_TANH_INNERS = [
    # sqrt(2/pi) * (x + 0.044715 * x^3), with x^3 as Pow(x, 3) or x * (x * x)
    ("pow3", op.Mul(op.Add(_X, op.Mul(op.Pow(_X, Const("three", value=3)), Const("c"), _commute=True), _commute=True),
                    Const("k"), _commute=True)),
    ("mul_cube", op.Mul(op.Add(_X, op.Mul(op.Mul(_X, op.Mul(_X, _X), _commute=True), Const("c"), _commute=True),
                               _commute=True), Const("k"), _commute=True)),
    # sqrt(2/pi) * x * (1 + 0.044715 * x * x)
    ("fast", op.Mul(op.Mul(_X, Const("k"), _commute=True),
                    op.Add(Const("one_inner", value=1), op.Mul(Const("c"), op.Mul(_X, _X), _commute=True), _commute=True),
                    _commute=True)),
]


def _gelu_tanh_pattern(inner, product):
    return product(op.Add(op.Tanh(inner), _ONE, _commute=True))


def _check_gelu_tanh(m: Match):
    if not m.x.dtype.is_float:
        return f"{m.x.dtype} input"
    if not is_scalar_close(m.k, SQRT_2_OVER_PI):
        return "the tanh factor is not sqrt(2 / pi)"
    if not is_scalar_close(m.c, GELU_TANH_CUBIC):
        return "the cubic coefficient is not 0.044715"
    return None


# 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3))) -> Gelu(x, approximate="tanh")
GELU_TANH = variant_rules(
    "gelu_tanh", [_TANH_INNERS, _GELU_PRODUCTS], _gelu_tanh_pattern,
    lambda op, m: op.Gelu(m.x, approximate="tanh"), _check_gelu_tanh,
)

# -- softmax -------------------------------------------------------------------------------------------

_SOFTMAX_NORMALIZERS = [
    ("div_sum", lambda e: op.Div(e, op.ReduceSum(e, Const("sum_axes"), keepdims=1))),
    ("mul_recip_sum", lambda e: op.Mul(e, op.Reciprocal(op.ReduceSum(e, Const("sum_axes"), keepdims=1)),
                                       _commute=True)),
]


def _softmax_pattern(normalize):
    return normalize(op.Exp(op.Sub(_X, op.ReduceMax(_X, Const("max_axes"), keepdims=1)), _bind="e"))


def _softmax_axis(m: Match) -> int | None:
    rank = m.x.type.rank
    a, b = ints(m.max_axes), ints(m.sum_axes)
    if rank is None or a is None or b is None or len(a) != 1 or len(b) != 1:
        return None
    a0, b0 = a[0] % rank if rank else 0, b[0] % rank if rank else 0
    return a0 - rank if a0 == b0 else None


def _check_softmax(m: Match):
    if not m.x.dtype.is_float:
        return f"{m.x.dtype} input"
    if _softmax_axis(m) is None:
        return "max and sum do not reduce the same single axis"
    return None


# Exp(x - ReduceMax(x, a)) / ReduceSum(Exp(x - ReduceMax(x, a)), a) -> Softmax(x, axis=a)
SOFTMAX = variant_rules(
    "softmax", [_SOFTMAX_NORMALIZERS], _softmax_pattern,
    lambda op, m: op.Softmax(m.x, axis=_softmax_axis(m)), _check_softmax,
)


def _check_softmax_axis(m: Match):
    axis, rank = int(m.root.attrs.get("axis", -1)), m.x.type.rank
    if axis < 0 or rank is None:
        return "the axis is already negative (or the rank is unknown)"
    return None


# Softmax(x, axis=a >= 0) -> Softmax(x, axis=a - rank)
SOFTMAX_NEGATIVE_AXIS = Rule(
    "softmax_negative_axis",
    pattern=lambda x: op.Softmax(x),
    check=_check_softmax_axis,
    replace=lambda op, m: op.Softmax(m.x, axis=int(m.root.attrs["axis"]) - m.x.type.rank),
)

# -- hard sigmoid and hard swish (MobileNetV3) -------------------------------------------------

_X_PLUS_3 = op.Add(_X, Const("three", value=3), _commute=True)
_RELU6_FORMS = [
    ("clip", op.Clip(_X_PLUS_3, Const("zero", value=0), Const("six", value=6))),
    ("clip_clip", op.Clip(op.Clip(_X_PLUS_3, Const("zero", value=0), None), None, Const("six", value=6))),
]
_SIXTH_FORMS = [
    ("div6", lambda r: op.Div(r, Const("six_div", value=6))),
    ("mul_sixth", lambda r: op.Mul(r, Const("sixth"), _commute=True)),
]
HARD_SIGMOID_ALPHA, HARD_SIGMOID_BETA = 1.0 / 6.0, 0.5


def _check_sixth(m: Match):
    if not m.x.dtype.is_float:
        return f"{m.x.dtype} input"
    if "sixth" in m.bindings and not is_scalar_close(m.sixth, 1.0 / 6.0):
        return "the factor is not 1 / 6"
    return None


def _hard_sigmoid(op, m: Match):
    return op.HardSigmoid(m.x, alpha=HARD_SIGMOID_ALPHA, beta=HARD_SIGMOID_BETA)


# relu6(x + 3) / 6 -> HardSigmoid(x, alpha=1/6, beta=0.5)
HARD_SIGMOID = variant_rules("hardsigmoid", [_RELU6_FORMS, _SIXTH_FORMS], lambda r, scale: scale(r), _hard_sigmoid,
                             _check_sixth)

_HARD_SWISH_PRODUCTS = [
    ("(x*r)/6", lambda r, scale: scale(op.Mul(_X, r, _commute=True))),
    ("x*(r/6)", lambda r, scale: op.Mul(_X, scale(r), _commute=True)),
]
# x * relu6(x + 3) / 6 -> HardSwish(x)
HARD_SWISH = variant_rules(
    "hardswish", [_RELU6_FORMS, _SIXTH_FORMS, _HARD_SWISH_PRODUCTS],
    lambda r, scale, product: product(r, scale), lambda op, m: op.HardSwish(m.x), _check_sixth,
)


def _check_hard_sigmoid_product(m: Match):
    attrs = m.hsig.attrs
    ok = _close(attrs.get("alpha", 0.2), HARD_SIGMOID_ALPHA) and \
        _close(attrs.get("beta", 0.5), HARD_SIGMOID_BETA)
    return None if ok else "the HardSigmoid is not relu6(x + 3) / 6 (alpha 1/6, beta 0.5)"


def _close(got: float, want: float) -> bool:
    return abs(float(got) - want) <= FLOAT_CONST_RTOL * abs(want)


# x * HardSigmoid(x, 1/6, 0.5) -> HardSwish(x)
HARD_SWISH_OF_HARD_SIGMOID = Rule(
    "hardswish[hardsigmoid]",
    pattern=op.Mul(_X, op.HardSigmoid(_X, _bind="hsig"), _commute=True),
    check=_check_hard_sigmoid_product,
    replace=lambda op, m: op.HardSwish(m.x),
)

ACTIVATION_RULES: list[Rule] = [*GELU_ERF, *GELU_TANH, *SOFTMAX, SOFTMAX_NEGATIVE_AXIS, *HARD_SWISH, *HARD_SIGMOID,
                                HARD_SWISH_OF_HARD_SIGMOID]

register_rule_pass(
    "canonicalize_activation",
    "decomposed GELU (erf and tanh forms), softmax, hard sigmoid / swish -> Gelu / Softmax / HardSigmoid / "
    "HardSwish; Softmax axis made negative",
    ACTIVATION_RULES,
)
