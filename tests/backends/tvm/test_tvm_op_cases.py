"""Every op case (tests/op_cases/) through the TVM backend: the one-node graph lowered
with `requant.backends.tvm.to_relax`, compiled with `tvm.compile` for {"kind": "llvm"}
and run on the CPU (tests/tvm_testing.py), against requant's interpreter within the
case's tolerance per dtype.

Low-bit floats (fp8/fp4/FloatFormat, emulated in float32 on the format's grid) and
integers compare exactly, as every case's dtypes without a tolerance do. A node TVM
refuses (an op whose table entry is `Unsupported`, or a case's `refused["tvm"]`: a
shape input computed at run time, MaxPool's Indices output, ...) must raise
`UnsupportedOpError` naming the op.

One build per case: batching the cases of an op into one module saved about a fifth of
the build time when measured, not worth losing which case a failed build belongs to.
"""

from __future__ import annotations

import re

import pytest

pytest.importorskip("tvm")

from op_cases import CASES, Case, build_case  # noqa: E402
from op_testing import case_params, compare  # noqa: E402
from tvm_testing import compile_graph, run_tvm  # noqa: E402

from requant.backends.lowering_table import Unsupported  # noqa: E402
from requant.backends.tvm import LOWERINGS, to_relax  # noqa: E402
from requant.errors import UnsupportedOpError  # noqa: E402
from requant.ir import run  # noqa: E402
from requant.ir.registry import get_schema  # noqa: E402


def _refusal(case: Case) -> str | None:
    """Why TVM refuses the case's node on purpose, or None."""
    entry = LOWERINGS.get(case.op)
    if isinstance(entry, Unsupported):
        return entry.reason
    return case.refused.get("tvm")


@pytest.mark.parametrize("case", case_params(CASES, "tvm"))
def test_tvm_matches_interpreter(case: Case) -> None:
    graph, feed = build_case(case)
    if _refusal(case) is not None:
        with pytest.raises(UnsupportedOpError, match=re.escape(get_schema(case.op).name)):
            to_relax(graph)
        return
    want = run(graph, feed)
    got = run_tvm(compile_graph(graph), graph, feed)
    assert len(got) == len(want), f"{case}: {len(got)} outputs, the interpreter gives {len(want)}"
    for j, (a, w, v) in enumerate(zip(got, want, graph.outputs)):
        assert a.dtype == w.dtype, f"{case} output {j}: dtype {a.dtype}, interpreter gives {w.dtype}"
        compare(a, w, v.dtype.short, case.tol, f"{case} output {j}")


def test_every_lowered_op_is_checked_numerically() -> None:
    lowered = {op for op, entry in LOWERINGS.items() if not isinstance(entry, Unsupported)}
    checked = {c.op for c in CASES if _refusal(c) is None}
    assert not lowered - checked, f"ops with a TVM emitter but no numeric op case (tests/op_cases/): {sorted(lowered - checked)}"
