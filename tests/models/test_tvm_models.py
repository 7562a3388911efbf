"""The TVM backend on the trained all-MiniLM-L6-v2 (real sentences, 32 tokens):
- tvm-cpu-fp32 matches the float graph within 1e-4 of the output's scale;
- tvm-cpu-int8 keeps the ONNX cpu-int8 model's accuracy: mean cosine of mean-pooled
  embeddings to float within 0.002 of it (same calibration batches);
- cuda-int8 produces a compiled library and CUDA source here (no GPU needed), its int8
  matmuls as dp4a kernels; where a GPU exists (`gpu` mark) it also runs and matches.
Latency is the benchmark's job (tools/bench/tvm_cpu.py): no timing assertions here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tvm")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo  # noqa: E402

import requant  # noqa: E402
from requant.frontends import from_torch  # noqa: E402
from requant.tools.bench.minilm_int8 import cosine, docstring_sentences, mean_pool  # noqa: E402

SEQ = 32
EVAL = 16

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm() -> tuple[object, dict[str, np.ndarray], list[dict[str, np.ndarray]]]:
    """(graph with a symbolic batch, 16 evaluation feeds, 2 calibration batches of 8)."""
    case = zoo.minilm(docstring_sentences(EVAL + 16), seq_len=SEQ)
    ids, mask = (t.numpy() for t in case.example_inputs)
    dims = {"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}}
    graph = from_torch(case.module, case.example_inputs, dynamic_dims=dims)
    feeds = {"input_ids": ids[:EVAL], "attention_mask": mask[:EVAL]}
    calib = [{"input_ids": ids[i:i + 8], "attention_mask": mask[i:i + 8]} for i in (EVAL, EVAL + 8)]
    return graph, feeds, calib


@pytest.fixture(scope="module")
def float_out(minilm) -> np.ndarray:
    graph, feeds, _ = minilm
    return requant.compile(graph, "cpu-fp32")(feeds)[0]


def _embedding_cosine(out: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return cosine(mean_pool(ref, mask), mean_pool(out, mask))


def test_tvm_cpu_fp32_matches_float(minilm, float_out) -> None:
    graph, feeds, _ = minilm
    cm = requant.compile(graph, "tvm-cpu-fp32", example_inputs=feeds)
    assert cm.stats["backend"] == "tvm" and cm.inputs[0]["shape"] == [EVAL, SEQ]
    out = cm(feeds)[0]
    err = np.abs(out - float_out).max() / np.abs(float_out).max()
    assert err <= 1e-4, f"max error {err:.2e} of the output's scale"


def test_tvm_cpu_int8_keeps_the_onnx_int8_accuracy(minilm, float_out) -> None:
    graph, feeds, calib = minilm
    mask = feeds["attention_mask"]
    # the same quantization on both backends (tvm-cpu-int8 smooths every linear input)
    onnx_int8 = requant.compile(graph, "cpu-int8", calibration=calib, holdout=0, smooth_scope="all")
    tvm_int8 = requant.compile(graph, "tvm-cpu-int8", example_inputs=feeds, calibration=calib, holdout=0)
    hist = tvm_int8.graph.op_histogram()
    assert hist["MatMulInteger"] == 36 and "com.microsoft.MatMulIntegerToFloat" not in hist
    cos_onnx = _embedding_cosine(onnx_int8(feeds)[0], float_out, mask).mean()
    cos_tvm = _embedding_cosine(tvm_int8(feeds)[0], float_out, mask).mean()
    assert cos_tvm >= 0.99 and abs(cos_tvm - cos_onnx) <= 0.002, f"TVM {cos_tvm:.5f} vs ONNX {cos_onnx:.5f}"


@pytest.fixture(scope="module")
def cuda_int8(minilm):
    from requant.backends.tvm.cuda import nvcc_status

    reason = nvcc_status()
    if reason:
        pytest.skip(reason)
    graph, feeds, calib = minilm
    # one of the two batches is held back for the accuracy report (measured only on a GPU)
    return requant.compile(graph, "cuda-int8", example_inputs=feeds, calibration=calib)


def test_cuda_int8_produces_a_library_and_cuda_source(cuda_int8, minilm, tmp_path) -> None:
    source = cuda_int8._runtime.cuda_source
    assert "__global__" in source and source.count("__dp4a(") >= 1
    saved = cuda_int8.save(tmp_path / "cuda")
    files = {p.name for p in saved.iterdir()}
    assert {"model.so", "model.cu", "model.fatbin", "model.onnx", "manifest.json"} <= files
    assert (saved / "model.cu").read_text() == source and (saved / "model.so").stat().st_size > 0
    from requant.backends.tvm.cuda import gpu_present

    if not gpu_present():
        assert "not measured (no CUDA GPU is present" in cuda_int8.report()
        loaded = requant.load(saved)
        with pytest.raises(requant.RequantError, match="no CUDA GPU is present"):
            loaded(minilm[1])


@pytest.mark.gpu
def test_cuda_int8_runs_and_matches_the_interpreter_on_a_gpu(cuda_int8, minilm, float_out) -> None:
    from requant.backends.tvm.cuda import gpu_present

    if not gpu_present():
        pytest.skip("no CUDA GPU on this machine")
    graph, feeds, _ = minilm
    reference = requant.ir.interpreter.run(cuda_int8.graph, feeds)[0]
    out = cuda_int8(feeds)[0]
    assert np.abs(out - reference).max() <= 1e-3 * np.abs(reference).max()
    assert _embedding_cosine(out, float_out, feeds["attention_mask"]).mean() >= 0.99
