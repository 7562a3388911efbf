"""TVM's dense kernel over row counts 1 ... 512, next to ONNX Runtime, in one run.

What it measures
    One linear layer `y = x @ W + b`, x float32 [M, K], W [K, N] (default 768 x 3072:
    ViT-B's MLP, where 2 x 197 tokens ran at a third of the speed of 2 x 192), for
    row counts M that are multiples of the 8-row tile and the counts around them (1..7,
    M +- 1, ViT's 197 and 394). Each M is a build of its own: `requant.compile` is not
    involved, the Relax module (matmul + bias add) goes through `pipeline.build_cpu`,
    i.e. requant's packed dense kernel and its row-tail handling. ONNX Runtime runs the
    same layer (MatMul + Add) in requant's session settings. TVM and ONNX Runtime each
    run in a process of their own (`--worker`), so that neither runtime's threads slow
    the other; within a process the builds are timed one after the other (median of
    repeated calls within `--seconds` per row count, after a warm-up call), and both
    workers' outputs are checked against numpy.

What it prints
    One markdown table: M | TVM GFLOP/s | vs the multiple of 8 nearest to M (TVM's
    GFLOP/s at M over its GFLOP/s there) | TVM ms vs that multiple's ms | ONNX Runtime
    GFLOP/s | TVM / ONNX Runtime; then PASS/FAIL for the bar "within 15% of the
    multiple-of-tile figure" over the row counts of at least one tile (M >= 8). Fewer
    rows than a tile are a matrix-vector product that reads the whole weight once per
    call, so their GFLOP/s fall with M on any kernel: the table shows them against the
    8-row build's time (a tail row count must not cost more than the padded tile) and
    against ONNX Runtime.

How to run
    python -m requant.tools.bench.tvm_rows [--seconds 0.5] [--k 768 --n 3072] [--rows 1 8 197 ...]
Needs apache-tvm, onnx and onnxruntime.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

import numpy as np

__all__ = ["ROWS", "TILE", "main", "reference_rows", "time_rows"]

logger = logging.getLogger(__name__)

TILE = 8
#: multiples of the tile, the counts around them, and ViT-B's 197 / 2 x 197 tokens
ROWS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 17, 23, 24, 25, 31, 32, 33, 63, 64, 65, 95, 96, 97, 127, 128, 129,
        191, 192, 193, 197, 200, 255, 256, 257, 383, 384, 385, 392, 394, 511, 512)
BAR = 0.15  # TVM GFLOP/s within 15% of its multiple-of-tile figure
SEED = 0
# float32 sums of K products in another order: well inside K * 2^-24 relative to |x| |W|
REL_TOL = 1e-4


def reference_rows(m: int, measured: Sequence[int]) -> int | None:
    """The multiple of the tile nearest to `m` among `measured` (the lower on a tie);
    the tile itself for fewer rows than a tile; None when none was measured."""
    multiples = [r for r in measured if r % TILE == 0]
    if not multiples:
        return None
    return min(multiples, key=lambda r: (abs(r - max(m, TILE)), r))


def _layer(k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED)
    return (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32), rng.standard_normal(n).astype(np.float32)


def _median_seconds(call, seconds: float) -> float:
    call()  # warm-up
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 5:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _tvm_caller(m: int, w: np.ndarray, b: np.ndarray, x: np.ndarray):
    import tvm
    from tvm import relax
    from tvm.relax import op as R

    from requant.backends.tvm import pipeline

    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType((m, w.shape[0]), "float32"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            y = bb.emit_output(R.add(R.matmul(xv, relax.const(w)), relax.const(b)))
        bb.emit_func_output(y)
    vm = relax.VirtualMachine(pipeline.build_cpu(bb.get()), tvm.cpu())
    xt = tvm.runtime.tensor(x)
    return lambda: vm["main"](xt)  # (ORT wraps the numpy input without a copy; TVM reads its own tensor)


def _ort_caller(m: int, w: np.ndarray, b: np.ndarray, x: np.ndarray):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from requant.backends.onnx import make_session_options

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])], "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, w.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, w.shape[1]])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = ort.InferenceSession(model.SerializeToString(), sess_options=make_session_options(),
                                providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, {"x": x})[0]


def time_rows(runtime: str, rows: Sequence[int], k: int, n: int, seconds: float) -> dict[int, float]:
    """{M: median seconds per call} of one runtime ("tvm" or "ort"), each M checked
    against numpy first."""
    w, b = _layer(k, n)
    rng = np.random.default_rng(SEED + 1)
    make = _tvm_caller if runtime == "tvm" else _ort_caller
    out = {}
    for m in rows:
        x = rng.standard_normal((m, k)).astype(np.float32)
        call = make(m, w, b, x)
        want = x @ w + b
        got = np.asarray(call() if runtime == "ort" else call().numpy())
        err = float(np.abs(got - want).max() / np.abs(want).max())
        if err > REL_TOL:
            raise RuntimeError(f"{runtime} M={m}: max relative error {err:.2e} > {REL_TOL}")
        out[m] = _median_seconds(call, seconds)
        logger.info("%s M=%d: %.3f ms", runtime, m, out[m] * 1e3)
    return out


def _worker(runtime: str, rows: Sequence[int], k: int, n: int, seconds: float) -> dict[int, float]:
    """`time_rows` in a process of its own (its JSON on stdout)."""
    cmd = [sys.executable, "-m", "requant.tools.bench.tvm_rows", "--worker", runtime, "--k", str(k), "--n", str(n),
           "--seconds", str(seconds), "--rows", *map(str, rows)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return {int(m): float(s) for m, s in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def _table(rows: Sequence[int], k: int, n: int, tvm_s: dict[int, float], ort_s: dict[int, float]) -> tuple[list[str], bool]:
    def gflops(m: int, s: float) -> float:
        return 2.0 * m * k * n / s / 1e9

    lines = [f"y = x[M, {k}] @ W[{k}, {n}] + b, float32; median per call; TVM and ONNX Runtime each in its own process",
             "", "| M | TVM GFLOP/s | vs multiple of 8 (GFLOP/s) | TVM ms vs multiple of 8 (ms) | ONNX Runtime GFLOP/s "
             "| TVM / ORT |", "|---:|---:|---:|---:|---:|---:|"]
    ok = True
    for m in rows:
        ref = reference_rows(m, rows)
        g, g_ort = gflops(m, tvm_s[m]), gflops(m, ort_s[m])
        vs = ms = "-"
        if ref is not None and ref != m:
            ratio = g / gflops(ref, tvm_s[ref])
            vs = f"{ratio:.2f} (M={ref})"
            ms = f"{tvm_s[m] / tvm_s[ref]:.2f}"
            if m >= TILE and ratio < 1.0 - BAR:
                ok = False
        lines.append(f"| {m} | {g:.1f} | {vs} | {ms} | {g_ort:.1f} | {g / g_ort:.2f}x |")
    return lines, ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=0.5, help="timing budget per row count and runtime")
    ap.add_argument("--k", type=int, default=768)
    ap.add_argument("--n", type=int, default=3072)
    ap.add_argument("--rows", type=int, nargs="+", default=list(ROWS))
    ap.add_argument("--worker", choices=("tvm", "ort"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    rows = sorted(set(args.rows))
    if args.worker:
        print(json.dumps(time_rows(args.worker, rows, args.k, args.n, args.seconds)))
        return 0
    tvm_s = _worker("tvm", rows, args.k, args.n, args.seconds)
    ort_s = _worker("ort", rows, args.k, args.n, args.seconds)
    lines, ok = _table(rows, args.k, args.n, tvm_s, ort_s)
    print("\n".join(lines))
    print()
    print(f"{'PASS' if ok else 'FAIL'}: TVM GFLOP/s within {BAR:.0%} of the nearest multiple of {TILE} "
          f"for every M >= {TILE}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
