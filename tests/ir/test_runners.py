"""Tests of requant.ir.runners: the one mechanism that runs a graph for calibration,
activation samples and the accuracy report."""

from __future__ import annotations

import numpy as np
import pytest

from requant.errors import RequantError
from requant.ir import Builder, Graph, tensor_type
from requant.ir.runners import make_runner, runner_names


def _graph() -> Graph:
    g = Graph("g")
    b = Builder(g)
    x = b.input("x", tensor_type("float32", (2, 3)))
    g.outputs = [b.Relu(b.Add(x, b.const(np.float32(1.0))))]
    return g


def test_interpreter_runner_runs_the_graph():
    run = make_runner(_graph(), "interpreter")
    x = np.array([[-3, 0, 1], [2, -1, 5]], np.float32)
    assert run.name == "interpreter"
    np.testing.assert_array_equal(run({"x": x})[0], np.maximum(x + 1, 0))


def test_onnx_runtime_runner_is_declared_by_the_backend_and_preferred_by_auto():
    pytest.importorskip("onnxruntime")
    # the ONNX backend declares it in the package metadata (pyproject entry points): a
    # stale install without it would silently calibrate in the interpreter
    assert "onnxruntime" in runner_names()
    run = make_runner(_graph(), "auto")
    assert run.name == "onnxruntime"
    x = np.array([[-3, 0, 1], [2, -1, 5]], np.float32)
    np.testing.assert_array_equal(run({"x": x})[0], np.maximum(x + 1, 0))


def test_auto_falls_back_to_the_interpreter_when_the_backend_refuses():
    pytest.importorskip("onnxruntime")
    g = Graph("fq")
    b = Builder(g)
    x = b.input("x", tensor_type("float32", (4,)))
    g.outputs = [b.Cast(x, to="ff_e2m1_b1.0")]  # a parametric float: no ONNX form
    assert make_runner(g, "auto").name == "interpreter"
    with pytest.raises(RequantError):
        make_runner(g, "onnxruntime")


def test_unknown_runner_names_the_known_ones():
    with pytest.raises(RequantError, match="unknown graph runner 'tensorrt'; known: .*interpreter"):
        make_runner(_graph(), "tensorrt")
