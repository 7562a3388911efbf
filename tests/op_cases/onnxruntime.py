"""Cases of ONNX Runtime's quantized kernels (requant.ir.ops.onnxruntime, domain
com.microsoft): MatMulIntegerToFloat, DynamicQuantizeMatMul, MatMulNBits. The oracle is
ONNX Runtime. Integer-accumulating ops compare exactly; MatMulNBits within 1e-5 of
the output's largest magnitude (ORT sums its float32 dequantized products in another
order)."""

from __future__ import annotations

import numpy as np

from op_cases.case import EXACT, C, CaseList, Draws, I, Tol

from requant.ir.ops.onnxruntime import pack_low_first

__all__ = ["CASES"]

CASES = CaseList(tol=EXACT, oracle="ort")
add = CASES.add
_d = Draws(114)
r, ints = _d.r, _d.ints

_OPSETS = (None, 17)
# MatMulNBits: ORT dequantizes and sums K float32 products in its own order; outputs near
# 0 come out of cancellation, so the bound follows the size of the whole output
_NBITS_TOL = {"f32": Tol(0.0, 1e-5, scale_atol=True)}
_B = ints(16, 5, dt="i8")

add("com.microsoft.MatMulIntegerToFloat", [I(ints(2, 3, 16)), C(_B), C(np.float32(0.02)), C(np.float32(0.003))])
add("com.microsoft.MatMulIntegerToFloat", [I(ints(3, 16)), C(_B), C(np.float32(0.02)), C(r(5, lo=0.001, hi=0.01)),
                                           C(np.uint8(128)), C(ints(5, dt="i8", lo=-3, hi=3)), C(r(5))],
    label="per_column_bias", export_opsets=_OPSETS)
add("com.microsoft.MatMulIntegerToFloat", [I(ints(2, 3, 16), shape=("b", 3, 16)), C(_B), C(np.float32(0.02)),
                                           C(r(5, lo=1e-3, hi=1e-2)), C(np.uint8(128)), C(ints(5, dt="i8", lo=-3, hi=3)),
                                           C(r(5))], label="sym_per_column_bias", export_opsets=_OPSETS)
add("com.microsoft.MatMulIntegerToFloat", [I(ints(3, 16, dt="i8")), C(_B), C(np.float32(0.02)), C(np.float32(0.003)),
                                           C(np.int8(1)), C(np.int8(-2))], label="i8i8", export_opsets=_OPSETS)
add("com.microsoft.MatMulIntegerToFloat", [I(ints(2, 3, 16), shape=("B", "S", 16)), C(_B), C(np.float32(0.02)),
                                           C(np.float32(0.003))], expect=("B", "S", 5), label="sym")
add("com.microsoft.DynamicQuantizeMatMul", [I(r(2, 3, 16)), C(_B), C(np.float32(0.004))])
add("com.microsoft.DynamicQuantizeMatMul", [I(r(3, 16)), C(ints(16, 5)), C(r(5, lo=0.001, hi=0.01)),
                                            C(ints(5, lo=100, hi=140)), C(r(5))], label="u8_per_column_bias",
    export_opsets=_OPSETS)
add("com.microsoft.DynamicQuantizeMatMul", [I(r(2, 3, 16), shape=("B", "S", 16)), C(_B), C(np.float32(0.004)),
                                            C(np.int8(3))], expect=("B", "S", 5), label="sym")
add("com.microsoft.DynamicQuantizeMatMul", [I(r(2, 3, 16), shape=("b", 3, 16)), C(_B), C(np.float32(0.004)),
                                            C(np.int8(2)), C(r(5))], label="sym_zp_bias", export_opsets=_OPSETS)


def _nbits(n: int, k: int, block: int, bits: int, zp: str | None, lead: tuple = (3,), bias: bool = False,
           label: str = "", sym: tuple | None = None, **attrs: int) -> None:
    """A MatMulNBits case: A [*lead, k] (declared `sym`), B packed low bits first,
    scales per (column, block), zero points packed ("packed"), as floats ("float") or
    absent (the default 2^(bits-1)), and a bias when asked."""
    k_blocks = -(-k // block)
    codes = ints(n, k_blocks * block, lo=0, hi=(1 << bits) - 1)
    packed = pack_low_first(codes, bits).reshape(n, k_blocks, block * bits // 8)
    ins = [I(r(*lead, k), shape=sym), C(packed), C(r(n, k_blocks, lo=0.01, hi=0.1))]
    if zp == "packed":
        ins.append(C(pack_low_first(ints(n, k_blocks, lo=0, hi=(1 << bits) - 1), bits)))
    elif zp == "float":
        ins.append(C(r(n, k_blocks, lo=0, hi=(1 << bits) - 1)))
    elif bias:
        ins.append(None)
    if bias:
        ins += [None, C(r(n))]
    add("com.microsoft.MatMulNBits", ins, {"K": k, "N": n, "bits": bits, "block_size": block, **attrs}, label=label,
        expect=None if sym is None else tuple(sym[:-1]) + (n,), tol=_NBITS_TOL)


_nbits(6, 64, 32, 4, None, label="4bit_default_zp")
_nbits(6, 40, 16, 4, "packed", lead=(2, 3), bias=True, label="4bit_partial_block_zp_bias")
_nbits(5, 48, 16, 4, "float", label="4bit_float_zp")
_nbits(6, 40, 16, 4, "float", lead=(2, 3), sym=("b", 3, 40), label="4bit_float_zp_accuracy1", accuracy_level=1)
_nbits(4, 32, 16, 8, "packed", label="8bit")
_nbits(6, 40, 16, 8, "packed", lead=(2, 3), bias=True, sym=("b", 3, 40), label="8bit_partial_block_zp_bias")
_nbits(6, 40, 16, 8, None, label="8bit_default_zp")
_nbits(4, 64, 32, 2, "packed", label="2bit")
_nbits(6, 40, 16, 2, "packed", lead=(2, 3), bias=True, sym=("b", 3, 40), label="2bit_partial_block_zp_bias")
_nbits(6, 40, 16, 2, None, label="2bit_default_zp")
_nbits(3, 32, 16, 4, None, lead=(2, 5), sym=("B", "S", 32), label="sym")
