"""TVM on this CPU next to ONNX Runtime, in one run, through the public API:
all-MiniLM-L6-v2 with its trained weights, 64 real sentences x 64 tokens in one batch,
`requant.compile(float.onnx, target=...)` for tvm-cpu-fp32 and tvm-cpu-int8
(dims={"batch": 64}), ONNX Runtime fp32 (requant cpu-fp32) as the baseline and requant
cpu-int8 on ONNX Runtime, quantized as tvm-cpu-int8 is (smooth_scope="all"), as the int8
reference. Prints one table (median latency over interleaved round-robin runs, ratio to
ORT fp32, max relative error vs ORT fp32, cosine of mean-pooled embeddings, compile
time), the per-op-kind time of both TVM builds, and PASS/FAIL lines for the TVM targets'
bars. Both int8 targets also run without SmoothQuant (`smooth_alpha=None`): what its
per-channel multiplies cost on each backend. `--shapes` adds GFLOP/s of MiniLM's matmul
shapes (TVM default build, requant's schedules, ONNX Runtime).

    python -m requant.tools.bench.tvm_cpu [--seconds 20] [--shapes]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main", "matmul_shapes_table"]

logger = logging.getLogger(__name__)

BATCH, SEQ = 64, 64
MATMUL_SHAPES = ((384, 384), (384, 1536), (1536, 384))
FP32_REL_TOL = 1e-4      # tvm-cpu-fp32: max |y - y_ort| / max |y_ort|
FP32_LATENCY_BAR = 1.3   # tvm-cpu-fp32 latency <= 1.3x ORT fp32
NO_SMOOTHING = {"smooth_alpha": None}
ORT_INT8 = "ONNX Runtime int8 (cpu-int8, smooth_scope='all')"
INT8_COS_TOL = 0.002     # tvm-cpu-int8 mean cosine within this of the ONNX cpu-int8 model's


# ----------------------------------------------------------------------------- matmul shapes


def _gflops(m: int, k: int, n: int, seconds: float) -> float:
    return 2.0 * m * k * n / seconds / 1e9


def matmul_shapes_table(seconds: float, default: bool = True) -> list[str]:
    """GFLOP/s of x[64, 64, K] @ W[K, N] + b: TVM default, requant's schedule, ORT."""
    import tvm
    from tvm import relax
    from tvm.relax import op as R

    from requant.backends.tvm import pipeline
    from requant.tools.bench import matmul_kernels as mk

    lines = ["| M x K x N | TVM default GFLOP/s | TVM requant GFLOP/s | ONNX Runtime GFLOP/s |", "|---|---:|---:|---:|"]
    for k, n in MATMUL_SHAPES:
        case = mk.Case.make(k, n)
        bb = relax.BlockBuilder()
        x = relax.Var("x", relax.TensorType(case.x.shape, "float32"))
        with bb.function("main", [x]):
            with bb.dataflow():
                y = bb.emit_output(R.add(R.matmul(x, relax.const(case.w)), relax.const(case.b)))
            bb.emit_func_output(y)
        mod = bb.get()
        ours = pipeline.build_cpu(mod)
        sess = mk._session(mk.build_fp32(case))
        vm = relax.VirtualMachine(ours, tvm.cpu())
        xt = tvm.runtime.tensor(case.x)
        np.testing.assert_allclose(vm["main"](xt).numpy(), sess.run(None, {"x": case.x})[0], rtol=1e-3, atol=1e-3)
        t_ours, t_ort = [], []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or len(t_ours) < 5:
            t0 = time.perf_counter()
            vm["main"](xt)
            t_ours.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            sess.run(None, {"x": case.x})
            t_ort.append(time.perf_counter() - t0)
        t_def = float("nan")
        if default:  # untuned TVM is ~100x slower: one timed call
            dvm = relax.VirtualMachine(pipeline.build_cpu(mod, schedule=False), tvm.cpu())
            dvm["main"](xt)
            t0 = time.perf_counter()
            dvm["main"](xt)
            t_def = time.perf_counter() - t0
        m = BATCH * SEQ
        lines.append(f"| {m} x {k} x {n} | {_gflops(m, k, n, t_def):.1f} | "
                     f"{_gflops(m, k, n, statistics.median(t_ours)):.1f} | {_gflops(m, k, n, statistics.median(t_ort)):.1f} |")
    return lines


# ----------------------------------------------------------------------------- main


def _compiled_row(name: str, float_path: Path, target: str, feeds: dict, batches: list,
                  **extra: Any) -> tuple[Any, Any, float]:
    """(demo.Row, the compiled model, compile seconds) of `requant.compile(..., target, **extra)`."""
    import requant
    from requant.tools import demo

    calibration = batches if "int8" in target else [feeds]
    options = {"dims": {"batch": BATCH}} if target.startswith("tvm") else {}
    options.update(extra)
    start = time.perf_counter()
    cm = requant.compile(str(float_path), target=target, calibration=calibration, holdout=0, **options)
    seconds = time.perf_counter() - start
    return demo.Row(name, lambda f: cm(**f)[0]), cm, seconds


def _breakdown(cm: Any, feeds: dict) -> tuple[list, dict]:
    """Per-op-kind times of a tvm-* model (its executable through pipeline.profile_by_kind)."""
    from requant.backends.tvm import pipeline
    from requant.tools import demo

    executable = getattr(getattr(cm, "_runtime", None), "_executable", None)  # the build compile() made
    if executable is None:
        from requant.backends.tvm.emit import to_relax

        executable = pipeline.build_cpu(to_relax(cm.graph, bind_dims={"batch": BATCH}))
    return pipeline.profile_by_kind(executable, [feeds[n] for n in demo.INPUTS])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="timing budget for the models together")
    ap.add_argument("--shapes", action="store_true", help="also time MiniLM's matmul shapes alone")
    args = ap.parse_args(argv)

    from requant.backends.tvm import pipeline
    from requant.tools import demo

    with demo._silenced_transformers(), tempfile.TemporaryDirectory(prefix="requant-bench-") as tmp_name:
        model, feeds, batches = demo._data()
        float_path = demo._export_float(model, batches[0], Path(tmp_name))
        # ONNX Runtime's int8 row quantizes as tvm-cpu-int8 does (SmoothQuant on every linear
        # input) so that the two backends run the same graph; the "no SmoothQuant" rows show
        # what smoothing's per-channel multiplies cost on each backend (TVM fuses them into
        # the quantize kernels; ONNX Runtime runs each as a Mul). Each follows its own
        # backend's row: a runtime's spinning worker threads slow the next runtime's call.
        specs = [("ONNX Runtime fp32 (cpu-fp32)", "cpu-fp32", {}), (ORT_INT8, "cpu-int8", {"smooth_scope": "all"}),
                 ("ONNX Runtime int8 (cpu-int8), no SmoothQuant", "cpu-int8", NO_SMOOTHING),
                 ("TVM tvm-cpu-fp32", "tvm-cpu-fp32", {}), ("TVM tvm-cpu-int8", "tvm-cpu-int8", {}),
                 ("TVM tvm-cpu-int8, no SmoothQuant", "tvm-cpu-int8", NO_SMOOTHING)]
        rows, models, compile_s = [], {}, {}
        for name, target, extra in specs:
            row, cm, seconds = _compiled_row(name, float_path, target, feeds, batches, **extra)
            rows.append(row)
            compile_s[name] = seconds
            if target.startswith("tvm") and not extra:
                models[target] = cm
        outputs = demo._accuracy(rows, feeds)
        rounds = demo._time(rows, feeds, args.seconds)
        breakdowns = {t: _breakdown(models[t], feeds) for t in ("tvm-cpu-fp32", "tvm-cpu-int8")}

    base = rows[0]
    ref = outputs[base.name]
    rel = {r.name: float(np.abs(outputs[r.name] - ref).max() / np.abs(ref).max()) for r in rows}
    print(f"all-MiniLM-L6-v2 (trained), {BATCH} real sentences x {SEQ} tokens in one batch; median of {rounds} "
          f"interleaved round-robin runs; TVM threads: {pipeline.tvm_threads()}\n")
    print("| model | latency ms | vs ORT fp32 | max rel err vs ORT fp32 | cos mean | cos min | compile s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r.name} | {r.ms:.1f} | {r.ms / base.ms:.2f}x | {rel[r.name]:.2e} | {r.cos_mean:.5f} | "
              f"{r.cos_min:.5f} | {compile_s[r.name]:.1f} |")
    for target, (kinds, kernels) in breakdowns.items():
        print()
        print(pipeline.format_breakdown(kinds, f"{target} time by op kind (one call, instrumented):"))
        print("slowest kernels (ms):")
        for name, ms in sorted(kernels.items(), key=lambda kv: -kv[1])[:5]:
            print(f"  {ms:8.2f}  {name[:110]}")
    by = {r.name: r for r in rows}
    fp32, int8, ort_int8 = by["TVM tvm-cpu-fp32"], by["TVM tvm-cpu-int8"], by[ORT_INT8]
    checks = [
        (f"tvm-cpu-fp32 max abs error / max |output| = {rel[fp32.name]:.2e} <= {FP32_REL_TOL:g}",
         rel[fp32.name] <= FP32_REL_TOL),
        (f"tvm-cpu-fp32 latency {fp32.ms:.1f} ms = {fp32.ms / base.ms:.2f}x ORT fp32 <= {FP32_LATENCY_BAR}x",
         fp32.ms <= FP32_LATENCY_BAR * base.ms),
        (f"tvm-cpu-int8 mean cosine {int8.cos_mean:.5f} within {INT8_COS_TOL} of ONNX cpu-int8's {ort_int8.cos_mean:.5f}",
         abs(int8.cos_mean - ort_int8.cos_mean) <= INT8_COS_TOL),
    ]
    print()
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}: {text}")
    if args.shapes:
        print()
        print("\n".join(matmul_shapes_table(seconds=max(args.seconds / 6, 2.0))))
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
