"""Every op in requant's registry has an entry in each backend's lowering table (the ONNX
table in backends/onnx/lowering/, the TVM one in backends/tvm/lowering/): an emitter, or
an explicit `Unsupported` with a reason a user can act on. That each emitter computes
what the interpreter does is checked on the op cases (tests/op_cases/) by
tests/backends/onnx/test_onnx_op_cases.py and tests/backends/tvm/test_tvm_op_cases.py."""

from __future__ import annotations

import importlib
import importlib.util

import pytest

import requant.ir as ir
from requant.errors import UnsupportedOpError

TABLES = {
    "onnx": ("onnx", "requant.backends.onnx.lowering", "backends/onnx/lowering/"),
    "tvm": ("tvm", "requant.backends.tvm.lowering", "backends/tvm/lowering/"),
}


@pytest.fixture(params=sorted(TABLES), scope="module")
def table(request):
    package, module, path = TABLES[request.param]
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed")
    return importlib.import_module(module), path


def test_every_registered_op_has_an_entry(table) -> None:
    lowering, path = table
    missing = sorted(op for op in ir.all_schemas() if op not in lowering.LOWERINGS)
    assert not missing, f"ops without an entry in {path} LOWERINGS: {missing}; add an emitter or Unsupported('...')"


def test_no_entry_for_an_op_the_registry_does_not_have(table) -> None:
    lowering, path = table
    stale = sorted(set(lowering.LOWERINGS) - set(ir.all_schemas()))
    assert not stale, f"{path} has entries for unregistered ops (renamed or removed?): {stale}"


@pytest.mark.parametrize("op", sorted(ir.all_schemas()))
def test_entry_is_an_emitter_or_a_reasoned_refusal(table, op: str) -> None:
    lowering, _ = table
    entry = lowering.LOWERINGS[op]
    if isinstance(entry, lowering.Unsupported):
        assert len(entry.reason.strip()) >= 10, f"{op}: say why it cannot be lowered"
        with pytest.raises(UnsupportedOpError, match=op):
            lowering.lowering_for(op)
    else:
        assert callable(entry)
        assert lowering.lowering_for(op) is entry
        check = getattr(entry, "check", None)
        assert check is None or callable(check)


def test_standard_ops_use_onnx_names_the_installed_onnx_knows() -> None:
    onnx_defs = pytest.importorskip("onnx.defs")
    from requant.backends.onnx.lowering import LOWERINGS, Unsupported

    unknown = [
        op for op, schema in ir.all_schemas().items()
        if schema.domain == "" and not isinstance(LOWERINGS.get(op), Unsupported) and not onnx_defs.has(op)
    ]
    assert not unknown, f"standard-domain ops unknown to onnx: {unknown}"
