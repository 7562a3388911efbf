"""Static int8 quantization of the trained all-MiniLM-L6-v2 with requant's defaults:
"smoothquant" -> calibrate -> "quantize" -> "lower_quant" -> ONNX Runtime.

Real sentences (the first sentences of installed packages' docstrings, as
tools/bench/minilm_int8.py uses): 16 to calibrate on, 16 others to evaluate, 32 tokens.
Checks: every linear lowered to an integer kernel (the attention blocks' Q/K/V linears
with their attention to QAttention, the rest to MatMulIntegerToFloat), LayerNorm / Gelu
left float, constants <= 27% of the float model's bytes, and mean-pooled sentence embeddings
with cosine >= 0.99 (mean) against the float graph, both in ONNX Runtime. (The full-size
measurement, 64 x 64 tokens and timings, is the tool's job: no timing assertions here.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo  # noqa: E402

from requant.backends.onnx import OnnxRuntimeSession  # noqa: E402
from requant.frontends import from_torch  # noqa: E402
from requant.passes import PassManager, get_pass  # noqa: E402
from requant.passes.calibration import collect_stats  # noqa: E402
from requant.tools.bench.minilm_int8 import cosine, docstring_sentences, mean_pool  # noqa: E402

SEQ = 32


@pytest.mark.slow
def test_minilm_int8_defaults_keep_embeddings():
    sentences = docstring_sentences(32)
    case = zoo.minilm(sentences, seq_len=SEQ)
    ids, mask = (t.numpy() for t in case.example_inputs)
    dims = {"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}}
    graph = get_pass("canonicalize")(from_torch(case.module, case.example_inputs, dynamic_dims=dims)).graph
    calib = [{"input_ids": ids[i:i + 8], "attention_mask": mask[i:i + 8]} for i in (16, 24)]
    float_out = OnnxRuntimeSession(graph)(ids[:16], mask[:16])[0]

    q = graph.clone()
    smoothed = PassManager([get_pass("smoothquant", calibration=calib, scope="all")], verify=True).run(q)
    smooth_stats = smoothed.records[0].stats
    assert smooth_stats["skipped:no_stats"] == 0 and smooth_stats["activations_smoothed"] >= 12
    stats = collect_stats(smoothed.graph, calib, progress=False)
    result = PassManager([get_pass("quantize", stats=stats), get_pass("lower_quant"), get_pass("dce")],
                         verify=True).run(smoothed.graph)
    quant_stats = result.records[0].stats
    assert quant_stats["ops_quantized"] == 36 and quant_stats["skipped"] == 0
    assert quant_stats["embeddings_quantized"] >= 1
    assert quant_stats["bytes_after"] <= 0.27 * quant_stats["bytes_before"]
    hist = result.graph.op_histogram()
    # per layer: Q/K/V + attention fused into one QAttention, the output and the two FFN
    # linears as MatMulIntegerToFloat
    assert hist["com.microsoft.MatMulIntegerToFloat"] == 18 and hist["com.microsoft.QAttention"] == 6
    assert "DequantizeLinear" not in hist and "MatMul" not in hist and "ScaledDotProductAttention" not in hist
    assert hist["LayerNormalization"] == 13 and hist["Gelu"] == 6

    out = OnnxRuntimeSession(result.graph)(ids[:16], mask[:16])[0]
    cos = cosine(mean_pool(float_out, mask[:16]), mean_pool(out, mask[:16]))
    assert cos.mean() >= 0.99 and cos.min() >= 0.98, f"cosine mean {cos.mean():.5f} min {cos.min():.5f}"
    assert np.isfinite(out).all()
