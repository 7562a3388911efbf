"""The verifier (requant.ir.verifier): each broken invariant is rejected with a message
naming the offending node; well-formed graphs pass; topological_sort repairs order and
refuses cycles."""

from __future__ import annotations

import numpy as np
import pytest

import requant.ir as ir
from requant.errors import VerifyError
from requant.ir import Graph, Node, TensorType, Value, dtypes

F32 = dtypes.float32
T23 = TensorType((2, 3), F32)


def base() -> tuple[Graph, Value]:
    g = Graph()
    return g, g.add_input("x", T23)


def test_accepts_a_well_formed_graph() -> None:
    g = ir.parse(
        """
        graph main(%x: f32[batch,4], %w: f32[4,3]) -> (%y, %x) {
          const %b: f32[3] = [1.0, 2.0, 3.0]
          %t = MatMul(%x, %w) @mm
          %y: f32[batch,3] = Add(%t, %b)
          %dead = Mul(%t, %t)
        }
        """
    )
    g.verify()
    ir.verify(g)


def test_accepts_declared_symbols_refining_unknown_dims() -> None:
    g = ir.parse("graph main(%x: f32[?,3]) -> (%y) {\n  %y: f32[batch,3] = Add(%x, %x)\n}\n")
    g.verify()


def test_rejects_a_cycle_naming_the_nodes_on_it() -> None:
    g, x = base()
    a = g.create_node("Add", [x, x], name="first")
    b = g.create_node("Mul", [a.output, x], name="second")
    g.create_node("Sub", [b.output, x], name="after")
    g.outputs = [b.output]
    a.set_input(1, b.output)  # first now reads second, which reads first
    with pytest.raises(VerifyError, match="cycle") as info:
        g.verify()
    msg = str(info.value)
    assert "'first' (Add)" in msg and "'second' (Mul)" in msg
    assert "'after'" not in msg


def test_rejects_a_self_loop() -> None:
    g, x = base()
    a = g.create_node("Add", [x, x], name="loop")
    a.set_input(1, a.output)
    g.outputs = [a.output]
    with pytest.raises(VerifyError, match=r"cycle.*'loop' \(Add\)"):
        g.verify()


def test_rejects_a_dangling_value() -> None:
    g, x = base()
    stray = Value("stray", T23)  # belongs to no graph
    g.create_node("Add", [x, stray], name="reader")
    g.outputs = [x]
    with pytest.raises(VerifyError, match=r"'reader' \(Add\).*%stray is dangling"):
        g.verify()


def test_rejects_a_constant_of_another_graph() -> None:
    g, x = base()
    other = Graph("other")
    w = other.add_constant(np.ones((2, 3), np.float32), name="w")
    n = g.create_node("Add", [x, w])
    g.outputs = [n.output]
    with pytest.raises(VerifyError, match=r"Add -> %t: input 1 %w is dangling"):
        g.verify()


def test_rejects_a_declared_type_that_disagrees_with_the_op() -> None:
    g, x = base()
    n = g.create_node("Add", [x, x], output_types=[TensorType((3, 2), F32)], name="bad_shape")
    g.outputs = [n.output]
    with pytest.raises(VerifyError, match=r"'bad_shape' \(Add\).*declared f32\[3,2\].*f32\[2,3\]"):
        g.verify()


def test_rejects_a_declared_dtype_that_disagrees_with_the_op() -> None:
    g, x = base()
    n = g.create_node("MatMul", [x, g.add_input("w", TensorType((3, 4), F32))],
                      output_types=[TensorType((2, 4), dtypes.float16)])
    g.outputs = [n.output]
    with pytest.raises(VerifyError, match=r"MatMul -> %t: output %t is declared f16\[2,4\]"):
        g.verify()


def test_rejects_add_of_f32_and_i32() -> None:
    g, x = base()
    i = g.add_input("i", TensorType((2, 3), dtypes.int32))
    n = g.create_node("Add", [x, i], output_types=[T23], name="mixed")
    g.outputs = [n.output]
    with pytest.raises(VerifyError, match=r"'mixed' \(Add\).*dtypes differ"):
        g.verify()


def test_rejects_an_unknown_op() -> None:
    g, x = base()
    n = g.create_node("FrobnicateNoSuchOp", [x], output_types=[T23], name="weird")
    g.outputs = [n.output]
    with pytest.raises(VerifyError, match=r"'weird' \(FrobnicateNoSuchOp\).*unknown op"):
        g.verify()


def test_rejects_wrong_arity() -> None:
    g, x = base()
    n = g.create_node("Add", [x, x, x], output_types=[T23])
    g.outputs = [n.output]
    with pytest.raises(VerifyError, match=r"Add -> %t: Add: takes 2 inputs, got 3"):
        g.verify()


def test_rejects_a_missing_required_input() -> None:
    g, x = base()
    n = g.create_node("Gemm", [x, None], output_types=[TensorType((2, 2), F32)], name="gemm")
    g.outputs = [n.output]
    with pytest.raises(VerifyError, match=r"'gemm' \(Gemm\).*required input B is missing"):
        g.verify()


def test_rejects_an_unknown_attribute() -> None:
    g, x = base()
    n = g.create_node("Add", [x, x], {"alpha": 2.0}, output_types=[T23], name="attrs")
    g.outputs = [n.output]
    with pytest.raises(VerifyError, match=r"'attrs' \(Add\).*unknown attribute\(s\) alpha"):
        g.verify()


def test_rejects_a_broken_use_list() -> None:
    g, x = base()
    n = g.create_node("Add", [x, x], name="forgotten")
    g.outputs = [n.output]
    x.uses.remove((n, 1))  # what a rewrite bypassing set_input would leave behind
    with pytest.raises(VerifyError, match=r"'forgotten' \(Add\): input 1 %x is missing from its use list"):
        g.verify()


def test_rejects_a_stale_use() -> None:
    g, x = base()
    n = g.create_node("Add", [x, x], name="reader")
    g.outputs = [n.output]
    ghost = Node("Neg", [x], [Value("ghost", T23)])  # registers a use, never inserted
    with pytest.raises(VerifyError, match=r"use by Neg -> %ghost, which is not in the graph"):
        g.verify()
    del ghost


def test_rejects_duplicate_value_names() -> None:
    g, x = base()
    n = g.create_node("Add", [x, x])
    n.output.name = "x"  # bypassing Graph.rename
    g.outputs = [n.output]
    with pytest.raises(VerifyError, match="%x is defined twice"):
        g.verify()


def test_rejects_an_undefined_graph_output() -> None:
    g, x = base()
    g.outputs = [Value("nowhere", T23)]
    with pytest.raises(VerifyError, match="graph output %nowhere is not defined"):
        g.verify()


def test_out_of_order_graph_is_rejected_then_fixed_by_topological_sort() -> None:
    g, x = base()
    a = g.create_node("Add", [x, x], name="a")
    b = g.create_node("Mul", [a.output, x], name="b")
    c = g.create_node("Sub", [b.output, a.output], name="c")
    free = g.create_node("Add", [x, x], name="free")
    g.outputs = [c.output, free.output]
    g.insert_after(c, a)  # a now comes after its readers
    assert [n.name for n in g] == ["b", "c", "a", "free"]
    with pytest.raises(VerifyError, match=r"'b' \(Mul\).*produced later.*topological_sort"):
        g.verify()
    g.topological_sort()
    assert [n.name for n in g] == ["a", "b", "c", "free"]  # stable: only what must move moves
    assert len(g) == 4 and [n.name for n in g.reversed()] == ["free", "c", "b", "a"]
    g.verify()
    inp = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    xv = inp["x"]
    np.testing.assert_array_equal(ir.run(g, inp)[0], (xv + xv) * xv - (xv + xv))


def test_topological_sort_raises_on_a_cycle() -> None:
    g, x = base()
    a = g.create_node("Add", [x, x], name="p")
    b = g.create_node("Mul", [a.output, x], name="q")
    g.outputs = [b.output]
    a.set_input(0, b.output)
    with pytest.raises(VerifyError, match="cycle") as info:
        g.topological_sort()
    assert "'p' (Add)" in str(info.value) and "'q' (Mul)" in str(info.value)
    assert [n.name for n in g] == ["p", "q"]  # the graph is left as it was
