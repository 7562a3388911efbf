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
from collections.abc import Callable, Mapping
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


def _lazy_getattr(package: str, table: Mapping[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module-level `__getattr__` (PEP 562) for `package` that imports each name of
    `table` ({name: module}) from its module on first use and caches it in `namespace`
    (the package's `globals()`), so later lookups skip the hook. requant's packages
    use it to keep their imports cheap (`__getattr__ = _lazy_getattr(__name__, {...}, globals())`)."""

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    return __getattr__


__getattr__ = _lazy_getattr(
    __name__, {"compile": "requant.compiler", "load": "requant.compiler", "CompiledModel": "requant.compiler"},
    globals())


def __dir__() -> list[str]:
    return sorted(__all__)
