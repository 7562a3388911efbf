"""Shape arithmetic shared by the ops' type rules: broadcasting with symbolic dims,
axis normalisation, and products of dims."""

from __future__ import annotations

from collections.abc import Sequence

from requant.errors import ShapeInferenceError
from requant.ir.types import Dim, Shape

__all__ = ["broadcast_shapes", "broadcast_dim", "normalize_axis", "dims_product"]


def broadcast_dim(a: Dim, b: Dim, op: str = "") -> Dim:
    """The numpy broadcast of two dims; symbols equal to themselves, unknown otherwise."""
    if a == b:
        return a
    if a == 1:
        return b
    if b == 1:
        return a
    if isinstance(a, int) and isinstance(b, int):
        raise ShapeInferenceError(f"{op}: dims {a} and {b} do not broadcast")
    if isinstance(a, int):
        return a  # a symbol or unknown broadcast against a static dim > 1 must equal it
    if isinstance(b, int):
        return b
    return None


def broadcast_shapes(shapes: Sequence[Shape], op: str = "") -> Shape:
    if any(s is None for s in shapes):
        return None
    rank = max((len(s) for s in shapes), default=0)
    out: list[Dim] = [1] * rank
    for s in shapes:
        padded = (1,) * (rank - len(s)) + tuple(s)
        out = [broadcast_dim(x, y, op) for x, y in zip(out, padded)]
    return tuple(out)


def normalize_axis(axis: int, rank: int, op: str = "") -> int:
    if not -rank <= axis < max(rank, 1):
        raise ShapeInferenceError(f"{op}: axis {axis} out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def dims_product(dims: Sequence[Dim]) -> Dim:
    """Product of dims: an int when all are static, else None."""
    total = 1
    for d in dims:
        if not isinstance(d, int):
            return None
        total *= d
    return total
