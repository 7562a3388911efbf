"""The toeplitz_fft benchmark's crossover arithmetic (tools/bench/toeplitz_fft.py), on
made-up timings: where the measured crossover lies and which sizes pin it down, the
cost model's crossover under the FFT form's power-of-two padding, and the rho a
measured crossover gives back. No build and no timing."""

from __future__ import annotations

import pytest

from requant.ir.ops.fft import fft_length
from requant.tools.bench import toeplitz_fft as bench


def _points(pattern: str, rho: float, sizes: list[int]) -> list[tuple[int, float, float]]:
    """Timings of a machine where the cost model is exact: time = flops x cost per flop."""
    return [(n, q, rho * f) for n in sizes for q, f in [bench._flops(pattern, n)]]


def test_measured_crossover_between_two_sizes_and_the_sizes_inside():
    points = [(1024, 10.0, 40.0), (2048, 40.0, 20.0), (4096, 160.0, 45.0)]
    crossing = bench._measured_crossover(points)
    assert 1024 < crossing < 2048
    assert bench._bracket(points) == (1024, 2048)
    inside = bench._sizes_inside(1024, 2048)
    assert len(inside) == 2 and all(1024 < n < 2048 and n % 64 == 0 for n in inside)
    # a crossover before the first size, or never reached: nothing to bracket
    assert bench._measured_crossover([(256, 5.0, 1.0), (512, 9.0, 2.0)]) == 0.0
    assert bench._measured_crossover([(256, 1.0, 5.0), (512, 2.0, 9.0)]) is None
    assert bench._bracket([(256, 1.0, 5.0), (512, 2.0, 9.0)]) is None
    assert bench._sizes_inside(64, 128) == []  # no multiple of 64 strictly inside


@pytest.mark.parametrize("pattern", ["attention", "toeplitz"])
def test_cost_model_crossover_matches_a_machine_it_describes(pattern):
    # timings generated from the flop model with rho: the model's crossover for that rho
    # is where the generated FFT form overtakes the quadratic one, measured finely
    rho = 40.0 if pattern == "toeplitz" else 6.0
    sizes = list(range(256, 16385, 64))
    measured = bench._measured_crossover(_points(pattern, rho, sizes))
    predicted = bench._predicted_crossover(pattern, rho, sizes[0], sizes[-1])
    assert measured and predicted
    assert abs(predicted - measured) <= 64 + 0.01 * measured
    # and the rho read back at the measured crossover is the one the timings came from
    assert bench._rho_at(_points(pattern, rho, sizes), pattern, measured) == pytest.approx(rho, rel=0.05)


def test_cost_model_crossover_respects_the_padding_jump():
    # just above a power of two the FFT length doubles, so with a rho whose first crossing
    # lies below 8192 the FFT form loses again above it: over a range reaching past 8192
    # the model's crossover is the later one, that holds up to the last size
    rho = 3.0
    assert fft_length(8192) * 2 == fft_length(8193)
    q, f = bench._flops("attention", 8192)
    q_above, f_above = bench._flops("attention", 8193)
    assert q > rho * f and q_above < rho * f_above  # ahead at 8192, behind at 8193
    first = bench._predicted_crossover("attention", rho, 4096, 8192)
    held = bench._predicted_crossover("attention", rho, 4096, 16384)
    assert 4096 < first < 8192 < held < 16384
    # never ahead at the last size: no crossover
    assert bench._predicted_crossover("attention", 1e9, 256, 8192) is None
