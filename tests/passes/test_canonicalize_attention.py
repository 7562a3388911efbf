"""canonicalize_attention: MatMul(Q, K^T) [scale] [mask] -> Softmax -> MatMul(., V) ->
ScaledDotProductAttention, and the fused op's canonical masks, scale and GQA. Each
case checks (a) changed flag and rule counts, (b) the structure and attributes (Before/
Expected text where the graph is small: tests/rewrite_testing.py), (c) the interpreter's
outputs before vs after, (d) near misses left alone.

Tolerance: ATTN_RTOL/ATTN_ATOL for float32. The fused kernel multiplies Q @ K^T by the
scale where the graphs scale Q and K^T separately (the ONNX exporter) or after the
product, and sums the softmax in its own order: a few ulps. Rewrites of the fused op
alone (default scale, dropped all-True mask) run the same kernel on the same numbers
and are compared bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from canonical_testing import (
    assert_same_outputs,
    build_graph,
    live_ops,
    only_node,
    ops,
    outputs_before_after,
    rule_counts,
    run_pass,
    seeded_inputs,
)
from requant.ir import run
from rewrite_testing import check_rewrite, check_unchanged

PASS = "canonicalize_attention"
F32 = "float32"
ATTN_RTOL, ATTN_ATOL = 1e-5, 1e-6
B, H, S, T, D = 2, 4, 5, 6, 8
QKV = {"q": (F32, [B, H, S, D]), "k": (F32, [B, H, T, D]), "v": (F32, [B, H, T, D])}
NEG_INF = np.float32(-np.inf)
FLT_LOWEST = np.finfo(np.float32).min
QKV_PARAMS = "%q: f32[2,4,5,8], %k: f32[2,4,6,8], %v: f32[2,4,6,8]"  # QKV in the text form
TOLERANCES = {"float32": (ATTN_RTOL, ATTN_ATOL)}


def i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def k_transposed(b, k):
    return b.Transpose(k, perm=[0, 1, 3, 2])


def torch_style(b, q, k, v, mask=None, scale=1 / math.sqrt(D), axis=-1, extra=False):
    """What F.scaled_dot_product_attention lowers to op by op (a bool mask)."""
    s = b.Mul(b.MatMul(q, k_transposed(b, k)), b.const(np.float32(scale)))
    m = s if mask is None else b.Where(mask, s, b.const(NEG_INF))
    out = b.MatMul(b.Softmax(m, axis=axis), v)
    return (out, s) if extra else out


def onnx_style(b, q, k, v, mask, neg=FLT_LOWEST):
    """torch.onnx.export(dynamo=True)'s decomposition: sqrt(scale) on Q and on K^T (K^T by
    Reshape-Transpose-Reshape), an additive Where(mask, 0, -big), a NaN guard."""
    root = np.float32(math.sqrt(1 / math.sqrt(D)))
    kt = b.Reshape(b.Transpose(b.Reshape(k, b.const(i64(-1, T, D))), perm=[0, 2, 1]), b.const(i64(B, H, D, T)))
    s = b.MatMul(b.Mul(q, b.const(root)), b.Mul(kt, b.const(root)))
    s = b.Add(s, b.Where(mask, b.const(np.float32(0)), b.const(np.float32(neg))))
    p = b.Softmax(s, axis=-1)
    return b.MatMul(b.Where(b.IsNaN(p), b.const(np.float32(0)), p), v)


def test_torch_style_block_fuses_with_default_scale_and_bool_mask() -> None:
    # what F.scaled_dot_product_attention lowers to op by op; 0.35355338 is 1 / sqrt(8) in f32
    check_rewrite(PASS, f"""
    graph main({QKV_PARAMS}, %mask: bool[2,1,5,6]) -> (%y) {{
      const %scale: f32[] = 0.35355338
      const %neg_inf: f32[] = -inf
      %kt: f32[2,4,8,6] = Transpose(%k) {{perm=[0, 1, 3, 2]}}
      %qk: f32[2,4,5,6] = MatMul(%q, %kt)
      %s: f32[2,4,5,6] = Mul(%qk, %scale)
      %m: f32[2,4,5,6] = Where(%mask, %s, %neg_inf)
      %p: f32[2,4,5,6] = Softmax(%m) {{axis=-1}}
      %y: f32[2,4,5,8] = MatMul(%p, %v)
    }}""", f"""
    graph main({QKV_PARAMS}, %mask: bool[2,1,5,6]) -> (%y) {{
      const %scale: f32[] = 0.35355338     // left for dce
      const %neg_inf: f32[] = -inf
      // scale 0: the default 1 / sqrt(head size)
      %y: f32[2,4,5,8] = ScaledDotProductAttention(%q, %k, %v, %mask) {{scale=0.0, is_causal=0}}
    }}""", rules={"sdpa[mul,where,softmax]": 1}, tolerances=TOLERANCES)


def test_onnx_exporter_block_fuses_through_canonicalize() -> None:
    g = build_graph(dict(QKV, mask=("bool", [B, 1, S, T])), onnx_style)
    result, pairs = outputs_before_after("canonicalize", g)
    counts = rule_counts(result.stats)
    assert counts["transpose_last_two_via_flatten"] == 1
    assert counts["sdpa[split,add,safe_softmax]"] == 1 and counts["sdpa_additive_mask_to_bool"] == 1
    sdpa = only_node(g, "ScaledDotProductAttention")
    assert ops(g) == ["ScaledDotProductAttention"]
    assert sdpa.inputs[3] is g.inputs[3] and sdpa.attrs["scale"] == 0.0  # sqrt(s) * sqrt(s) is s within rounding
    assert_same_outputs(pairs, ATTN_RTOL, ATTN_ATOL)


def test_torchscript_exporter_block_keeps_the_head_transpose_of_k() -> None:
    # K^T = Transpose(K before its head split, [0, 2, 3, 1]); the additive mask uses -inf
    def body(b, q, k_rows, v, mask):
        kt = b.Transpose(k_rows, perm=[0, 2, 3, 1])
        c = np.float32(math.sqrt(1 / math.sqrt(D)))
        s = b.Add(b.MatMul(b.Mul(q, b.const(c)), b.Mul(kt, b.const(c))),
                  b.Where(mask, b.const(np.float32(0)), b.const(NEG_INF)))
        p = b.Softmax(s, axis=-1)
        return b.MatMul(b.Where(b.IsNaN(p), b.const(np.float32(0)), p), v)

    g = build_graph({"q": QKV["q"], "k_rows": (F32, [B, T, H, D]), "v": QKV["v"], "mask": ("bool", [B, 1, S, T])}, body)
    result, pairs = outputs_before_after(PASS, g)
    assert rule_counts(result.stats) == {"sdpa[split,add,safe_softmax]": 1, "sdpa_additive_mask_to_bool": 1}
    assert live_ops(g) == ["Transpose", "ScaledDotProductAttention"]  # the additive Where is left to dce
    assert only_node(g, "Transpose").attrs["perm"] == [0, 2, 1, 3]  # K itself: [B, H, T, D]
    assert only_node(g, "ScaledDotProductAttention").inputs[3] is g.inputs[3]
    assert_same_outputs(pairs, ATTN_RTOL, ATTN_ATOL)


@pytest.mark.parametrize("form,scale", [("div", 0.0), ("unscaled", 1.0), ("q_scaled", 0.5)])
def test_other_scale_spellings(form: str, scale: float) -> None:
    def body(b, q, k, v):
        if form == "div":
            s = b.Div(b.MatMul(q, k_transposed(b, k)), b.const(np.float32(math.sqrt(D))))
        elif form == "unscaled":
            s = b.MatMul(q, k_transposed(b, k))
        else:
            s = b.MatMul(b.Mul(b.const(np.float32(0.5)), q), k_transposed(b, k))
        return b.MatMul(b.Softmax(s, axis=-1), v)

    g = build_graph(QKV, body)
    result, pairs = outputs_before_after(PASS, g)
    assert rule_counts(result.stats) == {f"sdpa[{form},none,softmax]": 1}
    assert only_node(g, "ScaledDotProductAttention").attrs["scale"] == scale
    assert_same_outputs(pairs, ATTN_RTOL, ATTN_ATOL)


def test_float_additive_mask_stays_a_float_mask() -> None:
    def body(b, q, k, v, bias):
        s = b.Add(b.Mul(b.MatMul(q, k_transposed(b, k)), b.const(np.float32(0.25))), bias)
        return b.MatMul(b.Softmax(s, axis=-1), v)

    g = build_graph(dict(QKV, bias=(F32, [1, H, S, T])), body)
    result, pairs = outputs_before_after(PASS, g)
    assert rule_counts(result.stats) == {"sdpa[mul,add,softmax]": 1}  # a relative-position bias: no bool mask
    sdpa = only_node(g, "ScaledDotProductAttention")
    assert sdpa.inputs[3] is g.inputs[3] and sdpa.attrs["scale"] == 0.25
    assert_same_outputs(pairs, ATTN_RTOL, ATTN_ATOL)


def test_where_mask_with_a_small_fill_value_is_not_a_bool_mask() -> None:
    # Where(mask, 0, -1) adds -1, it does not mask out: the mask stays additive
    g = build_graph(dict(QKV, mask=("bool", [B, 1, S, T])), lambda b, q, k, v, m: onnx_style(b, q, k, v, m, neg=-1.0))
    result, pairs = outputs_before_after("canonicalize", g)
    counts = rule_counts(result.stats)
    assert counts["sdpa[split,add,safe_softmax]"] == 1 and "sdpa_additive_mask_to_bool" not in counts
    assert only_node(g, "ScaledDotProductAttention").inputs[3].producer.op == "Where"
    assert_same_outputs(pairs, ATTN_RTOL, ATTN_ATOL)


def test_fully_masked_rows_give_zeros_like_the_guarded_graph() -> None:
    def body(b, q, k, v, mask):
        s = b.Where(mask, b.Mul(b.MatMul(q, k_transposed(b, k)), b.const(np.float32(0.3))), b.const(NEG_INF))
        p = b.Softmax(s, axis=-1)
        return b.MatMul(b.Where(b.IsNaN(p), b.const(np.float32(0)), p), v)

    g = build_graph(dict(QKV, mask=("bool", [B, 1, S, T])), body)
    feed = seeded_inputs(g)
    feed["mask"][0, 0, 2, :] = False  # query 2 of batch 0 sees no key
    expected = run(g, feed)
    result = run_pass(PASS, g)
    assert rule_counts(result.stats) == {"sdpa[mul,where,safe_softmax]": 1}
    got = run(g, feed)
    assert np.all(got[0][0, :, 2] == 0)
    assert_same_outputs([(expected, got)], ATTN_RTOL, ATTN_ATOL)


def test_grouped_query_attention_drops_repeat_kv() -> None:
    def repeat_kv(b, x):  # Llama: x[:, :, None].expand(B, 2, 2, T, D).reshape(B, 4, T, D)
        e = b.Expand(b.Unsqueeze(x, b.const(i64(2))), b.const(i64(B, 2, 2, T, D)))
        return b.Reshape(e, b.const(i64(B, H, T, D)))

    def body(b, q, k, v):
        return torch_style(b, q, repeat_kv(b, k), repeat_kv(b, v))

    g = build_graph({"q": QKV["q"], "k": (F32, [B, 2, T, D]), "v": (F32, [B, 2, T, D])}, body)
    result, pairs = outputs_before_after(PASS, g)
    assert rule_counts(result.stats) == {"sdpa[mul,none,softmax]": 1, "sdpa_repeat_kv[3]": 1}
    sdpa = only_node(g, "ScaledDotProductAttention")
    assert ops(g) == ["ScaledDotProductAttention"] and sdpa.inputs[1] is g.inputs[1] and sdpa.inputs[2] is g.inputs[2]
    assert_same_outputs(pairs, ATTN_RTOL, ATTN_ATOL)


def test_causal_masks_become_is_causal() -> None:
    tril = np.tril(np.ones((S, S), dtype=bool))

    def body(b, q, k, v):
        const_causal = torch_style(b, q, k, v, mask=b.const(tril))
        ones = b.Expand(b.const(np.array(True)), b.const(i64(S, S)))
        trilu_causal = torch_style(b, q, k, v, mask=b.Trilu(ones, upper=0))
        return const_causal, trilu_causal

    g = build_graph({"q": QKV["q"], "k": (F32, [B, H, S, D]), "v": (F32, [B, H, S, D])}, body)
    result, pairs = outputs_before_after(PASS, g)
    assert rule_counts(result.stats) == {"sdpa[mul,where,softmax]": 2, "sdpa_causal_mask": 2}
    fused = [n for n in g if n.op == "ScaledDotProductAttention"]
    assert len(fused) == 2 and all(n.attrs["is_causal"] == 1 and len(n.inputs) == 3 for n in fused)
    assert_same_outputs(pairs, ATTN_RTOL, ATTN_ATOL)


def test_shifted_tril_is_not_causal() -> None:
    shifted = np.tril(np.ones((S, T), dtype=bool), k=1)  # each query also sees the next key
    g = build_graph(QKV, lambda b, q, k, v: torch_style(b, q, k, v, mask=b.const(shifted)))
    result, pairs = outputs_before_after(PASS, g)
    assert rule_counts(result.stats) == {"sdpa[mul,where,softmax]": 1}
    assert only_node(g, "ScaledDotProductAttention").attrs["is_causal"] == 0
    assert_same_outputs(pairs, ATTN_RTOL, ATTN_ATOL)


def test_fused_op_from_a_frontend_gets_the_default_scale_and_loses_an_all_true_mask() -> None:
    # the same kernel on the same numbers: bit for bit (no tolerance)
    check_rewrite(PASS, f"""
    graph main({QKV_PARAMS}) -> (%y) {{
      const %everything: bool[1,1,5,6] = true
      %y: f32[2,4,5,8] = ScaledDotProductAttention(%q, %k, %v, %everything) {{scale=0.35355339059327373}}
    }}""", f"""
    graph main({QKV_PARAMS}) -> (%y) {{
      const %everything: bool[1,1,5,6] = true   // left for dce
      %y: f32[2,4,5,8] = ScaledDotProductAttention(%q, %k, %v) {{scale=0.0}}
    }}""", rules={"sdpa_causal_mask": 1, "sdpa_default_scale[3]": 1})


def test_softmax_over_another_axis_is_not_attention() -> None:
    check_unchanged(PASS, f"""
    graph main({QKV_PARAMS}) -> (%y) {{
      const %scale: f32[] = 0.35355338
      %kt: f32[2,4,8,6] = Transpose(%k) {{perm=[0, 1, 3, 2]}}
      %qk: f32[2,4,5,6] = MatMul(%q, %kt)
      %s: f32[2,4,5,6] = Mul(%qk, %scale)
      %p: f32[2,4,5,6] = Softmax(%s) {{axis=2}}      // over the queries, not the keys
      %y: f32[2,4,5,8] = MatMul(%p, %v)
    }}""", rules={})


def test_scores_used_elsewhere_are_not_fused() -> None:
    check_unchanged(PASS, f"""
    graph main({QKV_PARAMS}) -> (%y, %s) {{
      const %scale: f32[] = 0.35355338
      %kt: f32[2,4,8,6] = Transpose(%k) {{perm=[0, 1, 3, 2]}}
      %qk: f32[2,4,5,6] = MatMul(%q, %kt)
      %s: f32[2,4,5,6] = Mul(%qk, %scale)            // also a graph output
      %p: f32[2,4,5,6] = Softmax(%s) {{axis=-1}}
      %y: f32[2,4,5,8] = MatMul(%p, %v)
    }}""", rules={})


def test_keys_without_a_transpose_are_not_fused() -> None:
    check_unchanged(PASS, """
    graph main(%q: f32[2,4,5,8], %kt: f32[2,4,8,6], %v: f32[2,4,6,8]) -> (%y) {
      %qk: f32[2,4,5,6] = MatMul(%q, %kt)            // K^T given: nothing shows it is one
      %p: f32[2,4,5,6] = Softmax(%qk) {axis=-1}
      %y: f32[2,4,5,8] = MatMul(%p, %v)
    }""", rules={})
