"""The timing loop the per-process benchmark workers share: warm-up calls, then calls until
a time budget is spent (at least five), each call's wall time kept."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["timed_calls"]


def timed_calls(call: Callable[[], Any], seconds: float, warmup: int) -> list[float]:
    """Seconds per call of `call` after `warmup` untimed calls, over `seconds` (five calls
    at least)."""
    for _ in range(warmup):
        call()
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 5:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times
