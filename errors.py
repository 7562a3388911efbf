"""Every error requant raises on bad input or a failed invariant.

All derive from `RequantError`, so callers can catch one type; each message names the
node, op, file or pass involved and, where there is one, what to do about it.
"""

from __future__ import annotations

__all__ = [
    "RequantError",
    "VerifyError",
    "ParseError",
    "UnsupportedOpError",
    "ShapeInferenceError",
    "RewriteLimitError",
    "PassError",
    "InvalidModelError",
    "SavedModelError",
    "TrustError",
    "InputError",
]


class RequantError(Exception):
    """Base class of every error requant raises on purpose."""


class VerifyError(RequantError):
    """A graph broke an IR invariant (SSA, order, use lists, types, unknown op)."""


class ParseError(RequantError):
    """Malformed IR text; carries the 1-based line and column of the problem."""

    def __init__(self, message: str, line: int, column: int, source_line: str = "") -> None:
        self.line = line
        self.column = column
        self.reason = message
        pointer = ""
        if source_line:
            pointer = f"\n  {source_line}\n  {' ' * (column - 1)}^"
        super().__init__(f"line {line}, column {column}: {message}{pointer}")


class UnsupportedOpError(RequantError):
    """One or more ops that requant (or a backend) does not know."""


class ShapeInferenceError(RequantError):
    """An op's inputs or attributes do not fit its schema."""


class RewriteLimitError(RequantError):
    """The rewrite driver hit its iteration cap: a rule set that does not converge."""


class PassError(RequantError):
    """A pass failed; the message names it and the passes that ran before it."""


class InvalidModelError(RequantError):
    """A model file that ONNX's checker or ONNX Runtime would refuse (bad dims, a name
    defined twice, an opset that does not exist, a tensor too large to expand)."""


class SavedModelError(RequantError):
    """A saved directory that is not a complete, untouched save (missing, unlisted,
    modified or symlinked files, malformed manifest fields), or an output directory that
    saving would destroy."""


class TrustError(SavedModelError):
    """A saved model holds native code this user's requant did not build (load it with
    `trust_code=True` only if you trust where it came from), or the artifact key that
    recognises such builds is unusable."""


class InputError(RequantError):
    """Inputs given to a compiled model or as calibration that do not fit it (dtype,
    shape, a ragged list, a bare array where batches are expected)."""
