"""Pass "canonicalize_attention": scaled dot-product attention blocks ->
ScaledDotProductAttention (requant's op, ir/ops/attention.py).

Stage 1 recognises the block, in every spelling torch.export (requant's torch frontend
lowers F.scaled_dot_product_attention to it) and the ONNX exporters produce
(rule sdpa[scores,mask,probs]: from -> to):

    MatMul(P, V)  with  P = Softmax(M, axis=-1)                            probs=softmax
                        P = Where(IsNaN(Softmax(M)), 0, Softmax(M))        probs=safe_softmax
                        M = S | Add(S, mask) | Where(bool_mask, S, -inf)   mask=none|add|where
                        S = MatMul(Q, Transpose(K)) [* s | / d]            scores=unscaled|mul|div
                          | MatMul(Q * a, Transpose(K) * b)                scores=split (ONNX)
                          | MatMul(Q * a, Transpose(K))                    scores=q_scaled
    -> ScaledDotProductAttention(Q, K', V[, mask], scale)

K' is K with the transpose of its last two axes undone (any other permutation stays a
Transpose node). The scale is 0.0 (the op's "1/sqrt(D)") when the product of the
constants is 1/sqrt(D) within float32 rounding, else that product.

Stage 2 puts the fused op in one canonical form (rules rooted at the op):
- sdpa_additive_mask_to_bool: an additive mask Where(b, 0, -big) or a constant with
  only 0 and -big entries -> the bool mask b (True = attend), -big being -inf or at most
  half the dtype's lowest value (exp of it is 0 either way);
- sdpa_causal_mask[3|4]: a bool mask that is all True -> no mask; one equal to
  tril(ones(S, T)) (a constant, or Trilu of all-True) -> is_causal=1 and no mask;
- sdpa_default_scale[3|4]: scale = 1/sqrt(D) within float32 rounding -> scale = 0.0
  (torch's frontend passes HF's explicit `scaling`);
- sdpa_repeat_kv[3|4]: K, V given as Reshape(Expand(Unsqueeze(k, 2))) (Llama's
  repeat_kv) -> k, v themselves: grouped-query attention is the op's own business.

Exactness: the fused op computes the same function; it differs from the decomposed
graphs by float rounding (where the scale multiplies: after Q @ K^T, not on Q and K)
and in one deliberate case: a query row whose keys are all masked out gives zeros, as
torch's scaled_dot_product_attention does (a plain softmax gives NaN there; ONNX's
exporter, with its -FLT_MAX additive mask, the average of V).
"""

from __future__ import annotations

import logging
import math

import numpy as np

from requant.ir.builder import Builder
from requant.ir.graph import Value
from requant.ir.ops.attention import causal_mask
from requant.ir.pattern import Const, Match, Var, op
from requant.ir.registry import infer_types
from requant.ir.rewrite import Rule
from requant.ir.types import TensorType
from requant.ir.verifier import types_agree
from requant.passes.canonicalize_common import FLOAT_CONST_RTOL, ints, producer, scalar, variant_rules, would_infer
from requant.passes.rule_pass import register_rule_pass

__all__ = ["ATTENTION_RULES", "is_masking_constant"]

logger = logging.getLogger(__name__)

SDPA = "ScaledDotProductAttention"

_Q, _V = Var("q"), Var("v")
_KT = op.Transpose(Var("k"), _bind="kt")

# -- stage 1: recognise the block ---------------------------------------------------------------

_SCORES = [
    ("split", op.MatMul(op.Mul(_Q, Const("q_scale"), _commute=True), op.Mul(_KT, Const("k_scale"), _commute=True),
                        _bind="qk")),  # (Q * a) @ (K^T * b)
    ("q_scaled", op.MatMul(op.Mul(_Q, Const("q_scale"), _commute=True), _KT, _bind="qk")),  # (Q * a) @ K^T
    ("mul", op.Mul(op.MatMul(_Q, _KT, _bind="qk"), Const("s_scale"), _commute=True)),  # (Q @ K^T) * s
    ("div", op.Div(op.MatMul(_Q, _KT, _bind="qk"), Const("s_div"))),  # (Q @ K^T) / d
    ("unscaled", op.MatMul(_Q, _KT, _bind="qk")),  # Q @ K^T
]
_MASKS = [
    ("none", lambda s: s),
    ("add", lambda s: op.Add(s, Var("mask"), _commute=True)),  # additive float mask
    ("where", lambda s: op.Where(Var("mask"), s, Const("neg"))),  # bool mask, -inf elsewhere
]


def _safe_softmax(masked):
    sm = op.Softmax(masked, _bind="softmax")
    return op.Where(op.IsNaN(sm), Const("zero", value=0), sm)  # the exporter's NaN guard


_PROBS = [
    ("softmax", lambda masked: op.Softmax(masked, _bind="softmax")),
    ("safe_softmax", _safe_softmax),
]


def _attention_pattern(scores, mask, probs):
    return op.MatMul(probs(mask(scores)), _V)


def _perm(node, rank: int) -> list[int]:
    perm = node.attrs.get("perm")
    return list(range(rank))[::-1] if perm is None else [int(p) for p in perm]


def _key_perm(m: Match) -> list[int] | None:
    """The permutation taking k to K [B, H, T, D]: the Transpose's, last two swapped."""
    rank = m.k.type.rank
    if rank is None:
        return None
    perm = _perm(m.kt, rank)
    return perm[:-2] + [perm[-1], perm[-2]]


def _scale_product(m: Match) -> float | None:
    b = m.bindings
    if "q_scale" in b:
        qs, ks = scalar(b["q_scale"]), scalar(b["k_scale"]) if "k_scale" in b else 1.0
        return None if qs is None or ks is None else qs * ks
    if "s_scale" in b:
        return scalar(b["s_scale"])
    if "s_div" in b:
        d = scalar(b["s_div"])
        return None if d is None or d == 0.0 else 1.0 / d
    return 1.0


def _canonical_scale(scale: float, head_dim) -> float:
    """0.0 (the op's default, 1/sqrt(D)) when `scale` is that within float32 rounding."""
    if isinstance(head_dim, int) and head_dim > 0:
        default = 1.0 / math.sqrt(head_dim)
        if abs(scale - default) <= FLOAT_CONST_RTOL * default:
            return 0.0
    return float(scale)


def is_masking_constant(v: Value | None, dtype) -> bool:
    """A scalar constant that masks a score out when added or selected: -inf, or at most
    half the lowest finite value of `dtype` (exp(score + it - max) is 0 in any case)."""
    x = scalar(v)
    if x is None:
        return False
    return x == -math.inf or x <= 0.5 * float(np.finfo(dtype.np).min)


def _mask_of(m: Match) -> Value | None | str:
    """The mask input for the fused op (None without one), or why the mask does not fit."""
    mask = m.bindings.get("mask")
    if mask is None:
        return None
    if m.softmax.inputs[0].type != m.qk.outputs[0].type:
        return "the mask broadcasts the scores to a larger shape"
    if "neg" in m.bindings:
        if mask.dtype.name != "bool" or not is_masking_constant(m.neg, m.q.dtype):
            return "a Where that is not a bool mask selecting -inf"
    elif mask.dtype != m.q.dtype:
        return f"additive mask of dtype {mask.dtype}"
    return mask


def _sdpa_inputs(m: Match) -> tuple[list, dict] | str:
    q, v, k = m.q, m.v, m.k
    if not q.dtype.is_float:
        return f"{q.dtype} attention"
    if q.type.rank != 4 or k.type.rank != 4 or v.type.rank != 4:
        return "Q, K and V must be 4-D [batch, heads, seq, head_dim]"
    axis = int(m.softmax.attrs.get("axis", -1))
    if axis not in (-1, 3):
        return f"the softmax is over axis {axis}, not the last (keys) axis"
    scale = _scale_product(m)
    if scale is None or scale == 0.0 or not math.isfinite(scale):
        return "the scale is not a non-zero scalar constant"
    mask = _mask_of(m)
    if isinstance(mask, str):
        return mask
    perm = _key_perm(m)
    k_type = TensorType(tuple(k.type.shape[p] for p in perm), k.dtype) if k.type.shape is not None else k.type
    inputs = [q, k_type, v] + ([mask] if mask is not None else [])
    attrs = {"scale": _canonical_scale(scale, q.type.shape[3]), "is_causal": 0}
    return inputs, attrs


def _check_attention(m: Match):
    found = _sdpa_inputs(m)
    if isinstance(found, str):
        return found
    inputs, attrs = found
    why = would_infer(SDPA, inputs, attrs)
    if why is not None:
        return why
    probe = [Value("_probe", t) if isinstance(t, TensorType) else t for t in inputs]
    (out,) = infer_types(SDPA, probe, attrs)
    block = m.root.outputs[0].type
    if not (types_agree(block, out) or types_agree(out, block)):
        return f"the fused op would give {out}, the block gives {block}"
    return None


def _replace_attention(b: Builder, m: Match):
    inputs, attrs = _sdpa_inputs(m)
    perm = _key_perm(m)
    k = m.k if perm == list(range(len(perm))) else b.Transpose(m.k, perm=perm)
    return b.node(SDPA, inputs[0], k, *inputs[2:], **attrs).outputs[0]


# MatMul(Softmax(mask(scale(MatMul(Q, Transpose(K))))), V) -> ScaledDotProductAttention(Q, K, V[, mask])
ATTENTION_BLOCK = variant_rules("sdpa", [_SCORES, _MASKS, _PROBS], _attention_pattern, _replace_attention,
                                _check_attention)

# -- stage 2: canonical masks and heads -----------------------------------------------------------


def _bool_mask_source(mask: Value, q: Value) -> Value | np.ndarray | None:
    """What an additive `mask` stands for as a bool mask: the condition of
    Where(cond, 0, -big), the bool array of a {0, -big} constant, or None."""
    where = producer(mask, "Where")
    if where is not None:
        cond, zero, neg = where.inputs
        if cond.dtype.name == "bool" and scalar(zero) == 0.0 and is_masking_constant(neg, q.dtype):
            return cond
        return None
    if mask.const is not None and mask.dtype == q.dtype and mask.const.size:
        arr = np.asarray(mask.const)
        if np.all((arr == 0) | (arr <= 0.5 * float(np.finfo(arr.dtype).min))):
            return arr == 0
    return None


def _check_additive_mask(m: Match):
    if m.mask.dtype.name == "bool":
        return "the mask is already bool"
    if _bool_mask_source(m.mask, m.q) is None:
        return "the additive mask is not 0 / -inf valued"
    return None


def _replace_additive_mask(b: Builder, m: Match):
    source = _bool_mask_source(m.mask, m.q)
    mask = source if isinstance(source, Value) else b.const(source)
    return b.node(SDPA, m.q, m.k, m.v, mask, **m.root.attrs).outputs[0]


# SDPA(q, k, v, Where(b, 0, -inf)) -> SDPA(q, k, v, b); a {0, -inf} constant -> its bool mask
SDPA_ADDITIVE_MASK_TO_BOOL = Rule(
    "sdpa_additive_mask_to_bool",
    pattern=lambda q, k, v, mask: op.ScaledDotProductAttention(q, k, v, mask),
    check=_check_additive_mask,
    replace=_replace_additive_mask,
)


def _causal_kind(m: Match) -> str | None:
    """'all' for an all-True mask, 'causal' for tril(ones(S, T)), else None."""
    mask = m.mask
    if mask.dtype.name != "bool" or m.q.type.rank != 4 or m.k.type.rank != 4:
        return None
    s_len, t_len = m.q.type.shape[2], m.k.type.shape[2]
    if mask.const is not None:
        arr = np.asarray(mask.const)
        if arr.size and np.all(arr):
            return "all"
        if arr.ndim >= 2 and arr.shape[-2:] == (s_len, t_len) and np.all(arr == causal_mask(s_len, t_len)):
            return "causal"  # every leading slice is tril(ones(S, T))
        return None
    trilu = producer(mask, "Trilu")
    if trilu is None or int(trilu.attrs.get("upper", 1)) != 0:
        return None
    k_input = trilu.inputs[1] if len(trilu.inputs) > 1 else None
    if k_input is not None and scalar(k_input) != 0.0:
        return None
    ones = trilu.inputs[0]
    expand = producer(ones, "Expand")
    source = expand.inputs[0] if expand is not None else ones
    if source.const is None or not np.all(source.const):
        return None
    shape = mask.type.shape
    if shape is None or len(shape) < 2 or tuple(shape[-2:]) != (s_len, t_len) or s_len is None or t_len is None:
        return None
    return "causal"


def _check_causal(m: Match):
    if len(m.root.inputs) < 4 or m.root.inputs[3] is None:
        return "no mask"
    return None if _causal_kind(m) is not None else "the mask is neither all True nor causal"


def _replace_causal(b: Builder, m: Match):
    attrs = dict(m.root.attrs)
    if _causal_kind(m) == "causal":
        attrs["is_causal"] = 1
    return b.node(SDPA, m.q, m.k, m.v, **attrs).outputs[0]


# SDPA(q, k, v, tril(ones(S, T))) -> SDPA(q, k, v, is_causal=1); an all-True mask is dropped
SDPA_CAUSAL_MASK = Rule(
    "sdpa_causal_mask",
    pattern=lambda q, k, v, mask: op.ScaledDotProductAttention(q, k, v, mask),
    check=_check_causal,
    replace=_replace_causal,
)


def _check_default_scale(m: Match):
    scale = float(m.root.attrs.get("scale", 0.0))
    head_dim = m.q.type.shape[3] if m.q.type.rank == 4 else None
    if scale == 0.0 or _canonical_scale(scale, head_dim) != 0.0:
        return "the scale is not 1/sqrt(head_dim)"
    return None


def _replace_default_scale(b: Builder, m: Match):
    return b.node(SDPA, *m.root.inputs, **dict(m.root.attrs, scale=0.0)).outputs[0]


# SDPA(..., scale=1/sqrt(D)) -> SDPA(..., scale=0.0)   (the op's default, one spelling)
SDPA_DEFAULT_SCALE = [
    Rule("sdpa_default_scale[3]", pattern=lambda q, k, v: op.ScaledDotProductAttention(q, k, v),
         check=_check_default_scale, replace=_replace_default_scale),
    Rule("sdpa_default_scale[4]", pattern=lambda q, k, v, mask: op.ScaledDotProductAttention(q, k, v, mask),
         check=_check_default_scale, replace=_replace_default_scale),
]


def _repeat(name: str):
    """Llama's repeat_kv: x[:, :, None].expand(B, Hkv, n, T, D).reshape(B, Hkv * n, T, D)."""
    return op.Reshape(
        op.Expand(op.Unsqueeze(Var(name), Const(f"{name}_axes"), _bind=f"{name}_unsq"), Var(f"{name}_shape"),
                  _bind=f"{name}_exp"),
        Var(f"{name}_target"),
    )


def _repeat_factor(m: Match, name: str) -> int | None:
    """n when m[name] [B, Hkv, T, D] is unsqueezed at axis 2 and expanded to
    [B, Hkv, n, T, D], else None."""
    src, exp = m[name].type.shape, m[f"{name}_exp"].outputs[0].type.shape
    if src is None or exp is None or len(src) != 4 or len(exp) != 5 or ints(m[f"{name}_axes"]) not in ([2], [-3]):
        return None
    n = exp[2]
    if not isinstance(n, int) or tuple(exp[:2]) != tuple(src[:2]) or tuple(exp[3:]) != tuple(src[2:]):
        return None
    return n


def _check_repeat_kv(m: Match):
    nk, nv = _repeat_factor(m, "k"), _repeat_factor(m, "v")
    if nk is None or nk != nv:
        return "K and V are not both repeated along a new head axis by the same factor"
    k_rep, v_rep = m.root.inputs[1].type.shape, m.root.inputs[2].type.shape
    k, v = m.k.type.shape, m.v.type.shape
    for rep, src in ((k_rep, k), (v_rep, v)):
        if rep is None or rep[0] != src[0] or tuple(rep[2:]) != tuple(src[2:]) or not isinstance(src[1], int) \
                or rep[1] != src[1] * nk:
            return "the reshape does not merge the repeated heads"
    return None


def _replace_repeat_kv(b: Builder, m: Match):
    extra = list(m.root.inputs[3:])
    return b.node(SDPA, m.q, m.k, m.v, *extra, **m.root.attrs).outputs[0]


# SDPA(q, repeat_kv(k), repeat_kv(v)[, mask]) -> SDPA(q, k, v[, mask])   (grouped-query attention)
SDPA_REPEAT_KV = [
    Rule("sdpa_repeat_kv[3]", pattern=lambda q: op.ScaledDotProductAttention(q, _repeat("k"), _repeat("v")),
         check=_check_repeat_kv, replace=_replace_repeat_kv),
    Rule("sdpa_repeat_kv[4]",
         pattern=lambda q, mask: op.ScaledDotProductAttention(q, _repeat("k"), _repeat("v"), mask),
         check=_check_repeat_kv, replace=_replace_repeat_kv),
]

ATTENTION_RULES: list[Rule] = [
    *ATTENTION_BLOCK,
    SDPA_ADDITIVE_MASK_TO_BOOL,
    SDPA_CAUSAL_MASK,
    *SDPA_DEFAULT_SCALE,
    *SDPA_REPEAT_KV,
]

register_rule_pass(
    "canonicalize_attention",
    "MatMul(Q, K^T) [scale] [mask] -> Softmax -> MatMul(., V) -> ScaledDotProductAttention; canonical masks, GQA",
    ATTENTION_RULES,
)
