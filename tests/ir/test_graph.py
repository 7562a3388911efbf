"""Value / Node / Graph API (requant.ir.graph): use lists through every rewiring method,
output names across replacements, safe removal, ordering, clone independence, networkx
export, fresh names and read-only constants."""

from __future__ import annotations

import numpy as np
import pytest

import requant.ir as ir
from requant.errors import RequantError, VerifyError
from requant.ir import Graph, Node, TensorType, Value, dtypes

F32x2 = TensorType((2,), dtypes.float32)


def chain() -> tuple[Graph, Value, Node, Node, Node]:
    """x -> a = Add(x, x) -> b = Mul(a, x) -> c = Sub(b, a); output c."""
    g = Graph()
    x = g.add_input("x", F32x2)
    a = g.create_node("Add", [x, x], output_names=["a"])
    b = g.create_node("Mul", [a.output, x], output_names=["b"])
    c = g.create_node("Sub", [b.output, a.output], output_names=["c"])
    g.outputs = [c.output]
    return g, x, a, b, c


def order(g: Graph) -> list[str]:
    return [n.outputs[0].name for n in g]


def assert_use_lists_consistent(g: Graph) -> None:
    """Every input edge is in the use list of its value and vice versa."""
    edges = {(id(n), i) for n in g for i, v in enumerate(n.inputs) if v is not None}
    listed = set()
    for v in g.values():
        for user, i in v.uses:
            assert user.inputs[i] is v
            listed.add((id(user), i))
    assert listed == edges


# -- use lists -----------------------------------------------------------------------------
def test_create_node_records_uses_in_input_order() -> None:
    g, x, a, b, c = chain()
    assert x.uses == [(a, 0), (a, 1), (b, 1)]
    assert a.output.uses == [(b, 0), (c, 1)]
    assert a.output.users == [b, c]
    assert x.users == [a, b]
    assert a.output.producer is a and a.output.index == 0
    assert_use_lists_consistent(g)


def test_set_input_moves_the_use() -> None:
    g, x, a, b, c = chain()
    b.set_input(0, x)
    assert (b, 0) not in a.output.uses
    assert (b, 0) in x.uses and (b, 1) in x.uses
    b.set_input(0, None)
    assert b.inputs[0] is None and (b, 0) not in x.uses
    b.set_input(0, a.output)
    assert a.output.uses == [(c, 1), (b, 0)]
    assert_use_lists_consistent(g)
    g.verify()


def test_set_input_same_value_is_a_no_op() -> None:
    g, x, a, b, c = chain()
    before = list(x.uses)
    a.set_input(0, x)
    assert x.uses == before


def test_replace_all_uses_with_moves_every_use_but_not_graph_outputs() -> None:
    g, x, a, b, c = chain()
    y = g.add_input("y", F32x2)
    a.output.replace_all_uses_with(y)
    assert a.output.uses == []
    assert y.uses == [(b, 0), (c, 1)]
    c.output.replace_all_uses_with(y)
    assert g.outputs == [c.output]  # graph outputs change only through Graph.replace_value
    assert_use_lists_consistent(g)
    g.verify()


def test_replace_value_on_an_output_keeps_name_and_type() -> None:
    g, x, a, b, c = chain()
    d = g.create_node("Add", [b.output, b.output], output_names=["d"])
    g.replace_value(c.output, d.output)
    assert g.outputs == [d.output]
    assert d.output.name == "c" and d.output.type == F32x2
    assert c.output.name != "c"  # the old value gave its name away
    g.remove_node(c)
    assert "graph main(%x: f32[2]) -> (%c)" in g.to_text()
    assert_use_lists_consistent(g)
    g.verify()


def test_replace_value_with_a_graph_input_inserts_an_identity_carrying_the_name() -> None:
    g, x, a, b, c = chain()
    g.replace_value(c.output, x)
    (out,) = g.outputs
    assert out.name == "c" and out.type == c.output.type
    ident = out.producer
    assert ident is not None and ident.op == "Identity" and ident.inputs == (x,)
    assert ident.graph is g and g.nodes[-1] is ident
    assert x.name == "x" and g.inputs == [x]  # the input keeps its own name
    assert_use_lists_consistent(g)


def test_replace_value_with_another_output_inserts_an_identity_after_it() -> None:
    g, x, a, b, c = chain()
    g.outputs = [b.output, c.output]
    g.replace_value(c.output, b.output)
    first, second = g.outputs
    assert first is b.output and first.name == "b"
    assert second.name == "c" and second.producer.op == "Identity"
    assert second.producer.inputs == (b.output,)
    nodes = g.nodes
    assert nodes.index(second.producer) == nodes.index(b) + 1


def test_replace_value_with_a_constant_keeps_the_output_name() -> None:
    g, x, a, b, c = chain()
    k = g.add_constant(np.zeros(2, np.float32), name="k")
    g.replace_value(c.output, k)
    assert g.outputs[0].name == "c" and g.outputs[0].producer.inputs == (k,)


def test_replace_value_refuses_a_type_change_of_a_graph_output() -> None:
    g, x, a, b, c = chain()
    y = g.add_input("y", TensorType((2,), dtypes.int32))
    with pytest.raises(RequantError, match="differs"):
        g.replace_value(c.output, y)


# -- removal and ordering ------------------------------------------------------------------
def test_remove_node_safe_refuses_a_used_node_and_a_graph_output() -> None:
    g, x, a, b, c = chain()
    with pytest.raises(RequantError, match="still used"):
        g.remove_node(a)
    with pytest.raises(RequantError, match="graph output"):
        g.remove_node(c)
    assert len(g) == 3 and order(g) == ["a", "b", "c"]


def test_remove_node_drops_its_uses() -> None:
    g, x, a, b, c = chain()
    dead = g.create_node("Mul", [a.output, x], output_names=["dead"])
    g.remove_node(dead)
    assert dead.graph is None and len(g) == 3
    assert (dead, 0) not in a.output.uses and all(u is not dead for u, _ in x.uses)
    assert_use_lists_consistent(g)
    g.verify()


def test_remove_node_unsafe_leaves_a_dangling_reader() -> None:
    g, x, a, b, c = chain()
    g.remove_node(a, safe=False)
    with pytest.raises(VerifyError, match="dangling"):
        g.verify()


def test_removing_the_current_node_while_iterating_is_safe() -> None:
    g, x, a, b, c = chain()
    g.outputs = [x]
    seen = []
    for node in g.reversed():
        seen.append(node.outputs[0].name)
        g.remove_node(node)
    assert seen == ["c", "b", "a"] and len(g) == 0 and g.nodes == []


def test_insert_before_and_after() -> None:
    g, x, a, b, c = chain()
    n1 = g.create_node("Add", [x, x], output_names=["n1"], before=b)
    n2 = g.create_node("Add", [x, x], output_names=["n2"], after=a)
    n3 = g.create_node("Add", [x, x], output_names=["n3"], after=c)
    n4 = g.create_node("Add", [x, x], output_names=["n4"], before=a)
    assert order(g) == ["n4", "a", "n2", "n1", "b", "c", "n3"]
    assert len(g) == 7
    g.insert_after(c, n4)  # moving a node keeps the count
    assert order(g) == ["a", "n2", "n1", "b", "c", "n4", "n3"] and len(g) == 7
    assert [n.outputs[0].name for n in g.reversed()] == list(reversed(order(g)))
    g.verify()


def test_moving_a_node_to_where_it_already_is_keeps_the_list_intact() -> None:
    g, x, a, b, c = chain()
    g.insert_after(a, b)  # b is already right after a
    assert [n.outputs[0].name for n, _ in zip(g, range(10))] == ["a", "b", "c"]
    g2, x2, a2, b2, c2 = chain()
    g2.insert_before(c2, b2)  # b is already right before c
    assert [n.outputs[0].name for n, _ in zip(g2, range(10))] == ["a", "b", "c"]


def test_insert_into_another_graph_is_refused() -> None:
    g, x, a, b, c = chain()
    other, *_ = chain()
    with pytest.raises(RequantError, match="not in graph"):
        g.insert_before(other.nodes[0], Node("Add", [x, x], [Value("z", F32x2)]))


# -- clone ---------------------------------------------------------------------------------
def test_clone_is_equal_and_independent() -> None:
    g, x, a, b, c = chain()
    w = g.add_constant(np.arange(2, dtype=np.float32), name="w")
    b.set_input(1, w)
    a.meta["created_by"] = "rule"
    a.name = "first"
    x.meta["source"] = "in"
    g.meta["model"] = "m"
    original = g.to_text()
    h = g.clone()
    assert h.to_text() == original
    # mutate the clone every way there is
    hx = h.inputs[0]
    ha, hb, hc = h.nodes
    ha.meta["created_by"] = "other"
    ha.attrs["extra"] = 1
    hx.meta["source"] = "changed"
    h.meta["model"] = "changed"
    h.rename(hb.output, "renamed")
    hc.set_input(0, hx)
    h.create_node("Mul", [hx, hx], output_names=["new"])
    h.remove_node(hb)
    h.outputs.append(hx)
    assert g.to_text() == original
    assert b.graph is g and len(g) == 3
    assert x.uses == [(a, 0), (a, 1)]
    # constants are shared: they are read-only
    assert list(h.constants)[0].const is w.const
    g.verify()


def test_clone_keeps_interpreter_results() -> None:
    g, x, a, b, c = chain()
    inp = {"x": np.array([1.5, -2.0], np.float32)}
    np.testing.assert_array_equal(ir.run(g.clone(), inp)[0], ir.run(g, inp)[0])


# -- networkx, names, constants ------------------------------------------------------------
def test_to_networkx_counts() -> None:
    g, x, a, b, c = chain()
    g.add_constant(np.ones(2, np.float32), name="unused")
    g.outputs = [c.output, b.output]
    nx_graph = g.to_networkx()
    # 1 input + 1 constant + 3 nodes + 2 outputs
    assert nx_graph.number_of_nodes() == 7
    # uses: a reads x twice, b reads a and x, c reads b and a; plus 2 output edges
    assert nx_graph.number_of_edges() == 6 + 2
    ops = sorted(d["op"] for _, d in nx_graph.nodes(data=True) if d["kind"] == "node")
    assert ops == ["Add", "Mul", "Sub"]


def test_fresh_name_is_unique() -> None:
    g, x, a, b, c = chain()
    names = {g.fresh_name("t") for _ in range(50)} | {g.fresh_name("a") for _ in range(5)}
    assert len(names) == 55
    assert not names & {"x", "a", "b", "c"}
    n = g.create_node("Add", [x, x])
    assert n.output.name not in names and n.output.name not in {"x", "a", "b", "c"}


def test_claiming_a_taken_name_is_refused() -> None:
    g, x, a, b, c = chain()
    with pytest.raises(RequantError, match="already used"):
        g.add_input("a", F32x2)
    with pytest.raises(RequantError, match="already used"):
        g.create_node("Add", [x, x], output_names=["b"])


def test_failed_rename_keeps_the_old_name_claimed() -> None:
    g, x, a, b, c = chain()
    with pytest.raises(RequantError):
        g.rename(a.output, "x")
    assert g.fresh_name("a") != "a"


def test_constant_payloads_are_read_only() -> None:
    g = Graph()
    c = g.add_constant(np.arange(4, dtype=np.float32), name="c")
    assert c.is_constant and not c.const.flags.writeable
    with pytest.raises(ValueError):
        c.const[0] = 1.0
    c4 = g.add_constant([1, -2, 7], dtype=dtypes.int4)
    assert c4.type == TensorType((3,), dtypes.int4) and c4.const.dtype == np.int8


def test_node_label_and_output() -> None:
    g, x, a, b, c = chain()
    assert a.label == "Add -> %a"
    a.name = "first"
    assert a.label == "'first' (Add)"
    assert a.output is a.outputs[0]
    multi = Node("Split", [x], [Value("p", F32x2), Value("q", F32x2)])
    with pytest.raises(RequantError, match="2 outputs"):
        multi.output


def test_a_value_has_one_producer() -> None:
    g, x, a, b, c = chain()
    with pytest.raises(RequantError, match="already has a producer"):
        Node("Neg", [x], [a.output])


def test_op_histogram() -> None:
    g, *_ = chain()
    assert g.op_histogram() == {"Add": 1, "Mul": 1, "Sub": 1}
