"""requant: a compiler-style graph rewriting toolkit for low-bit and integer-only inference.

    cm = requant.compile(model, target="cpu-int8", calibration=batches)
    outs = cm(*arrays); print(cm.report()); cm.save("out/"); cm2 = requant.load("out/")
    requant.targets()   # {name: one-line description}

Importing `requant` is cheap: torch, tvm and onnxruntime are imported only by the
frontend or backend that needs them; `compile`, `load` and `CompiledModel` load
`requant.compiler` (and numpy) on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from requant.errors import (
    ParseError,
    PassError,
    RequantError,
    RewriteLimitError,
    ShapeInferenceError,
    UnsupportedOpError,
    VerifyError,
)

# Bound after the submodule is imported, so the name `requant.targets` is the function
# (`from requant.targets import TARGETS` still reaches the table module).
from requant.targets import targets

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "compile",
    "load",
    "targets",
    "CompiledModel",
    "RequantError",
    "VerifyError",
    "ParseError",
    "UnsupportedOpError",
    "ShapeInferenceError",
    "RewriteLimitError",
    "PassError",
]

_LAZY = {"compile": "requant.compiler", "load": "requant.compiler", "CompiledModel": "requant.compiler"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'requant' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
