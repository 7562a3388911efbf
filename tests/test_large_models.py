"""Models past protobuf's 2 GB limit (issue 16, item 10): their graphs are exported by
reference (the proto holds no weights; ONNX Runtime's session is made from a temporary
file the graph's arrays are streamed into, as a save streams them into model.onnx.data;
the calibration and accuracy runs go through the interpreter, on the graph's own
arrays) and a loaded model reads its weights into a proto only when asked. The limit is lowered here so a model of a few hundred KiB takes the
same path; `python -m requant.tools.bench.large_model` runs a 3 GB Llama through it
and reports the memory it takes."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import numpy as np
import pytest

import requant
import requant.backends.onnx.export as export
import requant.backends.onnx.runtime as ort_runtime
import requant.ir as ir

X = np.random.RandomState(0).randn(2, 256).astype(np.float32)


def graph() -> ir.Graph:
    """x[2,256] -> MatMul(w 256x256, 256 KiB) -> Add(b) -> Relu -> MatMul(w2 256x8)."""
    from requant.ir import dtypes
    from requant.ir.builder import Builder
    from requant.ir.types import TensorType

    rs = np.random.RandomState(1)
    g = ir.Graph("large")
    b = Builder(g)
    x = b.input("x", TensorType((2, 256), dtypes.float32))
    w = b.const(rs.randn(256, 256).astype(np.float32) / 16, name="w")
    bias = b.const(rs.randn(256).astype(np.float32), name="b")
    w2 = b.const(rs.randn(256, 8).astype(np.float32), name="w2")
    y = b.node("MatMul", b.Relu(b.Add(b.MatMul(x, w), bias)), w2, _out_names=["y"]).outputs[0]
    g.outputs.append(y)
    g.verify()
    return g


@pytest.fixture
def by_reference(monkeypatch) -> None:
    monkeypatch.setattr(ort_runtime, "BY_REFERENCE_BYTES", 0)


def test_a_large_graph_is_exported_by_reference_and_runs(by_reference) -> None:
    g = graph()
    cm = requant.compile(g, "cpu-fp32")
    arrays = cm._runtime.arrays
    assert sorted(arrays) == ["w"]  # w2 and b are under BY_REFERENCE_MIN_BYTES: inline
    proto = cm._runtime.proto
    w = next(t for t in proto.graph.initializer if t.name == "w")
    assert not w.raw_data and w.external_data[0].value == export.BY_REFERENCE
    assert proto.ByteSize() < 64 * 1024  # the weights are not in the message
    np.testing.assert_allclose(cm(X)[0], ir.run(g, {"x": X})[0], rtol=1e-5, atol=1e-5)
    assert cm.stats["sizes"]["artifact"] >= arrays["w"].nbytes
    # asked for, the model comes whole (it fits one protobuf) and runs as the build does
    whole = cm.onnx_model
    w = next(t for t in whole.graph.initializer if t.name == "w")
    assert not w.external_data and len(w.raw_data) == arrays["w"].nbytes
    np.testing.assert_array_equal(ort_runtime.run_onnx(whole, {"x": X})[0], cm(X)[0])
    assert next(t for t in proto.graph.initializer if t.name == "w").external_data  # the build's own: as it was


def test_a_by_reference_save_matches_the_inline_one_and_loads_lazily(by_reference, tmp_path, monkeypatch) -> None:
    g = graph()
    lean = requant.compile(g, "cpu-fp32").save(tmp_path / "lean")
    monkeypatch.setattr(ort_runtime, "BY_REFERENCE_BYTES", 2**40)
    inline = requant.compile(g, "cpu-fp32").save(tmp_path / "inline", external_data=True)
    for name in ("model.onnx", "model.onnx.data", "pipeline.json"):
        assert filecmp.cmp(lean / name, inline / name, shallow=False), name
    assert json.loads((lean / "manifest.json").read_text())["files"] == \
        json.loads((inline / "manifest.json").read_text())["files"]
    loaded = requant.load(lean)
    assert loaded._runtime._proto is None  # ONNX Runtime read the files; no proto holds the weights
    np.testing.assert_array_equal(loaded(X)[0], requant.load(inline)(X)[0])
    assert loaded.graph.op_histogram() == requant.load(inline).graph.op_histogram()
    w = next(t for t in loaded.onnx_model.graph.initializer if t.name == "w")
    assert len(w.raw_data) == 256 * 256 * 4  # read, with its external data, when asked for


def test_the_session_reads_the_weights_from_a_file_it_removes_once_made(by_reference, monkeypatch) -> None:
    import tempfile

    made: list[tuple[Path, int]] = []
    real = tempfile.TemporaryDirectory

    class Recorded(real):  # type: ignore[misc, valid-type]
        def cleanup(self) -> None:
            data = Path(self.name) / "model.onnx.data"
            made.append((data, data.stat().st_size))
            super().cleanup()

    monkeypatch.setattr(tempfile, "TemporaryDirectory", Recorded)
    g = graph()
    session = ort_runtime.OnnxRuntimeSession(g)
    assert sorted(session.arrays) == ["w"]
    (data, size), = made
    assert size >= session.arrays["w"].nbytes and not data.parent.exists()
    np.testing.assert_allclose(session(X)[0], ir.run(g, {"x": X})[0], rtol=1e-5, atol=1e-5)


def test_calibration_and_accuracy_of_a_large_graph_run_in_place(by_reference, monkeypatch) -> None:
    from requant.ir import runners

    monkeypatch.setattr(runners, "IN_PLACE_BYTES", 0)
    made = []
    real = runners.InterpreterRunner

    class Recorded(real):  # type: ignore[misc, valid-type]
        def __init__(self, graph) -> None:
            made.append(graph.name)
            super().__init__(graph)

    monkeypatch.setattr(runners, "InterpreterRunner", Recorded)
    rs = np.random.RandomState(2)
    calib = [(rs.randn(2, 256).astype(np.float32),) for _ in range(4)]
    cm = requant.compile(graph(), "cpu-int8", calibration=calib)
    assert cm.stats["accuracy"]["outputs"]["y"]["cosine"] > 0.99
    assert len(made) >= 2  # the calibration run and the float reference of the accuracy report


def test_auto_picks_a_backend_runner_below_the_in_place_size_and_a_named_one_always(monkeypatch) -> None:
    from requant.ir import runners

    assert runners.make_runner(graph(), "auto").name == "onnxruntime"
    monkeypatch.setattr(runners, "IN_PLACE_BYTES", 0)
    assert runners.make_runner(graph(), "auto").name == "interpreter"
    assert runners.make_runner(graph(), "onnxruntime").name == "onnxruntime"


def test_saving_a_by_reference_proto_without_its_arrays_is_refused(by_reference, tmp_path) -> None:
    cm = requant.compile(graph(), "cpu-fp32")
    with pytest.raises(requant.RequantError, match="exported by reference and its array was not given"):
        export.save_onnx(cm._runtime.proto, tmp_path / "m.onnx", external_data=True)
