"""toeplitz_analysis: which matrices it proves Toeplitz and which it refuses (with the
reason), and the lines it emits: for every proved matrix, the emitted line is checked
against the matrix's own diagonals, both computed by the interpreter (exactly: the
line repeats the same ops on fewer positions)."""

from __future__ import annotations

import numpy as np
import pytest

from requant import ir
from requant.ir import Builder, Graph, tensor_type
from requant.ir.ops.fft import toeplitz_line_positions
from requant.passes.toeplitz_analysis import ToeplitzAnalysis

N = 6
RNG = np.random.default_rng(13)


def positions(b: Builder, n: int = N):
    """(row, col): arange(n) as [n, 1] and [1, n], as torch.export writes them."""
    pos = b.Range(b.const(np.int64(0)), b.const(np.int64(n)), b.const(np.int64(1)))
    return b.Unsqueeze(pos, b.const(np.array([1]))), b.Unsqueeze(pos, b.const(np.array([0])))


def relative(b: Builder, n: int = N):
    row, col = positions(b, n)
    return b.Sub(col, row)  # j - i


def check_line(graph: Graph, matrix, feeds: dict | None = None) -> None:
    """The emitted line equals the matrix's diagonals, listed by offset."""
    analysis = ToeplitzAnalysis(N)
    assert analysis.explain(matrix) is None, analysis.explain(matrix)
    line = analysis.line(matrix, Builder(graph))
    graph.outputs = [matrix, line]
    graph.verify()
    full, got = ir.run(graph, feeds or {})
    rows, cols = toeplitz_line_positions(N)
    np.testing.assert_array_equal(got, full[..., rows, cols])


def test_relative_index_bias_per_head() -> None:
    g = Graph("main")
    b = Builder(g)
    table = b.const(RNG.standard_normal((3, 2 * N - 1)).astype(np.float32))
    check_line(g, b.Exp(b.Gather(table, b.Add(relative(b), b.const(np.int64(N - 1))), axis=1)))


def test_runtime_bias_table_is_read_on_the_line() -> None:
    g = Graph("main")
    b = Builder(g)
    table = b.input("table", tensor_type("f32", (2, 2 * N - 1)))
    check_line(g, b.Gather(table, b.Add(relative(b), b.const(np.int64(N - 1))), axis=1),
               {"table": RNG.standard_normal((2, 2 * N - 1)).astype(np.float32)})


def test_bucketed_index_and_alibi_slopes() -> None:
    """T5-style buckets (a clipped |j - i|) and ALiBi's -slope[h] |j - i|: elementwise
    ops on j - i keep it Toeplitz."""
    g = Graph("main")
    b = Builder(g)
    distance = b.Abs(relative(b))
    bucket = b.Min(distance, b.const(np.int64(3)))
    table = b.const(RNG.standard_normal((2, 4)).astype(np.float32))
    slopes = b.const(np.array([[[0.5]], [[0.25]]], np.float32))
    alibi = b.Mul(b.Neg(slopes), b.Cast(distance, to="f32"))
    check_line(g, b.Add(b.Gather(table, bucket, axis=1), alibi))


def test_embedding_then_permute() -> None:
    """nn.Embedding(idx) gives [n, n, heads]; a permute puts the heads first."""
    g = Graph("main")
    b = Builder(g)
    table = b.const(RNG.standard_normal((2 * N - 1, 3)).astype(np.float32))
    bias = b.Gather(table, b.Add(relative(b), b.const(np.int64(N - 1))), axis=0)
    check_line(g, b.Transpose(bias, perm=[2, 0, 1]))


def test_causal_masks() -> None:
    """masked_fill(triu(1)) as torch.export writes it (Where over j - i >= 1), and Trilu."""
    g = Graph("main")
    b = Builder(g)
    c = b.Exp(b.Cast(relative(b), to="f32"))
    upper = b.And(b.GreaterOrEqual(relative(b), b.const(np.int64(1))),
                  b.Expand(b.const(np.bool_(True)), b.const(np.array([N, N]))))
    masked = b.Where(upper, b.const(np.float32(0.0)), c)
    check_line(g, b.Add(masked, b.Trilu(c, b.const(np.int64(-1)), upper=0)))


def test_constant_toeplitz_is_checked_exactly() -> None:
    line = RNG.standard_normal((2, 2 * N - 1)).astype(np.float32)
    rows, cols = np.arange(N)[:, None], np.arange(N)[None, :]
    matrix = line[:, cols - rows + N - 1]
    g = Graph("main")
    b = Builder(g)
    check_line(g, b.Identity(b.const(matrix)))
    perturbed = matrix.copy()
    perturbed[1, 3, 2] = np.nextafter(perturbed[1, 3, 2], np.float32(9))  # one ulp, one entry
    g2 = Graph("main")
    value = Builder(g2).const(perturbed)
    assert ToeplitzAnalysis(N).explain(value) == f"constant %{value.name} is not Toeplitz (its diagonals are not constant)"


@pytest.mark.parametrize("index,reason", [
    (lambda b, row, col: b.Add(row, col), "is 1*i + 1*j + 0: not a function of j - i"),
    (lambda b, row, col: b.Add(b.Mul(row, b.const(np.int64(N))), col), "is 6*i + 1*j + 0: not a function of j - i"),
    (lambda b, row, col: b.Sub(b.Mul(col, b.const(np.int64(2))), row), "is -1*i + 2*j + 0: not a function of j - i"),
])
def test_indices_that_are_not_relative_positions(index, reason) -> None:
    g = Graph("main")
    b = Builder(g)
    row, col = positions(b)
    idx = index(b, row, col)
    table = b.const(np.zeros((2, N * N + N), np.float32))
    bias = b.Gather(table, idx, axis=1)
    assert ToeplitzAnalysis(N).explain(bias).endswith(reason)


def test_transposed_and_unknown_matrices_are_refused() -> None:
    g = Graph("main")
    b = Builder(g)
    c = b.Exp(b.Cast(relative(b), to="f32"))
    analysis = ToeplitzAnalysis(N)
    swapped = b.Transpose(b.Unsqueeze(c, b.const(np.array([0]))), perm=[0, 2, 1])
    assert "swaps or separates the position axes" in analysis.explain(swapped)
    x = b.input("x", tensor_type("f32", (N, N)))
    assert analysis.explain(b.Mul(c, x)) == f"graph input %x [{N}, {N}] is not known to be Toeplitz"
    product = b.MatMul(x, x)
    assert "is computed by MatMul, which does not keep a matrix Toeplitz" in analysis.explain(product)


def test_low_rank_split_and_its_refusals() -> None:
    g = Graph("main")
    b = Builder(g)
    p = b.input("p", tensor_type("f32", (2, N, 2)))
    k = b.input("k", tensor_type("f32", (2, N, 2)))
    scores = b.MatMul(p, b.Transpose(k, perm=[0, 2, 1]))
    c = b.Exp(b.Cast(relative(b), to="f32"))
    w = b.Where(b.Greater(relative(b), b.const(np.int64(0))), b.const(np.float32(0)), b.Mul(c, scores))
    analysis = ToeplitzAnalysis(N)
    split = analysis.split_low_rank(w)
    assert split.p is p and split.scores is scores and split.inner[-1] is w
    factor = split.emit_factor(Builder(g))
    g.outputs = [factor]
    (got,) = ir.run(g, {"p": np.ones((2, N, 2), np.float32), "k": np.ones((2, N, 2), np.float32)})
    k_offsets = np.arange(-(N - 1), N)
    np.testing.assert_allclose(got, np.where(k_offsets > 0, 0.0, np.exp(k_offsets)), rtol=1e-6)
    wide = b.input("wide", tensor_type("f32", (2, N, N)))
    assert analysis.split_low_rank(b.Mul(b.MatMul(wide, wide), c)).endswith(f"has rank {N} >= n = {N}: not low-rank")
    soft = b.Softmax(b.Add(scores, c))
    assert "softmax attention has no FFT form" in analysis.split_low_rank(soft)
