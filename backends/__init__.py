"""Backends: IR -> ONNX (+ ONNX Runtime sessions) in `requant.backends.onnx`, IR -> TVM
Relax in `requant.backends.tvm`.

`runtime_backend(name)`: the one registry of what `requant.compile` / `requant.load` run
a compiled graph on, {backend name: module}; each module has `build_runtime(graph,
device, *, threads, opset)` and `load_runtime(root, manifest, *, proto, threads)`, and
its runtime objects are called with numpy feeds, say `cannot_run()`, size and `write`
their artifact into a saved directory.

Importing this package is cheap: `to_onnx`, `save_onnx` and `OnnxRuntimeSession` are
looked up on first use, so onnx and onnxruntime load only when an ONNX export or
session is asked for.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

from requant import _lazy_getattr
from requant.errors import RequantError

__all__ = ["to_onnx", "save_onnx", "OnnxRuntimeSession", "RUNTIMES", "runtime_backend"]

logger = logging.getLogger(__name__)

RUNTIMES: dict[str, str] = {
    "onnx": "requant.backends.onnx.runtime",
    "tvm": "requant.backends.tvm.runtime",
}
"""{backend name: the module that builds and loads its runtimes}."""


def runtime_backend(name: str) -> ModuleType:
    """The runtime module of backend `name` (see the package docstring)."""
    module = RUNTIMES.get(name)
    if module is None:
        raise RequantError(f"backend {name!r} is not supported by this requant; backends: {', '.join(RUNTIMES)}")
    return importlib.import_module(module)


__getattr__ = _lazy_getattr(__name__, {
    "to_onnx": "requant.backends.onnx.export",
    "save_onnx": "requant.backends.onnx.export",
    "OnnxRuntimeSession": "requant.backends.onnx.runtime",
}, globals())


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
