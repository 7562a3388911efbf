"""The ONNX lowering's two forms of a transform (backends/onnx/lowering/fft.py): which
lengths take the four-step MatMuls and which ONNX's DFT, the ops each form emits, and
both forms against numpy.fft at lengths the op cases (tests/op_cases/fft.py, whose
dense oracle caps their size) do not reach, and the four-step inverse's accuracy on a
spectrum dominated by bin 0. Tolerance: float32 transforms within 1e-5 of the output's
largest magnitude (an FFT output sums every input; float32 FFTs err by a few 1e-7 of
it); the bin-0 case states its own, tighter bound."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from op_cases.case import Case, I, build_case  # noqa: E402

from requant.backends.onnx import OnnxRuntimeSession, to_onnx  # noqa: E402
from requant.backends.onnx.lowering.fft import MATMUL_MAX_FACTOR, matmul_factors  # noqa: E402

F32_SCALE_TOL = 1e-5


@pytest.mark.parametrize("length,factors", [
    (1, (1, 1)), (2, (2, 1)), (15, (5, 3)), (1024, (32, 32)), (2048, (64, 32)), (251, (251, 1)), (257, None),
    (1 << 16, (256, 256)), (1 << 17, None), (514, None)])
def test_matmul_factors(length: int, factors: tuple[int, int] | None) -> None:
    """The most balanced split, the larger factor first, none past MATMUL_MAX_FACTOR."""
    assert MATMUL_MAX_FACTOR == 256  # the cases above straddle it
    assert matmul_factors(length) == factors


def _ops(op: str, x: np.ndarray, attrs: dict) -> tuple[list[str], np.ndarray]:
    graph, feed = build_case(Case(op, [I(x)], attrs))
    model = to_onnx(graph)
    return [n.op_type for n in model.graph.node], OnnxRuntimeSession(model)(**feed)[0]


def _spectrum_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got[..., 0] + 1j * got[..., 1] - want).max() / np.abs(want).max())


def test_four_step_form_emits_matmuls_and_matches_numpy() -> None:
    x = np.random.default_rng(0).uniform(-1, 1, (3, 2048, 5)).astype(np.float32)
    ops, got = _ops("RFFT", x, {"axis": 1})
    assert "DFT" not in ops and ops.count("MatMul") == 6 and ops.count("Transpose") == 2
    assert _spectrum_error(got, np.fft.rfft(x.astype(np.float64), axis=1)) < F32_SCALE_TOL


def test_four_step_inverse_matches_numpy() -> None:
    rng = np.random.default_rng(1)
    z = rng.uniform(-1, 1, (2, 1025, 3, 2)).astype(np.float32)
    ops, got = _ops("IRFFT", z, {"axis": 1, "n": 2048})
    assert "DFT" not in ops and ops.count("MatMul") == 6
    want = np.fft.irfft(z[..., 0].astype(np.float64) + 1j * z[..., 1], n=2048, axis=1)
    assert np.abs(got - want).max() / np.abs(want).max() < F32_SCALE_TOL


def test_long_factor_takes_the_dft_form() -> None:
    x = np.random.default_rng(2).uniform(-1, 1, (1, 1 << 17)).astype(np.float32)
    ops, got = _ops("RFFT", x, {})
    assert "DFT" in ops and "MatMul" not in ops
    assert _spectrum_error(got, np.fft.rfft(x.astype(np.float64))) < F32_SCALE_TOL


def test_four_step_is_not_the_dft_of_another_length() -> None:
    """The four-step output must be the transform of the length asked for, not of the
    nearest power of two or of the unpadded signal."""
    x = np.random.default_rng(3).uniform(-1, 1, (2, 900)).astype(np.float32)
    _, got = _ops("RFFT", x, {"n": 960})  # 960 = 32 x 30
    assert _spectrum_error(got, np.fft.rfft(x.astype(np.float64), n=960)) < F32_SCALE_TOL
    assert got.shape[1] != np.fft.rfft(x, n=1024).shape[1]
    assert not np.allclose(got[:, :451, 0], np.fft.rfft(x.astype(np.float64)).real, atol=1e-3)


def test_inverse_of_a_dominant_bin_0_keeps_float32_accuracy() -> None:
    """A spectrum whose bin 0 is ~1500x every other bin (a positive Toeplitz line's is
    ~200x): the four-step inverse leaves bin 0 out of its float32 products and adds
    Re Z[0] / L exactly, so its error stays at a float32 FFT's few 1e-7 of the output
    scale (a numpy emulation of both forms at this spectrum: 9e-8 split, 1e-6 unsplit).
    The bound, 5e-7, leaves room for other GEMM summation orders and lies below the
    unsplit form's error."""
    rng = np.random.default_rng(4)
    z = rng.standard_normal((2049, 64)) * 650.0 + 1j * rng.standard_normal((2049, 64)) * 650.0
    z[0] = 1_000_000.0 + 0.0j
    z[-1] = z[-1].real
    spectrum = np.stack([z.real, z.imag], axis=-1).astype(np.float32)
    ops, got = _ops("IRFFT", spectrum, {"axis": 0, "n": 4096})
    assert "DFT" not in ops and ops.count("Add") >= 1
    want = np.fft.irfft(spectrum[..., 0].astype(np.float64) + 1j * spectrum[..., 1], n=4096, axis=0)
    assert np.abs(got - want).max() / np.abs(want).max() < 5e-7
