"""Tests of passes/fold_common.py's `migrate_transform`: an invertible channel transform
moved between a tensor's writer and the canonical linears that read it.

(a) what it reports (how, the value the linears read); (b) structure, as Before/Expected
text where it is small: the writer absorbs M (linear: V M and b M; norm: a diagonal
M into gamma and beta), else an explicit Mul (diagonal) or MatMul (any M) on the branch
to the linears; (c) the graph computes what it did, within float32 rounding
(REL = 1e-5 of the largest |output|, the transform is rounded into float32 weights
once); (d) refusals: a non-diagonal transform into a norm, a reader that cannot absorb
the inverse, a size mismatch.
"""

from __future__ import annotations

import numpy as np
import pytest

from requant.errors import RequantError
from requant.ir import parse, run
from requant.ir.structural import parse_elided, structural_difference
from requant.passes.channel_transforms import DiagonalTransform, OrthogonalTransform
from requant.passes.fold_common import migrate_transform, migration_refusal

from quant_testing import assert_rel_close

REL = 1e-5
RNG = np.random.default_rng(7)
Q, _ = np.linalg.qr(RNG.standard_normal((4, 4)))


def _arr(a: np.ndarray) -> str:
    return np.array2string(np.asarray(a, np.float32), separator=",", floatmode="unique", max_line_width=10**6) \
        .replace("\n", "")


def _graph(writer: str, readers: str = "linears") -> str:
    w_in = RNG.standard_normal((3, 4)).astype(np.float32)
    b_in = RNG.standard_normal(4).astype(np.float32)
    w1 = RNG.standard_normal((4, 2)).astype(np.float32)
    w2 = RNG.standard_normal((4, 5)).astype(np.float32)
    gamma = RNG.uniform(0.5, 2, 4).astype(np.float32)
    if writer == "linear":
        head = f"""  const %wi: f32[3,4] = {_arr(w_in)}
  const %bi: f32[4] = {_arr(b_in)}
  %m = MatMul(%x, %wi)
  %h = Add(%m, %bi)"""
        x_shape = "f32[2,3]"
    else:
        head = f"""  const %g: f32[4] = {_arr(gamma)}
  const %be: f32[4] = {_arr(b_in)}
  %h = LayerNormalization(%x, %g, %be) {{axis=-1}}"""
        x_shape = "f32[2,4]"
    tail = "  %y2 = MatMul(%h, %w2)" if readers == "linears" else "  %y2 = Relu(%h)"
    return f"""graph main(%x: {x_shape}) -> (%y1, %y2) {{
{head}
  const %w1: f32[4,2] = {_arr(w1)}
  const %w2: f32[4,5] = {_arr(w2)}
  %y1 = MatMul(%h, %w1)
{tail}
}}"""


def _migrate(text: str, transform, **kw):
    g = parse(text)
    before = parse(text)
    x = np.asarray(RNG.standard_normal(tuple(g.inputs[0].type.shape)), np.float32)
    h = next(v for v in g.values() if v.name == "h")
    migration = migrate_transform(g, h, transform, created_by="test", **kw)
    g.verify()
    assert_rel_close(list(zip(run(before, [x]), run(g, [x]))), REL)
    return g, migration


def test_a_linear_writer_absorbs_an_orthogonal_transform():
    g, migration = _migrate(_graph("linear"), OrthogonalTransform(Q))
    assert migration.how == "linear" and migration.value.name == "h" and len(migration.linears) == 2
    expected = """graph main(%x: f32[2,3]) -> (%y1, %y2) {
  const %wi_test: f32[3,4] = ...
  const %bi_test: f32[4] = ...
  const %w1_test: f32[4,2] = ...
  const %w2_test: f32[4,5] = ...
  %m = MatMul(%x, %wi_test)
  %h = Add(%m, %bi_test)
  %y1 = MatMul(%h, %w1_test)
  %y2 = MatMul(%h, %w2_test)
}"""
    assert structural_difference(g, parse_elided(expected), compare_values=False) is None
    assert g.op_histogram() == {"MatMul": 3, "Add": 1}


def test_a_norm_writer_absorbs_a_diagonal_and_refuses_a_rotation():
    d = RNG.uniform(0.5, 2.0, 4)
    g, migration = _migrate(_graph("norm"), DiagonalTransform(d))
    assert migration.how == "norm" and g.op_histogram() == {"LayerNormalization": 1, "MatMul": 2}
    ln = next(n for n in g if n.op == "LayerNormalization")
    assert ln.meta["folded"] == ["test"]
    # the case that must not match: LayerNorm's affine is per channel, a rotation mixes channels
    g = parse(_graph("norm"))
    h = next(v for v in g.values() if v.name == "h")
    reason = migration_refusal(g, h, OrthogonalTransform(Q), explicit=False)
    assert reason is not None and "a norm's affine absorbs only a diagonal transform" in reason
    with pytest.raises(RequantError, match="cannot migrate a orthogonal 4x4 transform"):
        migrate_transform(g, h, OrthogonalTransform(Q), created_by="test", explicit=False)


def test_an_explicit_matmul_when_the_writer_cannot_absorb():
    g, migration = _migrate(_graph("norm"), OrthogonalTransform(Q))
    assert migration.how == "matmul" and migration.value.name == "h_transformed"
    (mm,) = [n for n in g if n.op == "MatMul" and n.inputs[0].name == "h"]
    np.testing.assert_allclose(mm.inputs[1].const, Q.astype(np.float32))


def test_other_readers_keep_the_original_value_behind_an_explicit_mul():
    g, migration = _migrate(_graph("linear", readers="relu"), DiagonalTransform(RNG.uniform(0.5, 2.0, 4)))
    assert migration.how == "mul" and len(migration.linears) == 1
    relu = next(n for n in g if n.op == "Relu")
    assert relu.inputs[0].name == "h"  # Relu still reads h itself
    g = parse(_graph("linear", readers="relu"))
    h = next(v for v in g.values() if v.name == "h")
    reason = migration_refusal(g, h, DiagonalTransform(np.ones(4)), explicit=False)
    assert reason is not None and "cannot absorb the inverse transform" in reason and "Relu" in reason


def test_a_size_mismatch_is_refused():
    g = parse(_graph("linear"))
    h = next(v for v in g.values() if v.name == "h")
    assert "has 4 channels, the transform is diagonal 3x3" in migration_refusal(g, h, DiagonalTransform(np.ones(3)))
