"""ScaledDotProductAttention (ir/ops/attention.py): the reference kernel against torch's
F.scaled_dot_product_attention (bool and additive masks, is_causal, explicit scale,
grouped-query attention, fully masked rows, float16), and the type rule (symbolic dims,
broadcast masks, the errors it raises).

Tolerance: ATTN_RTOL/ATTN_ATOL for float32 (both compute in float32 and sum in their own
order: a few ulps); float16 to about one float16 ulp, since both round a float32 result
once (torch's CPU kernel computes float16 attention in float32 as well).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from requant.errors import ShapeInferenceError
from requant.ir import Builder, Graph, run, tensor_type
from requant.ir.ops.attention import sdpa_reference

torch = pytest.importorskip("torch")
F = torch.nn.functional

ATTN_RTOL, ATTN_ATOL = 1e-5, 1e-6
F16_RTOL, F16_ATOL = 2e-3, 2e-3
RNG = np.random.default_rng(5)


def randn(*shape: int, dtype=np.float32) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32).astype(dtype)


def run_op(q, k, v, mask=None, **attrs) -> np.ndarray:
    """The op through a one-node graph and the interpreter (type rule + kernel)."""
    g = Graph()
    b = Builder(g)
    ins = [b.input(n, tensor_type(a.dtype.name if a.dtype != np.bool_ else "bool", a.shape))
           for n, a in zip("qkvm", [q, k, v] + ([mask] if mask is not None else []))]
    y = b.ScaledDotProductAttention(*ins, **attrs)
    g.outputs.append(y)
    g.verify()
    (out,) = run(g, [q, k, v] + ([mask] if mask is not None else []))
    assert out.dtype == q.dtype and tuple(y.type.shape) == out.shape
    return out


def torch_sdpa(q, k, v, mask=None, **kw) -> np.ndarray:
    t = torch.from_numpy
    gqa = q.shape[1] != k.shape[1]
    return F.scaled_dot_product_attention(t(q), t(k), t(v), attn_mask=None if mask is None else t(mask),
                                          enable_gqa=gqa, **kw).numpy()


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (4, 1)])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
def test_matches_torch(heads: int, kv_heads: int, mask_kind: str) -> None:
    q, k, v = randn(2, heads, 5, 8), randn(2, kv_heads, 7, 8), randn(2, kv_heads, 7, 3)
    mask = None
    if mask_kind == "bool":
        mask = RNG.random((2, 1, 5, 7)) < 0.7
        mask[..., 0] = True  # no fully masked row here (see the dedicated test)
    elif mask_kind == "float":
        mask = randn(1, heads, 5, 7)
    np.testing.assert_allclose(run_op(q, k, v, mask), torch_sdpa(q, k, v, mask), rtol=ATTN_RTOL, atol=ATTN_ATOL)


def test_causal_and_explicit_scale_match_torch() -> None:
    q, k, v = randn(1, 2, 6, 4), randn(1, 2, 6, 4), randn(1, 2, 6, 4)
    got = run_op(q, k, v, is_causal=1, scale=0.3)
    np.testing.assert_allclose(got, torch_sdpa(q, k, v, is_causal=True, scale=0.3), rtol=ATTN_RTOL, atol=ATTN_ATOL)


def test_causal_combines_with_a_mask() -> None:
    q, k, v = randn(1, 2, 4, 4), randn(1, 2, 4, 4), randn(1, 2, 4, 4)
    mask = RNG.random((1, 1, 4, 4)) < 0.8
    mask[..., 0] = True
    combined = mask & np.tril(np.ones((4, 4), dtype=bool))
    np.testing.assert_allclose(run_op(q, k, v, mask, is_causal=1), torch_sdpa(q, k, v, combined),
                               rtol=ATTN_RTOL, atol=ATTN_ATOL)


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_fully_masked_rows_give_zeros_like_torch(kind: str) -> None:
    q, k, v = randn(1, 2, 3, 4), randn(1, 2, 5, 4), randn(1, 2, 5, 4)
    keep = np.ones((1, 1, 3, 5), dtype=bool)
    keep[0, 0, 1] = False
    mask = keep if kind == "bool" else np.where(keep, 0, -np.inf).astype(np.float32)
    got = run_op(q, k, v, mask)
    assert np.all(got[0, :, 1] == 0) and np.all(np.isfinite(got))
    np.testing.assert_allclose(got, torch_sdpa(q, k, v, mask), rtol=ATTN_RTOL, atol=ATTN_ATOL)


def test_default_scale_is_one_over_sqrt_head_dim() -> None:
    q, k, v = randn(1, 1, 3, 16), randn(1, 1, 3, 16), randn(1, 1, 3, 16)
    np.testing.assert_array_equal(sdpa_reference(q, k, v), sdpa_reference(q, k, v, scale=1 / math.sqrt(16)))


def test_float16_computes_in_float32_and_rounds_once() -> None:
    q, k, v = (randn(1, 2, 4, 8, dtype=np.float16) for _ in range(3))
    got = run_op(q, k, v)
    want = torch_sdpa(q.astype(np.float32), k.astype(np.float32), v.astype(np.float32)).astype(np.float16)
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=F16_RTOL, atol=F16_ATOL)


def infer(q, k, v, mask=None, **attrs):
    g = Graph()
    b = Builder(g)
    ins = [b.input(n, t) for n, t in zip("qkvm", [q, k, v] + ([mask] if mask is not None else []))]
    return b.ScaledDotProductAttention(*ins, **attrs).type


def test_type_rule_with_symbolic_dims() -> None:
    t = tensor_type
    out = infer(t("f32", ["batch", 8, "seq", 64]), t("f32", ["batch", 2, "ctx", 64]), t("f32", ["batch", 2, "ctx", 32]),
                t("bool", ["batch", 1, "seq", "ctx"]))
    assert out == t("f32", ["batch", 8, "seq", 32])
    assert infer(t("f32", [None, 8, None, 64]), t("f32", [2, None, 5, 64]), t("f32", [2, 2, 5, 16])) == \
        t("f32", [2, 8, None, 16])


@pytest.mark.parametrize("q,k,v,mask,match", [
    ([1, 3, 4, 8], [1, 2, 4, 8], [1, 2, 4, 8], None, "not a multiple"),
    ([1, 4, 4, 8], [1, 2, 4, 6], [1, 2, 4, 8], None, "head sizes"),
    ([1, 4, 4, 8], [1, 2, 4, 8], [1, 2, 5, 8], None, "sequence lengths"),
    ([4, 4, 8], [1, 4, 4, 8], [1, 4, 4, 8], None, "4-D"),
    ([1, 4, 4, 8], [1, 4, 4, 8], [1, 4, 4, 8], [1, 1, 3, 4], "does not broadcast"),
])
def test_type_rule_refuses_inputs_that_do_not_fit(q, k, v, mask, match) -> None:
    t = tensor_type
    with pytest.raises(ShapeInferenceError, match=match):
        infer(t("f32", q), t("f32", k), t("f32", v), None if mask is None else t("bool", mask))


def test_type_rule_refuses_an_integer_mask_and_mixed_dtypes() -> None:
    t = tensor_type
    with pytest.raises(ShapeInferenceError, match="mask must be bool"):
        infer(t("f32", [1, 1, 2, 4]), t("f32", [1, 1, 3, 4]), t("f32", [1, 1, 3, 4]), t("i64", [1, 1, 2, 3]))
    with pytest.raises(ShapeInferenceError, match="dtype"):
        infer(t("f32", [1, 1, 2, 4]), t("f16", [1, 1, 3, 4]), t("f32", [1, 1, 3, 4]))
