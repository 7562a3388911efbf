"""Cases of requant's online rotation (requant.ir.ops.rotation, Hadamard, domain
"requant"): powers of two (one dense factor, and butterflies split in two), Paley base
orders (12, 20 by Paley I; 36 by Paley II) alone and times a power of two (384 = 12 x 32,
MiniLM's width), a rotation along an inner axis (attention's heads), symbolic dims on
either side of the axis, float16 and float64; block-diagonal forms (`block`: a Sylvester
and a Paley block along the last axis, which TVM runs as its row kernel, and along an
inner axis with symbolic dims around it, which it runs as matmuls). The oracle is the dense numpy reference in
tests/op_references.py; an order without a construction is refused at type inference
(tests/ir/test_hadamard.py)."""

from __future__ import annotations

from op_cases.case import OLD_OPSETS, FLOAT_TOL, CaseList, Draws, I, Tol

__all__ = ["CASES"]

# float32 sums of up to 384 products in another order than the dense reference: the
# error grows with the row's magnitude, not each element's (an output near 0 is a
# cancellation of terms of size ~|x|), so the absolute bound scales with the output
_ROTATION_TOL = {**FLOAT_TOL, "f32": Tol(1e-5, 1e-6, scale_atol=True)}
CASES = CaseList(oracle="numpy", tol=_ROTATION_TOL)
add = CASES.add
_d = Draws(1414)
r = _d.r

add("Hadamard", [I(r(3, 8))], label="sylvester_8", export_opsets=OLD_OPSETS)
add("Hadamard", [I(r(2, 256))], label="sylvester_256_two_factors")
add("Hadamard", [I(r(2, 12))], label="paley1_12")
add("Hadamard", [I(r(2, 2, 40))], label="paley1_20_x2")
add("Hadamard", [I(r(2, 36))], label="paley2_36")
add("Hadamard", [I(r(2, 3, 384))], label="paley1_12_x32")
add("Hadamard", [I(r(2, 12, 3, 32))], {"axis": 1}, label="heads_axis_paley", export_opsets=OLD_OPSETS)
add("Hadamard", [I(r(2, 4, 3, 16))], {"axis": -3}, label="negative_inner_axis")
add("Hadamard", [I(r(2, 5, 96), shape=("batch", "seq", 96))], label="symbolic_rows")
add("Hadamard", [I(r(2, 4, 5, 8), shape=(2, 4, "seq", 8))], {"axis": 1}, label="symbolic_after_axis")
add("Hadamard", [I(r(2, 4, 5, 8), shape=("batch", 4, "seq", 8))], {"axis": 1}, label="symbolic_both_sides")
add("Hadamard", [I(r(3, 64, dt="f16"))], label="f16")
add("Hadamard", [I(r(3, 20, dt="f64"))], label="f64")
add("Hadamard", [I(r(3, 96))], {"block": 32}, label="block_32_of_96", export_opsets=OLD_OPSETS)
add("Hadamard", [I(r(2, 5, 72), shape=("batch", 5, 72))], {"block": 12}, label="block_paley_12_of_72")
add("Hadamard", [I(r(2, 48, 3))], {"axis": 1, "block": 16}, label="block_inner_axis")
add("Hadamard", [I(r(2, 24, 5), shape=("batch", 24, "seq"))], {"axis": 1, "block": 8}, label="block_symbolic_both_sides")
add("Hadamard", [I(r(2, 64))], {"block": 64}, label="block_whole_axis")
add("Hadamard", [I(r(4, 32, dt="f16"))], {"block": 4}, label="block_f16")
