"""smoothquant: per-channel activation scales migrated into the linears' weights. Each
case checks (a) the changed flag and stats, (b) the structure (where X / s went: the
norm's gamma/beta, the producing linear, or an explicit Mul on the branch to the
linears; the weights' rows scaled by s, with s = SmoothQuant's formula), (c) the
interpreter's outputs before vs after on seeded inputs, (d) the cases it must treat
differently or skip: a LayerNorm also feeding a residual Add (explicit Mul, the Add
still reads the norm), missing statistics, activations with even channels. The last
tests run "quantize" after it: what smoothing buys a W8A8 layer.

Tolerance: REL = 1e-5 of the largest |output| (float32): the scales are rounded into
gamma and the weights once each.
"""

from __future__ import annotations

import numpy as np
import pytest

from canonical_testing import build_graph, only_node, outputs_before_after, run_pass
from quant_testing import assert_rel_close
from requant.errors import PassError, RequantError
from requant.ir import Builder, Graph, dtypes, run, tensor_type
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


def stats_for(g, scope: str = "norm", cal=None):
    return collect_stats(g, cal if cal is not None else batches(), values=[], runner="interpreter",
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
    result, pairs = outputs_before_after(PASS, g, stats=stats, alpha=0.5)
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
    result, pairs = outputs_before_after(PASS, g, stats=stats, scope="all", min_ratio=0.0)
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
    result, pairs = outputs_before_after(PASS, g_all, stats=stats_for(g_all, "all"), scope="all", min_ratio=0.0)
    # the LayerNorm output is absorbed as before; GELU's output needs a Mul
    assert result.stats["activations_smoothed"] == 2 and result.stats["explicit_mul"] == 1
    assert_rel_close(pairs, REL)


def test_precomputed_maxima_and_missing_statistics() -> None:
    w = weight(H, 4)
    g = build_graph({"x": (F32, [2, H])},
                    lambda b, x: linear(b, b.RMSNormalization(x, b.const(GAMMA)), w))
    (name,) = smoothing_channel_axes(g)
    result, pairs = outputs_before_after(PASS, g, stats={name: np.linspace(1, 40, H)}, min_ratio=0.0)
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


def test_even_channels_are_not_smoothed() -> None:
    rng = np.random.default_rng(5)
    g = build_graph({"x": (F32, [4, H])}, lambda b, x: linear(b, b.RMSNormalization(x, b.const(GAMMA * 0 + 1)),
                                                                weight(H, 4)))
    flat = [{"x": rng.standard_normal((4, H)).astype(np.float32)} for _ in range(3)]  # max / median amax < 4
    result = run_pass(PASS, g, stats=stats_for(g, cal=flat))
    assert not result.changed and result.stats["skipped:even"] == 1
    result = run_pass(PASS, g, stats=stats_for(g, cal=flat), min_ratio=0.0)  # the ratio is the only reason
    assert result.changed and result.stats["activations_smoothed"] == 1


def test_calibration_batches_give_the_same_scales_as_statistics() -> None:
    w = weight(H, 6)

    def body(b, x):
        return linear(b, b.LayerNormalization(x, b.const(GAMMA), b.const(BETA)), w)

    g1 = build_graph({"x": (F32, [2, 5, H])}, body)
    g2 = g1.clone()
    run_pass(PASS, g1, stats=stats_for(g1))
    run_pass(PASS, g2, calibration=batches(), runner="interpreter")
    np.testing.assert_array_equal(only_node(g1, "MatMul").inputs[1].const, only_node(g2, "MatMul").inputs[1].const)


# -- smoothing, then quantize: what it buys a W8A8 layer -------------------------------------------

U = 2.0**-24  # float32 unit roundoff


def _quantized(g, xs: np.ndarray, smooth: bool, **options):
    """smoothquant (when `smooth`) on per-channel statistics, then calibrate and quantize
    to W8A8 as the cpu-int8 pipeline does."""
    cal = [{"x": xs}]
    if smooth:
        scope = options.pop("scope", "all")
        run_pass(PASS, g, stats=stats_for(g, scope, cal=cal), scope=scope, **options)
    run_pass("quantize", g, stats=collect_stats(g, cal, runner="interpreter"))
    return g


def _w8a8_bound(xs: np.ndarray, w: np.ndarray, s_a: float, s_w: np.ndarray) -> np.ndarray:
    """|x_q @ W_q - x @ W| <= s_a/2 sum_k |W_kn| + s_w[n]/2 sum_k |x_mk| + K s_a s_w[n] / 4,
    plus float32 rounding."""
    k = w.shape[0]
    ax, aw = np.abs(xs.astype(np.float64)), np.abs(w.astype(np.float64))
    bound = s_a / 2 * aw.sum(axis=0) + (s_w / 2) * ax.sum(axis=-1, keepdims=True) + k * s_a * s_w / 4
    return bound + 4 * k * U * (ax @ aw) + 1e-6


def _const(graph, name: str) -> np.ndarray:
    return np.asarray(next(v.const for v in graph.constants if v.name == name))


def test_smoothing_an_outlier_channel_shrinks_the_w8a8_error() -> None:
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((64, 16)) / 8).astype(np.float32)
    xs = rng.standard_normal((3, 5, 64)).astype(np.float32)
    xs[..., 3] *= 40.0

    def make():
        g = Graph("linear")
        b = Builder(g)
        x = b.input("x", tensor_type(F32, [3, 5, 64]))
        g.outputs = [b.MatMul(x, b.const(w, name="w"), _name="fc")]
        return g

    ref = run(make(), [xs])[0]
    g = _quantized(make(), xs, smooth=True)
    assert g.op_histogram()["Mul"] == 1  # x is a graph input: an explicit Mul(x, 1/s)
    d = _const(g, "x_channel_scale").astype(np.float64)  # 1 / s
    err = np.abs(run(g, [xs])[0].astype(np.float64) - ref)
    # within the W8A8 bound of the smoothed operands x / s and s W
    assert np.all(err <= _w8a8_bound(xs * d, w / d[:, None], float(_const(g, "x_scaled_scale")),
                                     _const(g, "w_smoothquant_scale")) * (1 + 1e-4))
    plain = _quantized(make(), xs, smooth=False)
    err_plain = np.abs(run(plain, [xs])[0].astype(np.float64) - ref)
    assert np.sqrt(np.mean(err**2)) < 0.5 * np.sqrt(np.mean(err_plain**2))


def _post_ln_block(seed: int = 11) -> tuple[Graph, np.ndarray]:
    """Post-LN: LayerNorm (outlier gamma) -> linear + residual Add; GELU (outlier input
    column) -> linear. Both smoothings need a Mul (each activation has a float reader or
    a non-linear producer)."""
    rng = np.random.default_rng(seed)
    g = Graph("postln")
    b = Builder(g)
    x = b.input("x", tensor_type(F32, [4, 6, 16]))
    gamma = np.ones(16, np.float32)
    gamma[3] = 25.0
    h = b.LayerNormalization(x, b.const(gamma, name="gamma"), b.const(np.zeros(16, np.float32), name="beta"), axis=-1)
    w_up = rng.standard_normal((16, 32)).astype(np.float32)
    w_up[:, 5] *= 30.0  # one GELU channel 30x the others
    up = b.Gelu(b.MatMul(h, b.const(w_up, name="w_up")))
    down = b.MatMul(up, b.const(rng.standard_normal((32, 16)).astype(np.float32), name="w_down"))
    g.outputs = [b.Add(h, down)]
    return g, rng.standard_normal((4, 6, 16)).astype(np.float32)


def test_scope_norm_smooths_only_the_norm_output_of_a_post_ln_block() -> None:
    g_all, xs = _post_ln_block()
    g_norm = g_all.clone()
    ref = run(g_all, [xs])[0]
    _quantized(g_all, xs, smooth=True, scope="all")
    _quantized(g_norm, xs, smooth=True, scope="norm")
    # the case that must not match: with scope "norm" the GELU output is quantized as it is
    (smoothing_mul,) = [n for n in g_norm if n.op == "Mul"]
    assert smoothing_mul.inputs[0].producer.op == "LayerNormalization"
    assert {n.inputs[0].producer.op for n in g_all if n.op == "Mul"} == {"LayerNormalization", "Gelu"}
    for g in (g_all, g_norm):  # W8A8 on a 3-layer block: within 5% of the output's scale
        out = run(g, [xs])[0]
        assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max()
