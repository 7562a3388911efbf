"""GPTQ (passes/gptq.py) and quantize's `weight_method="gptq"`.

- The algorithm against a plain transcription of the paper's update (no blocks, no lazy
  batch updates; written here): the same codes bit for bit, blocked or not (blocks of
  whole groups when group scales follow the updated rows), with and without activation
  order, per channel and per group, on min/max scales (`clip="minmax"`).
- The scale search (`clip="mse"`, the default): each scale is the shrink of its rows'
  range with the least input-energy-weighted rounding error, found by brute force here;
  never wider than min/max; lower Hessian-weighted error than min/max scales on a
  heavy-tailed weight; an unknown clip is refused.
- What it is for: on correlated inputs with outlier channels, the Hessian-weighted error
  of the quantized layer and its output error on the calibration rows are below
  round-to-nearest's with the same scales; codes stay in the format's range.
- NVFP4 / MXFP4 weights: the block scales are round to nearest's, every value is an E2M1
  code times its block's scale, and the weighted and output errors are below RTN's; blocks
  across the outputs are refused.
- quantize(weight_method="gptq") on a small graph (also with NVFP4 weights, which become
  constants holding GPTQ's grid values): stats, the codes in the graph are
  GPTQ's, the quantized graph's outputs on the calibration batches are closer to float
  than RTN's; the cases that must not run: no batches, an unknown method, a float format.
"""

from __future__ import annotations

import numpy as np
import pytest

from canonical_testing import build_graph, run_pass
from requant import ir
from requant.errors import RequantError
from requant.ir.quant_formats import (
    BlockQuantized,
    QuantScheme,
    choose_qparams,
    dequantize_blocks,
    dequantize_linear,
    quantize_blocks,
    quantize_linear,
    tensor_ranges,
)
from requant.ir.quant_formats import parse_scheme
from requant.passes.gptq import collect_hessians, gptq_quantize

RNG = np.random.default_rng(21)
K, N, ROWS = 64, 24, 512
MIX = RNG.standard_normal((K, K)) / np.sqrt(K) + np.eye(K)
X = RNG.standard_normal((ROWS, K)) @ MIX
X[:, :3] *= 8.0  # outlier input channels
W = RNG.standard_normal((K, N)) * 0.1
H = 2.0 * X.T @ X / ROWS
CHANNEL = QuantScheme("int4", "channel", axis=1)
GROUP = QuantScheme("int4", "group", axis=0, group_size=16)
ASYM_GROUP = QuantScheme("uint4", "group", axis=0, group_size=16, symmetric=False)


def paper_gptq(w, h, scheme, act_order, damp=0.01):
    """Algorithm 1 of the paper, one row at a time, scales as passes/gptq.py states them."""
    w = np.array(w, np.float64)
    h = np.array(h, np.float64)
    k, n = w.shape
    h += damp * np.mean(np.diag(h)) * np.eye(k)
    perm = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(k)
    g = scheme.group_size if scheme.granularity == "group" else k
    static = scheme.granularity != "group" or act_order
    params = {}
    if static:
        for start in range(0, k, g):
            params[start // g] = choose_qparams(scheme, *tensor_ranges(w[start:start + g].astype(np.float32),
                                                                      QuantScheme(scheme.dtype, "channel", axis=1,
                                                                                  symmetric=scheme.symmetric)))
    w, h = w[perm], h[np.ix_(perm, perm)]
    u = np.linalg.cholesky(np.linalg.inv(h)).T
    codes = np.zeros((k, n), np.int64)
    for i in range(k):
        row = perm[i]
        if not static and row % g == 0:
            params[row // g] = choose_qparams(scheme, *tensor_ranges(w[i:i + g].astype(np.float32), QuantScheme(
                scheme.dtype, "channel", axis=1, symmetric=scheme.symmetric)))
        s, z = params[row // g]
        z = None if scheme.symmetric and scheme.dtype.kind == "int" else z
        c = quantize_linear(w[i:i + 1], s, z, axis=1, dtype=scheme.dtype)
        q = dequantize_linear(c, s, z, axis=1).astype(np.float64)[0]
        codes[row] = c[0]
        err = (w[i] - q) / u[i, i]
        w[i + 1:] -= np.outer(u[i, i + 1:], err)
    return codes


@pytest.mark.parametrize("scheme", [CHANNEL, GROUP, ASYM_GROUP], ids=["channel", "group", "asym_group"])
@pytest.mark.parametrize("act_order", [False, True])
def test_same_codes_as_the_papers_update_blocked_or_not(scheme, act_order):
    want = paper_gptq(W, H, scheme, act_order)
    for block in (K, 16, 5):
        got = gptq_quantize(W, H, scheme, act_order=act_order, block_size=block, clip="minmax")
        np.testing.assert_array_equal(got.codes.astype(np.int64), want)


@pytest.mark.parametrize("scheme", [CHANNEL, GROUP, ASYM_GROUP], ids=["channel", "group", "asym_group"])
def test_below_round_to_nearest_on_the_calibration_rows(scheme):
    r = gptq_quantize(W, H, scheme)
    lo, hi = scheme.dtype.int_range
    assert lo <= int(r.codes.min()) and int(r.codes.max()) <= hi
    assert r.error < 0.6 * r.rtn_error
    axis, block = (1, 0) if scheme.granularity == "channel" else (0, scheme.group_size)
    wq = dequantize_linear(r.codes, r.scale, r.zero_point, axis=axis, block_size=block).astype(np.float64)
    s_rtn, z_rtn = choose_qparams(scheme, *tensor_ranges(W.astype(np.float32), scheme))
    w_rtn = dequantize_linear(quantize_linear(W, s_rtn, z_rtn, axis=axis, block_size=block, dtype=scheme.dtype),
                              s_rtn, z_rtn, axis=axis, block_size=block).astype(np.float64)
    gptq_err = np.linalg.norm(X @ (W - wq))
    rtn_err = np.linalg.norm(X @ (W - w_rtn))
    assert gptq_err < 0.8 * rtn_err, (gptq_err, rtn_err)


HEAVY = W * np.where(RNG.random(W.shape) < 0.02, 12.0, 1.0)  # a few large weights per column


@pytest.mark.parametrize("scheme", [CHANNEL, QuantScheme("uint4", "channel", axis=1, symmetric=False)],
                         ids=["sym", "asym"])
def test_mse_scales_are_the_best_shrink_of_each_columns_range(scheme):
    got = gptq_quantize(HEAVY, H, scheme)
    energy = np.diag(H)
    lo, hi = tensor_ranges(HEAVY.astype(np.float32), scheme)
    s_max, _ = choose_qparams(scheme, lo, hi)
    assert np.all(got.scale <= s_max) and np.any(got.scale < s_max)
    for col in range(N):
        errors = []
        for p in np.round(np.arange(1.0, 0.195, -0.01), 2):
            s, z = choose_qparams(scheme, lo[col] * np.float32(p), hi[col] * np.float32(p))
            q = dequantize_linear(quantize_linear(HEAVY[:, col], s, z, dtype=scheme.dtype), s, z).astype(np.float64)
            errors.append((float(np.sum(energy * (HEAVY[:, col] - q) ** 2)), s, z))
        best = min(errors, key=lambda e: e[0])
        assert got.scale[col] == best[1]
        if got.zero_point is not None:
            assert got.zero_point[col] == best[2]


def test_mse_scales_lower_the_error_on_heavy_tailed_weights():
    mse, minmax = gptq_quantize(HEAVY, H, CHANNEL), gptq_quantize(HEAVY, H, CHANNEL, clip="minmax")
    assert mse.error < 0.9 * minmax.error, (mse.error, minmax.error)
    group_mse = gptq_quantize(HEAVY, H, GROUP)
    group_minmax = gptq_quantize(HEAVY, H, GROUP, clip="minmax")
    assert group_mse.error <= group_minmax.error


FP4_BLOCKS = [QuantScheme("fp4_e2m1", "nv", axis=0), QuantScheme("fp4_e2m1", "mx", axis=0)]


@pytest.mark.parametrize("scheme", FP4_BLOCKS, ids=["nvfp4", "mxfp4"])
def test_fp4_blocks_keep_round_to_nearests_scales_and_lower_the_error(scheme):
    r = gptq_quantize(W, H, scheme)
    rtn = quantize_blocks(W.astype(np.float32), scheme)
    np.testing.assert_array_equal(r.scale, rtn.scales)  # the block scales round to nearest takes
    on_grid = dequantize_blocks(BlockQuantized(r.codes, rtn.scales, rtn.tensor_scale), scheme)
    np.testing.assert_array_equal(r.values, on_grid)  # every value is E2M1 code x its block's scale
    assert r.error < 0.8 * r.rtn_error, (r.error, r.rtn_error)
    w_rtn = dequantize_blocks(rtn, scheme).astype(np.float64)
    assert np.linalg.norm(X @ (W - r.values)) < 0.8 * np.linalg.norm(X @ (W - w_rtn))


def test_gptq_refuses_fp4_blocks_across_outputs():
    with pytest.raises(RequantError, match="blocks run along K"):
        gptq_quantize(W, H, QuantScheme("fp4_e2m1", "nv", axis=1))


def test_gptq_refuses_an_unknown_clip():
    with pytest.raises(RequantError, match="clip must be one of mse, minmax"):
        gptq_quantize(W, H, CHANNEL, clip="percentile")


def test_gptq_refuses_float_formats_and_wrong_axes():
    with pytest.raises(RequantError, match="integer per-tensor / per-channel / per-group"):
        gptq_quantize(W, H, QuantScheme("fp8_e4m3", "channel", axis=1))
    with pytest.raises(RequantError, match="needs axis 1"):
        gptq_quantize(W, H, QuantScheme("int8", "channel", axis=0))
    with pytest.raises(RequantError, match="the Hessian is"):
        gptq_quantize(W, H[:8, :8], CHANNEL)


# -- quantize(weight_method="gptq") --------------------------------------------------------------


W2 = (RNG.standard_normal((K, 8)) * 0.2).astype(np.float32)


def _graph():
    """Two linears reading one input (one Hessian for both)."""
    return build_graph({"x": ("float32", [32, K])},
                       lambda b, x: [b.MatMul(x, b.const(W.astype(np.float32))), b.MatMul(x, b.const(W2))])


BATCHES = [{"x": (RNG.standard_normal((32, K)) @ MIX * np.r_[np.full(3, 8.0), np.ones(K - 3)]).astype(np.float32)}
           for _ in range(8)]


def test_quantize_with_gptq_weights():
    g_rtn, g_gptq = _graph(), _graph()
    reference = _graph()
    options = {"weight_scheme": "int4-channel", "weight_only": True, "batches": BATCHES, "runner": "interpreter"}
    rtn = run_pass("quantize", g_rtn, **{k: v for k, v in options.items() if k not in ("batches", "runner")})
    gptq = run_pass("quantize", g_gptq, weight_method="gptq", **options)
    assert gptq.changed and gptq.stats["weights_gptq"] == 2 and gptq.stats["weights_quantized"] == 2
    assert 0.0 < gptq.stats["gptq_error_ratio"] < 1.0 and "weights_gptq" not in rtn.stats
    # the first layer's codes are GPTQ's on its input's Hessian
    h, _ = collect_hessians(reference, BATCHES, ["x"], runner="interpreter")["x"]
    want = gptq_quantize(W.astype(np.float32), h, CHANNEL).codes
    codes = next(v.const for v in g_gptq.constants if v.dtype.name == "int4" and v.type.shape == (K, N))
    np.testing.assert_array_equal(codes, want)
    for out in (0, 1):
        errors = {}
        for name, g in (("rtn", g_rtn), ("gptq", g_gptq)):
            errors[name] = sum(float(np.sum((ir.run(g, b)[out] - ir.run(reference, b)[out]) ** 2)) for b in BATCHES)
        assert errors["gptq"] < 0.8 * errors["rtn"], (out, errors)


def test_quantize_with_gptq_on_nvfp4_weights():
    g_rtn, g_gptq, reference = _graph(), _graph(), _graph()
    options = {"weight_scheme": "nvfp4-axis0", "weight_only": True}
    run_pass("quantize", g_rtn, **options)
    gptq = run_pass("quantize", g_gptq, weight_method="gptq", batches=BATCHES, runner="interpreter", **options)
    assert gptq.stats["weights_gptq"] == 2 and gptq.stats["weights_quantized"] == 2
    # the simulated weights are constants holding GPTQ's grid values, not FakeQuantize nodes
    assert g_gptq.op_histogram() == {"MatMul": 2} and g_rtn.op_histogram() == {"FakeQuantize": 2, "MatMul": 2}
    h, _ = collect_hessians(reference, BATCHES, ["x"], runner="interpreter")["x"]
    first = next(n for n in g_gptq if n.op == "MatMul" and n.inputs[1].type.shape == (K, N)).inputs[1]
    np.testing.assert_array_equal(first.const, gptq_quantize(W.astype(np.float32), h, parse_scheme("nvfp4-axis0")).values)
    assert first.meta["quant"]["granularity"] == "nv"
    for out in (0, 1):
        errors = {name: sum(float(np.sum((ir.run(g, b)[out] - ir.run(reference, b)[out]) ** 2)) for b in BATCHES)
                  for name, g in (("rtn", g_rtn), ("gptq", g_gptq))}
        assert errors["gptq"] < 0.8 * errors["rtn"], (out, errors)


def test_quantize_gptq_needs_batches_and_a_known_method():
    with pytest.raises(RequantError, match="weight_method='gptq' needs calibration batches"):
        run_pass("quantize", _graph(), weight_only=True, weight_method="gptq")
    with pytest.raises(RequantError, match="weight_method must be one of rtn, gptq"):
        run_pass("quantize", _graph(), weight_only=True, weight_method="optq")
