"""Structural comparison (ir/structural.py): graphs equal up to value renaming compare
equal; each kind of difference is reported with where it is and both graphs' lines;
constants within / beyond a tolerance; elided constants compared by type only."""

from __future__ import annotations

import numpy as np
import pytest

from requant import ir
from requant.errors import ParseError
from requant.ir import Builder, Graph, assert_structural_equal, structural_difference, tensor_type
from requant.ir.structural import parse_elided

BASE = """
graph main(%x: f32[2,3], %m: f32[2,2]) -> (%y, %s) {
  const %w: f32[3,2] = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
  const %b: f32[2] = [0.5, -0.5]
  %t: f32[2,2] = MatMul(%x, %w)
  %u: f32[2,2] = Add(%t, %b)
  %y: f32[2,2] = Gelu(%u) {approximate="tanh"}
  %s: f32[2,2] = Mul(%y, %m)
}
"""


def renamed(text: str) -> str:
    """`text` with every value and the graph renamed (a bijection)."""
    for old, new in (("%x", "%in0"), ("%m", "%in1"), ("%w", "%weight"), ("%b", "%bias"), ("%t", "%v1"),
                     ("%u", "%v2"), ("%y", "%out"), ("%s", "%out2"), ("graph main", "graph other")):
        text = text.replace(old + "(", "\0(").replace(old, new).replace("\0(", old + "(")
    return text


def difference(actual: str, expected: str, **options) -> str | None:
    return structural_difference(ir.parse(actual), ir.parse(expected), **options)


# -- equal -------------------------------------------------------------------------------------


def test_equal_graphs_with_different_names_compare_equal() -> None:
    other = renamed(BASE)
    assert "%weight" in other and "%w:" not in other
    assert difference(BASE, other) is None
    assert_structural_equal(ir.parse(BASE), ir.parse(other))


def test_node_names_meta_and_graph_name_are_not_compared() -> None:
    other = BASE.replace("Add(%t, %b)", 'Add(%t, %b) @"layer.add" #meta {"created_by": "rule"}')
    assert difference(BASE, other) is None


def test_a_graph_equals_its_clone_and_its_text_round_trip() -> None:
    g = ir.parse(BASE)
    assert structural_difference(g, g.clone()) is None
    assert structural_difference(g, ir.parse(g.to_text())) is None


def test_builder_graph_equals_its_text() -> None:
    g = Graph()
    b = Builder(g)
    x = b.input("x", tensor_type("float32", [2, 3]))
    y = b.Relu(b.MatMul(x, b.const(np.arange(6, dtype=np.float32).reshape(3, 2))))
    g.outputs.append(y)
    text = """graph main(%a: f32[2,3]) -> (%r) {
      const %c: f32[3,2] = [[0, 1], [2, 3], [4, 5]]
      %p: f32[2,2] = MatMul(%a, %c)
      %r: f32[2,2] = Relu(%p)
    }"""
    assert structural_difference(g, ir.parse(text)) is None


# -- each kind of difference -----------------------------------------------------------------------


def test_input_count_and_type_differences() -> None:
    fewer = BASE.replace(", %m: f32[2,2]", "").replace("Mul(%y, %m)", "Mul(%y, %y)")
    message = difference(BASE, fewer)
    assert message.startswith("graph inputs differ in number: 2 vs 1 expected")
    message = difference(BASE, BASE.replace("%m: f32[2,2]", "%m: f16[2,2]").replace(
        "%s: f32[2,2] = Mul(%y, %m)", "%s: f32[2,2] = Mul(%y, %y)"))
    assert message == "graph input 1 differs in type: %m: f32[2,2] vs %m: f16[2,2] expected"


def test_op_difference_names_the_node_and_shows_both_lines() -> None:
    message = difference(BASE, renamed(BASE).replace("Gelu(", "Relu(").replace(' {approximate="tanh"}', ""))
    assert message.splitlines() == [
        "node 2 differs: op Gelu vs Relu expected",
        '  actual:   %y: f32[2,2] = Gelu(%u) {approximate="tanh"}',
        "  expected: %out: f32[2,2] = Relu(%v2)",
    ]


def test_attribute_differences() -> None:
    assert difference(BASE, BASE.replace('"tanh"', '"none"')).splitlines()[0] == (
        'node 2 differs: attribute approximate is "tanh" vs "none" expected')
    assert "attributes differ: missing approximate" in difference(BASE.replace(' {approximate="tanh"}', ""), BASE)


def test_int_and_float_attributes_differ_and_floats_use_the_tolerance() -> None:
    text = "graph g(%x: f32[4]) -> (%y) {\n  %y: f32[4] = LeakyRelu(%x) {alpha=ALPHA}\n}"

    def alpha(value: str) -> str:
        return text.replace("ALPHA", value)

    assert "attribute alpha is 1 vs 1.0 expected" in difference(alpha("1"), alpha("1.0"))
    assert difference(alpha("0.1"), alpha("0.10000001")) is not None
    assert difference(alpha("0.1"), alpha("0.10000001"), rtol=1e-6) is None


def test_output_count_and_type_differences() -> None:
    two = "graph g(%x: f32[4]) -> (%a) {\n  %a: f32[2], %b: f32[2] = Split(%x) {axis=0, num_outputs=2}\n}"
    three = "graph g(%x: f32[4]) -> (%a) {\n  %a: f32[1], %b: f32[1], %c: f32[2] = Split(%x) {axis=0, num_outputs=2}\n}"
    assert difference(two, three).splitlines()[0] == "node 0 differs: 2 outputs vs 3 expected"
    message = difference(BASE, BASE.replace("%u: f32[2,2] = Add", "%u: f32[2,?] = Add"))
    assert message.splitlines()[0] == "node 1 differs: output 0 has type f32[2,2] vs f32[2,?] expected"


def test_wiring_difference_names_what_each_graph_reads() -> None:
    message = difference(BASE, BASE.replace("Mul(%y, %m)", "Mul(%u, %m)"))
    assert message.splitlines() == [
        ("node 3 differs: input 0 reads %y (output 0 of node 2, Gelu), whose counterpart is %y (output 0 of node 2, "
         "Gelu), but the expected graph reads %u (output 0 of node 1, Add) there"),
        "  actual:   %s: f32[2,2] = Mul(%y, %m)",
        "  expected: %s: f32[2,2] = Mul(%u, %m)",
    ]
    swapped = difference(BASE, BASE.replace("Mul(%y, %m)", "Mul(%m, %y)"))
    assert "input 0 reads %y (output 0 of node 2, Gelu)" in swapped and "reads %m (graph input 1) there" in swapped


def test_constant_versus_input_and_omitted_inputs() -> None:
    add = "graph g(%x: f32[3], %b: f32[3]) -> (%y) {\n  const %c: f32[3] = 1.0\n  %y: f32[3] = Add(%x, ARG)\n}"
    message = difference(add.replace("ARG", "%c"), add.replace("ARG", "%b"))
    assert "input 1 reads %c (constant f32[3]) vs %b (graph input 1) expected" in message
    clip = "graph g(%x: f32[3]) -> (%y) {\n  const %lo: f32[] = 0.0\n  %y: f32[3] = Clip(%x, ARGS)\n}"
    message = difference(clip.replace("ARGS", "%lo"), clip.replace("ARGS", "%lo, %lo"))
    assert message.splitlines()[0] == "node 0 differs: 2 inputs vs 3 expected"
    message = difference(clip.replace("ARGS", "_, %lo"), clip.replace("ARGS", "%lo, %lo"))
    assert message.splitlines()[0] == "node 0 differs: input 1 is omitted (_) vs %lo (constant f32[]) expected"


def test_one_constant_does_not_stand_for_two() -> None:
    shared = """graph g(%x: f32[2]) -> (%z) {
      const %c: f32[2] = [1.0, 2.0]
      %y: f32[2] = Add(%x, %c)
      %z: f32[2] = Mul(%y, %c)
    }"""
    twice = shared.replace("Mul(%y, %c)", "Mul(%y, %d)").replace(
        "const %c: f32[2] = [1.0, 2.0]", "const %c: f32[2] = [1.0, 2.0]\n  const %d: f32[2] = [1.0, 2.0]")
    message = difference(twice, shared)
    assert message.splitlines()[0] == (
        "node 1 differs: input 1 reads %d (constant f32[2]), but the expected graph reads %c (constant f32[2]), "
        "the counterpart of another constant, %c")
    assert difference(shared, twice).splitlines()[0] == (
        "node 1 differs: input 1 reads %c (constant f32[2]), whose counterpart is %c (constant f32[2]), "
        "but the expected graph reads %d (constant f32[2]) there")


def test_graph_output_differences() -> None:
    assert difference(BASE, BASE.replace("-> (%y, %s)", "-> (%y)")).startswith(
        "graph outputs differ in number: 2 vs 1 expected (%y, %s vs %y)")
    message = difference(BASE, BASE.replace("-> (%y, %s)", "-> (%s, %y)"))
    assert message.startswith("graph output 0 reads %y (output 0 of node 2, Gelu), whose counterpart is %y")


def test_extra_and_missing_nodes() -> None:
    longer = BASE.replace("-> (%y, %s)", "-> (%y, %s, %r)").replace("\n}", "\n  %r: f32[2,2] = Relu(%s)\n}")
    message = difference(longer, BASE)
    assert message.splitlines() == [
        "the actual graph has more nodes: node 4 has no expected counterpart",
        "  actual:   %r: f32[2,2] = Relu(%s)",
        "(the actual graph has 5 nodes, the expected one 4)",
    ]
    assert difference(BASE, longer).startswith("the actual graph has fewer nodes: expected node 4 is missing")


def test_constants_nothing_reads_are_compared_too() -> None:
    unread = BASE.replace("  const %b", "  const %dead: f32[3] = [1.0, 2.0, 3.0]\n  const %b")
    assert difference(unread, BASE).startswith(
        "constants that nothing reads differ in number: 1 (%dead) vs 0 expected (none)")
    assert difference(unread, renamed(unread)) is None
    other = unread.replace("[1.0, 2.0, 3.0]", "[1.0, 2.0, 4.0]")
    assert difference(unread, other).startswith("unread constant %dead vs %dead expected: values differ at [2]")


# -- constants: tolerance, types, elision ------------------------------------------------------------


def test_constant_values_within_and_beyond_the_tolerance() -> None:
    near = BASE.replace("[0.5, -0.5]", "[0.5000001, -0.5]")
    message = difference(BASE, near)
    assert message.splitlines()[0] == (
        "node 1 differs: input 1 reads constant %b vs %b expected: values differ at [0]: 0.5 vs 0.5000001192092896 "
        "expected (rtol=0, atol=0); 1 of 2 elements differ")
    assert difference(BASE, near, rtol=1e-6) is None
    assert difference(BASE, near, atol=1e-6) is None
    far = BASE.replace("[0.5, -0.5]", "[0.5, -0.51]")
    assert "values differ at [1]: -0.5 vs -0.5099999904632568 expected (rtol=1e-06, atol=1e-06)" in difference(
        BASE, far, rtol=1e-6, atol=1e-6)


def test_values_can_be_left_uncompared_but_types_never() -> None:
    other = BASE.replace("[0.5, -0.5]", "[7.0, 8.0]")
    assert difference(BASE, other, compare_values=False) is None
    wider = BASE.replace("const %b: f32[2] = [0.5, -0.5]", "const %b: f32[1,2] = [[0.5, -0.5]]")
    message = difference(BASE, wider, compare_values=False)
    assert "reads constant %b vs %b expected: type f32[2] vs f32[1,2]" in message
    as_f16 = BASE.replace("const %b: f32[2]", "const %b: f16[2]")
    assert "type f32[2] vs f16[2]" in structural_difference(ir.parse(BASE), ir.parse(as_f16), compare_values=False)


def test_integer_constants_compare_exactly_whatever_the_tolerance() -> None:
    text = "graph g(%x: i32[2]) -> (%y) {\n  const %c: i32[2] = [1, C]\n  %y: i32[2] = Add(%x, %c)\n}"
    message = difference(text.replace("C", "2"), text.replace("C", "3"), rtol=1.0, atol=1.0)
    assert "values differ at [1]: 2 vs 3 expected;" in message


def test_nan_equals_nan() -> None:
    text = "graph g(%x: f32[2]) -> (%y) {\n  const %c: f32[2] = [nan, C]\n  %y: f32[2] = Add(%x, %c)\n}"
    assert difference(text.replace("C", "1.0"), text.replace("C", "1.0")) is None
    assert difference(text.replace("C", "1.0"), text.replace("C", "1.0"), rtol=1e-3) is None
    assert difference(text.replace("C", "1.0"), text.replace("C", "nan")) is not None


def test_elided_constants_are_compared_by_type_only() -> None:
    elided = BASE.replace("[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]", "...   // any weight").replace("[0.5, -0.5]", "?")
    expected = parse_elided(elided)
    assert [v.const for v in expected.constants] == [None, None]
    assert structural_difference(ir.parse(BASE), expected) is None
    wrong_shape = parse_elided(elided.replace("const %w: f32[3,2]", "const %w: f32[2,3]"))
    assert "reads constant %w vs %w expected: type f32[3,2] vs f32[2,3]" in structural_difference(
        ir.parse(BASE), wrong_shape)


def test_parse_elided_reads_what_to_text_elides() -> None:
    g = Graph()
    b = Builder(g)
    x = b.input("x", tensor_type("float32", [4, 32]))
    flags = b.const(np.zeros(32, dtype=bool), name="flags weird")
    g.outputs.append(b.Where(flags, b.MatMul(x, b.const(np.ones((32, 32), np.float32))), x))
    text = g.to_text(elide_constants=True)
    assert text.count("= ...") == 2 and '%"flags weird"' in text
    with pytest.raises(ParseError):
        ir.parse(text)
    assert structural_difference(g, parse_elided(text)) is None
    # where nothing is elided, parse_elided reads what ir.parse reads
    assert parse_elided(BASE).to_text() == ir.parse(BASE).to_text()


def test_assert_structural_equal_shows_both_graphs() -> None:
    with pytest.raises(AssertionError) as info:
        assert_structural_equal(ir.parse(BASE), ir.parse(BASE.replace("Gelu", "Relu")))
    message = str(info.value)
    assert message.startswith("node 2 differs: op Gelu vs Relu expected")
    assert "actual graph:\ngraph main(" in message and "expected graph:\ngraph main(" in message
