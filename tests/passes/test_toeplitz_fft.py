"""toeplitz_fft: Toeplitz products, kernelized attention with relative positions and long
depthwise convolutions in FFT form. Each case checks (a) the changed flag and the stats
(the decision line included), (b) the structure as Before/Expected text, (c) the
interpreter's outputs before and after on seeded inputs, (d) the graphs it must leave
alone (an index that is not Toeplitz, softmax attention with a relative bias, masked
scores read elsewhere, a short convolution below the crossover), and the cost model's
decisions against the measured data it reads.

Tolerance (float32): the FFT form rounds differently from the quadratic form; its error
is relative to the output's scale (an FFT mixes every entry into every other), a few
1e-7 on these sizes: rtol = atol = 1e-5. The exactness sweep below compares both forms
with a float64 reference instead, as the issue asks.
"""

from __future__ import annotations

import numpy as np
import pytest

from canonical_testing import run_pass
from rewrite_testing import check_rewrite, check_unchanged
from requant import ir
from requant.passes.toeplitz_fft import fft_flops, quadratic_flops
from requant.passes.toeplitz_fft_crossovers import CROSSOVERS

PASS = "toeplitz_fft"
ALWAYS = {"policy": "always"}
TOL = {"float32": (1e-5, 1e-5)}


def positive_feeds(graph, seed: int) -> dict[str, np.ndarray]:
    """Features in (0.05, 1] (what a positive feature map gives: the normaliser stays
    away from 0) and normal values."""
    rng = np.random.default_rng(seed)
    out = {}
    for v in graph.inputs:
        if v.name in ("pq", "pk"):
            out[v.name] = rng.uniform(0.05, 1.0, v.type.shape).astype(np.float32)
        else:
            out[v.name] = rng.standard_normal(v.type.shape).astype(np.float32)
    return out


# --------------------------------------------------------------------------- Toeplitz matmul

RPE_VALUES = """
graph main(%y: f32[2,5,3]) -> (%out) {
  const %bias: f32[2,9] = [[0.1, -0.2, 0.3, 0.0, 0.5, -0.1, 0.2, 0.4, -0.3], [0.2, 0.1, -0.4, 0.3, 0.0, 0.2, -0.1, 0.1, 0.3]]
  const %start: i64[] = 0
  const %limit: i64[] = 5
  const %one: i64[] = 1
  const %ax0: i64[1] = [0]
  const %ax1: i64[1] = [1]
  const %offset: i64[] = 4
  %pos: i64[5] = Range(%start, %limit, %one)
  %col: i64[1,5] = Unsqueeze(%pos, %ax0)
  %row: i64[5,1] = Unsqueeze(%pos, %ax1)
  %rel: i64[5,5] = Sub(%col, %row)
  %idx: i64[5,5] = %INDEX%
  %table: f32[2,5,5] = Gather(%bias, %idx) {axis=1}
  %c: f32[2,5,5] = Exp(%table)
  %out: f32[2,5,3] = MatMul(%c, %y)
}
"""


def test_relative_position_matmul_becomes_one_fft_product() -> None:
    # the n x n exp(bias[h, j - i + 4]) becomes its 2n - 1 = 9 diagonals, exp(bias[h, 0..8]);
    # the circulant of 16 points reads them as h[r] = c_(-r), h[16 - r] = c_r, zeros between
    check_rewrite(PASS, RPE_VALUES.replace("%INDEX%", "Add(%rel, %offset)"), """
    graph main(%y: f32[2,5,3]) -> (%out) {
      const %bias: f32[2,9] = ...
      const %line_index: i64[9] = [0, 1, 2, 3, 4, 5, 6, 7, 8]
      const %zero: f32[2,1] = [[0.0], [0.0]]
      const %circulant: i64[16] = [4, 3, 2, 1, 0, 9, 9, 9, 9, 9, 9, 9, 8, 7, 6, 5]
      const %axis: i64[1] = [-2]
      %diagonals: f32[2,9] = Gather(%bias, %line_index) {axis=1}
      %c: f32[2,9] = Exp(%diagonals)
      %padded: f32[2,10] = Concat(%c, %zero) {axis=-1}
      %column: f32[2,16] = Gather(%padded, %circulant) {axis=1}
      %spectrum: f32[2,9,2] = RFFT(%column) {axis=-1}
      %per_head: f32[2,9,1,2] = Unsqueeze(%spectrum, %axis)
      %out: f32[2,5,3] = ToeplitzMatMulFFT(%y, %per_head) {axis=-2, n_fft=16}
    }
    """, options=ALWAYS, tolerances=TOL, stats={
        "rewritten": 1, "kept_quadratic": 0, "refused": 0,
        "decisions": "rewrote %out (MatMul) toeplitz matmul n=5 to the FFT form (n_fft=16; cost model: "
                     f"{quadratic_flops('toeplitz_matmul', 5, e=3) / (CROSSOVERS['onnx']['toeplitz_matmul']['rho'] * fft_flops(16, 3)):.2f}x on onnx)"})


def test_index_that_is_not_a_function_of_j_minus_i_is_refused() -> None:
    check_unchanged(PASS, RPE_VALUES.replace("%INDEX%", "Add(%col, %row)"), options=ALWAYS, stats={
        "rewritten": 0, "kept_quadratic": 0, "refused": 1,
        "decisions": "refused %out (MatMul) [5x5]: index %idx (Add) is 1*i + 1*j + 0: not a function of j - i"})


# --------------------------------------------------------------------------- kernelized attention

TOEPLITZ_PER_HEAD = ("[[[1.0, 1.5, 0.5, 2.0], [0.25, 1.0, 1.5, 0.5], [0.75, 0.25, 1.0, 1.5], [1.25, 0.75, 0.25, 1.0]], "
                     "[[2.0, 0.5, 0.25, 0.125], [1.0, 2.0, 0.5, 0.25], [0.5, 1.0, 2.0, 0.5], [0.25, 0.5, 1.0, 2.0]]]")
ATTENTION = f"""
graph main(%pq: f32[2,2,4,3], %pk: f32[2,2,4,3], %v: f32[2,2,4,5]) -> (%z) {{
  const %c: f32[2,4,4] = {TOEPLITZ_PER_HEAD}
  const %last: i64[1] = [-1]
  %kt: f32[2,2,3,4] = Transpose(%pk) {{perm=[0, 1, 3, 2]}}
  %scores: f32[2,2,4,4] = MatMul(%pq, %kt)
  %w: f32[2,2,4,4] = Mul(%scores, %c)
  %num: f32[2,2,4,5] = MatMul(%w, %v)
  %den: f32[2,2,4,1] = ReduceSum(%w, %last) {{keepdims=1}}
  %z: f32[2,2,4,5] = Div(%num, %den)
}}
"""


def test_kernelized_attention_numerator_and_normaliser() -> None:
    # the constant per-head Toeplitz (already folded) is checked diagonal by diagonal and
    # becomes its lines; numerator and normaliser share the spectrum
    result = check_rewrite(PASS, ATTENTION, f"""
    graph main(%pq: f32[2,2,4,3], %pk: f32[2,2,4,3], %v: f32[2,2,4,5]) -> (%z) {{
      const %lines: f32[2,7] = [[1.25, 0.75, 0.25, 1.0, 1.5, 0.5, 2.0], [0.25, 0.5, 1.0, 2.0, 0.5, 0.25, 0.125]]
      const %zero: f32[2,1] = [[0.0], [0.0]]
      const %circulant: i64[8] = [3, 2, 1, 0, 7, 6, 5, 4]
      const %ones: f32[4,1] = [[1.0], [1.0], [1.0], [1.0]]
      %padded: f32[2,8] = Concat(%lines, %zero) {{axis=-1}}
      %column: f32[2,8] = Gather(%padded, %circulant) {{axis=1}}
      %spectrum: f32[2,5,2] = RFFT(%column) {{axis=-1}}
      %num: f32[2,2,4,5] = ToeplitzLowRankMatMulFFT(%pq, %pk, %v, %spectrum) {{n_fft=8}}
      %den: f32[2,2,4,1] = ToeplitzLowRankMatMulFFT(%pq, %pk, %ones, %spectrum) {{n_fft=8}}
      %z: f32[2,2,4,5] = Div(%num, %den)
    }}
    """, options=ALWAYS, tolerances=TOL, feeds=positive_feeds)
    assert result.stats["rewritten"] == 1 and "kernelized attention n=4" in result.stats["decisions"]


def test_causal_kernelized_attention_computes_its_ffts_in_float64() -> None:
    # a one-sided Toeplitz (the upper triangle masked to 0) gets float64 FFTs: its row
    # sums grow with i and float32 rounding relative to the largest would swamp the first rows
    result = check_rewrite(PASS, f"""
    graph main(%pq: f32[1,2,4,3], %pk: f32[1,2,4,3], %v: f32[1,2,4,2]) -> (%z, %num) {{
      const %c: f32[2,4,4] = {TOEPLITZ_PER_HEAD}
      const %upper: bool[4,4] = [[false, true, true, true], [false, false, true, true], [false, false, false, true], [false, false, false, false]]
      const %zero: f32[] = 0.0
      const %last: i64[1] = [-1]
      %kt: f32[1,2,3,4] = Transpose(%pk) {{perm=[0, 1, 3, 2]}}
      %scores: f32[1,2,4,4] = MatMul(%pq, %kt)
      %w0: f32[1,2,4,4] = Mul(%scores, %c)
      %w: f32[1,2,4,4] = Where(%upper, %zero, %w0)
      %num: f32[1,2,4,2] = MatMul(%w, %v)
      %den: f32[1,2,4] = ReduceSum(%w, %last) {{keepdims=0}}
      %z: f32[1,2,4] = Mul(%den, %den)
    }}
    """, f"""
    graph main(%pq: f32[1,2,4,3], %pk: f32[1,2,4,3], %v: f32[1,2,4,2]) -> (%z, %num) {{
      const %lines: f32[2,7] = [[1.25, 0.75, 0.25, 1.0, 1.5, 0.5, 2.0], [0.25, 0.5, 1.0, 2.0, 0.5, 0.25, 0.125]]
      const %one: f32[] = 1.0
      const %zero: f32[] = 0.0
      const %above: bool[7] = [false, false, false, false, true, true, true]
      const %zeros: f32[2,1] = [[0.0], [0.0]]
      const %circulant: i64[8] = [3, 2, 1, 0, 7, 6, 5, 4]
      const %ones: f64[4,1] = [[1.0], [1.0], [1.0], [1.0]]
      const %last: i64[1] = [-1]
      %mask: f32[7] = Where(%above, %zero, %one)
      %masked: f32[2,7] = Mul(%lines, %mask)
      %padded: f32[2,8] = Concat(%masked, %zeros) {{axis=-1}}
      %column: f32[2,8] = Gather(%padded, %circulant) {{axis=1}}
      %column64: f64[2,8] = Cast(%column) {{to="float64"}}
      %spectrum: f64[2,5,2] = RFFT(%column64) {{axis=-1}}
      %pq64: f64[1,2,4,3] = Cast(%pq) {{to="float64"}}
      %pk64: f64[1,2,4,3] = Cast(%pk) {{to="float64"}}
      %v64: f64[1,2,4,2] = Cast(%v) {{to="float64"}}
      %num64: f64[1,2,4,2] = ToeplitzLowRankMatMulFFT(%pq64, %pk64, %v64, %spectrum) {{n_fft=8}}
      %num: f32[1,2,4,2] = Cast(%num64) {{to="float32"}}
      %den64: f64[1,2,4,1] = ToeplitzLowRankMatMulFFT(%pq64, %pk64, %ones, %spectrum) {{n_fft=8}}
      %den1: f32[1,2,4,1] = Cast(%den64) {{to="float32"}}
      %den: f32[1,2,4] = Squeeze(%den1, %last)
      %z: f32[1,2,4] = Mul(%den, %den)
    }}
    """, options=ALWAYS, tolerances=TOL, feeds=positive_feeds)
    assert "n_fft=8 in float64" in result.stats["decisions"]


def test_kernelized_attention_with_a_bias_index_that_is_not_toeplitz_is_refused() -> None:
    check_unchanged(PASS, """
    graph main(%pq: f32[1,2,4,3], %pk: f32[1,2,4,3], %v: f32[1,2,4,2]) -> (%z) {
      const %bias: f32[2,9] = [[0.1, -0.2, 0.3, 0.0, 0.5, -0.1, 0.2, 0.4, -0.3], [0.2, 0.1, -0.4, 0.3, 0.0, 0.2, -0.1, 0.1, 0.3]]
      const %start: i64[] = 0
      const %limit: i64[] = 4
      const %one: i64[] = 1
      const %ax0: i64[1] = [0]
      const %ax1: i64[1] = [1]
      const %last: i64[1] = [-1]
      %pos: i64[4] = Range(%start, %limit, %one)
      %col: i64[1,4] = Unsqueeze(%pos, %ax0)
      %row: i64[4,1] = Unsqueeze(%pos, %ax1)
      %idx: i64[4,4] = Add(%col, %row)
      %table: f32[2,4,4] = Gather(%bias, %idx) {axis=1}
      %c: f32[2,4,4] = Exp(%table)
      %kt: f32[1,2,3,4] = Transpose(%pk) {perm=[0, 1, 3, 2]}
      %scores: f32[1,2,4,4] = MatMul(%pq, %kt)
      %w: f32[1,2,4,4] = Mul(%scores, %c)
      %num: f32[1,2,4,2] = MatMul(%w, %v)
      %den: f32[1,2,4,1] = ReduceSum(%w, %last) {keepdims=1}
      %z: f32[1,2,4,2] = Div(%num, %den)
    }
    """, options=ALWAYS, stats={
        "rewritten": 0, "kept_quadratic": 0, "refused": 1,
        "decisions": "refused %num (MatMul) [4x4]: index %idx (Add) is 1*i + 1*j + 0: not a function of j - i"})


def test_scores_read_elsewhere_are_refused() -> None:
    text = ATTENTION.replace("-> (%z)", "-> (%z, %w)")
    check_unchanged(PASS, text, options=ALWAYS, stats={
        "rewritten": 0, "kept_quadratic": 0, "refused": 1,
        "decisions": "refused %num (MatMul) [4x4]: the masked scores are a graph output"})


def test_softmax_attention_with_relative_bias_is_refused() -> None:
    check_unchanged(PASS, """
    graph main(%q: f32[1,2,4,3], %k: f32[1,2,4,3], %v: f32[1,2,4,3]) -> (%y) {
      const %bias: f32[2,7] = [[0.1, -0.2, 0.3, 0.0, 0.5, -0.1, 0.2], [0.2, 0.1, -0.4, 0.3, 0.0, 0.2, -0.1]]
      const %start: i64[] = 0
      const %limit: i64[] = 4
      const %one: i64[] = 1
      const %ax0: i64[1] = [0]
      const %ax1: i64[1] = [1]
      const %offset: i64[] = 3
      %pos: i64[4] = Range(%start, %limit, %one)
      %col: i64[1,4] = Unsqueeze(%pos, %ax0)
      %row: i64[4,1] = Unsqueeze(%pos, %ax1)
      %rel: i64[4,4] = Sub(%col, %row)
      %idx: i64[4,4] = Add(%rel, %offset)
      %b: f32[2,4,4] = Gather(%bias, %idx) {axis=1}
      %y: f32[1,2,4,3] = ScaledDotProductAttention(%q, %k, %v, %b)
    }
    """, options=ALWAYS, stats={
        "rewritten": 0, "kept_quadratic": 0, "refused": 1,
        "decisions": "refused %y (ScaledDotProductAttention) [4x4]: softmax attention with a relative bias has no "
                     "FFT form (softmax does not factor over positions)"})


# --------------------------------------------------------------------------- long convolutions

CONV = """
graph main(%x: f32[2,3,6]) -> (%y) {
  const %w: f32[3,1,4] = [[[1.0, 2.0, 3.0, 4.0]], [[0.5, -1.0, 0.25, 2.0]], [[-1.0, 0.0, 1.0, 3.0]]]
  const %b: f32[3] = [0.5, -0.5, 1.0]
  %y: f32[2,3,5] = Conv(%x, %w, %b) {group=3, kernel_shape=[4], pads=[1, 1]}
}
"""


def test_depthwise_conv_becomes_one_spectrum_per_channel() -> None:
    # tap k sits at offset j - i = k - 1 (pads 1): offsets -5..5 read taps [-, -, -, -, 0, 1, 2, 3, -, -, -]
    check_rewrite(PASS, CONV, """
    graph main(%x: f32[2,3,6]) -> (%y) {
      const %w: f32[3,1,4] = [[[1.0, 2.0, 3.0, 4.0]], [[0.5, -1.0, 0.25, 2.0]], [[-1.0, 0.0, 1.0, 3.0]]]
      const %b: f32[3] = [0.5, -0.5, 1.0]
      const %taps_shape: i64[2] = [3, 4]
      const %zero_tap: f32[3,1] = [[0.0], [0.0], [0.0]]
      const %tap_of_offset: i64[11] = [4, 4, 4, 4, 0, 1, 2, 3, 4, 4, 4]
      const %zero: f32[3,1] = [[0.0], [0.0], [0.0]]
      const %circulant: i64[16] = [5, 4, 3, 2, 1, 0, 11, 11, 11, 11, 11, 10, 9, 8, 7, 6]
      const %start: i64[1] = [0]
      const %end: i64[1] = [5]
      const %axis: i64[1] = [2]
      const %bias_shape: i64[2] = [3, 1]
      %taps: f32[3,4] = Reshape(%w, %taps_shape)
      %taps0: f32[3,5] = Concat(%taps, %zero_tap) {axis=1}
      %lines: f32[3,11] = Gather(%taps0, %tap_of_offset) {axis=1}
      %padded: f32[3,12] = Concat(%lines, %zero) {axis=-1}
      %column: f32[3,16] = Gather(%padded, %circulant) {axis=1}
      %spectrum: f32[3,9,2] = RFFT(%column) {axis=-1}
      %full: f32[2,3,6] = ToeplitzMatMulFFT(%x, %spectrum) {axis=-1, n_fft=16}
      %cut: f32[2,3,5] = Slice(%full, %start, %end, %axis)
      %bias: f32[3,1] = Reshape(%b, %bias_shape)
      %y: f32[2,3,5] = Add(%cut, %bias)
    }
    """, options=ALWAYS, tolerances=TOL)


def test_short_conv_below_the_crossover_is_kept() -> None:
    # 4 taps over 6 samples: far below any FFT crossover
    result = check_unchanged(PASS, CONV)
    assert result.stats["kept_quadratic"] == 1 and result.stats["rewritten"] == 0
    assert result.stats["decisions"].startswith("kept %y (Conv) long conv n=6: the FFT form would be")


def test_strided_conv_is_refused() -> None:
    strided = CONV.replace("f32[2,3,5] = Conv", "f32[2,3,3] = Conv").replace("pads=[1, 1]}", "pads=[1, 1], strides=[2]}")
    check_unchanged(PASS, strided, options=ALWAYS, stats={
        "rewritten": 0, "kept_quadratic": 0, "refused": 1,
        "decisions": "refused %y (Conv): stride 2 (a strided convolution is not one Toeplitz product)"})


def test_dense_conv_is_no_candidate() -> None:
    """A conv mixing channels is a sum of Toeplitz products, not one per channel: not a
    candidate at all (no decision line)."""
    from requant.ir import Builder, Graph, tensor_type

    g = Graph("main")
    b = Builder(g)
    x = b.input("x", tensor_type("f32", (2, 3, 40)))
    w = b.const(np.random.default_rng(0).standard_normal((3, 3, 40)).astype(np.float32))
    g.outputs = [b.Conv(x, w, kernel_shape=[40], pads=[39, 0])]
    result = run_pass(PASS, g, **ALWAYS)
    assert result.changed is False and result.stats == {"rewritten": 0, "kept_quadratic": 0, "refused": 0}


# --------------------------------------------------------------------------- the cost model


@pytest.mark.parametrize("backend", sorted(CROSSOVERS))
@pytest.mark.parametrize("n", [64, 512, 4096])
def test_cost_model_follows_the_measured_data(backend: str, n: int) -> None:
    """Rewritten exactly when rho * fft_flops < quadratic flops, rho from the data file."""
    from requant.ir import Builder, Graph, tensor_type

    g = Graph("main")
    b = Builder(g)
    x = b.input("x", tensor_type("f32", (1, 16, n)))
    taps = n // 2
    w = b.const(np.ones((16, 1, taps), np.float32) / taps)
    g.outputs = [b.Conv(x, w, group=16, kernel_shape=[taps], pads=[taps - 1, 0])]
    result = run_pass(PASS, g, backend=backend)
    size, n_fft = n, 1 << (2 * n - 2).bit_length()
    wins = quadratic_flops("long_conv", n, k=taps) > CROSSOVERS[backend]["long_conv"]["rho"] * fft_flops(n_fft, 1)
    assert result.changed is wins and result.stats["rewritten"] == int(wins)
    assert result.stats["kept_quadratic"] == int(not wins)
    assert f"n={size}" in result.stats["decisions"]
