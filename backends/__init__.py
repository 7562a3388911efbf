"""Backends: IR -> ONNX (+ ONNX Runtime sessions) in `requant.backends.onnx`, IR -> TVM
Relax in `requant.backends.tvm`.

`runtime_backend(name)`: the one registry of what `requant.compile` / `requant.load` run
a compiled graph on, {backend name: module}; each module has `build_runtime(graph,
device, *, threads, opset)` and `load_runtime(root, manifest, *, proto, threads)`, and
its runtime objects are called with numpy feeds, say `cannot_run()`, size and `write`
their artifact into a saved directory. `saved_files(device)` (a `SavedFiles`) names
the files that artifact consists of, and which of them are native code: `requant.load`
refuses a directory whose files are not exactly these, and loads code only from a
build it can tell this user made (requant/trust.py).

Importing this package is cheap: `to_onnx`, `save_onnx` and `OnnxRuntimeSession` are
looked up on first use, so onnx and onnxruntime load only when an ONNX export or
session is asked for.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType
from typing import NamedTuple

from requant import _lazy_getattr
from requant.errors import RequantError

__all__ = ["to_onnx", "save_onnx", "OnnxRuntimeSession", "RUNTIMES", "runtime_backend", "SavedFiles"]

logger = logging.getLogger(__name__)

RUNTIMES: dict[str, str] = {
    "onnx": "requant.backends.onnx.runtime",
    "tvm": "requant.backends.tvm.runtime",
}
"""{backend name: the module that builds and loads its runtimes}."""


class SavedFiles(NamedTuple):
    """The files a backend's artifact adds to a saved directory: those always written,
    those written only sometimes (external weights), and those that are native code
    (loading them runs them)."""

    required: frozenset[str]
    optional: frozenset[str] = frozenset()
    code: frozenset[str] = frozenset()


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
