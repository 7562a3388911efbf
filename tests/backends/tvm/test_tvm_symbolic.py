"""Symbolic dims on the TVM backend: a graph whose shapes are computed from a symbolic
batch (Shape -> Gather -> Concat feeding Expand / Reshape / Range / ConstantOfShape, as
exporters write them) lowers and runs at any batch, equal to the interpreter; a
computed shape the shape inference cannot follow is refused with a message naming
`dims=` and `example_inputs`; `requant.compile(..., static_shapes=False)` gives one
build that serves every batch with the outputs of the builds specialised to each; a
batch-1 build calibrated with 8-row batches compiles and reports its accuracy."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tvm")

from canonical_testing import build_graph, run_pass, seeded_inputs  # noqa: E402
from tvm_testing import compile_graph, run_tvm  # noqa: E402

import requant  # noqa: E402
from requant.backends.tvm import to_relax  # noqa: E402
from requant.errors import RequantError, UnsupportedOpError  # noqa: E402
from requant.ir import run  # noqa: E402

F32, I64 = "float32", "int64"
# float32 through the same ops: the tolerance of tests/op_cases' f32 comparisons
F32_TOL = dict(rtol=1e-5, atol=1e-6)
BATCHES = (1, 3, 8)


def _i64(*values: int) -> np.ndarray:
    return np.array(values, np.int64)


def _batch_of(b, x):
    """The symbolic batch as an int64 scalar, the way exporters compute it."""
    return b.Gather(b.Shape(x), b.const(np.array(0, np.int64)), axis=0)


def _computed_shapes(b, x, ids):
    """Expand, Reshape, Range and ConstantOfShape whose shape inputs come from the batch."""
    batch = b.Unsqueeze(_batch_of(b, x), b.const(_i64(0)))
    positions = b.Range(b.const(np.array(0, np.int64)), _batch_of(b, x), b.const(np.array(1, np.int64)))
    types = b.Expand(b.const(np.zeros((1, 6), np.int64)), b.Concat(batch, b.const(_i64(6)), axis=0))
    flat = b.Reshape(x, b.Concat(batch, b.const(_i64(-1)), axis=0))
    ones = b.ConstantOfShape(b.Concat(batch, b.const(_i64(4)), axis=0), value=np.array([2.5], np.float32))
    return b.Add(ids, types), positions, b.Relu(flat), ones


def _graph():
    """The computed-shape graph after bind_dims with no sizes: its shapes followed."""
    g = build_graph({"x": (F32, ["batch", 2, 3]), "ids": (I64, ["batch", 6])}, _computed_shapes)
    assert [v.type.shape for v in g.outputs] == [(None, 6), (None,), (None, None), (None, None)]
    result = run_pass("bind_dims", g)
    assert result.changed and result.stats["shapes_followed"] == 4 and result.stats["dims_bound"] == 0
    return g


def test_computed_shapes_of_a_symbolic_batch_get_symbolic_types() -> None:
    g = _graph()
    assert [v.type.shape for v in g.outputs] == [("batch", 6), ("batch",), ("batch", 6), ("batch", 4)]


def test_computed_shapes_lower_and_run_at_any_batch() -> None:
    g = _graph()
    vm = compile_graph(g)  # one build, batch left symbolic
    for batch in BATCHES:
        feed = seeded_inputs(g, seed=batch, dims={"batch": batch})
        got, want = run_tvm(vm, g, feed), run(g, feed)
        assert [a.shape for a in got] == [w.shape for w in want]
        for a, w in zip(got, want):
            assert a.dtype == w.dtype
            if a.dtype.kind == "f":
                np.testing.assert_allclose(a, w, **F32_TOL)
            else:
                np.testing.assert_array_equal(a, w)


def test_a_computed_shape_the_types_do_not_know_names_dims_and_example_inputs() -> None:
    g = build_graph({"x": (F32, ["batch", 4]), "shape": (I64, [2])}, lambda b, x, s: b.Relu(b.Reshape(x, s)))
    assert g.outputs[0].type.shape == (None, None)
    with pytest.raises(UnsupportedOpError) as info:
        to_relax(g)
    message = str(info.value)
    assert "Reshape" in message and "dims={'batch': N}" in message and "example_inputs=" in message


def _mlp_graph():
    """A small model with a symbolic batch and computed shapes around two linears."""
    rng = np.random.default_rng(5)
    w1 = (rng.standard_normal((12, 24)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((24, 8)) * 0.3).astype(np.float32)

    def body(b, x):
        batch = b.Unsqueeze(_batch_of(b, x), b.const(_i64(0)))
        h = b.Reshape(x, b.Concat(batch, b.const(_i64(-1)), axis=0))
        h = b.Relu(b.Add(b.MatMul(h, b.const(w1)), b.const(np.full(24, 0.1, np.float32))))
        return b.MatMul(h, b.const(w2))

    return build_graph({"x": (F32, ["batch", 3, 4])}, body)


def test_one_symbolic_build_serves_every_batch_like_the_specialised_builds() -> None:
    g = _mlp_graph()
    symbolic = requant.compile(g, target="tvm-cpu-fp32", static_shapes=False)
    assert symbolic.inputs[0]["shape"] == ["batch", 3, 4]
    rng = np.random.default_rng(0)
    for batch in BATCHES:
        x = rng.standard_normal((batch, 3, 4)).astype(np.float32)
        specialised = requant.compile(g, target="tvm-cpu-fp32", dims={"batch": batch})
        assert specialised.inputs[0]["shape"] == [batch, 3, 4]
        # the same kernels but for the row count: float32 sums in the same order
        np.testing.assert_array_equal(symbolic(x)[0], specialised(x)[0])
        np.testing.assert_allclose(symbolic(x)[0], run(g, {"x": x})[0], **F32_TOL)


def test_batch_one_build_calibrated_with_batches_of_eight_reports_accuracy() -> None:
    g = _mlp_graph()
    rng = np.random.default_rng(1)
    calibration = [(rng.standard_normal((8, 3, 4)).astype(np.float32),) for _ in range(4)]
    cm = requant.compile(g, target="tvm-cpu-int8", calibration=calibration, dims={"batch": 1})
    assert cm.inputs[0]["shape"] == [1, 3, 4]
    accuracy = cm.stats["accuracy"]
    assert "not_measured" not in accuracy
    assert accuracy["batches"] == 8  # the held-back batch of 8, as 8 batches of one row
    assert "cut along its leading axis" in accuracy["note"]
    # W8A8 on two small linears: far above what a wrong slicing would give
    assert accuracy["outputs"]["y0"]["cosine"] > 0.99
    assert "accuracy" in cm.report()
    with pytest.raises(RequantError, match="specialised to batch=1"):
        cm(calibration[0][0])


def test_held_back_batches_that_cannot_be_cut_are_not_measured() -> None:
    """A build for a batch larger than the held-back batches cannot take them."""
    g = _mlp_graph()
    rng = np.random.default_rng(2)
    calibration = [(rng.standard_normal((2, 3, 4)).astype(np.float32),) for _ in range(2)]
    cm = requant.compile(g, target="tvm-cpu-fp32", calibration=calibration, dims={"batch": 4}, holdout=0.5)
    assert "dims=" in cm.stats["accuracy"]["not_measured"]
