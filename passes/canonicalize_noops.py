"""Pass "canonicalize_noops": remove no-op nodes and put data movement and constant
operands in one canonical spelling, so graphs from torch.export and from ONNX
exporters read alike. Every rewrite here is exact (bit for bit).

Rewrites (rule name: from -> to):
- identity: Identity(x) -> x (kept where it only carries a graph output's name)
- cast_to_same_dtype: Cast(x, to=dtype(x)) -> x
- dropout[1|2|3 inputs]: Dropout(x[, ratio[, training_mode=False]]) -> x (inference;
  only when the mask output is unused and training_mode is absent or constant False)
- transpose_identity: Transpose(x, perm=[0, 1, ...]) -> x
- transpose_of_transpose: Transpose(Transpose(x, p), q) -> Transpose(x, p[q]) (or x)
- reshape_to_same_shape: Reshape(x, s) -> x when the output type is x's (known dims)
- reshape_of_reshape: Reshape(Reshape(x, s1), s2) -> Reshape(x, s2)
- reshape_explicit_target: Reshape(x, [4, 16, -1, 32], allowzero=1) -> Reshape(x, [4, 16, 12, 32]):
  one spelling of each target, the output's dims with -1 for its one symbolic dim if any
  (torch writes [0, 16, -1, 32] where the ONNX exporter writes [-1, 16, 12, 32])
- transpose_last_two_via_flatten: Reshape(Transpose(Reshape(x, [N, a, b]), [0, 2, 1]), L + [b, a])
  -> Transpose(x', [..., r-1, r-2]) with x' = x or Reshape(x, L + [a, b]) (the ONNX
  exporter's batched transpose of K in attention)
- transpose_last_two_via_dynamic_flatten: the same with the shapes computed at run time
  from Shape(x) slices (what the exporter writes for a symbolic batch)
- expand_to_same_shape: Expand(x, s) -> x when the output type is x's
- mul_by_one: Mul(x, 1) / Mul(1, x) -> x; div_by_one: Div(x, 1) -> x (when no broadcast)
- one_over_to_reciprocal: Div(1, x) -> Reciprocal(x) (float x; the same IEEE division)
- constant_second[Add|Mul]: Add(c, x) -> Add(x, c), Mul(c, x) -> Mul(x, c) for a
  constant c and a non-constant x (both ops are exactly commutative in IEEE arithmetic)
"""

from __future__ import annotations

import logging

import numpy as np

from requant.ir.builder import Builder
from requant.ir.dtypes import dtype
from requant.ir.pattern import Const, Match, Var, op
from requant.ir.rewrite import Rule
from requant.ir.shapes import symbolic_product
from requant.passes.canonicalize_common import ints, output_name_carrier, same_known_type
from requant.passes.rule_pass import register_rule_pass

__all__ = ["NOOP_RULES"]

logger = logging.getLogger(__name__)


def _pass_through(source: str):
    """A check refusing the rewrite `root -> m[source]` when it would only move a graph
    output's name onto a fresh Identity (which the identity rule then keeps)."""

    def check(m: Match):
        if output_name_carrier(m.graph, m.root, m[source]):
            return "the node carries a graph output's name"
        return None

    return check


def _same_type_as(source: str):
    """A check: the root's output has the same fully known type as m[source]."""
    carrier = _pass_through(source)

    def check(m: Match):
        if not same_known_type(m.root.outputs[0].type, m[source].type):
            return f"output type {m.root.outputs[0].type} differs from {m[source].type}"
        return carrier(m)

    return check


# -- Identity, Cast, Dropout -------------------------------------------------------------

# Identity(x) -> x
IDENTITY = Rule("identity", pattern=lambda x: op.Identity(x), check=_pass_through("x"), replace=lambda op, m: m.x)


def _check_cast(m: Match):
    to = m.root.attrs.get("to")
    if to is None or dtype(to) != m.x.dtype:
        return f"Cast changes {m.x.dtype} to {to}"
    return _pass_through("x")(m)


# Cast(x, to=dtype(x)) -> x
CAST_TO_SAME_DTYPE = Rule("cast_to_same_dtype", pattern=lambda x: op.Cast(x), check=_check_cast, replace=lambda op, m: m.x)


def _check_dropout(m: Match):
    root = m.root
    if len(root.outputs) > 1 and (root.outputs[1].uses or m.graph.is_output(root.outputs[1])):
        return "the Dropout mask output is used"
    training = m.bindings.get("training")
    if training is not None and (training.const is None or bool(np.any(training.const))):
        return "training_mode is not a constant False"
    return _pass_through("x")(m)


def _replace_dropout(op: Builder, m: Match):
    return [m.x] + [None] * (len(m.root.outputs) - 1)


# Dropout(x[, ratio[, training_mode]]) -> x   (one rule per input count: the matcher
# compares arity, and exporters write all three)
DROPOUT = [
    Rule("dropout[1]", pattern=lambda x: op.Dropout(x), check=_check_dropout, replace=_replace_dropout),
    Rule("dropout[2]", pattern=lambda x, ratio: op.Dropout(x, ratio), check=_check_dropout, replace=_replace_dropout),
    Rule("dropout[3]", pattern=lambda x, ratio, training: op.Dropout(x, ratio, training), check=_check_dropout,
         replace=_replace_dropout),
]


# -- Transpose -----------------------------------------------------------------------------


def _perm(node, rank: int | None) -> list[int] | None:
    perm = node.attrs.get("perm")
    if perm is None:
        return None if rank is None else list(range(rank))[::-1]  # ONNX: reverse the axes
    return [int(p) for p in perm]


def _check_transpose_identity(m: Match):
    perm = _perm(m.root, m.x.type.rank)
    if perm is None or perm != list(range(len(perm))):
        return f"perm {perm} is not the identity"
    return _pass_through("x")(m)


# Transpose(x, perm=[0, 1, ..., r-1]) -> x
TRANSPOSE_IDENTITY = Rule(
    "transpose_identity", pattern=lambda x: op.Transpose(x), check=_check_transpose_identity, replace=lambda op, m: m.x
)


def _composed_perm(m: Match) -> list[int] | None:
    rank = m.x.type.rank
    inner, outer = _perm(m.inner, rank), _perm(m.root, rank)
    if inner is None or outer is None:
        return None
    # y[i] = t[outer[i]] = x[inner[outer[i]]]
    return [inner[o] for o in outer]


def _check_transpose_of_transpose(m: Match):
    if _composed_perm(m) is None:
        return "the rank is unknown"
    if _composed_perm(m) == list(range(m.x.type.rank)):
        return _pass_through("x")(m)
    return None


def _replace_transpose_of_transpose(op: Builder, m: Match):
    perm = _composed_perm(m)
    if perm == list(range(len(perm))):
        return m.x
    return op.Transpose(m.x, perm=perm)


# Transpose(Transpose(x, p), q) -> Transpose(x, p[q])   (or x when that is the identity)
TRANSPOSE_OF_TRANSPOSE = Rule(
    "transpose_of_transpose",
    pattern=lambda x: op.Transpose(op.Transpose(x, _bind="inner")),
    check=_check_transpose_of_transpose,
    replace=_replace_transpose_of_transpose,
)


# -- Reshape ---------------------------------------------------------------------------------

# Reshape(x, s) -> x   when the output type is x's type (every dim known)
RESHAPE_TO_SAME_SHAPE = Rule(
    "reshape_to_same_shape",
    pattern=lambda x, shape: op.Reshape(x, shape),
    check=_same_type_as("x"),
    replace=lambda op, m: m.x,
)


def _check_reshape_of_reshape(m: Match):
    target = ints(m.shape)
    if target is None:
        return "the outer target shape is not a constant"
    allowzero = int(m.root.attrs.get("allowzero", 0))
    # a 0 without allowzero copies a dim of the *intermediate* tensor; without the inner
    # Reshape it would copy x's dim instead, unless the static result pins it down
    if 0 in target and not allowzero and not m.root.outputs[0].type.is_static:
        return "the outer target copies dims (0) of the intermediate shape"
    return None


def _replace_reshape_of_reshape(op: Builder, m: Match):
    target = ints(m.shape)
    allowzero = int(m.root.attrs.get("allowzero", 0))
    if 0 in target and not allowzero:
        out = m.root.outputs[0].type.shape
        return op.Reshape(m.x, op.const(np.asarray(out, np.int64)))
    return op.Reshape(m.x, m.shape, **({"allowzero": 1} if allowzero and 0 in target else {}))


# Reshape(Reshape(x, s1), s2) -> Reshape(x, s2)
RESHAPE_OF_RESHAPE = Rule(
    "reshape_of_reshape",
    pattern=lambda x, inner_shape, shape=Const("shape"): op.Reshape(op.Reshape(x, inner_shape), shape),
    check=_check_reshape_of_reshape,
    replace=_replace_reshape_of_reshape,
)


def _explicit_target(m: Match) -> list[int] | None:
    """The output shape as a Reshape target when at most one dim is not static (that one
    becomes -1: the element count determines it), else None."""
    out = m.root.outputs[0].type.shape
    if out is None or None in out or 0 in out:
        return None
    target = [d if isinstance(d, int) else -1 for d in out]
    return target if target.count(-1) <= 1 else None


def _check_explicit_target(m: Match):
    target = _explicit_target(m)
    if target is None:
        return "the output shape has unknown, zero or several symbolic dims"
    if ints(m.shape) == target and int(m.root.attrs.get("allowzero", 0)) == 0:
        return "the target is already explicit"
    return None


# Reshape(x, [4, 16, -1, 32], allowzero=1) -> Reshape(x, [4, 16, 12, 32]);
# Reshape(x, [0, 16, -1, 32]) -> Reshape(x, [-1, 16, 12, 32]) for x [batch, 16, 384]
RESHAPE_EXPLICIT_TARGET = Rule(
    "reshape_explicit_target",
    pattern=lambda x: op.Reshape(x, Const("shape")),
    check=_check_explicit_target,
    replace=lambda op, m: op.Reshape(m.x, op.const(np.asarray(_explicit_target(m), np.int64))),
)


def _check_last_two_via_flatten(m: Match):
    xs, flat, out = m.x.type.shape, m.flat.outputs[0].type.shape, m.root.outputs[0].type.shape
    if xs is None or flat is None or out is None or len(xs) < 3 or len(flat) != 3 or len(out) < 3:
        return "ranks are unknown or too small"
    if _perm(m.swap, 3) != [0, 2, 1]:
        return "the middle Transpose does not swap the last two axes"
    a, b = xs[-2], xs[-1]
    if a is None or b is None or tuple(flat[1:]) != (a, b) or tuple(out[-2:]) != (b, a):
        return "the flattening does not keep the last two axes"
    n_in, n_flat, n_out = symbolic_product(xs[:-2]), flat[0], symbolic_product(out[:-2])
    if n_in is None or n_in != n_flat or n_out != n_flat:
        return "the leading axes are not merged and split back"
    if tuple(out[:-2]) != tuple(xs[:-2]) and not all(isinstance(d, int) for d in out[:-2]):
        return "the split-back leading shape is not static"
    return None


def _replace_last_two_via_flatten(op: Builder, m: Match):
    xs, out = m.x.type.shape, m.root.outputs[0].type.shape
    src = m.x
    if tuple(out[:-2]) != tuple(xs[:-2]):
        src = op.Reshape(m.x, op.const(np.asarray(list(out[:-2]) + [xs[-2], xs[-1]], np.int64)))
    rank = len(out)
    return op.Transpose(src, perm=list(range(rank - 2)) + [rank - 1, rank - 2])


# Reshape(Transpose(Reshape(x, [N, a, b]), [0, 2, 1]), L + [b, a]) -> Transpose(x', swap last two)
TRANSPOSE_LAST_TWO_VIA_FLATTEN = Rule(
    "transpose_last_two_via_flatten",
    pattern=lambda x, s1, s2: op.Reshape(
        op.Transpose(op.Reshape(x, s1, _bind="flat"), _bind="swap"), s2),
    check=_check_last_two_via_flatten,
    replace=_replace_last_two_via_flatten,
)


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _slice_bounds(node) -> tuple[int, int] | None:
    """(start, end) of a 1-D Slice with constant bounds and no axes/steps, else None."""
    if len(node.inputs) != 3:
        return None
    start, end = ints(node.inputs[1]), ints(node.inputs[2])
    if start is None or end is None or len(start) != 1 or len(end) != 1:
        return None
    return start[0], end[0]


def _check_last_two_dynamic(m: Match):
    if _perm(m.swap, 3) != [0, 2, 1]:
        return "the middle Transpose does not swap the last two axes"
    shape_attrs = m.shape.attrs
    if int(shape_attrs.get("start", 0)) != 0 or shape_attrs.get("end") is not None:
        return "Shape takes part of the dims"
    lead, last, second = _slice_bounds(m.lead), _slice_bounds(m.last), _slice_bounds(m.second)
    if lead is None or last is None or second is None:
        return "the dims are not sliced with constant bounds"
    rank = m.x.type.rank
    if last != (-1, _INT64_MAX) or second != (-2, -1) or lead[1] != -2 or lead[0] not in (0, _INT64_MIN):
        return "the slices are not x.shape[:-2], x.shape[-2], x.shape[-1]"
    if rank is None or rank < 3 or ints(m.minus_one) != [-1]:
        return "the flattening is not [-1, a, b] of a tensor of rank >= 3"
    return None


def _replace_last_two_dynamic(op: Builder, m: Match):
    rank = m.x.type.rank
    return op.Transpose(m.x, perm=list(range(rank - 2)) + [rank - 1, rank - 2])


def _last_two_dynamic_pattern(x, minus_one=Const("minus_one")):
    shape = op.Shape(x, _bind="shape")
    last = op.Slice(shape, Const("last_start"), Const("last_end"), _bind="last")  # x.shape[-1:]
    second = op.Slice(shape, Const("second_start"), Const("second_end"), _bind="second")  # x.shape[-2:-1]
    lead = op.Slice(shape, Const("lead_start"), Const("lead_end"), _bind="lead")  # x.shape[:-2]
    flat = op.Reshape(x, op.Concat(minus_one, second, last, axis=0))
    return op.Reshape(op.Transpose(flat, _bind="swap"), op.Concat(lead, last, second, axis=0))


# the same with the shapes computed at run time (a symbolic batch):
# Reshape(Transpose(Reshape(x, [-1, *x.shape[-2:]]), [0, 2, 1]), [*x.shape[:-2], *x.shape[-1:], *x.shape[-2:-1]])
# -> Transpose(x, swap last two)
TRANSPOSE_LAST_TWO_VIA_DYNAMIC_FLATTEN = Rule(
    "transpose_last_two_via_dynamic_flatten",
    pattern=_last_two_dynamic_pattern,
    check=_check_last_two_dynamic,
    replace=_replace_last_two_dynamic,
)


# -- Expand, Mul/Div by one ------------------------------------------------------------------

# Expand(x, s) -> x   when nothing is broadcast
EXPAND_TO_SAME_SHAPE = Rule(
    "expand_to_same_shape",
    pattern=lambda x, shape: op.Expand(x, shape),
    check=_same_type_as("x"),
    replace=lambda op, m: m.x,
)

# x * 1 -> x, 1 * x -> x   (when the 1 does not broadcast x to a larger shape)
MUL_BY_ONE = Rule(
    "mul_by_one",
    pattern=lambda x: op.Mul(x, Const("one", value=1), _commute=True),
    check=_same_type_as("x"),
    replace=lambda op, m: m.x,
)

# x / 1 -> x
DIV_BY_ONE = Rule(
    "div_by_one",
    pattern=lambda x: op.Div(x, Const("one", value=1)),
    check=_same_type_as("x"),
    replace=lambda op, m: m.x,
)


def _check_one_over(m: Match):
    if not m.x.dtype.is_float:
        return f"{m.x.dtype} is not a float type (integer 1/x truncates)"
    if not same_known_type(m.root.outputs[0].type, m.x.type):
        return "the constant broadcasts x"
    return None


# 1 / x -> Reciprocal(x)
ONE_OVER_TO_RECIPROCAL = Rule(
    "one_over_to_reciprocal",
    pattern=lambda x: op.Div(Const("one", value=1), x),
    check=_check_one_over,
    replace=lambda op, m: op.Reciprocal(m.x),
)


def _constant_second(op_name: str) -> Rule:
    def check(m: Match):
        return "both operands are constants" if m.x.is_constant else None

    def replace(b: Builder, m: Match):
        return b.node(op_name, m.x, m.c).outputs[0]

    pattern = getattr(op, op_name)(Const("c"), Var("x"))
    return Rule(f"constant_second[{op_name}]", pattern=pattern, check=check, replace=replace)


# Add(c, x) -> Add(x, c); Mul(c, x) -> Mul(x, c)   (c constant, x not)
CONSTANT_SECOND = [_constant_second("Add"), _constant_second("Mul")]

NOOP_RULES: list[Rule] = [
    IDENTITY,
    CAST_TO_SAME_DTYPE,
    *DROPOUT,
    TRANSPOSE_IDENTITY,
    TRANSPOSE_OF_TRANSPOSE,
    RESHAPE_TO_SAME_SHAPE,
    TRANSPOSE_LAST_TWO_VIA_FLATTEN,
    TRANSPOSE_LAST_TWO_VIA_DYNAMIC_FLATTEN,
    RESHAPE_OF_RESHAPE,
    RESHAPE_EXPLICIT_TARGET,
    EXPAND_TO_SAME_SHAPE,
    MUL_BY_ONE,
    DIV_BY_ONE,
    ONE_OVER_TO_RECIPROCAL,
    *CONSTANT_SECOND,
]

register_rule_pass(
    "canonicalize_noops",
    "remove Identity/same-dtype Cast/Dropout/no-op Reshape, Transpose, Expand, x*1; fold "
    "Reshape and Transpose chains; constants second in Add/Mul",
    NOOP_RULES,
)
