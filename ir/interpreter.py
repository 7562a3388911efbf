"""The reference interpreter: runs any graph on numpy, node by node, with each op's
registered kernel. It is the oracle every pass is tested against and the fallback
runtime, not the fast path. Intermediate arrays are freed after their last use, so peak
memory follows the live set, not the graph size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from requant.errors import RequantError
from requant.ir.graph import Graph, Value
from requant.ir.registry import run_kernel
from requant.ir.types import dims_compatible

__all__ = ["run"]


def run(graph: Graph, inputs: Mapping[str, Any] | Sequence[Any]) -> list[np.ndarray]:
    """Execute `graph` on `inputs` (a mapping by input name, or a sequence in input
    order) and return the outputs in order. An int4/uint4 input may come in requant's
    storage (int8/uint8) or as ml_dtypes' int4/uint4 (what onnx.numpy_helper reads);
    outputs are in requant's storage."""
    env: dict[Value, np.ndarray] = {}
    for value, array in zip(graph.inputs, _bind_inputs(graph, inputs)):
        env[value] = array
    for value in graph.constants:
        env[value] = value.const
    remaining = {id(v): len(v.uses) for v in env}
    outputs = {id(v) for v in graph.outputs}
    for node in graph:
        args = []
        for v in node.inputs:
            if v is None:
                args.append(None)
                continue
            if v not in env:
                raise RequantError(f"interpreter: %{v.name} read by {node.label} has no value (graph not verified?)")
            args.append(env[v])
        try:
            results = run_kernel(node.op, args, node.attrs, [o.type for o in node.outputs])
        except RequantError:
            raise
        except Exception as exc:  # a kernel failing on real data: name the node
            raise RequantError(f"interpreter: {node.label} failed: {type(exc).__name__}: {exc}") from exc
        for out, arr in zip(node.outputs, results):
            env[out] = arr
            remaining[id(out)] = len(out.uses)
        for v in node.inputs:
            if v is None:
                continue
            remaining[id(v)] -= 1
            if remaining[id(v)] == 0 and id(v) not in outputs and v.const is None:
                del env[v]
    return [env[v] for v in graph.outputs]


def _bind_inputs(graph: Graph, inputs: Mapping[str, Any] | Sequence[Any]) -> list[np.ndarray]:
    if isinstance(inputs, Mapping):
        missing = [v.name for v in graph.inputs if v.name not in inputs]
        extra = sorted(set(inputs) - {v.name for v in graph.inputs})
        if missing or extra:
            raise RequantError(
                f"inputs do not match graph '{graph.name}': missing {missing or 'none'}, unexpected {extra or 'none'}"
            )
        arrays = [inputs[v.name] for v in graph.inputs]
    else:
        arrays = list(inputs)
        if len(arrays) != len(graph.inputs):
            raise RequantError(f"graph '{graph.name}' takes {len(graph.inputs)} inputs, got {len(arrays)}")
    bound = []
    symbols: dict[str, tuple[int, str]] = {}
    for value, array in zip(graph.inputs, arrays):
        arr = np.asarray(array)
        want = value.type
        if arr.dtype != want.dtype.np and want.dtype.bits == 4 and arr.dtype.name == want.dtype.name:
            # ml_dtypes' int4/uint4 (what onnx.numpy_helper gives) -> requant's widened storage
            arr = arr.astype(want.dtype.np)
        if arr.dtype != want.dtype.np:
            storage = f" (held as {want.dtype.np})" if want.dtype.np.name != want.dtype.name else ""
            raise RequantError(f"input %{value.name}: dtype {arr.dtype}, expected {want.dtype.name}{storage}")
        if want.shape is not None and (
            arr.ndim != len(want.shape) or not all(dims_compatible(d, s) for d, s in zip(want.shape, arr.shape))
        ):
            raise RequantError(f"input %{value.name}: shape {arr.shape}, expected {want}")
        for dim, size in zip(want.shape or (), arr.shape):
            if isinstance(dim, str):
                seen = symbols.setdefault(dim, (size, value.name))
                if seen[0] != size:
                    raise RequantError(
                        f"input %{value.name}: dim '{dim}' is {size}, but %{seen[1]} gave it {seen[0]}"
                    )
        bound.append(arr)
    return bound
