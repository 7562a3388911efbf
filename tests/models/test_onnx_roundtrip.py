"""Real models through ONNX: each model of the zoo is exported with torch.onnx.export
(the dynamo exporter; the TorchScript one fails on gpt2/llama's `aten::diff`), read with
`from_onnx`, and must agree with ONNX Runtime on the original file and with torch; then
`to_onnx` of the graph must run in ONNX Runtime to the same outputs and read back to
the same graph. Graphs captured by requant's torch frontend (fused attention included)
go through `to_onnx` and ONNX Runtime too."""

from __future__ import annotations

import inspect
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")  # the dynamo exporter needs it
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo  # noqa: E402

import requant.ir as ir  # noqa: E402
from requant.backends.onnx import OnnxRuntimeSession, to_onnx  # noqa: E402
from requant.frontends.onnx_frontend import from_onnx  # noqa: E402

FP32_TOL = 1e-4
"""max|a-b| <= FP32_TOL * max(1, max|ref|), for every pair compared here."""

# (zoo builder, export with a symbolic batch dim)
MODELS = {
    "small_cnn": (zoo.small_cnn, True),
    "bert": (zoo.bert, False),
    "gpt2": (zoo.gpt2, False),
    "llama": (zoo.llama, True),
    "vit": (zoo.vit, False),
    "minilm": (zoo.minilm, False),
}


def assert_close(actual: np.ndarray, ref: np.ndarray, what: str) -> None:
    actual, ref = np.asarray(actual), np.asarray(ref)
    assert actual.shape == ref.shape, f"{what}: shape {actual.shape} != {ref.shape}"
    scale = max(1.0, float(np.max(np.abs(ref))))
    err = float(np.max(np.abs(actual.astype(np.float64) - ref.astype(np.float64))))
    assert err <= FP32_TOL * scale, f"{what}: max|a-b| = {err:.3g} > {FP32_TOL * scale:.3g}"


def export(case: zoo.ModelCase, path: Path, dynamic_batch: bool) -> None:
    """torch 2.13: `dynamo=True` (torch.export + onnxscript) with its graph optimizer;
    a symbolic batch dim through `dynamic_shapes`."""
    kwargs = {}
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=64)
        params = list(inspect.signature(case.module.forward).parameters)
        kwargs["dynamic_shapes"] = {p: {0: batch} for p in params}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(case.module, case.example_inputs, str(path), dynamo=True, optimize=True,
                          external_data=False, verbose=False, **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_model_through_onnx(name: str, tmp_path: Path) -> None:
    build, dynamic_batch = MODELS[name]
    case = build()
    path = tmp_path / f"{name}.onnx"
    export(case, path, dynamic_batch)
    feeds = [t.numpy() for t in case.example_inputs]
    with torch.no_grad():
        torch_out = case.module(*case.example_inputs).numpy()

    graph = from_onnx(path)
    if dynamic_batch:
        assert graph.inputs[0].type.shape[0] == "batch"
        assert graph.outputs[0].type.shape[0] == "batch"
    (ort_out,) = OnnxRuntimeSession(path)(*feeds)
    (rq_out,) = ir.run(graph, feeds)
    assert_close(rq_out, ort_out, f"{name}: interpreter vs ONNX Runtime on the exported file")
    assert_close(rq_out, torch_out, f"{name}: interpreter vs torch")

    model = to_onnx(graph)
    (back_out,) = OnnxRuntimeSession(model)(*feeds)
    assert_close(back_out, ort_out, f"{name}: ONNX Runtime on to_onnx(graph) vs on the original")
    again = from_onnx(model)
    assert again.op_histogram() == graph.op_histogram()
    assert again.to_text() == graph.to_text()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama", "vit"])
def test_torch_captured_graph_runs_in_onnx_runtime(name: str) -> None:
    from requant.frontends import from_torch

    case = MODELS[name][0]()
    graph = from_torch(case.module, case.example_inputs)
    feeds = [t.numpy() for t in case.example_inputs]
    (ref,) = ir.run(graph, feeds)
    model = to_onnx(graph)
    (got,) = OnnxRuntimeSession(model)(*feeds)
    assert_close(got, ref, f"{name}: ONNX Runtime on to_onnx(from_torch(...)) vs the interpreter")
    assert from_onnx(model).to_text() == graph.to_text()
