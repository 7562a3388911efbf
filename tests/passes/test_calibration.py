"""Calibration (requant.passes.calibration*): range methods on data with known answers,
streaming statistics in bounded memory, collect_stats with both runners (a small graph
and MiniLM), and bad calibration input.

Tolerances:
- min/max: exact (they are the min/max of float32 values; streaming does not change them);
- histogram percentiles: within one bin width of the exact inverted-CDF percentile
  (numpy's method="inverted_cdf"; the histogram's CDF is interpolated linearly inside
  the bin holding that sample. numpy's default interpolates between neighbouring
  samples, which in a sparse tail can lie further apart than a bin);
- ONNX Runtime vs the interpreter: values computed identically (inputs, Gather, Add)
  exact; values after a MatMul/Gemm within RUNNER_RTOL relative (float32 sums in a
  different order).
"""

from __future__ import annotations

import io
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from requant.errors import RequantError
from requant.ir import Builder, Graph, tensor_type
from requant.passes.calibration import (
    TensorStats,
    calibration_values,
    collect_stats,
    normalize_batch,
    validate_calibration,
)
from requant.passes.calibration_grids import ErrorIntegral, expected_mse, format_values, quant_grid
from requant.ir import dtypes

RUNNER_RTOL = 1e-5


# ----------------------------------------------------------------------------- helpers


def stats_of(*chunks: np.ndarray, **kwargs) -> TensorStats:
    s = TensorStats("x", **kwargs)
    for c in chunks:
        s.update(c)
    return s


def fake_quant_sym(x: np.ndarray, lo: float, hi: float, qmax: int = 127) -> np.ndarray:
    """int symmetric fake quantization (scale = amax / qmax, codes [-qmax-1, qmax])."""
    scale = max(abs(lo), abs(hi)) / qmax
    return np.clip(np.round(x / scale), -qmax - 1, qmax) * scale


def quant_mse(x: np.ndarray, lo: float, hi: float, qmax: int = 127) -> float:
    x64 = x.astype(np.float64)
    return float(np.mean((fake_quant_sym(x64, lo, hi, qmax) - x64) ** 2))


def round_to_grid(x: np.ndarray, grid: np.ndarray) -> np.ndarray:
    idx = np.clip(np.searchsorted(grid, x), 1, grid.size - 1)
    left, right = grid[idx - 1], grid[idx]
    return np.where(np.abs(x - left) <= np.abs(right - x), left, right)


def gaussian_with_outliers(n: int = 1_000_000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n).astype(np.float32)
    x[rng.choice(n, 4, replace=False)] = np.array([20.0, -20.0, 19.0, -18.0], np.float32)
    return x


# ----------------------------------------------------------------------------- range methods


def test_uniform_minmax_and_percentiles() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 200_000).astype(np.float32)
    s = stats_of(x)
    assert s.range("minmax") == (float(x.min()), float(x.max()))
    assert s.range("minmax", symmetric=True) == (-float(np.abs(x).max()), float(np.abs(x).max()))
    lo, hi = s.range("percentile", percentile=99.0)
    want_lo, want_hi = np.percentile(x, [1.0, 99.0], method="inverted_cdf")
    assert abs(lo - want_lo) <= s.bin_width and abs(hi - want_hi) <= s.bin_width
    lo, hi = s.range("percentile", percentile=90.0, symmetric=True)
    assert hi == -lo and abs(hi - np.percentile(np.abs(x), 90.0, method="inverted_cdf")) <= s.bin_width
    # the default 99.99th percentile of a uniform sits just inside its range
    lo, hi = s.range("percentile")
    assert x.min() <= lo < -0.999 and 0.999 < hi <= x.max()


def test_ranges_contain_zero_unless_asked_not_to() -> None:
    x = np.random.default_rng(1).uniform(2.0, 4.0, 10_000).astype(np.float32)
    s = stats_of(x)
    assert s.range("minmax") == (0.0, float(x.max()))
    assert s.range("minmax", include_zero=False) == (float(x.min()), float(x.max()))
    lo, hi = s.range("percentile", percentile=99.0, include_zero=False)
    assert x.min() <= lo < 2.05 and 3.95 < hi <= x.max()


def test_mse_and_entropy_clip_outliers_and_beat_minmax() -> None:
    x = gaussian_with_outliers()
    s = stats_of(*np.array_split(x, 10))
    mm = s.range("minmax", symmetric=True)
    mse = s.range("mse", dtype="int8")
    ent = s.range("entropy", symmetric=True)
    assert mm == (-20.0, 20.0)
    for lo, hi in (mse, ent):
        assert lo == -hi and 3.0 < hi < 0.5 * 20.0  # well below the outliers, above the Gaussian bulk
    err_mm, err_mse, err_ent = quant_mse(x, *mm), quant_mse(x, *mse), quant_mse(x, *ent)
    # minmax: step 20/127, error ~ step^2 / 12 = 2.07e-3; clipping at ~4-9 sigma halves it
    assert err_mm == pytest.approx(2.07e-3, rel=0.05)
    assert err_mse < 0.5 * err_mm and err_ent < 0.5 * err_mm
    assert err_mse <= err_ent * 1.001  # MSE search is optimal for this very error
    # the histogram's expected error is the real one
    grid = quant_grid("int8")(*mse)
    predicted = expected_mse(s.view().counts, s.view().edges, grid)
    assert predicted == pytest.approx(err_mse, rel=0.01)


def test_gaussian_entropy_threshold_is_tensorrt_like() -> None:
    x = np.random.default_rng(1).standard_normal(1_000_000).astype(np.float32)
    lo, hi = stats_of(x).range("entropy", symmetric=True)
    assert 3.5 < hi < 5.5 and lo == -hi


def test_mse_per_dtype() -> None:
    x = gaussian_with_outliers()
    s = stats_of(x)
    t8 = s.range("mse", dtype="int8")[1]
    t4 = s.range("mse", dtype="int4")[1]
    assert t4 < t8  # fewer levels: rounding costs more, so clip harder
    assert s.range("mse", bits=4) == s.range("mse", dtype="int4")
    # a custom grid callable gives the same search
    assert s.range("mse", grid=quant_grid("int8")) == s.range("mse", dtype="int8")
    # fp8 has a wide dynamic range: it clips less than fp4
    f8, f4 = s.range("mse", dtype="fp8_e4m3")[1], s.range("mse", dtype="fp4_e2m1")[1]
    assert f4 < f8 <= 20.0
    # the chosen fp4 range really is better than minmax on fp4
    x64 = x.astype(np.float64)
    errs = [np.mean((round_to_grid(x64, quant_grid("fp4_e2m1")(-t, t)) - x64) ** 2) for t in (f4, 20.0)]
    assert errs[0] < errs[1]


def test_mse_uint8_is_asymmetric_on_relu_data() -> None:
    x = np.abs(np.random.default_rng(2).standard_normal(1_000_000)).astype(np.float32)
    x[0] = 20.0  # one outlier: uint8's 255 steps over [0, 20] cost 5.1e-4; clipping it, less
    lo, hi = stats_of(x).range("mse", dtype="uint8")
    assert lo == 0.0 and 4.0 < hi < 12.0

    def uint8_mse(top: float) -> float:
        x64 = x.astype(np.float64)
        return float(np.mean((np.clip(np.round(x64 / (top / 255)), 0, 255) * (top / 255) - x64) ** 2))

    assert uint8_mse(hi) < 0.7 * uint8_mse(20.0)
    # symmetric uint8 (zero point 128) has int8's grid
    assert stats_of(x).range("mse", dtype="uint8", symmetric=True) == stats_of(x).range("mse", dtype="int8")
    with pytest.raises(RequantError, match="symmetric"):
        stats_of(x).range("mse", dtype="fp8_e4m3", symmetric=False)


def test_one_call_fits_every_scheme() -> None:
    """`range(method, dtype=..., symmetric=None)`: signed targets symmetric, unsigned
    asymmetric, for every method."""
    x = np.random.default_rng(3).uniform(-1.0, 3.0, 50_000).astype(np.float32)
    s = stats_of(x)
    for method in ("minmax", "percentile", "mse", "entropy"):
        for dt in ("int8", "int4", "fp8_e4m3"):
            lo, hi = s.range(method, dtype=dt)
            assert lo == -hi and 0.0 < hi <= s.absmax, (method, dt)
        lo, hi = s.range(method, dtype="uint8")
        assert s.min <= lo < 0.0 < hi <= s.max and lo != -hi, method
        assert s.range(method, dtype="int8", symmetric=False)[0] != -s.range(method, dtype="int8", symmetric=False)[1]
    assert s.range("minmax") == (float(x.min()), float(x.max()))  # no dtype: the data range


@pytest.mark.parametrize("dt, symmetric, lo, hi", [
    ("int8", True, -1.3, 2.0), ("int8", False, -1.3, 2.0), ("uint8", False, -0.4, 3.0),
    ("uint8", True, -1.3, 2.0), ("int4", True, -1.3, 2.0), ("uint4", False, 0.0, 2.0),
    ("fp8_e4m3", True, -1.3, 2.0), ("fp8_e5m2", True, -1.3, 2.0), ("fp4_e2m1", True, -1.3, 2.0),
])
def test_grids_are_what_the_quantizer_outputs(dt: str, symmetric: bool, lo: float, hi: float) -> None:
    """The MSE search optimises the grid the quantizer really uses (quant_formats)."""
    qf = pytest.importorskip("requant.ir.quant_formats")
    scheme = qf.QuantScheme(dtypes.dtype(dt), symmetric=symmetric)
    scale, zero_point = qf.choose_qparams(scheme, np.float32(lo), np.float32(hi))
    t = np.random.default_rng(4).uniform(2 * lo - 0.5, 2 * hi + 0.5, 20_000).astype(np.float32)
    real = qf.fake_quantize(t, scheme, scale, zero_point).astype(np.float64)
    ours = round_to_grid(t.astype(np.float64), quant_grid(dt, symmetric)(lo, hi))
    np.testing.assert_allclose(ours, real, rtol=1e-6, atol=1e-7 * max(abs(lo), abs(hi)))


def test_error_integral_matches_numeric_integration() -> None:
    grid = quant_grid("fp4_e2m1")(-2.83, 2.83)  # non-uniform gaps
    integral = ErrorIntegral(grid)
    for a, b in ((-4.0, 4.0), (0.1, 0.3), (1.0, 2.5), (2.0, 3.5), (-1.2, -0.9)):
        t = np.linspace(a, b, 400_001)
        numeric = np.mean((round_to_grid(t, grid) - t) ** 2)
        exact = float(integral(np.array(b)) - integral(np.array(a))) / (b - a)
        assert exact == pytest.approx(numeric, rel=1e-4)


def test_format_values() -> None:
    assert list(format_values(dtypes.fp4_e2m1)[7:]) == [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    assert format_values(dtypes.fp8_e4m3)[-1] == 448.0 and format_values(dtypes.fp8_e5m2)[-1] == 57344.0
    ff = dtypes.FloatFormat(2, 1, 1.0)  # e2m1 with bias 1 is fp4_e2m1
    np.testing.assert_array_equal(format_values(ff), format_values(dtypes.fp4_e2m1))


def test_per_channel_minmax() -> None:
    rng = np.random.default_rng(2)
    chunks = [rng.standard_normal((3, 5, 4)).astype(np.float32) * np.arange(1, 5, dtype=np.float32) for _ in range(6)]
    s = stats_of(*chunks, axis=-1)
    whole = np.concatenate(chunks)
    lo, hi = s.channel_range(include_zero=False)
    np.testing.assert_array_equal(lo, whole.min(axis=(0, 1)))
    np.testing.assert_array_equal(hi, whole.max(axis=(0, 1)))
    slo, shi = s.channel_range(symmetric=True)
    np.testing.assert_array_equal(shi, np.abs(whole).max(axis=(0, 1)))
    np.testing.assert_array_equal(slo, -shi)
    with pytest.raises(RequantError, match="minmax"):
        s.channel_range("mse")
    with pytest.raises(RequantError, match="channels"):
        s.update(np.zeros((2, 3), np.float32))


def test_nonfinite_values_are_counted_and_left_out() -> None:
    x = np.array([1.0, np.nan, -2.0, np.inf, 0.5], np.float32)
    s = stats_of(x)
    assert (s.min, s.max, s.nonfinite, s.count) == (-2.0, 1.0, 2, 3)
    assert np.isfinite(s.range("percentile")).all()


def test_all_zero_data_and_no_data() -> None:
    s = stats_of(np.zeros(10, np.float32))
    for method in ("minmax", "percentile", "mse", "entropy"):
        assert s.range(method) == (0.0, 0.0) or s.range(method) == (-0.0, 0.0)
    s.update(np.array([0.0, 3.0], np.float32))  # the zeros seen so far land in the histogram
    assert float(s.histogram.sum()) == 12.0
    with pytest.raises(RequantError, match="no finite values"):
        TensorStats("empty").range("minmax")


def test_bad_range_requests() -> None:
    s = stats_of(np.arange(10, dtype=np.float32))
    with pytest.raises(RequantError, match="unknown range method 'kl'"):
        s.range("kl")
    with pytest.raises(RequantError, match="takes no option.*grid"):
        s.range("percentile", grid=quant_grid("int8"))
    with pytest.raises(RequantError, match="unknown dtype"):
        s.range("mse", dtype="int9")
    with pytest.raises(RequantError, match="without a histogram"):
        stats_of(np.arange(10, dtype=np.float32), histogram=False).range("entropy")
    with pytest.raises(RequantError, match="percentile must be"):
        s.range("percentile", percentile=0)


# ----------------------------------------------------------------------------- streaming


def test_histogram_growth_is_exact_rebinning() -> None:
    """Batches with growing ranges force the histogram to double its range three times;
    the result equals numpy's histogram of the concatenation at the final edges."""
    rng = np.random.default_rng(3)
    bins = 64
    final_width = 16.0 / bins  # R ends at 8
    centers = -8.0 + final_width * (np.arange(bins) + 0.5)
    chunks = [np.array([-1.0, 0.5], np.float32)]  # R = 1
    for scale in (2.0, 4.0, 8.0):
        pool = centers[np.abs(centers) <= scale]
        chunks.append(rng.choice(pool, 500).astype(np.float32))
    chunks[-1][0] = 8.0
    s = stats_of(*chunks, bins=bins)
    assert s.hist_limit == 8.0
    # values on bin edges of the first, fine histogram still end in the right coarse bin;
    # the top bin is closed on the right (like numpy's last bin)
    data = np.concatenate(chunks)
    want, _ = np.histogram(data, bins=bins, range=(-8.0, 8.0))
    np.testing.assert_array_equal(s.histogram, want)


def test_streaming_equals_concatenation() -> None:
    rng = np.random.default_rng(4)
    chunks = [(rng.standard_normal((16, 32)) * (1 + i / 50)).astype(np.float32) for i in range(300)]
    s = stats_of(*chunks)
    whole = np.concatenate(chunks)
    assert (s.min, s.max) == (float(whole.min()), float(whole.max()))
    assert s.count == whole.size and s.batches == 300
    for p in (50.0, 99.0, 99.99):
        lo, hi = s.range("percentile", percentile=p, include_zero=False)
        want_lo, want_hi = np.percentile(whole, [100 - p, p], method="inverted_cdf")
        assert abs(lo - want_lo) <= s.bin_width and abs(hi - want_hi) <= s.bin_width
    one_shot = stats_of(whole)
    assert (one_shot.min, one_shot.max) == (s.min, s.max)


def _peak_bytes(make_batches, consume) -> int:
    tracemalloc.start()
    try:
        consume(make_batches())
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _batches(n: int, shape=(256, 256)):
    rng = np.random.default_rng(5)
    for _ in range(n):
        yield rng.standard_normal(shape).astype(np.float32)


def test_tensor_stats_memory_does_not_grow_with_batches() -> None:
    def consume(batches):
        s = TensorStats("x", axis=1)
        for b in batches:
            s.update(b)

    small = _peak_bytes(lambda: _batches(10), consume)
    large = _peak_bytes(lambda: _batches(200), consume)
    assert large <= 1.5 * small, f"peak {large} bytes over 200 batches vs {small} over 10"


def test_collect_stats_memory_does_not_grow_with_batches() -> None:
    graph = small_graph()

    def batches(n):
        rng = np.random.default_rng(6)
        for _ in range(n):
            yield {"x": rng.standard_normal((512, 8)).astype(np.float32),
                   "ids": rng.integers(0, 10, 512).astype(np.int64)}

    def consume(b):
        collect_stats(graph, b, runner="interpreter", progress=False)

    small = _peak_bytes(lambda: batches(10), consume)
    large = _peak_bytes(lambda: batches(200), consume)
    assert large <= 1.5 * small, f"peak {large} bytes over 200 batches vs {small} over 10"


# ----------------------------------------------------------------------------- collect_stats


rng0 = np.random.default_rng(7)
TABLE = rng0.standard_normal((10, 8)).astype(np.float32)
W1 = rng0.standard_normal((8, 8)).astype(np.float32)
W2 = rng0.standard_normal((4, 8)).astype(np.float32)
B2 = rng0.standard_normal(4).astype(np.float32)


def small_graph() -> Graph:
    """x: f32[batch,8], ids: i64[batch] -> Gemm(Relu(MatMul(x + table[ids], W1)), W2^T, b2)."""
    g = Graph("small")
    b = Builder(g)
    x = b.input("x", tensor_type("f32", ("batch", 8)))
    ids = b.input("ids", tensor_type("i64", ("batch",)))
    emb = b.Gather(b.const(TABLE, name="table"), ids, _out_names=["emb"])
    a = b.Add(x, emb, _out_names=["a"])
    h = b.MatMul(a, b.const(W1, name="w1"), _out_names=["h"])
    r = b.Relu(h, _out_names=["r"])
    y = b.Gemm(r, b.const(W2, name="w2"), b.const(B2, name="b2"), transB=1, _out_names=["y"])
    g.outputs = [y]
    g.verify()
    return g


def small_batches(n: int = 5, sizes=(3, 5)):
    rng = np.random.default_rng(8)
    for i in range(n):
        size = sizes[i % len(sizes)]  # the symbolic batch dim varies between batches
        yield {"x": rng.standard_normal((size, 8)).astype(np.float32), "ids": rng.integers(0, 10, size).astype(np.int64)}


def test_default_values_are_matmul_gemm_inputs_and_gather_outputs() -> None:
    assert calibration_values(small_graph()) == ["emb", "a", "r"]


def test_both_runners_agree_and_the_graph_is_untouched() -> None:
    pytest.importorskip("onnxruntime")
    graph = small_graph()
    text = graph.to_text()
    ort = collect_stats(graph, small_batches(), progress=False)
    interp = collect_stats(graph, small_batches(), runner="interpreter", progress=False)
    assert graph.to_text() == text and [v.name for v in graph.outputs] == ["y"]
    assert set(ort) == set(interp) == {"emb", "a", "r"}
    for name in ("emb", "a"):  # same arithmetic in both: exact
        assert (ort[name].min, ort[name].max) == (interp[name].min, interp[name].max)
    np.testing.assert_allclose([ort["r"].min, ort["r"].max], [interp["r"].min, interp["r"].max], rtol=RUNNER_RTOL)
    for s in ort.values():
        assert s.batches == 5 and s.count > 0
    # the ranges are those of the activations computed directly
    xs = list(small_batches())
    a = np.concatenate([b["x"] + TABLE[b["ids"]] for b in xs])
    assert (interp["a"].min, interp["a"].max) == (float(a.min()), float(a.max()))


def test_collect_stats_inputs_constants_outputs_and_per_channel() -> None:
    graph = small_graph()
    batches = list(small_batches(4))
    stats = collect_stats(graph, batches, values=["x", "w1", "y"], runner="interpreter", progress=False,
                          per_channel_axis={"h": 1})
    assert set(stats) == {"x", "w1", "y", "h"}
    xs = np.concatenate([b["x"] for b in batches])
    assert (stats["x"].min, stats["x"].max) == (float(xs.min()), float(xs.max()))
    assert (stats["w1"].min, stats["w1"].max) == (float(W1.min()), float(W1.max()))
    h = np.concatenate([(b["x"] + TABLE[b["ids"]]) @ W1 for b in batches])
    lo, hi = stats["h"].channel_range(include_zero=False)
    np.testing.assert_allclose(lo, h.min(axis=0), rtol=RUNNER_RTOL)
    np.testing.assert_allclose(hi, h.max(axis=0), rtol=RUNNER_RTOL)
    with pytest.raises(RequantError, match="no value.*nope"):
        collect_stats(graph, batches, values=["nope"], runner="interpreter")
    with pytest.raises(RequantError, match="unknown runner 'tvm'"):
        collect_stats(graph, batches, runner="tvm")


def test_batch_forms_sequences_torch_and_generators() -> None:
    torch = pytest.importorskip("torch")
    graph = small_graph()
    batches = list(small_batches(3))
    by_dict = collect_stats(graph, batches, runner="interpreter", progress=False)
    as_seq = collect_stats(graph, [(b["x"], b["ids"]) for b in batches], runner="interpreter", progress=False)
    as_torch = collect_stats(graph, ({k: torch.from_numpy(v) for k, v in b.items()} for b in batches),
                             runner="interpreter", progress=False)
    for other in (as_seq, as_torch):
        assert {k: (s.min, s.max, s.count) for k, s in other.items()} == \
               {k: (s.min, s.max, s.count) for k, s in by_dict.items()}
    # a generator is read once, lazily: validate_calibration reads one batch now
    reads = []

    def gen():
        for b in batches:
            reads.append(1)
            yield b

    it = validate_calibration(graph, gen())
    assert len(reads) == 1
    assert len(list(it)) == 3 and len(reads) == 3


def test_progress_bar(capsys, monkeypatch) -> None:
    graph = small_graph()
    collect_stats(graph, list(small_batches(3)), runner="interpreter", progress=False)
    assert capsys.readouterr().err == ""
    collect_stats(graph, list(small_batches(3)), runner="interpreter", progress=True)
    assert "calibrating" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # no tqdm: the plain counter
    collect_stats(graph, list(small_batches(3)), runner="interpreter", progress=True)
    assert "calibrating: 1/3 batches" in capsys.readouterr().err
    # progress=None: silent when stderr is not a terminal
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    collect_stats(graph, list(small_batches(3)), runner="interpreter")
    assert sys.stderr.getvalue() == ""


@pytest.mark.slow
def test_minilm_with_onnxruntime() -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("onnxruntime")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
    import zoo

    from requant.frontends import from_torch

    case = zoo.minilm()
    graph = from_torch(case.module, case.example_inputs)
    ids, mask = (t.numpy() for t in case.example_inputs)
    rng = np.random.default_rng(9)

    def batches():
        for i in range(8):
            rows = rng.permutation(ids.shape[0])
            yield {"input_ids": torch.from_numpy(ids[rows]), "attention_mask": torch.from_numpy(mask[rows])}

    stats = collect_stats(graph, batches(), progress=False)
    matmul_inputs = {v.name for n in graph if n.op == "MatMul" for v in n.inputs
                     if v is not None and v.dtype.is_float and v.name in calibration_values(graph)}
    assert len(matmul_inputs) == 24  # per layer: qkv input, attention output, fc1 input, fc2 input
    assert matmul_inputs <= set(stats)
    weights = {v.name for n in graph if n.op == "MatMul" for v in n.inputs} - matmul_inputs
    assert not weights & set(stats)  # constant-derived weights are not activations
    for name, s in stats.items():
        assert s.batches == 8 and s.count > 0 and s.nonfinite == 0, name
        lo, hi = s.range("percentile")
        assert s.min <= lo <= 0.0 <= hi <= s.max
    gelu = [n for n in stats if n.startswith("gelu")]
    assert gelu and all(stats[n].min >= -0.2 for n in gelu)  # GELU outputs are >= -0.17


# ----------------------------------------------------------------------------- bad input


def _error(graph: Graph, batches) -> str:
    with pytest.raises(RequantError) as info:
        collect_stats(graph, batches, runner="interpreter", progress=False)
    return str(info.value)


def good_batch(size: int = 3) -> dict[str, np.ndarray]:
    return next(small_batches(1, sizes=(size,)))


def test_wrong_dtype() -> None:
    b = good_batch()
    msg = _error(small_graph(), [{"x": b["x"].astype(np.float64), "ids": b["ids"]}])
    assert "input 'x'" in msg and "f32[batch,8]" in msg and "float64" in msg
    msg = _error(small_graph(), [{"x": b["x"], "ids": b["ids"].astype(np.int32)}])
    assert "input 'ids'" in msg and "i64[batch]" in msg and "int32" in msg


def test_wrong_rank() -> None:
    b = good_batch()
    msg = _error(small_graph(), [{"x": b["x"][None], "ids": b["ids"]}])
    assert "input 'x'" in msg and "rank 3, expected 2" in msg and "(1, 3, 8)" in msg


def test_wrong_static_dim() -> None:
    b = good_batch()
    msg = _error(small_graph(), [{"x": np.zeros((3, 7), np.float32), "ids": b["ids"]}])
    assert "input 'x'" in msg and "dim 1 is 7, expected 8" in msg


def test_inconsistent_symbolic_dim() -> None:
    b = good_batch(3)
    msg = _error(small_graph(), [{"x": b["x"], "ids": np.zeros(4, np.int64)}])
    assert "input 'ids'" in msg and "'batch'" in msg


def test_missing_input() -> None:
    b = good_batch()
    msg = _error(small_graph(), [{"x": b["x"]}])
    assert "no input 'ids'" in msg and "i64[batch]" in msg
    msg = _error(small_graph(), [(b["x"],)])
    assert "missing ids (i64[batch])" in msg
    msg = _error(small_graph(), [{"x": b["x"], "ids": b["ids"], "labels": b["ids"]}])
    assert "labels" in msg


def test_bad_later_batch_names_its_index() -> None:
    b = good_batch()
    msg = _error(small_graph(), [b, b, {"x": b["x"].astype(np.float16), "ids": b["ids"]}])
    assert msg.startswith("calibration batch 2: input 'x'")


def test_empty_calibration_set() -> None:
    for empty in ([], iter(()), (b for b in [])):
        msg = _error(small_graph(), empty)
        assert msg.startswith("calibration set is empty: a static target needs at least one batch")
        assert "x: f32[batch,8]" in msg and "ids: i64[batch]" in msg


def test_single_batch_instead_of_a_set() -> None:
    assert "wrap one batch in a list" in _error(small_graph(), good_batch())
    with pytest.raises(RequantError, match="is a str"):
        normalize_batch(small_graph(), "x", 0)
