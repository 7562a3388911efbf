"""smoothquant: per-channel activation scales migrated into the linears' weights. Each
case checks (a) the changed flag and stats, (b) the structure (where X / s went: the
norm's gamma/beta, the producing linear, or an explicit Mul on the branch to the
linears; the weights' rows scaled by s, with s = SmoothQuant's formula), (c) the
interpreter's outputs before vs after on seeded inputs, (d) the cases it must treat
differently or skip: a LayerNorm also feeding a residual Add (explicit Mul, the Add
still reads the norm), missing statistics.

Tolerance: REL = 1e-5 of the largest |output| (float32): the scales are rounded into
gamma and the weights once each.
"""

from __future__ import annotations

import numpy as np
import pytest

from canonical_testing import build_graph, only_node, outputs_before_after, run_pass
from quant_testing import assert_rel_close
from requant.errors import PassError, RequantError
from requant.ir import dtypes
from requant.ir.quant_formats import QuantScheme
from requant.passes.calibration import collect_stats
from requant.passes.smoothquant import (
    quantized_output_error,
    search_alpha,
    smoothing_channel_axes,
    smoothing_scales,
)

PASS = "smoothquant"
F32 = "float32"
REL = 1e-5
H = 16
RNG = np.random.default_rng(5)
GAMMA = RNG.uniform(0.5, 1.5, H).astype(np.float32)
BETA = RNG.uniform(-0.5, 0.5, H).astype(np.float32)
OUTLIERS = [2, 9]


def batches(n: int = 4, shape=(2, 5, H), seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Inputs whose channels OUTLIERS are ~30x larger (LLM-style outlier features)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = rng.standard_normal(shape).astype(np.float32)
        x[..., OUTLIERS] *= np.float32(30.0)
        out.append({"x": x})
    return out


def weight(n_in: int, n_out: int) -> np.ndarray:
    return RNG.standard_normal((n_in, n_out)).astype(np.float32)


def linear(b, x, w: np.ndarray, bias: bool = True):
    y = b.MatMul(x, b.const(w))
    return b.Add(y, b.const(RNG.standard_normal(w.shape[1]).astype(np.float32))) if bias else y


def stats_for(g, scope: str = "norm"):
    return collect_stats(g, batches(), values=[], runner="interpreter",
                         per_channel_axis=smoothing_channel_axes(g, scope))


def test_pre_ln_scales_fold_into_layer_norm() -> None:
    ws = [weight(H, 8), weight(H, 8), weight(H, 4)]

    def body(b, x):
        # outlier channels survive a LayerNorm with a large gamma there
        n = b.LayerNormalization(b.Mul(x, b.const(np.float32(0.1))), b.const(GAMMA), b.const(BETA))
        return [linear(b, n, w, bias=i < 2) for i, w in enumerate(ws)]

    g = build_graph({"x": (F32, [2, 5, H])}, body)
    stats = stats_for(g)
    (name,) = smoothing_channel_axes(g)
    absmax = np.maximum(np.abs(stats[name].per_channel_min), np.abs(stats[name].per_channel_max)).astype(np.float64)
    result, pairs = outputs_before_after(PASS, g, stats=stats)
    assert result.changed
    assert {k: v for k, v in result.stats.items() if v} == {"activations_smoothed": 1, "linears_scaled": 3,
                                                           "absorbed:norm": 1, "mean_alpha": 0.5}
    # s_j = max|X_j|^0.5 / max_k max_i |W_k[j, i]|^0.5, as smooth_ln_fcs
    w_max = np.max(np.stack([np.abs(w).max(axis=1) for w in ws]), axis=0).astype(np.float64)
    s = np.maximum(np.sqrt(absmax) / np.sqrt(np.maximum(w_max, 1e-5)), 1e-5)
    np.testing.assert_allclose(smoothing_scales(absmax, ws, 0.5), s, rtol=1e-12)
    ln = only_node(g, "LayerNormalization")
    np.testing.assert_allclose(ln.inputs[1].const, GAMMA / s, rtol=1e-6)
    np.testing.assert_allclose(ln.inputs[2].const, BETA / s, rtol=1e-6)
    mms = [n for n in g if n.op == "MatMul"]
    for mm, w in zip(mms, ws):
        np.testing.assert_allclose(mm.inputs[1].const, w * s[:, None], rtol=1e-6)
    assert g.meta["smoothquant"] == [{"value": name, "alpha": 0.5, "how": "norm", "linears": 3, "error_ratio": None}]
    assert_rel_close(pairs, REL)


def test_post_ln_residual_gets_an_explicit_mul_on_the_linear_branch() -> None:
    w = weight(H, H)

    def body(b, x):
        n = b.LayerNormalization(x, b.const(GAMMA), b.const(BETA))
        return b.Add(linear(b, n, w), n)

    g = build_graph({"x": (F32, [2, 5, H])}, body)
    stats = stats_for(g)
    result, pairs = outputs_before_after(PASS, g, stats=stats)
    assert result.changed and result.stats["explicit_mul"] == 1 and result.stats["absorbed:norm"] == 0
    ln = only_node(g, "LayerNormalization")
    mul = only_node(g, "Mul")
    assert np.array_equal(ln.inputs[1].const, GAMMA)  # the residual still sees the same LayerNorm
    assert mul.inputs[0] is ln.outputs[0] and mul.meta["created_by"] == PASS
    residual = [n for n in g if n.op == "Add" and any(v is ln.outputs[0] for v in n.inputs)]
    assert len(residual) == 1
    assert only_node(g, "MatMul").inputs[0] is mul.outputs[0]
    assert_rel_close(pairs, REL)


def test_linear_producer_absorbs_the_scale_with_scope_all() -> None:
    w0, w1, w2 = weight(H, H), weight(H, 6), weight(H, 3)

    def body(b, x):
        h = linear(b, x, w0)
        return linear(b, h, w1), linear(b, h, w2, bias=False)

    g = build_graph({"x": (F32, [2, 5, H])}, body)
    stats = stats_for(g, "all")
    result, pairs = outputs_before_after(PASS, g, stats=stats, scope="all")
    # x (a graph input) gets a Mul; h, the first linear's output, is absorbed by it
    assert result.stats["activations_smoothed"] == 2
    assert result.stats["absorbed:linear"] == 1 and result.stats["explicit_mul"] == 1
    assert_rel_close(pairs, REL)


def test_scope_norm_leaves_other_activations_and_all_smooths_them() -> None:
    w1, w2 = weight(H, 32), weight(32, H)

    def body(b, x):
        n = b.LayerNormalization(x, b.const(GAMMA), b.const(BETA))
        return linear(b, b.Gelu(linear(b, n, w1)), w2)

    g = build_graph({"x": (F32, [2, 5, H])}, body)
    assert len(smoothing_channel_axes(g, "norm")) == 1 and len(smoothing_channel_axes(g, "all")) == 2
    g_all = g.clone()
    result, pairs = outputs_before_after(PASS, g, stats=stats_for(g))
    assert result.stats["activations_smoothed"] == 1 and result.stats["absorbed:norm"] == 1
    assert_rel_close(pairs, REL)
    result, pairs = outputs_before_after(PASS, g_all, stats=stats_for(g_all, "all"), scope="all")
    # the LayerNorm output is absorbed as before; GELU's output needs a Mul
    assert result.stats["activations_smoothed"] == 2 and result.stats["explicit_mul"] == 1
    assert_rel_close(pairs, REL)


def test_precomputed_maxima_and_missing_statistics() -> None:
    w = weight(H, 4)
    g = build_graph({"x": (F32, [2, H])},
                    lambda b, x: linear(b, b.RMSNormalization(x, b.const(GAMMA)), w))
    (name,) = smoothing_channel_axes(g)
    result, pairs = outputs_before_after(PASS, g, stats={name: np.linspace(1, 40, H)})
    assert result.stats["absorbed:norm"] == 1
    assert_rel_close(pairs, REL)
    g = build_graph({"x": (F32, [2, H])},
                    lambda b, x: linear(b, b.RMSNormalization(x, b.const(GAMMA)), w))
    result = run_pass(PASS, g, stats={"something_else": np.ones(H)})
    assert not result.changed and result.stats["skipped:no_stats"] == 1
    with pytest.raises(PassError, match="per-channel activation statistics"):
        run_pass(PASS, g)
    with pytest.raises(PassError, match="alpha must be in"):
        run_pass(PASS, g, stats={}, alpha=1.5)


def test_alpha_search_minimises_the_w8a8_output_error() -> None:
    ws = [weight(H, 12), weight(H, 12)]

    def body(b, x):
        n = b.LayerNormalization(x, b.const(GAMMA * 0 + 1), b.const(BETA))
        return [linear(b, n, w) for w in ws]

    g = build_graph({"x": (F32, [2, 5, H])}, body)
    cal = batches(6)
    result, pairs = outputs_before_after(PASS, g, calibration=cal, alpha_search=True, runner="interpreter")
    (entry,) = g.meta["smoothquant"]
    assert result.changed and entry["how"] == "norm" and entry["error_ratio"] < 1.0
    assert_rel_close(pairs, REL)


def test_search_alpha_on_outlier_rows() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((256, H)).astype(np.float32)
    x[:, OUTLIERS] *= 50.0
    ws = [rng.standard_normal((H, 8)), rng.standard_normal((H, 8))]
    a8, w8 = QuantScheme(dtypes.int8, "tensor"), QuantScheme(dtypes.int8, "channel", axis=1)
    absmax = np.abs(x).max(axis=0)
    alpha, best, base = search_alpha(x, absmax, ws, [0.0, 0.25, 0.5, 0.75, 1.0], a8, w8)
    at_half = quantized_output_error(x, ws, smoothing_scales(absmax, ws, 0.5), a8, w8)
    assert alpha is not None and best <= at_half < base
    # without outliers and with alpha 0 only, smoothing may not pay: the search says so
    flat = rng.uniform(-1, 1, (256, H)).astype(np.float32)
    alpha, best, base = search_alpha(flat, np.abs(flat).max(axis=0), ws, [0.0], a8, w8)
    assert (alpha is None) == (best == base)


def test_bad_scope_is_an_error() -> None:
    g = build_graph({"x": (F32, [2, H])}, lambda b, x: linear(b, x, weight(H, 4)))
    with pytest.raises(RequantError, match="scope"):
        smoothing_channel_axes(g, "everything")
