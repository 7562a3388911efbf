"""requant: a compiler-style graph rewriting toolkit for low-bit and integer-only inference.

Importing `requant` is cheap: torch, tvm and onnxruntime are imported only by the
frontend or backend that needs them.
"""

from __future__ import annotations

from requant.errors import (
    ParseError,
    PassError,
    RequantError,
    RewriteLimitError,
    ShapeInferenceError,
    UnsupportedOpError,
    VerifyError,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "RequantError",
    "VerifyError",
    "ParseError",
    "UnsupportedOpError",
    "ShapeInferenceError",
    "RewriteLimitError",
    "PassError",
]
