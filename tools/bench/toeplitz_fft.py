"""Toeplitz / relative-position attention in FFT form against the quadratic form, on ONNX
Runtime and on TVM, in one run:

1. kernelized attention with RPE (Luo et al., arXiv 2106.12566) as a user writes it in
   torch (tests/models/kernelized_rpe.py: `RPEAttentionCore`, m = d = 64, 8 heads,
   batch 1), n = 256 ... 16384: each backend's quadratic build (`fft="off"`) and FFT
   build (`fft="always"`), latency, the inference's peak memory above the loaded model,
   and the largest error of each against a float64 evaluation of the same formula
   (normalised by the output's largest magnitude);
2. the Toeplitz product alone, `exp(b[h, j - i]) @ Y` (d = 64, 8 heads);
3. a causal depthwise convolution whose filter is as long as the sequence (64 channels);
4. TVM's FFT kernels alone against numpy.fft on the same batched columns (the complex
   FFT, and the fused Toeplitz product against numpy's rfft * S -> irfft);
5. the crossovers: per backend and pattern, the n where the FFT form overtook the
   quadratic one, interpolated in log n between the sizes measured, after two more sizes
   measured inside the bracket that holds it (the FFT form pads to a power of two, so its
   time is flat inside a bracket of powers of two while the quadratic one grows as n^2:
   close sizes make the interpolation tight); the crossover the pass's cost model picks
   for this shape from the rho it holds (passes/toeplitz_fft_crossovers.py, measured by
   an earlier run: an out-of-sample check, within 20% or not), read off the same sizes
   the same way; and this run's rho (time
   per FFT-form flop over time per quadratic-form flop: the flop ratio at the measured
   crossover), which `--write-crossovers` stores for the pass to read;
6. `onnx-dft` (not in the default run): the FFT forms of the Toeplitz product and the
   long convolution on ONNX Runtime under both of its FFT lowerings
   (backends/onnx/lowering/fft.py): ONNX's `DFT` against the four-step MatMuls, latency,
   peak memory and error;
7. end to end: a 2-layer pre-norm transformer of that attention (dim 512, 8 heads,
   m = 64) through `requant.compile` (cpu-fp32 and tvm-cpu-fp32, their default cost
   model deciding) against torch's eager run of the same naive model.

Every build is compiled, timed and measured in its own process (a fresh interpreter
per row, so no build's memory or thread pool disturbs another's), median of repeated
runs within `--seconds`. A build whose tensors would not fit the memory available is
reported as skipped, with the memory it would need, and so are a build's larger sizes
once one run of it took longer than `--max-row-seconds` (ONNX Runtime's DFT form of the
attention does).

    python -m requant.tools.bench.toeplitz_fft [--sizes 256,1024,4096] [--seconds 3]
        [--patterns attention,toeplitz,conv,kernels,e2e,onnx-dft] [--backends onnx,tvm] [--causal]
        [--write-crossovers]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main"]

SIZES = (256, 512, 1024, 2048, 4096, 8192, 16384)
HEADS, FEATURES, HEAD_DIM, CHANNELS = 8, 64, 64, 64
PATTERNS = ("attention", "toeplitz", "conv", "kernels", "e2e")  # the default run; also "onnx-dft"
BACKENDS = {"onnx": "cpu-fp32", "tvm": "tvm-cpu-fp32"}
_PATTERN_KEYS = {"attention": "kernelized_attention", "toeplitz": "toeplitz_matmul", "conv": "long_conv"}
_REFERENCE_MAX_N = 8192  # float64 references above this take minutes
_E2E_SIZES = (1024, 4096, 8192)


# ----------------------------------------------------------------------------- models


def _family():
    """tests/models/kernelized_rpe.py (the model family the tests use)."""
    models = Path(__file__).resolve().parents[2] / "tests" / "models"
    if not (models / "kernelized_rpe.py").is_file():
        raise SystemExit(f"toeplitz_fft: needs the repository's tests/models/kernelized_rpe.py (not found in {models})")
    sys.path.insert(0, str(models))
    import kernelized_rpe

    return kernelized_rpe


def _case(pattern: str, n: int, causal: bool) -> tuple[Any, tuple]:
    """(torch module, example inputs) of one benchmark row, seeded."""
    import torch

    family = _family()
    gen = torch.Generator().manual_seed(n)
    torch.manual_seed(0)
    if pattern == "attention":
        model = family.RPEAttentionCore(HEADS, max_len=n, causal=causal).eval()
        pq = torch.rand(1, HEADS, n, FEATURES, generator=gen) + 0.05
        pk = torch.rand(1, HEADS, n, FEATURES, generator=gen) + 0.05
        return model, (pq, pk, torch.randn(1, HEADS, n, HEAD_DIM, generator=gen))
    if pattern == "toeplitz":
        return family.RelativePositionMix(HEADS, max_len=n).eval(), (torch.randn(1, HEADS, n, HEAD_DIM, generator=gen),)
    if pattern == "conv":
        return family.DepthwiseLongConv(CHANNELS, taps=n).eval(), (torch.randn(1, CHANNELS, n, generator=gen),)
    if pattern == "e2e":
        model = family.RPETransformer(512, HEADS, FEATURES, layers=2, max_len=n, causal=causal).eval()
        return model, (torch.randn(1, n, 512, generator=gen),)
    raise ValueError(pattern)


def _quadratic_bytes(pattern: str, n: int, backend: str) -> float:
    """What the quadratic form's n x n tensors take (float32), with a margin: ONNX Runtime
    keeps several per head alive at once (the scores, the gathered and exponentiated bias,
    their product); TVM fuses the gather and the product into the scores' kernel, so
    about one per head is alive."""
    per_head = 4.0 * HEADS * n * n
    if pattern in ("attention", "e2e"):
        return per_head * (4 if backend == "onnx" else 1.5)
    if pattern == "toeplitz":
        return per_head * (2 if backend == "onnx" else 1.5)
    return 4.0 * CHANNELS * n * 2  # a conv never makes an n x n tensor


def _fft_bytes(pattern: str, n: int, backend: str) -> float:
    """What the FFT form holds at once: ONNX Runtime's decomposition materialises the
    attention's m x (d + 1) columns and the four-step transforms' intermediates (the
    factor 24, float [L, m, d + 1] tensors per head, covers the peak this benchmark's
    ONNX Runtime attention rows report); TVM's kernels work column block by column
    block."""
    from requant.ir.ops.fft import fft_length

    if backend == "onnx" and pattern == "attention":
        return 24.0 * fft_length(n) * HEADS * FEATURES * (HEAD_DIM + 1) * 4
    return 8.0 * fft_length(n) * HEADS * HEAD_DIM * 4


def _available_bytes() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float("inf")


# ----------------------------------------------------------------------------- one row, in its own process


class _PeakRss:
    """Samples this process's resident memory while running."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def now() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(0.002)

    def __enter__(self) -> _PeakRss:
        self.peak = self.now()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


def _timed(run, seconds: float) -> tuple[float, int]:
    run()  # warm-up
    times = []
    deadline = time.perf_counter() + seconds
    while not times or (time.perf_counter() < deadline and len(times) < 50):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3, len(times)


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Compile (or take torch's eager model), time, measure memory; save the output."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    model, inputs = _case(spec["pattern"], spec["n"], spec["causal"])
    arrays = tuple(t.numpy() for t in inputs)
    start = time.perf_counter()
    decisions = ""
    if spec["build"] == "torch":
        def run():
            with torch.no_grad():
                return model(*inputs).numpy()
    else:
        import requant

        options = {} if spec["fft"] is None else {"fft": spec["fft"]}
        if spec.get("onnx_form") == "dft":
            from requant.backends.onnx.lowering import fft as onnx_fft

            onnx_fft.MATMUL_MAX_FACTOR = 0  # every transform takes ONNX's DFT
        cm = requant.compile(model, BACKENDS[spec["backend"]], example_inputs=inputs, **options)
        for record in cm.stats.get("passes", []):
            if record["name"] == "toeplitz_fft":
                decisions = record["stats"].get("decisions", "")

        def run():
            return cm(*arrays)[0]
    compile_s = time.perf_counter() - start
    before = _PeakRss.now()
    with _PeakRss() as rss:
        ms, runs = _timed(run, spec["seconds"])
    out = run()
    np.save(spec["output"], out)
    return {"ms": ms, "runs": runs, "peak_mb": (rss.peak - before) / 2**20, "compile_s": compile_s,
            "decisions": decisions}


def _run_row(spec: dict[str, Any]) -> dict[str, Any]:
    """One row in a fresh process (`--worker`); its output array comes back through a file."""
    with tempfile.TemporaryDirectory(prefix="requant_bench_") as tmp:
        spec = {**spec, "output": str(Path(tmp) / "out.npy")}
        cmd = [sys.executable, "-m", "requant.tools.bench.toeplitz_fft", "--worker", json.dumps(spec)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode < 0:
            # a signal, not an exception: the last line of stderr is whatever warning came before
            name = signal.Signals(-proc.returncode).name
            why = " (the kernel's out-of-memory killer?)" if name == "SIGKILL" else ""
            return {"error": f"the worker was killed by {name}{why}"}
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
            return {"error": tail[0][:160]}
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["out"] = np.load(spec["output"])
        return result


# ----------------------------------------------------------------------------- float64 references


def _reference(pattern: str, n: int, causal: bool) -> np.ndarray | None:
    """The row's formula in float64, head by head (row blocks keep the n x n parts small)."""
    if n > _REFERENCE_MAX_N or pattern == "e2e":
        return None
    model, inputs = _case(pattern, n, causal)
    xs = [t.numpy().astype(np.float64) for t in inputs]
    if pattern == "conv":
        w = model.weight.detach().numpy().astype(np.float64)[:, 0, :]
        x = np.pad(xs[0][0], ((0, 0), (n - 1, 0)))
        out = np.stack([np.convolve(x[c], w[c][::-1], mode="valid") for c in range(CHANNELS)])
        return out[None]
    bias = model.bias.detach().numpy().astype(np.float64)
    out = np.zeros(xs[-1].shape)
    rel = np.arange(n)[None, :] - np.arange(n)[:, None] + n - 1
    block = 1024
    for h in range(HEADS):
        for r0 in range(0, n, block):
            c = np.exp(bias[h][rel[r0:r0 + block]])
            if pattern == "toeplitz":
                out[0, h, r0:r0 + block] = c @ xs[0][0, h]
                continue
            w = (xs[0][0, h, r0:r0 + block] @ xs[1][0, h].T) * c
            if causal:
                w = np.where(rel[r0:r0 + block] > n - 1, 0.0, w)
            out[0, h, r0:r0 + block] = (w @ xs[2][0, h]) / w.sum(-1, keepdims=True)
    return out


def _rel_error(out: np.ndarray, ref: np.ndarray | None) -> float | None:
    if ref is None:
        return None
    return float(np.max(np.abs(out.astype(np.float64) - ref)) / np.max(np.abs(ref)))


# ----------------------------------------------------------------------------- the sweeps


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _sweep(pattern: str, sizes: list[int], backends: list[str], seconds: float, causal: bool,
           max_row_seconds: float, note: str = "") -> dict:
    """Quadratic and FFT rows per backend and n; prints the table (its title followed by
    `note`), returns the timings."""
    title = {"attention": f"Kernelized attention with RPE (m = {FEATURES}, d = {HEAD_DIM}, {HEADS} heads, batch 1, "
                          f"{'causal' if causal else 'bidirectional'})",
             "toeplitz": f"Toeplitz product exp(b[h, j - i]) @ Y (d = {HEAD_DIM}, {HEADS} heads)",
             "conv": f"Causal depthwise convolution, filter length n ({CHANNELS} channels)"}[pattern]
    print(f"\n### {title}{note}\n")
    print("| n | backend | quadratic ms | FFT ms | speed-up | quadratic peak MB | FFT peak MB | "
          "quadratic err | FFT err |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    timings: dict[str, list[tuple[int, float, float]]] = {b: [] for b in backends}
    slow: dict[tuple[str, str], float] = {}  # (backend, form) -> ms of the last size run
    for n in sizes:
        ref = _reference(pattern, n, causal)
        for backend in backends:
            rows = {}
            for form, fft in (("quadratic", "off"), ("fft", "always")):
                need = _quadratic_bytes(pattern, n, backend) if form == "quadratic" else _fft_bytes(pattern, n, backend)
                if need > 0.8 * _available_bytes():
                    rows[form] = {"skipped": f"{form} skipped: needs ~{need / 2**30:.1f} GiB"}
                    continue
                last = slow.get((backend, form), 0.0)
                if last > 1e3 * max_row_seconds:
                    rows[form] = {"skipped": f"{form} skipped: the previous size took {last / 1e3:.0f} s a run"}
                    continue
                rows[form] = _run_row({"pattern": pattern, "n": n, "causal": causal, "backend": backend,
                                       "build": "requant", "fft": fft, "seconds": seconds})
                slow[(backend, form)] = rows[form].get("ms", 0.0)
            q, f = rows["quadratic"], rows["fft"]
            qms, fms = q.get("ms"), f.get("ms")
            speedup = qms / fms if qms and fms else None
            if qms and fms:
                timings[backend].append((n, qms, fms))
            note = "; ".join(x for x in (q.get("skipped"), q.get("error"), f.get("skipped"), f.get("error")) if x)
            print(f"| {n} | {backend} | {_fmt(qms, '.2f')} | {_fmt(fms, '.2f')} | "
                  f"{_fmt(speedup, '.2f') + 'x' if speedup else '-'} | {_fmt(q.get('peak_mb'), '.0f')} | "
                  f"{_fmt(f.get('peak_mb'), '.0f')} | {_fmt(_rel_error(q['out'], ref) if 'out' in q else None, '.1e')} | "
                  f"{_fmt(_rel_error(f['out'], ref) if 'out' in f else None, '.1e')} |" + (f" {note}" if note else ""))
            sys.stdout.flush()
    return timings


def _kernels(sizes: list[int], seconds: float) -> None:
    """TVM's FFT kernels against numpy.fft on the same batched columns, this process."""
    import tvm

    from requant.backends.tvm import fft_kernels
    from requant.backends.tvm.pipeline import host_llvm_target, tvm_threads

    print(f"\n### TVM FFT kernels vs numpy.fft (float32, 512 columns; TVM on {tvm_threads()} threads, numpy on one)\n")
    print("| kernel | L | TVM ms | numpy ms | TVM vs numpy | max rel diff |")
    print("|---|---:|---:|---:|---:|---:|")
    target = host_llvm_target()
    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    cols = 512
    from requant.ir.ops.fft import fft_length

    for length in sorted({fft_length(n) for n in sizes}):
        xr = rng.standard_normal((1, length, cols)).astype(np.float32)
        xi = rng.standard_normal((1, length, cols)).astype(np.float32)
        func = fft_kernels.complex_fft_func(1, length, cols, -1)
        lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)
        args = [tvm.runtime.tensor(a, dev) for a in (xr, xi, fft_kernels.twiddles(length), xr * 0, xi * 0)]
        tvm_ms, _ = _timed(lambda: lib["main"](*args), seconds)
        z = (xr + 1j * xi).astype(np.complex64)
        np_ms, _ = _timed(lambda: np.fft.fft(z, axis=1), seconds)
        want = np.fft.fft(z.astype(np.complex128), axis=1)
        got = args[3].numpy() + 1j * args[4].numpy()
        diff = np.abs(got - want).max() / np.abs(want).max()
        print(f"| complex FFT | {length} | {tvm_ms:.2f} | {np_ms:.2f} | {np_ms / tvm_ms:.2f}x | {diff:.1e} |")
        n = length // 2
        x = xr[:, :n]
        h = rng.standard_normal(length)
        spectrum = np.fft.rfft(h)
        s = np.stack([spectrum.real, spectrum.imag], -1).astype(np.float32)[None, :, None, :]
        func = fft_kernels.toeplitz_fft_func(1, n, cols, length, 1, 1)
        lib2 = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)
        args2 = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in (x, s, fft_kernels.twiddles(length), x * 0)]
        tvm_ms, _ = _timed(lambda: lib2["main"](*args2), seconds)
        s64 = spectrum.astype(np.complex64)[:, None]
        np_ms, _ = _timed(lambda: np.fft.irfft(np.fft.rfft(x[0], n=length, axis=0) * s64, n=length, axis=0)[:n], seconds)
        want = np.fft.irfft(np.fft.rfft(x[0].astype(np.float64), n=length, axis=0) * spectrum[:, None], n=length, axis=0)[:n]
        diff = np.abs(args2[3].numpy()[0] - want).max() / np.abs(want).max()
        print(f"| Toeplitz product (rfft * S, irfft) | {length} | {tvm_ms:.2f} | {np_ms:.2f} | {np_ms / tvm_ms:.2f}x | "
              f"{diff:.1e} |")
        sys.stdout.flush()


def _onnx_forms(sizes: list[int], seconds: float, max_row_seconds: float) -> None:
    """The FFT forms of the Toeplitz product and the long convolution on ONNX Runtime
    under its two FFT lowerings, each build in its own process."""
    print("\n### ONNX Runtime's FFT lowerings: ONNX DFT vs four-step MatMuls (the FFT form of each pattern)\n")
    print("| pattern | n | DFT ms | MatMul ms | MatMul vs DFT | DFT peak MB | MatMul peak MB | DFT err | MatMul err |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for pattern in ("toeplitz", "conv"):
        slow = 0.0
        for n in sizes:
            if slow > 1e3 * max_row_seconds:
                print(f"| {pattern} | {n} | skipped: the previous size took {slow / 1e3:.0f} s a run |")
                continue
            ref = _reference(pattern, n, False)
            rows = {form: _run_row({"pattern": pattern, "n": n, "causal": False, "backend": "onnx", "build": "requant",
                                    "fft": "always", "seconds": seconds, "onnx_form": form})
                    for form in ("dft", "matmul")}
            d, m = rows["dft"], rows["matmul"]
            slow = max(d.get("ms", 0.0), m.get("ms", 0.0))
            ratio = d["ms"] / m["ms"] if "ms" in d and "ms" in m else None
            errors = "; ".join(x["error"] for x in (d, m) if "error" in x)
            print(f"| {pattern} | {n} | {_fmt(d.get('ms'), '.2f')} | {_fmt(m.get('ms'), '.2f')} | "
                  f"{_fmt(ratio, '.2f') + 'x' if ratio else '-'} | {_fmt(d.get('peak_mb'), '.0f')} | "
                  f"{_fmt(m.get('peak_mb'), '.0f')} | {_fmt(_rel_error(d['out'], ref) if 'out' in d else None, '.1e')} | "
                  f"{_fmt(_rel_error(m['out'], ref) if 'out' in m else None, '.1e')} |" + (f" {errors}" if errors else ""))
            sys.stdout.flush()


def _flops(pattern: str, n: int) -> tuple[float, float]:
    from requant.ir.ops.fft import fft_length
    from requant.passes.toeplitz_fft import fft_flops, quadratic_flops

    length = fft_length(n)
    if pattern == "attention":
        return quadratic_flops("kernelized_attention", n, m=FEATURES, e=HEAD_DIM + 1), fft_flops(length, FEATURES * (HEAD_DIM + 1))
    if pattern == "toeplitz":
        return quadratic_flops("toeplitz_matmul", n, e=HEAD_DIM), fft_flops(length, HEAD_DIM)
    return quadratic_flops("long_conv", n, k=n), fft_flops(length, 1)


def _measured_crossover(points: list[tuple[int, float, float]]) -> float | None:
    """The n where the FFT form overtakes the quadratic one for good, interpolated in log n
    on log(t_q / t_f); 0 when it is ahead from the first size, None when never."""
    last_behind = None
    for i, (_, q, f) in enumerate(points):
        if f >= q:
            last_behind = i
    if last_behind is None:
        return 0.0
    if last_behind == len(points) - 1:
        return None
    (n0, q0, f0), (n1, q1, f1) = points[last_behind], points[last_behind + 1]
    a, b = math.log(q0 / f0), math.log(q1 / f1)
    frac = a / (a - b)
    return float(math.exp(math.log(n0) + frac * (math.log(n1) - math.log(n0))))


def _bracket(points: list[tuple[int, float, float]]) -> tuple[int, int] | None:
    """The two sizes measured on either side of the crossover, when it lies between two."""
    crossing = _measured_crossover(points)
    if not crossing:
        return None
    return max(n for n, _, _ in points if n <= crossing), min(n for n, _, _ in points if n > crossing)


def _sizes_inside(lo: int, hi: int, count: int = 2) -> list[int]:
    """`count` sizes spread geometrically strictly between lo and hi (multiples of 64)."""
    inside = {int(round(lo * (hi / lo) ** (i / (count + 1)) / 64)) * 64 for i in range(1, count + 1)}
    return sorted(n for n in inside if lo < n < hi)


def _modelled(pattern: str, rho: float, sizes: list[int]) -> list[tuple[int, float, float]]:
    """The cost model's view of the sizes measured: (n, quadratic flops, rho x FFT flops),
    which `_measured_crossover` reads as it reads timings. The same sizes and the same
    interpolation on both sides, so the two crossovers differ only by rho and the flop
    model (the FFT form's padding to a power of two makes the flop ratio drop just above
    each power of two: the sizes measured decide which of those drops either side sees)."""
    return [(n, q, rho * f) for n in sizes for q, f in [_flops(pattern, n)]]


def _rho_at(points: list[tuple[int, float, float]], pattern: str, n_star: float | None) -> float:
    """rho (time per FFT-form flop / time per quadratic-form flop). With a measured
    crossover n*, where both forms take the same time, rho is the flop ratio there,
    quadratic_flops(n*) / fft_flops(n*), so the cost model's crossover for this shape is
    the measured one; without one in the range, the time ratio at the size nearest to it
    (the largest when the FFT form never won, the smallest when it always did)."""
    if n_star:
        q, f = _flops(pattern, int(round(n_star)))
        return q / f
    n, t_q, t_f = points[-1] if n_star is None else points[0]
    q, f = _flops(pattern, n)
    return (t_f / f) / (t_q / q)


def _stored_rho(backend: str, key: str) -> float | None:
    from requant.passes.toeplitz_fft_crossovers import CROSSOVERS

    entry = CROSSOVERS.get(backend, {}).get(key)
    return float(entry["rho"]) if entry else None


def _crossovers(results: dict[str, dict], causal: bool) -> dict[str, dict[str, dict]]:
    print("\n### Crossovers (the pass's cost model)\n")
    print("| pattern | backend | measured crossover n | cost model's rho (stored) | cost model's crossover n | "
          "within 20% | this run's rho |")
    print("|---|---|---:|---:|---:|---|---:|")
    fitted: dict[str, dict[str, dict]] = {}
    for pattern, per_backend in results.items():
        for backend, points in per_backend.items():
            if not points:
                continue
            key = _PATTERN_KEYS[pattern] + ("_f64" if causal and pattern == "attention" else "")
            measured = _measured_crossover(points)
            rho = _rho_at(points, pattern, measured)
            stored = _stored_rho(backend, key)
            sizes = [p[0] for p in points]
            predicted = _measured_crossover(_modelled(pattern, stored, sizes)) if stored else None
            close = "-" if not measured or not predicted else (
                "yes" if abs(predicted - measured) <= 0.2 * measured else "no")

            def shown(crossing: float | None) -> str:
                return (f"{crossing:.0f}" if crossing else f"below {sizes[0]}" if crossing == 0
                        else f"not reached (n <= {sizes[-1]})")

            print(f"| {key} | {backend} | {shown(measured)} | {_fmt(stored, '.2f')} | "
                  f"{shown(predicted) if stored else '-'} | {close} | {rho:.2f} |")
            fitted.setdefault(backend, {})[key] = {
                "rho": round(rho, 3), "crossover_n": int(round(measured)) if measured else None,
                "shape": {"heads": HEADS, "features": FEATURES, "head_dim": HEAD_DIM, "channels": CHANNELS,
                          "sizes": sizes}}
    return fitted


def _write_crossovers(fitted: dict[str, dict[str, dict]]) -> None:
    from requant.passes import toeplitz_fft_crossovers as data

    table = {b: dict(entries) for b, entries in data.CROSSOVERS.items()}
    for backend, entries in fitted.items():
        table.setdefault(backend, {}).update(entries)
    path = Path(data.__file__)
    text = path.read_text()
    head = text[: text.index("CROSSOVERS: dict")]
    body = "CROSSOVERS: dict[str, dict[str, dict]] = {\n"
    for backend, entries in table.items():
        body += f"    {backend!r}: {{\n"
        for key, entry in entries.items():
            body += f"        {key!r}: {entry!r},\n"
        body += "    },\n"
    body += "}\n"
    path.write_text(head + body)
    print(f"\nwrote {path}")


def _end_to_end(backends: list[str], seconds: float, causal: bool, sizes: list[int]) -> None:
    print(f"\n### End to end: 2-layer transformer, dim 512, {HEADS} heads, m = {FEATURES}, "
          f"{'causal' if causal else 'bidirectional'} (requant.compile, default cost model, vs torch eager)\n")
    print("| n | build | ms | vs torch eager | max rel diff vs torch | FFT rewrites |")
    print("|---:|---|---:|---:|---:|---|")
    for n in sizes:
        torch_row = _run_row({"pattern": "e2e", "n": n, "causal": causal, "backend": None, "build": "torch",
                              "fft": None, "seconds": seconds})
        t_ms = torch_row.get("ms")
        print(f"| {n} | torch eager | {_fmt(t_ms, '.1f')} | 1.00x | - | - |" + (f" {torch_row['error']}" if "error" in torch_row else ""))
        for backend in backends:
            row = _run_row({"pattern": "e2e", "n": n, "causal": causal, "backend": backend, "build": "requant",
                            "fft": None, "seconds": seconds})
            if "error" in row:
                print(f"| {n} | {BACKENDS[backend]} | - | - | - | {row['error']} |")
                continue
            diff = None
            if "out" in torch_row:
                ref = torch_row["out"].astype(np.float64)
                diff = float(np.max(np.abs(row["out"] - ref)) / np.max(np.abs(ref)))
            rewrites = row["decisions"].count("rewrote")
            print(f"| {n} | {BACKENDS[backend]} | {row['ms']:.1f} | {t_ms / row['ms']:.2f}x | {_fmt(diff, '.1e')} | "
                  f"{rewrites} |")
            sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--seconds", type=float, default=3.0, help="timing budget per row (after a warm-up run)")
    parser.add_argument("--patterns", default=",".join(PATTERNS))
    parser.add_argument("--backends", default="onnx,tvm")
    parser.add_argument("--causal", action="store_true", help="causal attention (float64 FFTs) instead of bidirectional")
    parser.add_argument("--e2e-sizes", default=",".join(map(str, _E2E_SIZES)))
    parser.add_argument("--max-row-seconds", type=float, default=60.0,
                        help="skip a build's larger sizes once one run of it took longer than this")
    parser.add_argument("--write-crossovers", action="store_true",
                        help="store the fitted rho per backend / pattern in passes/toeplitz_fft_crossovers.py")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return 0
    sizes = [int(s) for s in args.sizes.split(",") if s]
    patterns = [p for p in args.patterns.split(",") if p]
    backends = [b for b in args.backends.split(",") if b]
    print(f"requant toeplitz_fft benchmark: {os.cpu_count()} CPUs, sizes {sizes}, {args.seconds:g} s per row")
    results = {}
    for pattern in ("attention", "toeplitz", "conv"):
        if pattern not in patterns:
            continue
        timings = _sweep(pattern, sizes, backends, args.seconds, args.causal, args.max_row_seconds)
        for backend, points in timings.items():
            inside = _sizes_inside(*bracket) if (bracket := _bracket(points)) else []
            if inside:
                more = _sweep(pattern, inside, [backend], args.seconds, args.causal, args.max_row_seconds,
                              note=f", near the {backend} crossover")
                points[:] = sorted(points + more[backend])
        results[pattern] = timings
    if "kernels" in patterns:
        _kernels(sizes, args.seconds)
    if "onnx-dft" in patterns:
        _onnx_forms(sizes, args.seconds, args.max_row_seconds)
    if results:
        fitted = _crossovers(results, args.causal)
        if args.write_crossovers:
            _write_crossovers(fitted)
    if "e2e" in patterns:
        _end_to_end(backends, args.seconds, args.causal, [int(s) for s in args.e2e_sizes.split(",") if s])
    return 0


if __name__ == "__main__":
    sys.exit(main())
