"""ONNX Runtime's slow fusions (`backends/onnx/runtime.SLOW_ORT_FUSIONS`): each fused
pattern against the same graph with that fusion off, in one run.

1. Residual + LayerNorm (Add + LayerNormalization, what ORT's SkipLayerNormFusion turns
   into com.microsoft SkipLayerNormalization) on shapes from a single token to a
   4 x 512 x 4096 batch;
2. all-MiniLM-L6-v2 (trained), 64 real sentences x 64 tokens: requant cpu-fp32 and
   cpu-int8 (default pipeline), each run once with ORT's defaults (the anchor) and once
   with requant's sessions (the fusions off).

Median ms over interleaved runs (same process, same threads), the fused node types ORT
produced, and the largest difference between the two outputs.

    python -m requant.tools.bench.ort_fusions [--seconds 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["main"]

SHAPES = ((1, 8, 384), (1, 128, 768), (8, 128, 768), (64, 64, 384), (4, 512, 4096))


def _residual_layernorm(shape: tuple[int, ...]) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    c = shape[-1]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(shape)) for n in ("x", "skip", "y")]
    nodes = [helper.make_node("Add", ["x", "skip"], ["sum"]),
             helper.make_node("LayerNormalization", ["sum", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12)]
    inits = [numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), n) for n in ("gamma", "beta")]
    graph = helper.make_graph(nodes, "residual_layernorm", io[:2], io[2:], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]).SerializeToString()


def _sessions(model: Any) -> dict[str, Any]:
    """{'ORT defaults': session, 'requant': session} on the same model."""
    from requant.backends.onnx import OnnxRuntimeSession

    return {"ORT defaults": OnnxRuntimeSession(model, disabled_optimizers=(), flush_denormals=False),
            "requant": OnnxRuntimeSession(model)}


def _fused_ops(model: Any, disabled: tuple[str, ...]) -> str:
    """The com.microsoft node types ORT's optimised graph holds."""
    import onnx
    import onnxruntime as ort

    from requant.backends.onnx.runtime import make_session_options

    with tempfile.TemporaryDirectory() as tmp:
        opts = make_session_options()
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"], disabled_optimizers=list(disabled))
        ops = sorted({n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node
                      if n.domain == "com.microsoft"})
    return ", ".join(ops) or "-"


def _interleaved(runs: dict[str, Callable[[], Any]], seconds: float) -> dict[str, float]:
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {k: [] for k in runs}
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or min(len(v) for v in times.values()) < 5:
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def _max_rel_diff(ours: np.ndarray, anchor: np.ndarray) -> str:
    scale = float(np.abs(anchor).max()) or 1.0
    return f"max rel diff {float(np.abs(ours.astype(np.float64) - anchor).max()) / scale:.1e}"


def _compare(label: str, model: Any, feeds: dict[str, np.ndarray], seconds: float,
             agreement: Callable[[np.ndarray, np.ndarray], str] = _max_rel_diff) -> None:
    from requant.backends.onnx.runtime import SLOW_ORT_FUSIONS

    sessions = _sessions(model)
    outs = {k: s(**feeds)[0] for k, s in sessions.items()}
    ms = _interleaved({k: (lambda s=s: s(**feeds)) for k, s in sessions.items()}, seconds)
    base, ours = ms["ORT defaults"], ms["requant"]
    print(f"| {label} | {_fused_ops(model, ())} | {base:.3f} | {_fused_ops(model, SLOW_ORT_FUSIONS)} | {ours:.3f} "
          f"| {base / ours:.2f}x | {agreement(outs['requant'], outs['ORT defaults'])} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="timing budget per MiniLM model (shapes: a tenth)")
    args = ap.parse_args(argv)

    import onnxruntime

    import requant
    from requant.backends.onnx.runtime import physical_cores
    from requant.tools import demo
    from requant.tools.bench.minilm import cosine, mean_pool

    print(f"ONNX Runtime {onnxruntime.__version__}, {physical_cores()} threads; median ms of interleaved runs\n")
    print("| graph | ORT defaults: fused ops | ms | requant session: fused ops | ms | speed-up | agreement |")
    print("|---|---|---:|---|---:|---:|---:|")
    rng = np.random.default_rng(1)
    for shape in SHAPES:
        feeds = {n: rng.standard_normal(shape).astype(np.float32) for n in ("x", "skip")}
        _compare(f"Add + LayerNorm {'x'.join(map(str, shape))}", _residual_layernorm(shape), feeds, args.seconds / 10)

    with demo._silenced_transformers(), tempfile.TemporaryDirectory(prefix="requant-ort-fusions-") as tmp_name:
        tmp = Path(tmp_name)
        model, feeds, batches = demo._data()
        float_path = demo._export_float(model, batches[0], tmp)
        int8 = requant.compile(str(float_path), target="cpu-int8", calibration=batches, holdout=0)
        int8_path = int8.save(tmp / "int8") / "model.onnx"
        n = feeds["input_ids"].shape[0]

        def embeddings_agree(ours: np.ndarray, anchor: np.ndarray) -> str:
            mask = feeds["attention_mask"]
            return f"embedding cos min {cosine(mean_pool(ours, mask), mean_pool(anchor, mask)).min():.5f}"

        for label, path in ((f"MiniLM fp32, {n}x{demo.SEQ}", float_path), (f"MiniLM cpu-int8, {n}x{demo.SEQ}", int8_path)):
            _compare(label, str(path), feeds, args.seconds, embeddings_agree)
    print("\nagreement: requant's session against ORT's defaults on the same model (max |diff| / max |output|; "
          "MiniLM: cosine of mean-pooled embeddings, the int8 model's codes can round differently where "
          "float sums are reassociated)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
