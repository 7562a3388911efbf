"""What every backend's lowering table shares.

A `LoweringTable` maps op ids (`requant.ir.registry.op_id`) to an emitter, or to an
`Unsupported(reason)` entry saying why the backend cannot emit the op. Each backend
keeps one table; its entries are registered beside their emitters, in per-family
modules that mirror `requant/ir/ops/`:

    LOWERINGS = LoweringTable("TVM lowering table", cannot="cannot be lowered to TVM Relax")

    @LOWERINGS.lowers("Add", "Sub")
    def _binary(ctx, node, ins): ...

    LOWERINGS.unsupported("com.microsoft.QAttention", "ONNX Runtime's own kernel ...")

`table.lookup(op)` turns a missing or refused entry into one `UnsupportedOpError`; a
test checks that every registered op has an entry in every backend's table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from requant.errors import UnsupportedOpError

__all__ = ["Unsupported", "LoweringTable"]

E = TypeVar("E", bound=Callable[..., Any])


@dataclass(frozen=True)
class Unsupported:
    """A table entry saying why the backend cannot emit an op."""

    reason: str


class LoweringTable(dict):
    """{op id: emitter | Unsupported} of one backend, filled by `lowers` / `unsupported`;
    registering an op twice is an error (two families claiming one op)."""

    def __init__(self, name: str, *, cannot: str) -> None:
        super().__init__()
        self.name = name  # e.g. "ONNX lowering table (backends/onnx/lowering/)"
        self.cannot = cannot  # e.g. "cannot be exported to ONNX"

    def add(self, op: str, entry: Any) -> None:
        if op in self:
            raise ValueError(f"{self.name}: op {op} is registered twice")
        self[op] = entry

    def lowers(self, *ops: str) -> Callable[[E], E]:
        """Decorator: the emitter lowers each of `ops`."""
        if not ops:
            raise ValueError("lowers() needs at least one op id")

        def register(emitter: E) -> E:
            for op in ops:
                self.add(op, emitter)
            return emitter

        return register

    def unsupported(self, op: str, reason: str) -> None:
        """Record that the backend cannot emit `op`, and why."""
        self.add(op, Unsupported(reason))

    def lookup(self, op: str) -> Any:
        """The entry of `op`; raises `UnsupportedOpError` when there is none ("op X has no
        entry in the {name}") or it is `Unsupported` ("op X {cannot}: reason")."""
        entry = self.get(op)
        if entry is None:
            raise UnsupportedOpError(
                f"op {op} has no entry in the {self.name}; add an emitter or an Unsupported(reason) entry")
        if isinstance(entry, Unsupported):
            raise UnsupportedOpError(f"op {op} {self.cannot}: {entry.reason}")
        return entry
