"""rotate_heads (QuaRot R2): a Hadamard rotation R of every attention head folded into the
value projection's output columns (W_v (I (x) R)) and the output projection's rows
((I (x) R)^T W_o). (a) changed flag and stats, (b) Before/Expected structure (only the
two weights change; checked against R computed here), (c) the interpreter's outputs
before vs after on seeded inputs within 1e-5 (float32), for multi-head, grouped-query
and GPT-2's fused q/k/v projection (only V's columns of it change), (d) the cases that
must not match: merged heads read by a non-linear op, V not made by a linear.
Model-level exactness: tests/models/test_rotate_models.py.
"""

from __future__ import annotations

import numpy as np

from canonical_testing import run_pass, seeded_inputs
from requant import ir
from requant.passes.channel_transforms import rotation_transform
from rewrite_testing import assert_same_function, check_rewrite, check_unchanged
from rotation_testing import attention, half_normal_text as _const

PASS = "rotate_heads"
TOLERANCES = {"float32": (1e-5, 1e-5)}
RNG = np.random.default_rng(8)


def _elided(text: str) -> str:
    """`text` with the value and output projections' weights elided (what the pass changes)."""
    out = []
    for line in text.splitlines():
        if any(line.strip().startswith(f"const %{w}:") for w in ("w_v", "b_v", "w_o")):
            line = line.split(" = ")[0] + " = ..."
        out.append(line)
    return "\n".join(out)


def test_value_and_output_projections_take_the_head_rotation():
    text = attention()
    result = check_rewrite(PASS, text, _elided(text), options={"seed": 2}, tolerances=TOLERANCES,
                           stats={"attentions_rotated": 1, "skipped": 0})
    g, before = result.graph, ir.parse(text)
    r = rotation_transform(4, 2).matrix()
    per_head = np.kron(np.eye(2), r)
    consts = {n.outputs[0].name: n.inputs for n in g}
    w_v = next(v.const for v in before.constants if v.name == "w_v")
    w_o = next(v.const for v in before.constants if v.name == "w_o")
    np.testing.assert_allclose(consts["vm"][1].const, w_v.astype(np.float64) @ per_head, atol=1e-6)
    np.testing.assert_allclose(consts["y"][1].const, per_head.T @ w_o.astype(np.float64), atol=1e-6)
    sdpa = next(n for n in g if n.op == "ScaledDotProductAttention")
    assert sdpa.meta["head_rotation"] == {"heads": 2, "size": 4}


def test_grouped_query_attention_shares_one_rotation_per_value_head():
    text = attention(heads=4, kv_heads=2, size=4)
    check_rewrite(PASS, text, _elided(text), tolerances=TOLERANCES, stats={"attentions_rotated": 1, "skipped": 0})


def test_a_fused_qkv_projection_changes_only_the_value_columns():
    """GPT-2: one linear [8, 24] split into q, k, v along the channels."""
    w = RNG.standard_normal((8, 24)).astype(np.float32) / 2
    text = f"""
    graph main(%x: f32[1,3,8]) -> (%y) {{
      const %w_qkv: f32[8,24] = {w.tolist()}
      const %sizes: i64[3] = [8, 8, 8]
      const %w_o: f32[8,5] = {_const(8, 5)}
      const %split: i64[4] = [1, 3, 2, 4]
      const %merge: i64[3] = [1, 3, 8]
      %qkv: f32[1,3,24] = MatMul(%x, %w_qkv)
      %q: f32[1,3,8], %k: f32[1,3,8], %v: f32[1,3,8] = Split(%qkv, %sizes) {{axis=2}}
      %qs: f32[1,3,2,4] = Reshape(%q, %split)
      %ks: f32[1,3,2,4] = Reshape(%k, %split)
      %vs: f32[1,3,2,4] = Reshape(%v, %split)
      %qh: f32[1,2,3,4] = Transpose(%qs) {{perm=[0, 2, 1, 3]}}
      %kh: f32[1,2,3,4] = Transpose(%ks) {{perm=[0, 2, 1, 3]}}
      %vh: f32[1,2,3,4] = Transpose(%vs) {{perm=[0, 2, 1, 3]}}
      %a: f32[1,2,3,4] = ScaledDotProductAttention(%qh, %kh, %vh) {{is_causal=1}}
      %at: f32[1,3,2,4] = Transpose(%a) {{perm=[0, 2, 1, 3]}}
      %m: f32[1,3,8] = Reshape(%at, %merge)
      %y = MatMul(%m, %w_o)
    }}"""
    g = ir.parse(text)
    result = run_pass(PASS, g)
    assert result.changed and result.stats == {"attentions_rotated": 1, "skipped": 0}
    new_w = next(n for n in g if n.op == "MatMul" and n.outputs[0].name == "qkv").inputs[1].const
    np.testing.assert_array_equal(new_w[:, :16], w[:, :16])  # q and k columns untouched
    assert not np.allclose(new_w[:, 16:], w[:, 16:])
    assert_same_function(ir.parse(text), g, TOLERANCES, (0, 1), seeded_inputs)


def test_merged_heads_read_by_a_non_linear_op_are_left_alone():
    check_unchanged(PASS, attention(merged_reader="Relu(%m)"), stats={
        "attentions_rotated": 0, "skipped": 1,
        "skipped:the merged heads are read by something other than a linear: Relu -> %y is a Relu, not a linear": 1})


def test_values_not_made_by_a_linear_are_left_alone():
    text = attention().replace("%v: f32[1,3,8] = Add(%vm, %b_v)", "%v: f32[1,3,8] = Relu(%vm)")
    check_unchanged(PASS, text, stats={"attentions_rotated": 0, "skipped": 1,
                                       "skipped:V is not a canonical linear's output (nor a Split of one)": 1})
