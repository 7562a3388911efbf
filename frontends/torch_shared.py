"""Weights a graph shares with the torch model it was captured from.

The torch frontend does not copy a model's parameters and buffers: the graph's
constants are read-only numpy views of the tensors' storage (`torch_lowering.to_numpy`),
so a compile holds the weights once, beside the caller's model, rather than twice.
Every runtime requant builds holds its own copy (ONNX Runtime's session, TVM's
parameters), so a model trained further after `compile` does not change what a
compiled model computes; but the graph (`CompiledModel.graph`, and what `save` writes)
would see the new values. `SharedWeights` records, when a compile ends, the torch
tensors behind the graph's constants and their version counters (torch bumps a
tensor's `_version` on every in-place write through it or a view of it, e.g. an
optimizer step or `load_state_dict`), and names those written since. A write through
`.data` bypasses the counter and is not seen.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

__all__ = ["SharedWeights", "state_names", "torch_tensor_behind"]


def torch_tensor_behind(array: Any) -> Any | None:
    """The torch tensor whose storage `array` views (following numpy's `.base` chain),
    or None when the array owns its memory or views something else."""
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    if base is not None and type(base).__module__.split(".")[0] == "torch" and hasattr(base, "_version"):
        return base
    return None


def state_names(model: Any) -> dict[int, str]:
    """{data pointer: state_dict name} of a torch Module's or ExportedProgram's tensors."""
    state = model.state_dict  # a method of a Module, a dict of an ExportedProgram
    state = state(keep_vars=True) if callable(state) else state
    return {t.data_ptr(): name for name, t in state.items() if hasattr(t, "data_ptr")}


class SharedWeights:
    """The torch tensors behind a set of graph constants, with their versions now; each
    named by `names` ({data pointer: name}, e.g. `state_names(model)`) or, failing
    that, by the constant."""

    def __init__(self, constants: Iterable[Any], names: Mapping[int, str] | None = None) -> None:
        self._tensors: list[tuple[str, Any, int]] = []
        seen: set[int] = set()
        for value in constants:
            tensor = torch_tensor_behind(value.const)
            if tensor is not None and id(tensor) not in seen:
                seen.add(id(tensor))
                name = (names or {}).get(tensor.data_ptr()) or value.meta.get("torch_fqn", value.name)
                self._tensors.append((name, tensor, tensor._version))

    def __len__(self) -> int:
        return len(self._tensors)

    def changed(self) -> list[str]:
        """The names of the shared tensors torch wrote to in place since."""
        return [name for name, tensor, version in self._tensors if tensor._version != version]
