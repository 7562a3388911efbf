"""Cases of the pooling ops (requant.ir.ops.pooling): MaxPool (with its Indices output),
AveragePool, GlobalAveragePool, GlobalMaxPool."""

from __future__ import annotations

from op_cases.case import CaseList, Draws, I

__all__ = ["CASES"]

CASES = CaseList()
add = CASES.add
_d = Draws(110)
r, ri = _d.r, _d.ri

_POOL_OPSETS = (None, 13, 21)  # dilations / ceil_mode rules changed between these
_INDICES = {"tvm": "Indices output"}

add("MaxPool", [I(r(2, 3, 7, 8))], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
    export_opsets=_POOL_OPSETS)
add("MaxPool", [I(r(1, 2, 6, 6))], {"kernel_shape": [2, 2], "strides": [2, 2]}, label="k2s2", export_opsets=_POOL_OPSETS)
add("MaxPool", [I(r(1, 2, 7, 7))], {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}, label="ceil")
add("MaxPool", [I(r(1, 2, 8, 8))], {"kernel_shape": [2, 3], "dilations": [2, 2]}, label="dilation")
add("MaxPool", [I(r(1, 2, 4, 4))], {"kernel_shape": [2, 2], "strides": [3, 3], "pads": [1, 1, 1, 1], "ceil_mode": 1},
    expect=(1, 2, 2, 2), label="ceil_drop")
add("MaxPool", [I(r(1, 2, 7, 8))], {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}, label="same")
add("MaxPool", [I(r(2, 3, 9))], {"kernel_shape": [3], "strides": [2]}, label="1d")
add("MaxPool", [I(ri(1, 2, 5, 5, dt="i8", lo=-128, hi=127))], {"kernel_shape": [2, 2]}, label="i8", oracle="ort")
add("MaxPool", [I(r(2, 3, 6, 5))], {"kernel_shape": [2, 2], "strides": [2, 1], "pads": [1, 0, 0, 1]}, n_out=2,
    label="indices", refused=_INDICES)
add("MaxPool", [I(r(1, 2, 5, 6))], {"kernel_shape": [3, 2], "storage_order": 1}, n_out=2, label="indices_colmajor",
    oracle="ort", refused=_INDICES)
add("MaxPool", [I(r(2, 3, 8, 8), shape=("B", 3, 8, 8))], {"kernel_shape": [2, 2], "strides": [2, 2]},
    expect=("B", 3, 4, 4), label="sym")
for cip in (0, 1):
    add("AveragePool", [I(r(2, 3, 7, 8))],
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": cip}, label=f"cip{cip}",
        export_opsets=_POOL_OPSETS)
    add("AveragePool", [I(r(1, 2, 7, 7))],
        {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1, "pads": [1, 1, 0, 0], "count_include_pad": cip},
        label=f"ceil_cip{cip}")
add("AveragePool", [I(r(1, 2, 6, 6))], {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1], "count_include_pad": 0},
    label="stride1_pad", export_opsets=_POOL_OPSETS)
add("AveragePool", [I(r(1, 2, 8, 8))], {"kernel_shape": [2, 2], "dilations": [2, 2]}, label="dilation")
for cip in (0, 1):
    add("AveragePool", [I(r(1, 2, 4, 5))],
        {"kernel_shape": [2, 2], "strides": [3, 3], "pads": [1, 1, 1, 1], "ceil_mode": 1, "count_include_pad": cip},
        label=f"ceil_drop_cip{cip}")
add("AveragePool", [I(r(1, 2, 7, 8))], {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}, label="same")
add("AveragePool", [I(r(2, 3, 9))], {"kernel_shape": [4], "strides": [2]}, label="1d")
for op in ("GlobalAveragePool", "GlobalMaxPool"):
    add(op, [I(r(2, 3, 4, 5))], export_opsets=_POOL_OPSETS)
    add(op, [I(r(2, 3, 7))], label="1d", oracle="ort")
    add(op, [I(r(2, 3, 4, 5), shape=("B", 3, "H", "W"))], expect=("B", 3, 1, 1), label="sym")
