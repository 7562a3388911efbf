"""The large-model benchmark's memory figures: each stage's peak is Linux's own high-water
mark for that stage, so a brief spike between two samples still counts."""

from __future__ import annotations

import numpy as np

from requant.tools.bench.large_model import RssSampler

MB = 1 << 20


def test_a_spike_shorter_than_the_sampling_interval_is_in_its_stage_and_not_the_next() -> None:
    sampler = RssSampler(interval=60.0)  # the thread samples once: only the kernel's mark can see the spike
    base = sampler.rss()
    sampler.enter("spike")
    block = np.ones(256 * MB // 8)  # written, so resident
    del block
    sampler.enter("after")
    peaks = sampler.stop()
    if not sampler._exact:  # /proc/self/clear_refs not writable here: sampling alone
        assert peaks["process"] >= base
        return
    assert peaks["spike"] - base >= 200 * MB
    assert peaks["after"] - base < 100 * MB
    assert peaks["process"] >= peaks["spike"]
