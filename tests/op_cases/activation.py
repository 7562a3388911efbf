"""Cases of the activations (requant.ir.ops.activation): the ReLU family, Gelu, Sigmoid
and its relatives, Swish, Mish, Clip, Softmax and LogSoftmax."""

from __future__ import annotations

import numpy as np

from op_cases.case import OLD_OPSETS, C, CaseList, Draws, I

__all__ = ["CASES"]

CASES = CaseList()
add = CASES.add
_d = Draws(103)
r, ri = _d.r, _d.ri

add("Relu", [I(r(3, 4))])
add("Relu", [I(ri(3, 4, dt="i8"))], label="i8")
add("Relu", [I(ri(3, 4))], label="i32")
add("LeakyRelu", [I(r(3, 4))], {"alpha": 0.2})
add("LeakyRelu", [I(r(3, 4))], label="default")
add("PRelu", [I(r(2, 3, 4, 4)), I(r(3, 1, 1))])
add("PRelu", [I(r(2, 5)), I(r(5))], label="vec")
add("Elu", [I(r(3, 4))], {"alpha": 0.5})
add("Selu", [I(r(3, 4))])
add("Celu", [I(r(3, 4))], {"alpha": 2.0})
add("ThresholdedRelu", [I(r(3, 4))], {"alpha": 0.5})
for approx in ("none", "tanh"):
    add("Gelu", [I(r(3, 7, lo=-5, hi=5))], {"approximate": approx}, label=approx, export_opsets=OLD_OPSETS)
    add("Gelu", [I(r(3, 7, dt="f16", lo=-5, hi=5))], {"approximate": approx}, label=approx + "_f16")
add("Gelu", [I(r(4, 7))], label="default")
add("Sigmoid", [I(r(3, 4, lo=-20, hi=20))])
add("Sigmoid", [I(r(3, 4, dt="f16", lo=-8, hi=8))], label="f16")
add("HardSigmoid", [I(r(3, 4))])
add("HardSigmoid", [I(r(3, 4))], {"alpha": 0.3, "beta": 0.4}, label="attrs")
add("HardSwish", [I(r(3, 8, lo=-5, hi=5))])
add("Softplus", [I(r(3, 4, lo=-10, hi=10))])
add("Softsign", [I(r(3, 4))])
add("Swish", [I(r(3, 4))], oracle_opset=24, export_opsets=OLD_OPSETS)
add("Swish", [I(r(3, 4))], {"alpha": 1.702}, oracle_opset=24, label="alpha", export_opsets=OLD_OPSETS)
add("Mish", [I(r(3, 4))], export_opsets=OLD_OPSETS)
add("Clip", [I(r(3, 4)), C(np.float32(-1)), C(np.float32(0.5))])
add("Clip", [I(r(3, 4)), None, C(np.float32(0.5))], label="max_only")
add("Clip", [I(r(3, 4)), C(np.float32(-0.5))], label="min_only")
add("Clip", [I(r(3, 4))], label="none")
add("Clip", [I(ri(3, 4)), I(np.int32(-2)), I(np.int32(3))], label="i32")
add("Clip", [I(r(6)), C(np.float32(1)), C(np.float32(-1))], label="min_gt_max")
for op in ("Softmax", "LogSoftmax"):
    add(op, [I(r(2, 3, 5, lo=-10, hi=10))])
    add(op, [I(r(2, 3, 5))], {"axis": 1}, label="axis1")
    add(op, [I(r(2, 3, 5))], {"axis": 0}, label="axis0")
    add(op, [I(r(2, 3, 5, dt="f16"))], label="f16")
    add(op, [I(r(2, 3, 5), shape=("B", "S", 5))], expect=("B", "S", 5), label="sym")
