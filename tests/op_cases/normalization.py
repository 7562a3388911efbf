"""Cases of the normalizations (requant.ir.ops.normalization): LayerNormalization (with
its mean / inverse-std outputs), RMSNormalization, BatchNormalization (inference),
InstanceNormalization, GroupNormalization."""

from __future__ import annotations

from op_cases.case import OLD_OPSETS, C, CaseList, Draws, I

__all__ = ["CASES"]

CASES = CaseList()
add = CASES.add
_d = Draws(104)
r = _d.r

_LN_DECOMPOSED = (None, 13, 17, 18)  # the ONNX backend writes LayerNormalization out below opset 17
add("LayerNormalization", [I(r(2, 3, 8)), I(r(8)), I(r(8))], export_opsets=_LN_DECOMPOSED)
add("LayerNormalization", [I(r(2, 3, 8)), I(r(8))], label="nobias", export_opsets=_LN_DECOMPOSED)
add("LayerNormalization", [I(r(2, 3, 8)), I(r(3, 8)), I(r(3, 8))], {"axis": -2, "epsilon": 1e-3}, label="axis-2",
    export_opsets=_LN_DECOMPOSED)
add("LayerNormalization", [I(r(2, 3, 8)), I(r(8)), I(r(8))], n_out=3, label="stats", export_opsets=(None, 17, 21))
add("LayerNormalization", [I(r(2, 3, 8), shape=("B", 3, 8)), C(r(8)), C(r(8))], {"epsilon": 1e-5}, n_out=3,
    label="stats_sym", export_opsets=(None, 17, 21))
# ONNX's reference normalises float16 in float16 (it ignores stash_type=1, which asks for
# float32): ONNX Runtime computes in float32 as the spec says
add("LayerNormalization", [I(r(2, 3, 8, dt="f16")), I(r(8, dt="f16")), I(r(8, dt="f16"))], label="f16", oracle="ort")
add("LayerNormalization", [I(r(2, 3, 8), shape=("B", "S", 8)), C(r(8)), C(r(8))], expect=("B", "S", 8), label="sym")
add("RMSNormalization", [I(r(2, 3, 8)), I(r(8))], {"epsilon": 1e-6}, export_opsets=OLD_OPSETS)
add("RMSNormalization", [I(r(2, 3, 8)), I(r(3, 8))], {"axis": -2, "epsilon": 1e-3}, label="axis-2",
    export_opsets=OLD_OPSETS)
add("RMSNormalization", [I(r(2, 3, 8, dt="f16")), I(r(8, dt="f16"))], label="f16")
add("BatchNormalization", [I(r(2, 3, 4, 5)), I(r(3)), I(r(3)), I(r(3)), I(r(3, lo=0.1, hi=2))],
    export_opsets=(None, 21, 23))
add("BatchNormalization", [I(r(2, 3, 4)), I(r(3)), I(r(3)), I(r(3)), I(r(3, lo=0.1, hi=2))], {"epsilon": 1e-3},
    label="3d", export_opsets=(None, 21, 23))
add("InstanceNormalization", [I(r(2, 3, 4, 5)), I(r(3)), I(r(3))], export_opsets=(None, 21, 23))
add("GroupNormalization", [I(r(2, 6, 4, 5)), I(r(6)), I(r(6))], {"num_groups": 3}, export_opsets=(None, 21, 23))
