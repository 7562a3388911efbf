"""Cases of the convolutions (requant.ir.ops.conv): Conv and ConvTranspose, 1-D and 2-D,
strides, pads, dilations, groups, auto_pad. Operands are multiples of 1/8 (`Draws.rq`),
so every summation order gives the same sums."""

from __future__ import annotations

from op_cases.case import C, CaseList, Draws, I

__all__ = ["CASES"]

CASES = CaseList()
add = CASES.add
_d = Draws(109)
rq = _d.rq

add("Conv", [I(rq(2, 3, 7, 8)), I(rq(4, 3, 3, 3)), I(rq(4))])
add("Conv", [I(rq(1, 3, 9, 9)), I(rq(4, 3, 3, 3))], {"strides": [2, 2], "pads": [1, 1, 1, 1]}, label="stride_pad")
add("Conv", [I(rq(1, 2, 9, 10)), I(rq(3, 2, 3, 2))], {"dilations": [2, 3], "pads": [0, 1, 2, 3]}, label="dilation")
add("Conv", [I(rq(1, 4, 6, 6)), I(rq(4, 1, 3, 3)), I(rq(4))], {"group": 4, "pads": [1, 1, 1, 1]}, label="depthwise")
add("Conv", [I(rq(1, 4, 6, 6)), I(rq(6, 2, 3, 3))], {"group": 2}, label="group2")
for auto_pad in ("SAME_UPPER", "SAME_LOWER", "VALID"):
    add("Conv", [I(rq(1, 2, 7, 6)), I(rq(3, 2, 4, 3))], {"auto_pad": auto_pad, "strides": [2, 1]}, label=auto_pad)
add("Conv", [I(rq(2, 3, 10)), I(rq(5, 3, 3)), I(rq(5))], {"strides": [2], "pads": [1, 1]}, label="1d")
add("Conv", [I(rq(1, 3, 6, 6)), I(rq(2, 3, 3, 3))], {"kernel_shape": [3, 3]}, label="kernel_shape")
add("Conv", [I(rq(1, 2, 5, 5, dt="f16")), I(rq(3, 2, 3, 3, dt="f16"))], label="f16")
add("Conv", [I(rq(2, 3, 8, 8), shape=("B", 3, 8, 8)), C(rq(4, 3, 3, 3))], {"pads": [1, 1, 1, 1]},
    expect=("B", 4, 8, 8), label="sym")
add("Conv", [I(rq(2, 2, 5, 5), shape=("n", 2, 5, 5)), C(rq(4, 2, 3, 3)), C(rq(4))], {"pads": [1, 1, 1, 1], "strides": [2, 2]},
    expect=("n", 4, 3, 3), label="sym_stride_bias")
add("Conv", [I(rq(2, 3, 8, 8), shape=("B", 3, "H", "W")), C(rq(4, 3, 3, 3))], {"auto_pad": "SAME_UPPER"},
    expect=("B", 4, "H", "W"), label="sym_same", refused={"tvm": "auto_pad SAME on symbolic spatial dims"})
add("ConvTranspose", [I(rq(1, 3, 4, 4)), I(rq(3, 2, 3, 3))])
add("ConvTranspose", [I(rq(1, 3, 4, 5)), I(rq(3, 2, 3, 3)), I(rq(2))],
    {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 0]}, label="stride")
add("ConvTranspose", [I(rq(1, 4, 3, 3)), I(rq(4, 1, 2, 2))], {"group": 2, "strides": [2, 2], "dilations": [2, 1]},
    label="group", oracle="ort")
add("ConvTranspose", [I(rq(1, 2, 3, 3)), I(rq(2, 2, 3, 3))], {"strides": [2, 2], "output_shape": [6, 7]},
    label="output_shape", oracle="ort")
add("ConvTranspose", [I(rq(1, 2, 3, 3)), I(rq(2, 2, 3, 3))], {"strides": [2, 2], "auto_pad": "SAME_UPPER"}, label="same_upper")
# output_shape past the full transposed convolution (9 x 7 and 9 x 9 here) extends it at
# the end with zeros plus the bias (ONNX's node test test_convtranspose_output_shape; ONNX
# Runtime takes up to stride - 1 more; with SAME_* ONNX's reference splits the extension)
add("ConvTranspose", [I(rq(1, 2, 3, 3)), I(rq(2, 2, 3, 3)), I(rq(2))], {"strides": [3, 2], "output_shape": [10, 8]},
    label="output_shape_larger")
add("ConvTranspose", [I(rq(1, 2, 3, 3)), I(rq(2, 2, 3, 3))], {"strides": [3, 3], "output_shape": [11, 10],
                                                               "auto_pad": "SAME_UPPER"}, label="output_shape_larger_upper",
    oracle="ort")
add("ConvTranspose", [I(rq(2, 3, 6)), I(rq(3, 4, 3))], {"strides": [3]}, label="1d")
add("ConvTranspose", [I(rq(2, 4, 3, 3), shape=("n", 4, 3, 3)), C(rq(4, 3, 2, 2))], {"strides": [2, 2]},
    expect=("n", 3, 6, 6), label="sym")
