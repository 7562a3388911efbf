"""How the TVM tests build and run a graph: `compile_graph` lowers it with
`requant.backends.tvm.to_relax` and compiles it with `tvm.compile` for {"kind": "llvm"}
(the default pipeline) into a Relax VirtualMachine on the CPU; `run_tvm` feeds it numpy
arrays (converted to the dtypes the values travel in) and returns numpy outputs in
requant's dtypes. Imports tvm: callers import it after `pytest.importorskip("tvm")`."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import tvm

from requant.backends.tvm import to_relax
from requant.backends.tvm.emit import from_relax_array, to_relax_array
from requant.ir import Graph

__all__ = ["target", "compile_graph", "run_tvm"]


@lru_cache(maxsize=1)
def target() -> Any:
    return tvm.target.Target({"kind": "llvm"})


def compile_graph(graph: Graph, bind_dims: dict[str, int] | None = None) -> Any:
    """A VirtualMachine running `graph`'s "main" on the CPU."""
    ex = tvm.compile(to_relax(graph, bind_dims=bind_dims), target())
    return tvm.relax.VirtualMachine(ex, tvm.cpu())


def run_tvm(vm: Any, graph: Graph, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """`graph`'s outputs from `vm` on the graph inputs in `feed` (by name)."""
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(np.asarray(to_relax_array(feed[v.name], v.dtype), order="C"), dev) for v in graph.inputs]
    outs = vm["main"](*args)
    return [from_relax_array(o.numpy(), v.dtype) for o, v in zip(outs, graph.outputs)]
