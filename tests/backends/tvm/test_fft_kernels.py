"""requant's FFT kernels (backends/tvm/fft_kernels.py) on their own: each CPU kernel
against numpy in float64 (float32 kernels within 1e-6 of the output's scale, float64
within 1e-13: an FFT's rounding grows with log n, these sizes are small), their
schedules (a parallel task loop, vectorised butterflies), and the CUDA forms: the
RetargetFFTKernels pass swaps them in and nvcc compiles them (no GPU here: the GPU run
is not part of these tests)."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from requant.backends.tvm import fft_kernels as fk  # noqa: E402
from requant.backends.tvm.pipeline import host_llvm_target  # noqa: E402
from requant.ir.ops.fft import circulant_column  # noqa: E402

RNG = np.random.default_rng(31)
SCALE_TOL = {"float32": 1e-6, "float64": 1e-13}


def run(func, *arrays):
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=host_llvm_target())
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in arrays]
    lib["main"](*args)
    return [a.numpy() for a in args]


def close(got, want, dtype: str) -> None:
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err <= SCALE_TOL[dtype], f"max error {err:.2e} of the output's scale"


@pytest.mark.parametrize("dtype,length,signs", [
    ("float32", 2, (-1, 1)),  # one radix-2 stage
    ("float32", 32, (-1, 1)),  # two radix-4 stages and a radix-2 one
    ("float64", 16, (-1,)),  # two radix-4 stages
])
def test_complex_fft(dtype: str, length: int, signs: tuple) -> None:
    cols = 2 * fk.lanes_for(dtype)
    xr, xi = (RNG.standard_normal((2, length, cols)).astype(dtype) for _ in range(2))
    z = xr.astype(np.float64) + 1j * xi
    for sign in signs:
        want = np.fft.fft(z, axis=1) if sign < 0 else np.fft.ifft(z, axis=1) * length
        out = run(fk.complex_fft_func(2, length, cols, sign, dtype), xr, xi, fk.twiddles(length, dtype), 0 * xr, 0 * xi)
        close(out[3] + 1j * out[4], want, dtype)


@pytest.mark.parametrize("per_column", [False, True])
def test_toeplitz_product_shared_and_per_column_spectra(per_column: bool) -> None:
    """One spectrum per outer index (heads), or one per column (channels): the per-column
    case splits the packed pair of real columns by the conjugate symmetry."""
    outer, n, length = 3, 11, 32
    cols = 2 * fk.lanes_for("float32")
    s_inner = cols if per_column else 1
    x = RNG.standard_normal((outer, n, cols)).astype(np.float32)
    h = RNG.standard_normal((outer, s_inner, length))
    spectrum = np.fft.rfft(h, axis=-1)  # [outer, s_inner, bins]
    s = np.stack([spectrum.real, spectrum.imag], -1).transpose(0, 2, 1, 3).astype(np.float32)
    out = run(fk.toeplitz_fft_func(outer, n, cols, length, outer, s_inner), x, s, fk.twiddles(length), 0 * x)
    want = np.fft.irfft(np.fft.rfft(x.astype(np.float64), n=length, axis=1) * spectrum.transpose(0, 2, 1),
                        n=length, axis=1)[:, :n]
    close(out[3], want, "float32")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_low_rank_toeplitz_product(dtype: str) -> None:
    outer, n, e, length = 2, 9, 3, 32
    m = 2 * fk.lanes_for(dtype)
    p, k = (RNG.uniform(0.05, 1.0, (outer, n, m)).astype(dtype) for _ in range(2))
    v = RNG.standard_normal((outer, n, e)).astype(dtype)
    line = np.exp(RNG.uniform(-0.5, 0.5, (outer, 2 * n - 1)))
    spectrum = np.fft.rfft(circulant_column(line, length), axis=-1)
    s = np.stack([spectrum.real, spectrum.imag], -1).astype(dtype)
    out = run(fk.toeplitz_low_rank_fft_func(outer, n, m, e, length, outer, dtype), p, k, v, s, fk.twiddles(length, dtype),
              np.zeros((outer, n, e), dtype))
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    toeplitz = line[:, j - i + n - 1]
    want = ((p.astype(np.float64) @ np.swapaxes(k, 1, 2)) * toeplitz) @ v
    close(out[5], want, dtype)


def test_cpu_kernels_are_parallel_and_vectorised() -> None:
    for func in (fk.complex_fft_func(2, 64, 32, -1), fk.toeplitz_fft_func(4, 20, 64, 64, 1, 1),
                 fk.toeplitz_low_rank_fft_func(2, 20, 32, 3, 64, 1)):
        text = func.script()
        assert "T.parallel(" in text and "T.vectorized(" in text
        assert func.attrs["tirx.is_scheduled"]  # requant's CPU schedule rules leave it alone


@pytest.mark.slow
def test_cuda_forms_compile_with_nvcc() -> None:
    from requant.backends.tvm.cuda import build_cuda, nvcc_status
    from requant.backends.tvm.emit import to_relax
    from requant.ir import Builder, Graph, tensor_type

    if nvcc_status() is not None:
        pytest.skip(nvcc_status())
    g = Graph("main")
    b = Builder(g)
    p, k = (b.input(name, tensor_type("f32", (2, 20, 16))) for name in ("p", "k"))
    v = b.input("v", tensor_type("f32", (2, 20, 4)))
    h = b.input("h", tensor_type("f32", (2, 64)))
    x = b.input("x", tensor_type("f32", (2, 3, 30)))
    spectrum = b.RFFT(h, axis=-1)
    g.outputs = [b.ToeplitzLowRankMatMulFFT(p, k, v, spectrum, n_fft=64),
                 b.IRFFT(b.RFFT(x, axis=-1), axis=-1, n=30)]
    built = build_cuda(to_relax(g), archs=("sm_80",))
    names = built.kernel_names
    assert any(name.startswith("requant_toeplitz_low_rank_fft") for name in names), names
    assert any(name.startswith("requant_complex_fft") for name in names), names
    assert "threadIdx.x" in built.cuda_source and built.fatbin
