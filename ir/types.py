"""Tensor types: a shape of dims and a dtype.

A dim is an `int` (static), a `str` (a symbol such as "batch", equal wherever the same
name appears in one graph) or `None` (unknown). A shape of `None` means unknown rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

from requant.ir.dtypes import DType, dtype as _dtype, from_numpy

__all__ = ["Dim", "Shape", "TensorType", "tensor_type", "type_of_array", "dims_compatible"]

Dim = Union[int, str, None]
Shape = Union[tuple[Dim, ...], None]


@dataclass(frozen=True)
class TensorType:
    shape: Shape
    dtype: DType

    def __post_init__(self) -> None:
        shape = self.shape
        if type(shape) is tuple and all(
            (type(d) is int and d >= 0) or type(d) is str or d is None for d in shape
        ):
            return  # already canonical: the common case on the rewrite hot path
        if self.shape is not None:
            shape = tuple(int(d) if isinstance(d, (int, np.integer)) else d for d in self.shape)
            for d in shape:
                if not (d is None or isinstance(d, str) or (isinstance(d, int) and d >= 0)):
                    raise ValueError(f"bad dim {d!r} in shape {self.shape!r}")
            object.__setattr__(self, "shape", shape)

    def __hash__(self) -> int:
        h = self.__dict__.get("_hash")
        if h is None:  # cached: types are hashed on every memoised shape inference
            h = hash((self.shape, self.dtype.name))
            object.__setattr__(self, "_hash", h)
        return h

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    @property
    def numel(self) -> int | None:
        """Number of elements when the shape is static, else None."""
        if not self.is_static:
            return None
        return int(np.prod(self.shape, dtype=np.int64))

    def with_dtype(self, dt: DType) -> TensorType:
        return TensorType(self.shape, dt)

    def with_shape(self, shape: Shape) -> TensorType:
        return TensorType(shape, self.dtype)

    def __str__(self) -> str:
        if self.shape is None:
            return f"{self.dtype.short}[...]"
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.dtype.short}[{dims}]"


def tensor_type(dt: str | DType, shape: Shape) -> TensorType:
    return TensorType(None if shape is None else tuple(shape), _dtype(dt))


def type_of_array(array: np.ndarray, dt: DType | None = None) -> TensorType:
    """The static type of a numpy array (int4/uint4 need `dt`, their storage is 8-bit)."""
    return TensorType(tuple(array.shape), dt if dt is not None else from_numpy(array.dtype))


def dims_compatible(a: Dim, b: Dim) -> bool:
    """True when two dims may describe the same extent (unknowns match anything)."""
    return a is None or b is None or a == b or (isinstance(a, str) != isinstance(b, str))
