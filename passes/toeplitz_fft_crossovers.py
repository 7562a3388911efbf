"""Measured data the toeplitz_fft pass's cost model reads: per backend and per pattern,
how much slower one FFT-form flop runs than one quadratic-form flop (`rho`: the flop
ratio at the measured crossover, or the time ratio at the nearest size measured when the
crossover lies outside the sizes), the sequence length at which the FFT form overtook
the quadratic one (`crossover_n`, None when that lies outside the sizes measured), and
the shape measured at.

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
    'onnx': {
        'toeplitz_matmul': {'rho': 50.507, 'crossover_n': 3667, 'shape': {'heads': 8, 'features': 64, 'head_dim': 64, 'channels': 64, 'sizes': [256, 512, 1024, 2048, 2560, 3264, 4096]}},
        'kernelized_attention': {'rho': 212.026, 'crossover_n': None, 'shape': {'heads': 8, 'features': 64, 'head_dim': 64, 'channels': 64, 'sizes': [256, 512, 1024, 2048]}},
        'kernelized_attention_f64': {'rho': 424.052, 'crossover_n': None, 'shape': {'estimated': "2 x kernelized_attention's rho (float64 vectors hold half the lanes); measure with --causal --write-crossovers"}},
        'long_conv': {'rho': 8.453, 'crossover_n': 690, 'shape': {'heads': 8, 'features': 64, 'head_dim': 64, 'channels': 64, 'sizes': [256, 512, 640, 832, 1024, 2048, 4096]}},
    },
    'tvm': {
        'toeplitz_matmul': {'rho': 8.776, 'crossover_n': 474, 'shape': {'heads': 8, 'features': 64, 'head_dim': 64, 'channels': 64, 'sizes': [128, 256, 320, 384, 512, 1024, 2048]}},
        'kernelized_attention': {'rho': 5.824, 'crossover_n': 15133, 'shape': {'heads': 8, 'features': 64, 'head_dim': 64, 'channels': 64, 'sizes': [4096, 8192, 10304, 12992, 16384]}},
        'kernelized_attention_f64': {'rho': 11.648, 'crossover_n': None, 'shape': {'estimated': "2 x kernelized_attention's rho (float64 vectors hold half the lanes); measure with --causal --write-crossovers"}},
        'long_conv': {'rho': 1.025, 'crossover_n': None, 'shape': {'heads': 8, 'features': 64, 'head_dim': 64, 'channels': 64, 'sizes': [128, 256, 512, 1024, 2048]}},
    },
}
