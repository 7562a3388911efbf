"""Every op case (tests/op_cases/) through requant's interpreter, against the case's
oracle: ONNX's reference implementation (`onnx.reference.ReferenceEvaluator`), ONNX
Runtime, or the hand-written numpy reference (tests/op_references.py) for requant's own
ops.

Each case builds its node with `requant.ir.Builder`, verifies the graph, runs it, and
checks (1) the inferred output types against the arrays the kernel gave (dtype exactly,
every static dim equal, every symbol bound consistently with the inputs' symbols), (2)
the inferred shape exactly where the case states it, (3) that the kernel itself returns
the declared dtypes, (4) the values against the oracle within the case's tolerance per
dtype. Cases with oracle "none" (semantics ONNX leaves open, stated by special tests in
tests/ir/test_ops.py and test_quant_ops.py) still check (1)-(3). Inference also runs
with the graph inputs' dims unknown, and with their rank unknown.
"""

from __future__ import annotations

import numpy as np
import pytest

from op_cases import CASES, UNKNOWN_RANK, Case, In, build_case
from op_testing import case_params, check_type, compare, input_bindings, oracle_outputs

from requant.ir import all_schemas, run
from requant.ir.registry import get_schema


def _check_kernel_dtypes(case: Case, types: list) -> None:
    """The kernel itself gives the declared dtypes (run_kernel's cast is a safety net)."""
    schema = get_schema(case.op)
    arrays = [None if x is None else x.value for x in case.inputs]
    raw = schema.kernel(arrays, schema.fill_attrs(case.attrs), types)
    raw = list(raw) if isinstance(raw, (list, tuple)) else [raw]
    for j, (t, arr) in enumerate(zip(types, raw)):
        assert isinstance(arr, np.ndarray) and arr.dtype == t.dtype.np, (
            f"{case} output {j}: kernel returned {type(arr).__name__} {getattr(arr, 'dtype', '')}, declared {t.dtype}"
        )


@pytest.mark.parametrize("case", case_params(CASES, "interpreter"))
def test_interpreter_matches_oracle(case: Case) -> None:
    graph, feed = build_case(case)
    graph.verify()
    types = [o.type for o in graph.outputs]
    got = run(graph, feed)
    bindings = input_bindings(case)
    for j, (t, arr) in enumerate(zip(types, got)):
        check_type(t, arr, bindings, f"{case} output {j}")
    if case.expect is not None:
        assert types[0].shape == tuple(case.expect), f"{case}: inferred {types[0]}, expected {case.expect}"
    _check_kernel_dtypes(case, types)
    if case.oracle == "none":
        return
    want = oracle_outputs(case, types)
    assert len(want) == len(got), f"{case}: {len(got)} outputs, the oracle gives {len(want)}"
    for j, (a, w) in enumerate(zip(got, want)):
        compare(a, w, types[j].dtype.short, case.tol, f"{case} output {j} vs {case.oracle}")


@pytest.mark.parametrize("unknown", ["dims", "rank"])
@pytest.mark.parametrize("case", case_params(CASES, "interpreter"))
def test_inference_with_unknown_shapes(case: Case, unknown: str) -> None:
    """Graph inputs declared with unknown dims (or unknown rank): inference still works
    and what it claims holds for the arrays the kernel gives."""
    blurred = [
        x if x is None or x.const else In(x.value, False, x.dtype, UNKNOWN_RANK if unknown == "rank" else (None,) * x.value.ndim)
        for x in case.inputs
    ]
    c = Case(case.op, blurred, case.attrs, n_out=case.n_out)
    graph, feed = build_case(c)
    graph.verify()
    got = run(graph, feed)
    for j, (o, arr) in enumerate(zip(graph.outputs, got)):
        check_type(o.type, arr, {}, f"{case} output {j}")


def test_every_op_has_a_case_with_an_oracle() -> None:
    with_oracle = {c.op for c in CASES if c.oracle != "none"}
    missing = sorted(set(all_schemas()) - with_oracle)
    assert not missing, f"ops without an op case compared with an oracle (tests/op_cases/): {missing}"


def test_case_ids_are_unique() -> None:
    seen: dict[str, int] = {}
    for c in CASES:
        seen[str(c)] = seen.get(str(c), 0) + 1
    assert not [i for i, n in seen.items() if n > 1], f"cases sharing an id: {[i for i, n in seen.items() if n > 1]}"
