"""llm_fp4 and its search (passes/llm_fp4_search.py): LLM-FP4's searched FP quantizers with
per-channel exponent biases folded into the next weight as powers of two.

- the quantizer: `fp_round` is `round_to_float_format` (the FakeQuantize kernel's
  rounding) with a per-column bias; the identity the fold rests on,
  Q_{rho+d}(x) = 2^-d Q_rho(2^d x) for integer d, holds bit for bit;
- the fold alone (`insert_quantizers=False`) is exact: powers of two, so the outputs
  before and after agree bit for bit, with the shift absorbed by a LayerNorm or an
  explicit Mul (post-LN: the residual still reads the norm);
- with quantizers: structure (one FakeQuantize per activation shared by its linears,
  one per weight, dtype ff_e{E}m{M}_b{bias}, `meta["quant"]`), stats;
- the point of it: on a toy linear layer with outlier channels, held-out output MSE of
  the searched format + folded biases < INT4 minmax and < FP4 E2M1 minmax (the numbers
  are in the assertion message; `pytest -s` prints them).
"""

from __future__ import annotations

import numpy as np
import pytest

from canonical_testing import assert_same_outputs, build_graph, only_node, outputs_before_after, run_pass
from requant.errors import PassError
from requant.ir import dtypes, run
from requant.ir.dtypes import FloatFormat
from requant.ir.ops.cast import round_to_float_format
from requant.ir.quant_formats import QuantScheme, choose_qparams, fake_quantize, tensor_ranges
from requant.passes.llm_fp4_search import fp_round, fp_splits, maxfit_bias

PASS = "llm_fp4"
F32 = "float32"
C, O, ROWS = 32, 16, 64
OUTLIERS = [3, 17, 21]


def outlier_rows(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, C)).astype(np.float32)
    x[:, OUTLIERS] *= np.float32(40.0)
    x[:, 24:28] *= np.float32(0.05)
    return x


def calibration(n_batches: int = 4) -> list[dict[str, np.ndarray]]:
    return [{"x": outlier_rows(ROWS, seed)} for seed in range(n_batches)]


RNG = np.random.default_rng(2)
W = (RNG.standard_normal((C, O)) * 0.2).astype(np.float32)
W2 = (RNG.standard_normal((C, 8)) * 0.2).astype(np.float32)
B = (RNG.standard_normal(O) * 0.1).astype(np.float32)
GAMMA = RNG.uniform(0.5, 1.5, C).astype(np.float32)
BETA = RNG.uniform(-0.5, 0.5, C).astype(np.float32)


def toy_linear():
    return build_graph({"x": (F32, [ROWS, C])}, lambda b, x: b.Add(b.MatMul(x, b.const(W)), b.const(B)))


# -- the quantizer ---------------------------------------------------------------------------


@pytest.mark.parametrize("e,m", [(1, 2), (2, 1), (3, 0), (4, 3), (5, 2)])
@pytest.mark.parametrize("bias", [-3.0625, 0.0, 1.0, 2.5, 7.0])
def test_fp_round_is_the_float_format_rounding(e: int, m: int, bias: float) -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(4096) * np.exp2(rng.uniform(-12, 12, 4096))).astype(np.float32)
    x[:4] = [0.0, -0.0, 1e30, -1e30]
    expected = round_to_float_format(x, FloatFormat(e, m, bias))
    assert np.array_equal(fp_round(x, e, m, bias), expected)
    # a per-column bias rounds each column with its own format
    cols = x.reshape(-1, 4)
    biases = np.array([bias, bias + 1.25, bias - 2, bias + 0.5])
    got = fp_round(cols, e, m, biases[None, :])
    for j in range(4):
        assert np.array_equal(got[:, j], round_to_float_format(cols[:, j], FloatFormat(e, m, biases[j])))


@pytest.mark.parametrize("e,m", fp_splits(4))
def test_integer_bias_shift_is_a_power_of_two_scale(e: int, m: int) -> None:
    x = outlier_rows(128, 1)
    rho = 1.3125
    for d in range(0, 4):
        lhs = fp_round(x, e, m, rho + d)
        rhs = (fp_round(x * np.float32(2.0 ** d), e, m, rho) * np.float32(2.0 ** -d)).astype(np.float32)
        assert np.array_equal(lhs, rhs)


def test_maxfit_bias_puts_the_maximum_on_the_format_maximum() -> None:
    for e, m in fp_splits(4) + [(4, 3)]:
        for amax in (0.01, 1.0, 37.5, 6.0):
            assert np.isclose(FloatFormat(e, m, float(maxfit_bias(e, m, amax))).max_value, amax, rtol=1e-12)
    assert fp_splits(4) == [(1, 2), (2, 1), (3, 0)]


# -- the fold alone is exact ---------------------------------------------------------------------


def _is_power_of_two(a: np.ndarray) -> bool:
    e = np.log2(np.asarray(a, np.float64))
    return bool(np.all(e == np.round(e)))


def test_shift_fold_as_explicit_mul_is_bit_exact() -> None:
    # the activation comes from a Mul (not a norm or linear): the shifts need a Mul
    def body(b, x):
        h = b.Mul(x, b.const(np.float32(0.5)))
        return b.MatMul(h, b.const(W)), b.MatMul(h, b.const(W2))

    g = build_graph({"x": (F32, [ROWS, C])}, body)
    result, pairs = outputs_before_after(PASS, g, calibration=calibration(), insert_quantizers=False,
                                         runner="interpreter")
    assert result.changed and result.stats["shift_folds"] == 1 and result.stats["explicit_mul"] == 1
    assert result.stats["channels_shifted"] > 0 and result.stats["activations_quantized"] == 0
    shift = [n for n in g if n.op == "Mul" and n.meta.get("created_by") == PASS]
    assert len(shift) == 1 and _is_power_of_two(shift[0].inputs[1].const)
    for mm in (n for n in g if n.op == "MatMul"):
        assert mm.inputs[0] is shift[0].outputs[0]
    assert_same_outputs(pairs)


def test_shift_fold_absorbed_by_pre_ln_norm_is_bit_exact() -> None:
    def body(b, x):
        n = b.LayerNormalization(x, b.const(GAMMA), b.const(BETA))
        return b.MatMul(n, b.const(W))

    g = build_graph({"x": (F32, [ROWS, C])}, body)
    result, pairs = outputs_before_after(PASS, g, calibration=calibration(), insert_quantizers=False,
                                         runner="interpreter")
    assert result.stats["shift_folds"] == 1 and result.stats["absorbed:norm"] == 1
    ln = only_node(g, "LayerNormalization")
    assert _is_power_of_two(ln.inputs[1].const.astype(np.float64) / GAMMA)
    assert_same_outputs(pairs)


def test_shift_fold_on_post_ln_keeps_the_residual_on_the_norm() -> None:
    w_sq = (RNG.standard_normal((C, C)) * 0.2).astype(np.float32)

    def body(b, x):
        n = b.LayerNormalization(x, b.const(GAMMA), b.const(BETA))
        return b.Add(b.MatMul(n, b.const(w_sq)), n)

    g = build_graph({"x": (F32, [ROWS, C])}, body)
    result, pairs = outputs_before_after(PASS, g, calibration=calibration(), insert_quantizers=False,
                                         runner="interpreter")
    assert result.stats["shift_folds"] == 1 and result.stats["explicit_mul"] == 1
    ln = only_node(g, "LayerNormalization")
    assert np.array_equal(ln.inputs[1].const, GAMMA)
    assert only_node(g, "Add").inputs[1] is ln.outputs[0]
    assert only_node(g, "MatMul").inputs[0] is only_node(g, "Mul").outputs[0]
    assert_same_outputs(pairs)


# -- with quantizers -----------------------------------------------------------------------------


def test_quantizers_structure_and_stats() -> None:
    def body(b, x):
        return b.MatMul(x, b.const(W)), b.MatMul(x, b.const(W2))

    g = build_graph({"x": (F32, [ROWS, C])}, body)
    result = run_pass(PASS, g, calibration=calibration(), runner="interpreter")
    assert result.changed
    assert result.stats["activations_quantized"] == 1 and result.stats["weights_quantized"] == 2
    fqs = [n for n in g if n.op == "FakeQuantize"]
    act = [n for n in fqs if n.inputs[0].const is None]
    assert len(act) == 1 and len(fqs) == 3
    a = act[0]
    fmt = dtypes.dtype(a.attrs["dtype"])
    assert isinstance(fmt, FloatFormat) and fmt.bits == 4 and a.attrs["granularity"] == "tensor"
    assert float(a.inputs[1].const) == 1.0 and a.outputs[0].meta["quant"]["dtype"] == fmt.short
    assert all(mm.inputs[0] is a.outputs[0] for mm in g if mm.op == "MatMul")
    for wq in (n for n in fqs if n.inputs[0].const is not None):
        assert wq.attrs["granularity"] == "channel" and wq.attrs["axis"] == 1
        assert isinstance(dtypes.dtype(wq.attrs["dtype"]), FloatFormat)
    (entry,) = g.meta["llm_fp4"]
    assert entry["value"] == "x" and entry["format"] == fmt.short


def test_per_tensor_weights_and_no_shifts() -> None:
    g = toy_linear()
    result = run_pass(PASS, g, calibration=calibration(), runner="interpreter", weight_granularity="tensor",
                      per_channel_shifts=False)
    assert result.stats["shift_folds"] == 0 and result.stats["weights_quantized"] == 1
    wq = [n for n in g if n.op == "FakeQuantize" and n.inputs[0].const is not None][0]
    assert wq.attrs["granularity"] == "tensor" and float(wq.inputs[1].const) == 1.0


def test_missing_calibration_and_bad_options_are_errors() -> None:
    with pytest.raises(PassError, match="calibration"):
        run_pass(PASS, toy_linear())
    with pytest.raises(PassError, match="weight_granularity"):
        run_pass(PASS, toy_linear(), calibration=calibration(), weight_granularity="group")


def _minmax(a: np.ndarray, scheme: QuantScheme) -> np.ndarray:
    lo, hi = tensor_ranges(a, scheme)
    scale, _ = choose_qparams(scheme, lo, hi)
    return fake_quantize(a, scheme, scale)


def test_searched_fp4_with_folded_biases_beats_int4_and_e2m1_minmax() -> None:
    """W4A4 on a toy linear layer with outlier channels: weights per output channel,
    activations per tensor (+ the folded per-channel shifts for LLM-FP4); activation
    ranges of the minmax baselines from the same calibration rows."""
    cal = calibration(8)
    cal_x = np.concatenate([c["x"] for c in cal])
    test_x = outlier_rows(4 * ROWS, 1234)
    ref = test_x @ W + B

    def mse(y: np.ndarray) -> float:
        return float(np.mean((y.astype(np.float64) - ref) ** 2))

    def baseline(dt) -> float:
        act = QuantScheme(dt, "tensor")
        amax = np.float32(np.abs(cal_x).max())
        scale, _ = choose_qparams(act, -amax, amax)
        xq = fake_quantize(test_x, act, scale)
        return mse(xq @ _minmax(W, QuantScheme(dt, "channel", axis=1)) + B)

    int4, e2m1 = baseline(dtypes.int4), baseline(dtypes.fp4_e2m1)
    g = toy_linear()
    run_pass(PASS, g, calibration=cal, runner="interpreter")
    # the graph's batch dim is static: run the held-out rows in ROWS-sized chunks
    ys = [run(g, {"x": test_x[i:i + ROWS]})[0] for i in range(0, len(test_x), ROWS)]
    searched = mse(np.concatenate(ys))
    g_noshift = toy_linear()
    run_pass(PASS, g_noshift, calibration=cal, runner="interpreter", per_channel_shifts=False)
    noshift = mse(np.concatenate([run(g_noshift, {"x": test_x[i:i + ROWS]})[0] for i in range(0, len(test_x), ROWS)]))
    report = (f"output MSE: INT4 minmax {int4:.4g}, FP4 E2M1 minmax {e2m1:.4g}, LLM-FP4 searched, one bias per "
              f"tensor {noshift:.4g}, LLM-FP4 searched + folded per-channel biases {searched:.4g} "
              f"({g.meta['llm_fp4'][0]['format']})")
    print(report)
    assert searched < int4 and searched < e2m1, report
    assert searched < noshift, report
