"""Pass "canonicalize_linear": one spelling for a linear layer.

The canonical linear is `MatMul(x, W)` with W a constant [in, out], followed by
`Add(., b)` when there is a bias (b 1-D [out] where it can be); x keeps its N-D shape.
A bias-less linear stays a lone MatMul. Later passes (weight folding, rotation,
quantization) look for exactly this.

Rewrites (rule name: from -> to):
- gemm_to_matmul[2|3 inputs]: Gemm(A, B, C, alpha, beta, transA, transB)
  -> MatMul(A', B') [+ Add(., C')] where A'/B' are transposed (a constant at compile
  time, else a Transpose node), alpha is folded into a constant B (else a Mul after the
  MatMul), beta into a constant C (else a Mul), a [1, N] constant C becomes [N], and
  beta = 0 drops C. Float Gemm only.
- matmul_transposed_weight: MatMul(x, Transpose(W, [1, 0])) -> MatMul(x, W^T) with W a
  constant (torch's linear [out, in] weight); a non-constant W is left alone.
- flattened_linear[bias|no_bias]: Reshape(Add(MatMul(Reshape(x, [N, in]), W), b), L + [out])
  -> Add(MatMul(x', W), b) with x' = x when x's last axis is `in` (else a Reshape of x
  to L + [in]): what torch's addmm decomposition of a 3-D linear (GPT-2's Conv1D) and
  exporters write. When the unflatten also splits the features (into heads), a Reshape
  of the N-D result to that static shape stays.

Exactness: transposing, reshaping and Gemm -> MatMul + Add are exact. Folding alpha
(beta) into a constant weight (bias) rounds once more than Gemm, exact when alpha is a
power of two; alpha = beta = 1 (every torch Linear) is exact.
"""

from __future__ import annotations

import logging

import numpy as np

from requant.ir.builder import Builder
from requant.ir.graph import Graph, Node, Value
from requant.ir.pattern import Const, Match, NoMatch, op
from requant.ir.rewrite import Rule
from requant.ir.shapes import symbolic_product
from requant.ir.types import TensorType
from requant.passes.canonicalize_common import new_constant, producer
from requant.passes.rule_pass import register_rule_pass

__all__ = ["LINEAR_RULES", "non_canonical_linears"]

logger = logging.getLogger(__name__)


# -- Gemm ------------------------------------------------------------------------------------


def _check_gemm(m: Match):
    if not m.a.dtype.is_float:
        return f"{m.a.dtype} Gemm (only float Gemm is rewritten)"
    return None


def _transposed(op: Builder, v: Value) -> Value:
    if v.const is not None:
        return new_constant(op, np.asarray(v.const).T, like=v, suffix="t")
    return op.Transpose(v, perm=[1, 0])


def _scaled(op: Builder, v: Value, factor: float) -> Value:
    if factor == 1.0:
        return v
    if v.const is not None:
        np_dtype = v.dtype.np
        return new_constant(op, (np.asarray(v.const) * np_dtype.type(factor)).astype(np_dtype), like=v, suffix="scaled")
    return op.Mul(v, op.const(np.asarray(factor, v.dtype.np)))


def _bias_1d(op: Builder, c: Value, n_out) -> Value:
    """A [1, N] constant bias becomes [N]: the same broadcast, one spelling."""
    if c.const is not None and c.const.ndim == 2 and c.const.shape[0] == 1 and c.const.shape[1] == n_out:
        return new_constant(op, np.asarray(c.const).reshape(-1), like=c, suffix="1d")
    return c


def _replace_gemm(op: Builder, m: Match):
    attrs = m.root.attrs
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    a = _transposed(op, m.a) if attrs.get("transA", 0) else m.a
    w = _transposed(op, m.b) if attrs.get("transB", 0) else m.b
    if w.const is not None:
        w = _scaled(op, w, alpha)
    y = op.MatMul(a, w)
    if alpha != 1.0 and w.const is None:
        y = op.Mul(y, op.const(np.asarray(alpha, y.dtype.np)))
    c = m.bindings.get("c")
    if c is None or beta == 0.0:
        return y
    n_out = m.root.outputs[0].type.shape[1] if m.root.outputs[0].type.shape else None
    return op.Add(y, _bias_1d(op, _scaled(op, c, beta), n_out))


# Gemm(A, B[, C]) -> MatMul(A', B') [+ Add(., C')]
GEMM_TO_MATMUL = [
    Rule("gemm_to_matmul[2]", pattern=lambda a, b: op.Gemm(a, b), check=_check_gemm, replace=_replace_gemm),
    Rule("gemm_to_matmul[3]", pattern=lambda a, b, c: op.Gemm(a, b, c), check=_check_gemm, replace=_replace_gemm),
]


# -- transposed constant weight ---------------------------------------------------------------


def _check_transposed_weight(m: Match):
    perm = m.t.attrs.get("perm")
    if m.w.type.rank != 2 or (perm is not None and list(perm) != [1, 0]):
        return "not a 2-D weight transposed by [1, 0]"
    return None


# MatMul(x, Transpose(W)) -> MatMul(x, W^T)   (W constant, transposed at compile time)
MATMUL_TRANSPOSED_WEIGHT = Rule(
    "matmul_transposed_weight",
    pattern=lambda x, w=Const("w"): op.MatMul(x, op.Transpose(w, _bind="t")),
    check=_check_transposed_weight,
    replace=lambda op, m: op.MatMul(m.x, new_constant(op, np.asarray(m.w.const).T, like=m.w, suffix="t")),
)


# -- flatten -> linear -> unflatten --------------------------------------------------------------


def _flattened_input(m: Match) -> tuple[Value, TensorType] | str:
    """The N-D tensor the linear should read instead of the flattening Reshape, and its
    type: x itself when its last axis is the input features (MatMul broadcasts the rest),
    else x reshaped to the output's leading axes (static shapes only)."""
    flatten = producer(m.flat, "Reshape")
    flat, ws, out = m.flat.type.shape, m.w.type.shape, m.root.outputs[0].type.shape
    if flatten is None or flat is None or ws is None or len(flat) != 2 or len(ws) != 2:
        return "not a 2-D product of a flattened tensor"
    x = flatten.inputs[0]
    n_in = ws[0]
    if n_in is None or flat[1] != n_in or x.type.shape is None or len(x.type.shape) < 2:
        return "the flattening does not keep the input features last"
    if x.type.shape[-1] == n_in:
        return x, x.type
    if out is None or not all(isinstance(d, int) for d in out) or out[-1] != ws[1]:
        return "x would need a reshape to a leading shape that is not static"
    return x, TensorType(tuple(out[:-1]) + (n_in,), x.dtype)


def _check_flattened(m: Match):
    b = m.bindings.get("b")
    if b is not None and (b.type.rank is None or b.type.rank > 2 or (b.type.rank == 2 and b.type.shape[0] != 1)):
        return "the bias is not a per-feature vector"
    found = _flattened_input(m)
    if isinstance(found, str):
        return found
    _, x_type = found
    y = TensorType(tuple(x_type.shape[:-1]) + (m.w.type.shape[1],), x_type.dtype)
    out = m.root.outputs[0].type
    if y.shape != out.shape and not out.is_static:
        return "the unflattened shape is not static and not the linear's own"
    if symbolic_product(y.shape[:-1]) is None and y.shape != out.shape:
        return "the rows cannot be shown to match"
    return None


def _replace_flattened(op: Builder, m: Match):
    x, x_type = _flattened_input(m)
    if x_type != x.type:
        x = op.Reshape(x, op.const(np.asarray(x_type.shape, np.int64)))
    y = op.MatMul(x, m.w)
    b = m.bindings.get("b")
    if b is not None:
        y = op.Add(y, _bias_1d(op, b, m.w.type.shape[1]))
    out = m.root.outputs[0].type
    if y.type.shape == out.shape:
        return y
    # the unflatten also split the features (e.g. into heads): keep it, on the N-D result
    return op.Reshape(y, op.const(np.asarray(out.shape, np.int64)))


# Reshape(Add(MatMul(Reshape(x, [N, in]), W), b), L + [out]) -> Add(MatMul(x, W), b)
# (the flattening Reshape is matched through a check, not the pattern: several linears
# often read one flattened input, and it must stay for the others until they are done)
FLATTENED_LINEAR = [
    Rule(
        "flattened_linear[bias]",
        pattern=lambda flat, w, b, s2: op.Reshape(op.Add(op.MatMul(flat, w), b, _commute=True), s2),
        check=_check_flattened,
        replace=_replace_flattened,
    ),
    Rule(
        "flattened_linear[no_bias]",
        pattern=lambda flat, w, s2: op.Reshape(op.MatMul(flat, w), s2),
        check=_check_flattened,
        replace=_replace_flattened,
    ),
]

LINEAR_RULES: list[Rule] = [*GEMM_TO_MATMUL, MATMUL_TRANSPOSED_WEIGHT, *FLATTENED_LINEAR]


def non_canonical_linears(graph: Graph) -> list[Node]:
    """The Gemms and the MatMuls by a transposed constant weight in `graph` that this
    pass would still rewrite (an integer Gemm, which it leaves alone, is not one)."""
    found = []
    for node in graph:
        rules = GEMM_TO_MATMUL if node.op == "Gemm" else [MATMUL_TRANSPOSED_WEIGHT] if node.op == "MatMul" else []
        for rule in rules:
            try:
                rule.match(node)
            except NoMatch:
                continue
            found.append(node)
            break
    return found

register_rule_pass(
    "canonicalize_linear",
    "Gemm, MatMul by a transposed constant, flatten-linear-unflatten -> MatMul(x, W[in, out]) (+ Add(b))",
    LINEAR_RULES,
)
