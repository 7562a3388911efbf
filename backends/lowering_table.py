"""What every backend's lowering table shares: `Unsupported`, the entry that says why a
backend cannot emit an op, and `entry_for`, the lookup that turns a missing or refused
entry into one `UnsupportedOpError`. Each backend keeps its own table keyed by op name
(backends/onnx/lowering.py, backends/tvm/relax_lowering.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from requant.errors import UnsupportedOpError

__all__ = ["Unsupported", "entry_for"]


@dataclass(frozen=True)
class Unsupported:
    """A table entry saying why the backend cannot emit an op."""

    reason: str


def entry_for(table: Mapping[str, Any], op: str, *, table_name: str, cannot: str) -> Any:
    """`table[op]`; raises `UnsupportedOpError` when there is no entry ("op X has no entry
    in the {table_name}") or the entry is `Unsupported` ("op X {cannot}: reason")."""
    entry = table.get(op)
    if entry is None:
        raise UnsupportedOpError(
            f"op {op} has no entry in the {table_name}; add an emitter or an Unsupported(reason) entry"
        )
    if isinstance(entry, Unsupported):
        raise UnsupportedOpError(f"op {op} {cannot}: {entry.reason}")
    return entry
