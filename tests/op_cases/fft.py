"""Cases of the FFT family (requant.ir.ops.fft, domain "requant"): RFFT / IRFFT along
every kind of axis, padding and truncating lengths, odd and non-power-of-two lengths,
bins whose imaginary parts a real signal cannot have; ToeplitzMatMulFFT per head (axis
-2) and per channel (axis -1, a long convolution) with spectra that broadcast, and an
FFT size that is not a power of two; ToeplitzLowRankMatMulFFT with heads, batch,
causal and bidirectional Toeplitz factors, a feature count and a value width that fill
no vector. The oracle is the numpy reference in tests/op_references.py (dense DFT
matrices and the materialised Toeplitz product in float64).

Tolerances: an FFT output sums n inputs, so its rounding error is relative to the whole
output's scale, not to each (often cancelling) bin: f32 within 1e-5 of the output's
largest magnitude (float32 FFTs err by a few 1e-7 of it), f64 1e-12.
"""

from __future__ import annotations

import numpy as np

from op_cases.case import FLOAT_TOL, C, CaseList, Draws, I, Tol

__all__ = ["CASES"]

FFT_TOL = {
    **FLOAT_TOL,
    "f32": Tol(1e-5, 1e-5, scale_atol=True),
    "f64": Tol(1e-12, 1e-12, scale_atol=True),
    "f16": Tol(2.0**-10, 2.0**-9, scale_atol=True),
}
_NO_POW2_TVM = "TVM's fused Toeplitz kernels take power-of-two FFT sizes (the pass only makes those)"

CASES = CaseList(oracle="numpy", tol=FFT_TOL, export_opsets=(None, 17))
add = CASES.add
_d = Draws(1313)
r = _d.r


def _spectrum(*lead: int, n_fft: int, trail: tuple = ()) -> np.ndarray:
    """A spectrum RFFT(h, n_fft) of random real columns h, shaped lead + (bins,) + trail + (2,)."""
    h = _d.rng.uniform(-1.0, 1.0, size=lead + trail + (n_fft,))
    z = np.fft.rfft(h, axis=-1)
    z = np.moveaxis(z, -1, len(lead))
    return np.stack([z.real, z.imag], axis=-1).astype(np.float32)


# RFFT: the last axis, an inner axis with zero-padding, truncation to an odd length,
# a length that is not a power of two, f64, f16, symbols
add("RFFT", [I(r(3, 8))], label="last_axis", expect=(3, 5, 2))
add("RFFT", [I(r(2, 5, 3))], {"axis": 1, "n": 8}, label="inner_axis_padded", expect=(2, 5, 3, 2))
add("RFFT", [I(r(6, 4))], {"axis": 0, "n": 5}, label="first_axis_truncated_odd", expect=(3, 4, 2))
add("RFFT", [I(r(3, 12, dt="f64"))], label="f64_length_12", expect=(3, 7, 2))
add("RFFT", [I(r(2, 8, dt="f16"))], label="f16")
add("RFFT", [I(r(2, 8), shape=("B", 8))], label="symbolic_batch", expect=("B", 5, 2),
    refused={"tvm": "the TVM FFT kernels are specialised to static shapes (the TVM targets bind dims)"})

# the ONNX lowering's two forms (backends/onnx/lowering/fft.py): four-step MatMuls for
# lengths whose factors are at most 256 (1024 = 32 x 32, 15 = 5 x 3), ONNX's DFT for a
# larger prime factor (514 = 2 x 257, the prime 257) and for symbolic dims after the axis
add("RFFT", [I(r(2, 1000, 3))], {"axis": 1, "n": 1024}, label="four_step_1024", expect=(2, 513, 3, 2))
add("RFFT", [I(r(4, 15))], label="four_step_odd_15", expect=(4, 8, 2))
add("RFFT", [I(r(2, 300))], {"n": 514}, label="dft_form_prime_factor_257", expect=(2, 258, 2),
    known_failures={"onnxruntime": "ONNX Runtime's float32 DFT of a length that is not a power of two errs by "
                                   "up to ~1e-4 of the output's scale (514 points: 4e-5), against 1e-5"})
add("RFFT", [I(r(8, 3), shape=(8, "B"))], {"axis": 0}, label="dft_form_symbolic_columns", expect=(5, "B", 2),
    refused={"tvm": "the TVM FFT kernels are specialised to static shapes (the TVM targets bind dims)"})
add("IRFFT", [I(r(2, 513, 3, 2))], {"axis": 1, "n": 1024}, label="four_step_1024", expect=(2, 1024, 3))
add("IRFFT", [I(r(4, 8, 2))], {"n": 15}, label="four_step_odd_15", expect=(4, 15))
add("IRFFT", [I(r(3, 129, 2))], {"n": 257}, label="dft_form_prime_257", expect=(3, 257))

# IRFFT: even and odd n, padded and truncated bins, inner and first axes; bins 0 and n/2
# carry imaginary parts that must not contribute
add("IRFFT", [I(r(3, 5, 2))], label="even", expect=(3, 8))
add("IRFFT", [I(r(3, 4, 2))], {"n": 7}, label="odd", expect=(3, 7))
add("IRFFT", [I(r(2, 3, 4, 2))], {"axis": 1, "n": 8}, label="inner_axis_padded_bins", expect=(2, 8, 4))
add("IRFFT", [I(r(6, 2, 2, dt="f64"))], {"axis": 0, "n": 6}, label="f64_first_axis_truncated_bins", expect=(6, 2))

# ToeplitzMatMulFFT: heads along axis -2 (kernelized-attention shapes), channels along
# axis -1 (a long depthwise convolution), a runtime spectrum adding a leading dim over 33
# columns, f64, n_fft not 2^k
add("ToeplitzMatMulFFT", [I(r(2, 3, 6, 5)), C(_spectrum(3, n_fft=16, trail=(1,)))], {"n_fft": 16},
    label="heads_axis_m2", expect=(2, 3, 6, 5))
add("ToeplitzMatMulFFT", [I(r(2, 4, 7)), C(_spectrum(4, n_fft=16))], {"axis": -1, "n_fft": 16},
    label="channels_axis_m1", expect=(2, 4, 7))
add("ToeplitzMatMulFFT", [I(r(9, 33)), I(_spectrum(2, n_fft=32, trail=(1,)))], {"n_fft": 32},
    label="runtime_spectrum_broadcast_up", expect=(2, 9, 33))
add("ToeplitzMatMulFFT", [I(r(3, 5, 20, dt="f64")), C(_spectrum(3, n_fft=16, trail=(1,)).astype(np.float64))],
    {"n_fft": 16}, label="f64_heads_no_batch", expect=(3, 5, 20))
add("ToeplitzMatMulFFT", [I(r(2, 5, 4)), C(_spectrum(2, n_fft=10, trail=(1,)))], {"n_fft": 10},
    label="n_fft_not_pow2", refused={"tvm": _NO_POW2_TVM})


def _toeplitz_line(*lead: int, n: int, causal: bool) -> np.ndarray:
    line = np.exp(_d.rng.uniform(-0.5, 0.5, size=lead + (2 * n - 1,)))
    if causal:
        line[..., n:] = 0.0  # offsets j - i > 0
    return line


def _low_rank_spectrum(line: np.ndarray, n_fft: int) -> np.ndarray:
    from requant.ir.ops.fft import circulant_column

    z = np.fft.rfft(circulant_column(line, n_fft), axis=-1)
    return np.stack([z.real, z.imag], axis=-1).astype(np.float32)


def _features(*shape: int) -> np.ndarray:
    return _d.rng.uniform(0.05, 1.0, size=shape).astype(np.float32)


for _causal, _tag in ((False, "bidirectional"), (True, "causal")):
    add("ToeplitzLowRankMatMulFFT",
        [I(_features(2, 3, 7, 4)), I(_features(2, 3, 7, 4)), I(r(2, 3, 7, 5)),
         C(_low_rank_spectrum(_toeplitz_line(3, n=7, causal=_causal), 16))],
        {"n_fft": 16}, label=f"heads_batch_{_tag}", expect=(2, 3, 7, 5))
add("ToeplitzLowRankMatMulFFT",
    [I(_features(5, 33)), I(_features(5, 33)), I(r(5, 1)), I(_low_rank_spectrum(_toeplitz_line(n=5, causal=False), 16))],
    {"n_fft": 16}, label="normaliser_column_runtime_spectrum", expect=(5, 1))
add("ToeplitzLowRankMatMulFFT",
    [I(_features(2, 6, 3)), I(_features(2, 6, 3)), I(r(2, 6, 2)), C(_low_rank_spectrum(_toeplitz_line(2, n=6, causal=False), 12))],
    {"n_fft": 12}, label="n_fft_not_pow2", refused={"tvm": _NO_POW2_TVM})
