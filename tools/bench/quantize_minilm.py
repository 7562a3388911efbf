"""all-MiniLM-L6-v2 quantized by requant's CPU targets next to ONNX Runtime's own
quantizers, in one run, on real sentences.

Data: 64 evaluation sentences and 32 other calibration sentences (docstrings of the
standard library, tools/bench/sentences.py), 64 tokens each; the evaluation runs as one
batch of 64. Every model starts from the same float ONNX file (requant cpu-fp32, opset
21 so ORT's quantizers can run on it). Rows: ONNX Runtime fp32, ORT quantize_dynamic
int8, ORT quantize_static QDQ int8 (its defaults, the same calibration batches), and
requant cpu-int8 (default: SmoothQuant alpha 0.7 on the LayerNorm outputs), cpu-int8 with
SmoothQuant on every quantized linear input (`smooth_scope="all"`), cpu-int8 without it,
cpu-int4, cpu-fp8 and cpu-fp4 (the last two simulated: quantize-dequantize on CPU).

Columns: mean and min cosine of mean-pooled embeddings to fp32; Spearman correlation
between all pairwise sentence similarities and fp32's; model size (ONNX file and its
external data); median latency of the 64 x 64 batch, all models timed round-robin in the
same run; speed-up over fp32; compile (quantization) time.

    python -m requant.tools.bench.quantize_minilm [--seconds 30]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from requant.tools import demo

__all__ = ["main", "spearman"]

REQUANT_ROWS = (
    ("requant cpu-int8", "cpu-int8", {}),
    ("requant cpu-int8, SmoothQuant on every linear input", "cpu-int8", {"smooth_scope": "all"}),
    ("requant cpu-int8, no SmoothQuant", "cpu-int8", {"smooth_alpha": None}),
    ("requant cpu-int4 (weight-only, g32)", "cpu-int4", {}),
    ("requant cpu-fp8 (simulated)", "cpu-fp8", {}),
    ("requant cpu-fp4 NVFP4 (simulated)", "cpu-fp4", {}),
)


def _w4a4_minmax(dtype: str) -> list:
    """W4A4 with one format and minmax ranges, no SmoothQuant: weights per output
    channel, activations per tensor, simulated by FakeQuantize (embeddings stay float)."""
    from requant.ir import dtype as dt
    from requant.ir.quant_formats import QuantScheme
    from requant.targets import STATS

    weights = QuantScheme(dt(dtype), "channel", axis=1)
    activations = QuantScheme(dt(dtype), "tensor")
    return ["canonicalize", "calibrate",
            ("quantize", {"weight_scheme": weights, "activation_scheme": activations, "method": "minmax", "stats": STATS,
                          "quantize_embeddings": False}),
            "cse", "dce"]


W4A4_ROWS = (
    ("W4A4 INT4 minmax (simulated)", "cpu-fp4", {"passes": _w4a4_minmax("int4")}),
    ("W4A4 FP4 E2M1 minmax (simulated)", "cpu-fp4", {"passes": _w4a4_minmax("fp4_e2m1")}),
    # LLM-FP4 (passes/llm_fp4.py): searched E/M split, bias and clipping per tensor,
    # per-channel activation exponent biases folded into the next weight's rows
    ("W4A4 LLM-FP4 searched + folded biases (cpu-fp4 search=True, simulated)", "cpu-fp4", {"search": True}),
)
"""The W4A4 comparison of issue 5: (row name, target, compile options)."""


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x), np.float64)
        r[order] = np.arange(len(x), dtype=np.float64)
        for value in np.unique(x[np.r_[False, np.diff(x[order]) == 0]] if len(x) > 1 else []):
            r[x == value] = r[x == value].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def _pairwise(emb: np.ndarray) -> np.ndarray:
    e = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
    sim = e @ e.T
    return sim[np.triu_indices(len(e), k=1)]


def _requant_row(name: str, float_path: Path, target: str, options: dict, batches: list) -> tuple[demo.Row, float]:
    import requant

    start = time.perf_counter()
    cm = requant.compile(str(float_path), target=target, calibration=batches, holdout=0, **options)
    seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        saved = cm.save(Path(tmp) / "m")
        size = demo._onnx_bytes(saved / "model.onnx")
    return demo.Row(name, lambda feeds: cm(**feeds)[0], size), seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="timing budget for all models together")
    args = ap.parse_args(argv)

    from requant.tools.bench.minilm import mean_pool

    with demo._silenced_transformers(), tempfile.TemporaryDirectory(prefix="requant-bench-") as tmp_name:
        tmp = Path(tmp_name)
        model, feeds, batches = demo._data()
        float_path = demo._export_float(model, batches[0], tmp)
        rows = [demo._session_row("ONNX Runtime fp32", float_path)]
        compile_s = {rows[0].name: 0.0}
        for name, build in (
            ("ORT quantize_dynamic int8", lambda: demo._ort_dynamic(float_path, tmp)),
            ("ORT quantize_static QDQ int8", lambda: demo._ort_static(float_path, tmp, batches)),
        ):
            start = time.perf_counter()
            rows.append(demo._guarded(name, build))
            compile_s[name] = time.perf_counter() - start
        for name, target, options in REQUANT_ROWS + W4A4_ROWS:
            try:
                row, seconds = _requant_row(name, float_path, target, options, batches)
            except Exception as exc:  # noqa: BLE001  (a failed target is a table row, not a crash)
                row, seconds = demo.Row(name, None, error=demo.error_line(exc)), float("nan")
            rows.append(row)
            compile_s[name] = seconds
        outputs = demo._accuracy(rows, feeds)
        mask = feeds["attention_mask"]
        ref_pairs = _pairwise(mean_pool(outputs[rows[0].name], mask))
        rho = {name: spearman(ref_pairs, _pairwise(mean_pool(out, mask))) for name, out in outputs.items()}
        rounds = demo._time(rows, feeds, args.seconds)

    n = feeds["input_ids"].shape[0]
    print(f"all-MiniLM-L6-v2 (trained), {n} real sentences x {demo.SEQ} tokens in one batch; calibration: "
          f"{demo.N_CALIB} other sentences in batches of {demo.CALIB_BATCH}; latency: median of {rounds} "
          f"round-robin runs\n")
    print("| model | cos mean | cos min | Spearman | size MB | size vs fp32 | latency ms | speed-up | compile s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = rows[0]
    for r in rows:
        if r.run is None:
            print(f"| {r.name} | FAILED: {r.error} | | | | | | | |")
            continue
        print(f"| {r.name} | {r.cos_mean:.4f} | {r.cos_min:.4f} | {rho[r.name]:.4f} | {r.size_bytes / 1e6:.1f} "
              f"| {r.size_bytes / base.size_bytes:.1%} | {r.ms:.1f} | {base.ms / r.ms:.2f}x | {compile_s[r.name]:.1f} |")
    by = {r.name: r for r in rows}
    q, dyn = by["requant cpu-int8"], by["ORT quantize_dynamic int8"]
    plain = by["requant cpu-int8, no SmoothQuant"]
    if q.run is not None and dyn.run is not None:
        checks = [
            ("cpu-int8 mean cosine >= 0.995", q.cos_mean >= 0.995),
            ("cpu-int8 Spearman >= 0.995", rho[q.name] >= 0.995),
            ("cpu-int8 size <= 27% of fp32", q.size_bytes <= 0.27 * base.size_bytes),
            ("cpu-int8 >= 1.4x faster than fp32", base.ms / q.ms >= 1.4),
            ("cpu-int8 no slower than ORT quantize_dynamic", q.ms <= dyn.ms),
        ]
        print()
        for text, ok in checks:
            print(f"- {text}: {'PASS' if ok else 'FAIL'}")
        if plain.run is not None:
            print(f"- SmoothQuant's cost: cpu-int8 {q.ms:.1f} ms vs {plain.ms:.1f} ms without smoothing "
                  f"({q.ms / plain.ms - 1:+.1%}; run-to-run noise on this machine is a few %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
