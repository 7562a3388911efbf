"""Cases of Resize (requant.ir.ops.resize): nearest (each nearest_mode), linear and cubic
(cubic_coeff_a, exclude_outside), every coordinate transformation mode, scales and sizes
(keep_aspect_ratio_policy), axes, antialiased downsampling, tf_crop_and_resize with roi
and extrapolation, integer inputs, and symbolic batch dims."""

from __future__ import annotations

import numpy as np

from op_cases.case import C, CaseList, Draws, I, i64

__all__ = ["CASES"]

CASES = CaseList()
add = CASES.add
_d = Draws(117)
r, ri = _d.r, _d.ri

_EMPTY = np.zeros(0, np.float32)  # ONNX 13's "no roi" / "no scales"


def _scales(*values: float) -> np.ndarray:
    return np.array(values, np.float32)


_X = r(1, 2, 4, 5)
# each mode and coordinate transformation, upsampling one axis and downsampling the other
# (align_corners divides by the output's whole extent as ONNX's operator text, ONNX
# Runtime and torch have it, ONNX's reference by the fractional 5 x 1.3 = 6.5: ONNX
# Runtime is the oracle there)
for coord in ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric"):
    oracle = "ort" if coord == "align_corners" else "reference"
    for mode in ("nearest", "linear", "cubic"):
        add("Resize", [I(_X), None, C(_scales(1, 1, 0.5, 1.3))],
            {"mode": mode, "coordinate_transformation_mode": coord}, label=f"{mode}_{coord}", oracle=oracle)
        if coord == "half_pixel":
            add("Resize", [I(_X), None, C(_scales(1, 1, 2, 0.6))], {"mode": mode}, label=f"{mode}_up_down")
for nearest_mode in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil"):
    # asymmetric 2.5x puts source coordinates on .2, .4, .6, .8 and (at 5/2.5) on .0 and .5
    add("Resize", [I(r(1, 1, 2, 4)), None, C(_scales(1, 1, 1, 2.5))],
        {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": nearest_mode},
        label=f"nearest_{nearest_mode}")
# sizes (with ONNX 13's empty roi and scales), and the aspect-ratio policies
add("Resize", [I(_X), C(_EMPTY), C(_EMPTY), C(i64(1, 2, 7, 3))], {"mode": "linear"}, label="linear_sizes",
    expect=(1, 2, 7, 3), export_opsets=(None, 13, 18))
# scales computed at run time: the output extents are unknown, TVM needs them constant
add("Resize", [I(_X), None, I(_scales(1, 1, 2, 0.5))], {"mode": "nearest"}, label="computed_scales",
    expect=(None, None, None, None), refused={"tvm": "scales computed at run time"})
for policy in ("not_larger", "not_smaller"):
    add("Resize", [I(_X), None, None, C(i64(7, 7))], {"mode": "linear", "axes": [2, 3], "keep_aspect_ratio_policy": policy},
        label=f"linear_{policy}")
# cubic's coefficient and exclude_outside
add("Resize", [I(_X), None, C(_scales(1, 1, 1.7, 0.8))], {"mode": "cubic", "cubic_coeff_a": -0.5, "exclude_outside": 1},
    label="cubic_a_exclude_outside")
# axes: the last two only (negative axes: ONNX's reference mishandles them, ORT is the oracle)
add("Resize", [I(_X), None, C(_scales(3, 0.5))], {"mode": "linear", "axes": [2, 3]}, label="linear_axes",
    expect=(1, 2, 12, 2))
add("Resize", [I(_X), None, C(_scales(0.5, 3))], {"mode": "nearest", "axes": [-1, -2]}, label="nearest_negative_axes",
    expect=(1, 2, 12, 2), oracle="ort")
# antialiased downsampling (the kernel widens to cover 1/scale inputs per tap)
for mode in ("linear", "cubic"):
    add("Resize", [I(r(1, 1, 9, 10)), None, C(_scales(1, 1, 0.4, 0.6))], {"mode": mode, "antialias": 1},
        label=f"{mode}_antialias_down")
add("Resize", [I(r(1, 1, 4, 4)), None, C(_scales(1, 1, 2, 0.5))], {"mode": "linear", "antialias": 1},
    label="linear_antialias_mixed")
# tf_crop_and_resize: the roi window, values outside the input extrapolated
for mode in ("nearest", "linear", "cubic"):
    add("Resize", [I(_X), C(np.array([0, 0, 0.1, -0.25, 1, 1, 0.9, 0.85], np.float32)), None, C(i64(1, 2, 5, 6))],
        {"mode": mode, "coordinate_transformation_mode": "tf_crop_and_resize", "extrapolation_value": 7.0},
        label=f"{mode}_crop_and_resize")
# a 1-D and a 3-D resize; output extent 1 (pytorch_half_pixel's special case)
add("Resize", [I(r(2, 3, 7)), None, C(_scales(1, 1, 0.3))], {"mode": "linear"}, label="linear_1d")
add("Resize", [I(r(1, 1, 2, 3, 4)), None, C(_scales(1, 1, 2, 0.5, 1.5))], {"mode": "linear"}, label="linear_3d")
add("Resize", [I(r(1, 1, 3, 4)), None, None, C(i64(1, 1, 1, 2))],
    {"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"}, label="linear_to_one")
# integers: nearest copies exactly, linear / cubic round half to even and saturate (scales
# whose weights are exact in float32 and float64 alike, so ties are ties everywhere)
add("Resize", [I(ri(1, 2, 3, 4, dt="u8", lo=0, hi=255)), None, C(_scales(1, 1, 2, 2))], {"mode": "nearest"},
    label="nearest_u8")
add("Resize", [I(ri(1, 2, 3, 4, dt="i8", lo=-128, hi=127)), None, C(_scales(1, 1, 2, 0.5))], {"mode": "linear"},
    label="linear_i8")
add("Resize", [I(ri(1, 2, 3, 4, dt="u8", lo=0, hi=255)), None, C(_scales(1, 1, 2, 2))], {"mode": "cubic"},
    label="cubic_u8_saturates")
add("Resize", [I(r(1, 2, 4, 4, dt="f16")), None, C(_scales(1, 1, 2, 2))], {"mode": "linear"}, label="linear_f16")
# a symbolic batch survives (scale 1); resized extents are computed
add("Resize", [I(r(2, 3, 4, 4), shape=("B", 3, 4, 4)), None, C(_scales(1, 1, 2, 2))], {"mode": "nearest"},
    expect=("B", 3, 8, 8), label="sym")
add("Resize", [I(r(2, 3, 4, 4), shape=("B", 3, 4, 4)), None, None, C(i64(8, 6))], {"mode": "linear", "axes": [2, 3]},
    expect=("B", 3, 8, 6), label="sym_sizes")
