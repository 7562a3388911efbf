"""Cases of the linear algebra ops (requant.ir.ops.linalg): MatMul, Gemm, Einsum. Operands
are multiples of 1/8 (`Draws.rq`), so every summation order gives the same sums."""

from __future__ import annotations

from op_cases.case import C, CaseList, Draws, I

__all__ = ["CASES"]

CASES = CaseList()
add = CASES.add
_d = Draws(108)
rq, ri = _d.rq, _d.ri

add("MatMul", [I(rq(3, 4)), I(rq(4, 5))])
add("MatMul", [I(rq(2, 1, 3, 4)), I(rq(5, 4, 6))], label="batched")
add("MatMul", [I(rq(4)), I(rq(2, 4, 3))], label="vec_left")
add("MatMul", [I(rq(2, 3, 4)), I(rq(4))], label="vec_right")
add("MatMul", [I(rq(3, 4, dt="f16")), I(rq(4, 5, dt="f16"))], label="f16")
add("MatMul", [I(ri(3, 4)), I(ri(4, 5))], label="i32")
add("MatMul", [I(rq(2, 5, 8), shape=("B", "S", 8)), C(rq(8, 3))], expect=("B", "S", 3), label="sym")
add("Gemm", [I(rq(3, 4)), I(rq(4, 5)), I(rq(5))])
add("Gemm", [I(rq(4, 3)), I(rq(5, 4)), I(rq(3, 5))], {"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0}, label="trans")
add("Gemm", [I(rq(3, 4)), I(rq(4, 5))], label="noC")
add("Gemm", [I(rq(3, 4)), I(rq(4, 5)), I(rq(1, 5))], {"beta": 0.0}, label="beta0")
add("Gemm", [I(rq(3, 4), shape=("B", 4)), C(rq(5, 4)), C(rq(5))], {"transB": 1}, expect=("B", 5), label="sym")
add("Gemm", [I(rq(2, 3)), C(rq(4, 3)), C(rq(4))], {"transB": 1, "alpha": 0.5, "beta": 2.0}, label="const_trans_alpha")
for equation, shapes in (
    ("ij,jk->ik", [(3, 4), (4, 5)]),
    ("bhqd,bhkd->bhqk", [(2, 3, 4, 5), (2, 3, 6, 5)]),
    ("ii->i", [(4, 4)]),
    ("ij->", [(3, 4)]),
    ("ij->ji", [(3, 4)]),
    ("...ij,...jk->...ik", [(2, 3, 4), (4, 5)]),
    ("ij,jk", [(3, 4), (4, 5)]),
    ("i,j->ij", [(3,), (4,)]),
):
    refused = {}
    if equation == "ii->i":
        refused["tvm"] = "diagonal"
    if equation.startswith("..."):
        refused["onnx"] = "onnx.checker's Einsum shape inference refuses this ellipsis broadcast"
    add("Einsum", [I(rq(*s)) for s in shapes], {"equation": equation}, label=equation, refused=refused)
add("Einsum", [I(rq(2, 3, 4), shape=("B", 3, 4)), C(rq(4, 5))], {"equation": "bij,jk->bik"}, expect=("B", 3, 5),
    label="sym")
