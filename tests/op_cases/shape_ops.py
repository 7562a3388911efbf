"""Cases of the shape ops (requant.ir.ops.shape_ops): Reshape, Flatten, Squeeze,
Unsqueeze, Transpose, Expand, Identity, Shape, Size."""

from __future__ import annotations

import ml_dtypes
import numpy as np

from op_cases.case import OLD_OPSETS, C, CaseList, Draws, I, i64

__all__ = ["CASES"]

CASES = CaseList()
add = CASES.add
_d = Draws(105)
r, ri = _d.r, _d.ri

_COMPUTED_SHAPE = {"tvm": "computed shape input"}

add("Reshape", [I(r(2, 3, 4)), C(i64(6, 4))])
add("Reshape", [I(r(2, 3, 4)), C(i64(0, -1))], label="zero_minus1")
add("Reshape", [I(r(2, 3, 4)), C(i64(-1))], label="flat")
add("Reshape", [I(r(0, 3)), C(i64(3, 0))], {"allowzero": 1}, label="allowzero")
add("Reshape", [I(r(2, 3, 4)), I(i64(4, 6))], expect=(None, None), label="dynamic", refused=_COMPUTED_SHAPE)
add("Reshape", [I(r(2, 5, 24), shape=("B", "S", 24)), C(i64(0, 0, 4, 6))], expect=("B", "S", 4, 6), label="sym_heads")
add("Reshape", [I(r(2, 4, 6), shape=("B", 4, 6)), C(i64(0, -1))], expect=("B", 24), label="sym_merge",
    export_opsets=OLD_OPSETS)
add("Reshape", [I(r(2, 5, 6), shape=("B", "S", 6)), C(i64(-1, 6))], expect=(None, 6), label="sym_unknown")
add("Reshape", [I(r(2, 4, 6), shape=("B", 4, 6)), C(i64(-1, 4, 6))], expect=("B", 4, 6), label="sym_minus1")
add("Reshape", [I(r(2, 3, 4), shape=("B", 3, 4)), C(i64(0, -1))], label="sym_fallback")
for axis in (0, 1, 2, 3, -1):
    add("Flatten", [I(r(2, 3, 4))], {"axis": axis}, label=f"axis{axis}",
        export_opsets=OLD_OPSETS if axis == 2 else (None,))
add("Flatten", [I(r(2, 3, 4), shape=("B", 3, 4))], expect=("B", 12), label="sym")
add("Squeeze", [I(r(1, 3, 1, 4)), C(i64(0, 2))], export_opsets=OLD_OPSETS)
add("Squeeze", [I(r(1, 3, 1, 4)), C(i64(-2))], label="neg")
add("Squeeze", [I(r(1, 3, 1, 4))], label="all")
# an empty axes tensor squeezes nothing (ONNX Runtime would squeeze every 1: the export
# writes Identity)
add("Squeeze", [I(r(1, 3, 1, 4)), C(np.zeros(0, np.int64))], expect=(1, 3, 1, 4), label="empty_axes")
add("Squeeze", [I(r(1, 3, 1, 4)), I(np.zeros(0, np.int64))], expect=(1, 3, 1, 4), label="empty_axes_input",
    refused={"tvm": "computed axes"})
add("Squeeze", [I(r(2, 1, 4), shape=("B", 1, 4)), C(i64(1))], expect=("B", 4), label="sym")
add("Unsqueeze", [I(r(3, 4)), C(i64(0))])
add("Unsqueeze", [I(r(3, 4)), C(i64(-1, 0))], label="two", export_opsets=OLD_OPSETS)
add("Unsqueeze", [I(r(3, 4), shape=("B", 4)), C(i64(1, 3))], expect=("B", 1, 4, 1), label="sym")
add("Transpose", [I(r(2, 3, 4))], {"perm": [1, 0, 2]}, export_opsets=OLD_OPSETS)
add("Transpose", [I(r(2, 3, 4))], label="default")
add("Transpose", [I(ri(2, 3, dt="i8", lo=-8, hi=7), dtype="i4")], {"perm": [1, 0]}, label="i4")
add("Transpose", [I(r(2, 3, 4, 5), shape=("B", "S", 4, 5))], {"perm": [0, 2, 1, 3]}, expect=("B", 4, "S", 5), label="sym")
add("Expand", [I(r(3, 1)), C(i64(2, 3, 4))], export_opsets=OLD_OPSETS)
add("Expand", [I(r(3, 4)), C(i64(1, 1))], label="keep")
add("Expand", [I(r(2, 1, 4), shape=("B", 1, 4)), C(i64(1, 3, 4))], expect=("B", 3, 4), label="sym")
add("Expand", [I(r(3, 1)), I(i64(2, 3, 4))], expect=(None, 3, None), label="dynamic", refused=_COMPUTED_SHAPE)
add("Identity", [I(r(3, 4))], export_opsets=OLD_OPSETS)
add("Identity", [I(r(3, 4).astype(ml_dtypes.float8_e4m3fn))], label="fp8")
add("Shape", [I(r(2, 3, 4))])
add("Shape", [I(r(2, 3, 4))], {"start": 1}, label="start", export_opsets=OLD_OPSETS)
add("Shape", [I(r(2, 3, 4))], {"start": -2, "end": -1}, label="neg")
add("Shape", [I(r(2, 3, 4))], {"start": 5, "end": 10}, label="empty")
add("Shape", [I(r(2, 3), shape=("B", 3))], expect=(2,), label="sym")
add("Size", [I(r(2, 3, 4))], export_opsets=OLD_OPSETS)
