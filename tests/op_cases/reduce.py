"""Cases of the reductions (requant.ir.ops.reduce): the Reduce* family, ArgMax/ArgMin,
CumSum, TopK."""

from __future__ import annotations

import numpy as np

from op_cases.case import OLD_OPSETS, C, CaseList, Draws, I, i64

__all__ = ["CASES"]

CASES = CaseList()
add = CASES.add
_d = Draws(107)
r, ri = _d.r, _d.ri

# below opset 18 only ReduceSum takes its axes as an input: the others' axes become an
# attribute, and the export keeps the axes constant its round-trip record names
for op in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
           "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"):
    x = r(2, 3, 4, lo=0.2, hi=2) if op == "ReduceLogSum" else r(2, 3, 4)
    add(op, [I(x), C(i64(1))], label="axis1")
    add(op, [I(x), C(i64(0, -1))], {"keepdims": 0}, label="two_axes", export_opsets=OLD_OPSETS)
    add(op, [I(x)], label="all", export_opsets=OLD_OPSETS if op == "ReduceSum" else (None,))
    add(op, [I(x)], {"noop_with_empty_axes": 1}, label="noop")
    add(op, [I(x, shape=("B", 3, 4)), C(i64(-1))], {"keepdims": 1}, expect=("B", 3, 1), label="sym")
for op in ("ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceSumSquare", "ReduceL1"):
    add(op, [I(ri(2, 3, 4, lo=-4, hi=4)), C(i64(2))], label="i32")
add("ReduceMean", [I(r(2, 3, 4, dt="f16")), C(i64(-1))], label="f16")
# over the spatial axes of an NCHW map with keepdims: the ONNX export's GlobalAveragePool
add("ReduceMean", [I(r(2, 3, 5, 4)), C(i64(2, 3))], label="spatial")
add("ReduceMean", [I(r(2, 3, 5, 4)), C(i64(-1, -2))], label="spatial_negative", export_opsets=OLD_OPSETS)
add("ReduceSum", [I(r(2, 3, 4)), I(i64(1))], expect=(None, None, None), label="dynamic",
    refused={"tvm": "computed axes"})
for op in ("ArgMax", "ArgMin"):
    x = ri(3, 4, 5, lo=-2, hi=2).astype(np.float32)  # ties
    add(op, [I(x)])
    add(op, [I(x)], {"axis": -1, "keepdims": 0}, label="last")
    add(op, [I(x)], {"axis": 1, "select_last_index": 1}, label="select_last")
    add(op, [I(ri(3, 4))], {"axis": 1}, label="i32")
for exclusive in (0, 1):
    for reverse in (0, 1):
        add("CumSum", [I(r(3, 4)), C(np.int64(1))], {"exclusive": exclusive, "reverse": reverse},
            label=f"ex{exclusive}_rev{reverse}")
add("CumSum", [I(ri(3, 4)), C(np.int32(0))], label="i32")
add("TopK", [I(r(3, 6)), C(i64(3))])
add("TopK", [I(ri(3, 6, lo=0, hi=3).astype(np.float32)), C(i64(2))], {"largest": 0, "axis": 0}, label="smallest_ties")
add("TopK", [I(ri(3, 6, lo=0, hi=2)), C(i64(2))], {"axis": 1}, label="ties_i32")
