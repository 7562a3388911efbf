"""Cases of the indexing ops (requant.ir.ops.indexing): Concat, Split, Slice, Gather,
GatherElements, GatherND, ScatterElements, ScatterND, Pad, Tile, Trilu."""

from __future__ import annotations

import ml_dtypes
import numpy as np

from op_cases.case import INT_MAX, OLD_OPSETS, C, CaseList, Draws, I, i64

__all__ = ["CASES"]

CASES = CaseList()
add = CASES.add
_d = Draws(106)
r, ri = _d.r, _d.ri

_SLICE_PAD_OPSETS = (None, 14, 18)  # Pad's axes input and Trilu came in 18 and 14

add("Concat", [I(r(2, 3)), I(r(4, 3)), I(r(1, 3))], {"axis": 0})
add("Concat", [I(r(2, 3)), I(r(2, 1))], {"axis": -1}, label="neg")
add("Concat", [I(ri(2, 3, dt="i64"))], {"axis": 1}, label="one")
add("Concat", [I(r(2, 3).astype(ml_dtypes.float8_e5m2)), I(r(2, 2).astype(ml_dtypes.float8_e5m2))], {"axis": 1},
    label="fp8", refused={"onnx": "ONNX's Concat takes no float8 tensors: onnx.checker refuses the exported model"})
add("Concat", [I(r(2, 3), shape=("B", 3)), I(r(2, 4), shape=("B", 4))], {"axis": 1}, expect=("B", 7), label="sym",
    export_opsets=OLD_OPSETS)
add("Concat", [I(r(2, 3), shape=("B", 3)), I(r(2, 3))], {"axis": 0}, expect=(None, 3), label="sym_axis")
add("Split", [I(r(2, 6)), C(i64(1, 2, 3))], {"axis": 1}, export_opsets=OLD_OPSETS)
add("Split", [I(r(6, 2))], {"num_outputs": 3}, label="even", export_opsets=OLD_OPSETS)
add("Split", [I(r(7, 2))], {"num_outputs": 3}, label="uneven")
# neither split nor num_outputs: the output count splits evenly (opset 13's form, which
# opset 18's export writes as num_outputs; ONNX's node test test_split_equal_parts_1d_opset13)
add("Split", [I(r(2, 6))], {"axis": 1}, n_out=3, label="by_output_count", export_opsets=OLD_OPSETS)
add("Split", [I(r(2, 6), shape=("B", 6))], {"axis": -1, "num_outputs": 2}, expect=("B", 3), label="sym",
    export_opsets=OLD_OPSETS)
add("Slice", [I(r(5, 6)), C(i64(1, 0)), C(i64(4, 6))])
add("Slice", [I(r(5, 6)), C(i64(1)), C(i64(INT_MAX)), C(i64(1))], label="intmax")
add("Slice", [I(r(5, 6)), C(i64(-1)), C(i64(-INT_MAX)), C(i64(1)), C(i64(-1))], label="reverse")
add("Slice", [I(r(5, 6)), C(i64(4, -2)), C(i64(0, 100)), C(i64(0, 1)), C(i64(-2, 1))], label="negstep",
    export_opsets=_SLICE_PAD_OPSETS)
add("Slice", [I(r(5, 6)), C(i64(0)), C(i64(6)), C(i64(-1)), C(i64(2))], label="step2")
add("Slice", [I(r(5, 6)), C(i64(-100)), C(i64(100)), C(i64(0))], label="clamp")
add("Slice", [I(r(5, 6)), C(i64(3)), C(i64(1)), C(i64(0))], label="empty")
add("Slice", [I(r(5, 6)), C(np.array([1], np.int32)), C(np.array([3], np.int32))], label="i32")
add("Slice", [I(r(5, 6)), I(i64(1)), I(i64(3)), C(i64(1))], expect=(5, None), label="dynamic",
    refused={"tvm": "computed starts/ends"})
add("Slice", [I(r(3, 6), shape=("B", 6)), C(i64(0, 2)), C(i64(INT_MAX, 4)), C(i64(0, 1))], expect=("B", 2), label="sym")
add("Gather", [I(r(5, 4)), I(np.array([[0, 2], [4, -1]], np.int64))])
add("Gather", [I(r(5, 4)), I(np.array([3, -4, 0], np.int32))], {"axis": 1}, label="axis1")
add("Gather", [I(r(5, 4)), C(np.int64(2))], label="scalar")
add("Gather", [C(r(10, 4)), I(ri(2, 3, dt="i64", lo=0, hi=9), shape=("B", "S"))], expect=("B", "S", 4), label="sym")
add("GatherElements", [I(r(3, 4)), I(ri(3, 2, dt="i64", lo=-4, hi=3))], {"axis": 1})
add("GatherElements", [I(r(3, 4)), I(ri(2, 4, dt="i64", lo=0, hi=2))], label="axis0")
add("GatherND", [I(r(3, 4, 5)), I(ri(2, 2, dt="i64", lo=0, hi=2))])
add("GatherND", [I(r(2, 4, 5)), I(ri(2, 3, 1, dt="i64", lo=0, hi=3))], {"batch_dims": 1}, label="batch")
add("ScatterElements", [I(r(3, 4)), C(np.array([[1, 0], [3, 2], [0, 1]], np.int64)), I(r(3, 2))], {"axis": 1})
add("ScatterElements", [I(r(3, 4)), C(np.array([[1, 1], [0, 0], [2, 2]], np.int64)), I(r(3, 2))],
    {"axis": 1, "reduction": "add"}, label="add")
add("ScatterElements", [I(r(3, 4)), C(np.array([[0], [1], [0]], np.int64)), I(r(3, 1))], {"axis": 0, "reduction": "add"},
    label="add_axis0")
add("ScatterND", [I(r(4, 3)), C(np.array([[1], [3]], np.int64)), I(r(2, 3))])
add("ScatterND", [I(r(4, 3)), C(np.array([[1, 2], [3, 0]], np.int64)), I(r(2))], {"reduction": "mul"}, label="mul")
add("Pad", [I(r(2, 3)), C(i64(1, 0, 2, 3))])
add("Pad", [I(r(2, 3)), C(i64(1, 2, 0, 1)), C(np.float32(1.5))], label="value", export_opsets=_SLICE_PAD_OPSETS)
for mode in ("reflect", "edge", "wrap"):
    add("Pad", [I(r(3, 4)), C(i64(1, 2, 2, 1))], {"mode": mode}, label=mode,
        export_opsets=_SLICE_PAD_OPSETS if mode == "reflect" else (None,))
add("Pad", [I(r(2, 3, 4)), C(i64(1, 2)), None, C(i64(-1))], label="axes")
add("Pad", [I(ri(2, 3, dt="i64")), C(i64(0, 1, 0, 1)), C(np.int64(7))], label="i64")
add("Pad", [I(r(2, 3, 4, 4), shape=("B", 3, 4, 4)), C(i64(0, 0, 1, 1, 0, 0, 1, 1))], expect=("B", 3, 6, 6), label="sym")
add("Tile", [I(r(2, 3)), C(i64(2, 3))])
add("Tile", [I(r(2, 3), shape=("B", 3)), C(i64(1, 2))], expect=("B", 6), label="sym", export_opsets=OLD_OPSETS)
add("Trilu", [I(r(2, 4, 5))])
add("Trilu", [I(r(4, 5)), C(np.int64(1))], {"upper": 0}, label="lower_k1", export_opsets=_SLICE_PAD_OPSETS)
add("Trilu", [I(r(4, 5)), C(np.int64(-2))], label="upper_k-2")
