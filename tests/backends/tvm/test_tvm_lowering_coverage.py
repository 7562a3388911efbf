"""Every op in requant's registry has an entry in the TVM lowering table
(backends/tvm/relax_lowering.py): an emitter, or an explicit `Unsupported` with a reason
a user can act on."""

from __future__ import annotations

import pytest

pytest.importorskip("tvm")

import requant.ir as ir  # noqa: E402
from requant.backends.tvm.relax_lowering import LOWERINGS, Unsupported, lowering_for  # noqa: E402
from requant.errors import UnsupportedOpError  # noqa: E402


def test_every_registered_op_has_a_tvm_lowering_entry() -> None:
    missing = sorted(op for op in ir.all_schemas() if op not in LOWERINGS)
    assert not missing, (
        f"ops without an entry in backends/tvm/relax_lowering.py LOWERINGS: {missing}; "
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
        check = getattr(entry, "check", None)
        assert check is None or callable(check)


def test_node_level_refusals_give_reasons() -> None:
    """Emitters that accept only some nodes say why they refuse one."""
    import numpy as np

    from requant.backends.tvm.relax_lowering import unsupported_reason

    g = ir.Graph()
    b = ir.Builder(g)
    x = b.input("x", ir.tensor_type("f32", (2, 3)))
    shape = b.input("shape", ir.tensor_type("i64", (2,)))
    node = b.node("Reshape", x, shape)
    reason = unsupported_reason(node)
    assert reason and "constant" in reason
    assert unsupported_reason(b.node("Reshape", x, b.const(np.array([3, 2], np.int64)))) is None


def test_import_requant_does_not_import_tvm() -> None:
    import subprocess
    import sys

    code = "import sys, requant, requant.backends; assert 'tvm' not in sys.modules, 'tvm imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
