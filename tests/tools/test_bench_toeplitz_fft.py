"""The toeplitz_fft benchmark's crossover arithmetic (tools/bench/toeplitz_fft.py), on
made-up timings: where the measured crossover lies and which sizes pin it down, the
cost model's crossover read off the same sizes (with the FFT form's power-of-two
padding), and the rho a measured crossover gives back. No build and no timing."""

from __future__ import annotations

import pytest

from requant.ir.ops.fft import fft_length
from requant.tools.bench import toeplitz_fft as bench


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
    # timings of a machine where the flop model is exact with this rho, at powers of two
    # and then (as the benchmark does) at two sizes inside the crossover's bracket
    rho = 40.0 if pattern == "toeplitz" else 6.0
    sizes = [256, 512, 1024, 2048, 4096, 8192, 16384]
    coarse = bench._measured_crossover(bench._modelled(pattern, rho, sizes))
    sizes = sorted(sizes + bench._sizes_inside(*bench._bracket(bench._modelled(pattern, rho, sizes))))
    timings = [(n, 1e-6 * q, 1e-6 * f) for n, q, f in bench._modelled(pattern, rho, sizes)]
    measured = bench._measured_crossover(timings)
    # inside a bracket of powers of two the FFT form's time is flat: the sizes inside
    # move the crossover up from the straight-line interpolation, and rho reads back
    assert measured > coarse
    assert bench._rho_at(timings, pattern, measured) == pytest.approx(rho, rel=0.01)
    assert measured == pytest.approx(bench._measured_crossover(bench._modelled(pattern, rho, sizes)))
    # a rho off by 2x moves the model's crossover past the 20% bar
    doubled = bench._measured_crossover(bench._modelled(pattern, 2 * rho, sizes))
    assert doubled is None or doubled > 1.2 * measured


def test_cost_model_crossover_sees_the_padding_jump_at_the_sizes_measured():
    # just above a power of two the FFT length doubles: with a rho whose crossing lies
    # below 8192, a size measured just above it shows the FFT form behind again, so the
    # crossover read off the sizes moves past 8192
    rho = 3.0
    assert fft_length(8192) * 2 == fft_length(8193)
    powers = bench._measured_crossover(bench._modelled("attention", rho, [4096, 8192, 16384]))
    with_jump = bench._measured_crossover(bench._modelled("attention", rho, [4096, 8192, 9216, 16384]))
    assert 4096 < powers < 8192 < with_jump < 16384
    # never ahead: no crossover; always ahead: below the first size
    assert bench._measured_crossover(bench._modelled("attention", 1e9, [256, 8192])) is None
    assert bench._measured_crossover(bench._modelled("conv", 1e-3, [256, 8192])) == 0.0
