"""Measured data the toeplitz_fft pass's cost model reads: per backend and per pattern,
how much slower one FFT-form flop runs than one quadratic-form flop (`rho`), and the
sequence length at which the FFT form became faster in the measurement (`crossover_n`,
None when it never did in the range measured), with the shape measured at.

The pass rewrites a node when `rho * fft_flops < quadratic_flops` (passes/toeplitz_fft.py
counts both). Re-measure on the machine that will run the models, and rewrite this file,
with:

    python -m requant.tools.bench.toeplitz_fft --write-crossovers

This file is data: the benchmark writes it whole.
"""

from __future__ import annotations

__all__ = ["CROSSOVERS", "MEASURED_WITH"]

MEASURED_WITH = "python -m requant.tools.bench.toeplitz_fft --write-crossovers"

CROSSOVERS: dict[str, dict[str, dict]] = {
    "onnx": {
        "toeplitz_matmul": {"rho": 40.0, "crossover_n": None, "shape": {}},
        "kernelized_attention": {"rho": 40.0, "crossover_n": None, "shape": {}},
        "kernelized_attention_f64": {"rho": 80.0, "crossover_n": None, "shape": {}},
        "long_conv": {"rho": 40.0, "crossover_n": None, "shape": {}},
    },
    "tvm": {
        "toeplitz_matmul": {"rho": 10.0, "crossover_n": None, "shape": {}},
        "kernelized_attention": {"rho": 10.0, "crossover_n": None, "shape": {}},
        "kernelized_attention_f64": {"rho": 20.0, "crossover_n": None, "shape": {}},
        "long_conv": {"rho": 10.0, "crossover_n": None, "shape": {}},
    },
}
