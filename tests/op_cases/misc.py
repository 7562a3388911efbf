"""Cases of the sources and no-ops (requant.ir.ops.misc): Constant, ConstantOfShape,
Range, Dropout (inference)."""

from __future__ import annotations

import numpy as np

from op_cases.case import C, CaseList, Draws, I, i64

__all__ = ["CASES"]

CASES = CaseList()
add = CASES.add
_d = Draws(112)
r = _d.r

add("Constant", [], {"value": r(2, 3)})
add("Constant", [], {"value": np.array(7, np.int64)}, label="scalar_i64")
add("ConstantOfShape", [C(i64(2, 3))])
add("ConstantOfShape", [C(i64(2, 3))], {"value": np.array([5], np.int64)}, label="i64")
add("ConstantOfShape", [C(i64(2, 3))], {"value": np.array([1.5], np.float32)}, label="f32")
add("ConstantOfShape", [I(i64(2, 3))], {"value": np.array([1.5], np.float16)}, expect=(None, None), label="dynamic",
    refused={"tvm": "computed shape input"})
add("Range", [I(np.float32(1.0)), I(np.float32(5.5)), I(np.float32(0.5))], refused={"tvm": "computed range bounds"})
add("Range", [C(np.float32(1.0)), C(np.float32(4.0)), C(np.float32(0.5))], expect=(6,), label="f32_const")
add("Range", [C(np.int64(10)), C(np.int64(-3)), C(np.int64(-4))], expect=(4,), label="i64_neg")
add("Range", [C(np.int32(5)), C(np.int32(1)), C(np.int32(1))], expect=(0,), label="empty")
add("Dropout", [I(r(3, 4))])
add("Dropout", [I(r(3, 4)), C(np.float32(0.3))], n_out=2, label="mask")
