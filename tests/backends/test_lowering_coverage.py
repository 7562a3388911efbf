"""Every op in requant's registry has an entry in the ONNX lowering table: an emitter, or
an explicit `Unsupported` with a reason a user can act on."""

from __future__ import annotations

import pytest

pytest.importorskip("onnx")

import requant.ir as ir  # noqa: E402
from requant.backends.onnx.lowering import LOWERINGS, Unsupported, lowering_for  # noqa: E402
from requant.errors import UnsupportedOpError  # noqa: E402


def test_every_registered_op_has_an_onnx_lowering_entry() -> None:
    missing = sorted(op for op in ir.all_schemas() if op not in LOWERINGS)
    assert not missing, (
        f"ops without an entry in backends/onnx/lowering.py LOWERINGS: {missing}; "
        f"add an emitter or Unsupported('because ...')"
    )


def test_no_entry_for_an_op_the_registry_does_not_have() -> None:
    stale = sorted(set(LOWERINGS) - set(ir.all_schemas()))
    assert not stale, f"lowering table entries for unregistered ops (renamed or removed?): {stale}"


@pytest.mark.parametrize("op", sorted(ir.all_schemas()))
def test_entry_is_an_emitter_or_a_reasoned_refusal(op: str) -> None:
    entry = LOWERINGS[op]
    if isinstance(entry, Unsupported):
        assert len(entry.reason.strip()) >= 10, f"{op}: say why it cannot be lowered"
        with pytest.raises(UnsupportedOpError, match=op):
            lowering_for(op)
    else:
        assert callable(entry)
        assert lowering_for(op) is entry


def test_standard_ops_use_onnx_names_the_installed_onnx_knows() -> None:
    import onnx.defs

    unknown = [
        op for op, schema in ir.all_schemas().items()
        if schema.domain == "" and not isinstance(LOWERINGS.get(op), Unsupported) and not onnx.defs.has(op)
    ]
    assert not unknown, f"standard-domain ops unknown to onnx: {unknown}"
