"""Every op case (tests/op_cases/) through the ONNX backend, at each of the case's export
opsets: `to_onnx` (which runs onnx.checker with full_check), ONNX Runtime's outputs on
the exported model against requant's interpreter within the case's tolerance per dtype,
and the model read back with `from_onnx` as the same graph (decomposed ops included).

ONNX Runtime's Python API cannot pass int4/uint4 tensors: the one-node graph takes such
inputs as int8/uint8 and returns such outputs as int8/uint8 through a Cast inside the
graph (both sides run the same graph). A case the backend refuses on purpose
(`Case.refused`) must fail with a requant error naming the op: "onnx" at export,
"onnxruntime" when ONNX Runtime loads the exported model (its round trip is still
checked).
"""

from __future__ import annotations

import re
from typing import Any

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from op_cases import CASES, Case, build_case  # noqa: E402
from op_testing import case_params, compare, export_opset  # noqa: E402

from requant.backends.onnx import LOWERINGS, OnnxRuntimeSession, Unsupported, to_onnx  # noqa: E402
from requant.errors import RequantError  # noqa: E402
from requant.frontends.onnx_frontend import from_onnx  # noqa: E402
from requant.ir import Graph, all_schemas, run  # noqa: E402
from requant.ir.registry import get_schema  # noqa: E402

ORT_WIDEN = {"i4": "i8", "u4": "u8"}
"""Graph input / output dtypes ONNX Runtime's Python API cannot pass, and what they travel in."""

_EXPORTED: dict[tuple[int, Any], tuple] = {}


def _export_opsets(case: Case) -> tuple:
    return case.export_opsets


def _names_the_op(case: Case) -> str:
    return re.escape(get_schema(case.op).name)


def _exported(case: Case, opset: Any) -> tuple[Graph, dict, Any]:
    """(graph, feed, ONNX model) of the case at the export opset marker, exported once
    for both tests below."""
    key = (id(case), opset)
    if key not in _EXPORTED:
        graph, feed = build_case(case, widen=ORT_WIDEN)
        _EXPORTED[key] = (graph, feed, to_onnx(graph, opset=export_opset(opset)))
    return _EXPORTED[key]


@pytest.mark.parametrize("case,opset", case_params(CASES, ("onnx", "onnxruntime"), _export_opsets))
def test_ort_matches_interpreter(case: Case, opset: Any) -> None:
    if "onnx" in case.refused:
        graph, _ = build_case(case, widen=ORT_WIDEN)
        with pytest.raises(RequantError, match=_names_the_op(case)):
            to_onnx(graph, opset=export_opset(opset))
        return
    graph, feed, model = _exported(case, opset)
    if "onnxruntime" in case.refused:
        with pytest.raises(RequantError, match=_names_the_op(case)):
            OnnxRuntimeSession(model)
        return
    want = run(graph, feed)
    got = OnnxRuntimeSession(model)(**feed)
    assert len(got) == len(want)
    for j, (a, w) in enumerate(zip(got, want)):
        where = f"{case} output {j} at opset {opset or 'default'}"
        assert a.dtype == w.dtype, f"{where}: dtype {a.dtype}, interpreter gives {w.dtype}"
        compare(a, w, graph.outputs[j].dtype.short, case.tol, where)


@pytest.mark.parametrize("case,opset", case_params([c for c in CASES if "onnx" not in c.refused],
                                                   ("onnx", "onnx_round_trip"), _export_opsets))
def test_onnx_reads_back_as_the_same_graph(case: Case, opset: Any) -> None:
    """graph -> ONNX -> graph is the identity, decomposed ops included (the backend
    records them and the frontend restores them)."""
    graph, _, model = _exported(case, opset)
    assert from_onnx(model).to_text() == graph.to_text()


def test_every_lowered_op_is_checked_in_onnx_runtime() -> None:
    lowered = {op for op in all_schemas() if not isinstance(LOWERINGS.get(op), Unsupported)}
    checked = {c.op for c in CASES if not c.refused.keys() & {"onnx", "onnxruntime"}}
    missing = sorted(lowered - checked)
    assert not missing, f"ops with an ONNX lowering but no op case run in ONNX Runtime (tests/op_cases/): {missing}"
