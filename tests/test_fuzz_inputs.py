"""The hostile-input campaign in the suite (issue 16): hypothesis draws mutated ONNX
protobufs, tampered saved directories and manifests, bad call inputs, degenerate
calibration sets, CLI misuse and interrupted saves (`requant.tools.hostile_inputs`),
derandomized so every run sees the same cases, a few hundred in all. Each must end in
a RequantError with a message or in a correct result, and change nothing outside its
output directory; hypothesis shrinks any other outcome to its smallest case.

The benchmark `python -m requant.tools.bench.fuzz` runs the same kinds of case at a
larger count, each in a child process, so that crashes and hangs are counted too."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from requant.tools.hostile_inputs import CORRECT, KINDS, OTHER, Campaign

EXAMPLES = {"onnx": 100, "manifest": 100, "call": 50, "calibration": 40, "cli": 40, "interrupt": 30}


class HypothesisDraw:
    """A `requant.tools.hostile_inputs.Draw` on hypothesis's data (so it can shrink)."""

    def __init__(self, data: Any) -> None:
        self.data = data

    def integer(self, lo: int, hi: int) -> int:
        return self.data.draw(st.integers(lo, hi))

    def choice(self, items: Any) -> Any:
        return self.data.draw(st.sampled_from(list(items)))


@pytest.fixture(scope="module")
def campaign(tmp_path_factory) -> Campaign:
    return Campaign(tmp_path_factory.mktemp("fuzz"), tvm=True)


@pytest.fixture(scope="module")
def outcomes() -> dict[str, list[str]]:
    return {kind: [] for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_hostile_inputs_end_in_a_requant_error_or_a_correct_result(kind, campaign, outcomes) -> None:
    logging.getLogger("requant").setLevel(logging.CRITICAL)

    @settings(max_examples=EXAMPLES[kind], derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.function_scoped_fixture])
    @given(st.data())
    def check(data: Any) -> None:
        outcome = campaign.run(kind, HypothesisDraw(data))
        outcomes[kind].append(outcome.kind)
        assert outcome.kind != OTHER, outcome.detail

    check()
    assert len(outcomes[kind]) >= EXAMPLES[kind] // 2  # the cases did run
    if kind in ("interrupt", "cli", "call"):
        assert CORRECT in outcomes[kind]  # and not all of them were refused
