"""The text form (requant.ir.text): exact round trips, stable printing, located errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

import requant.ir as ir
from requant.errors import ParseError, VerifyError
from requant.ir import Graph, TensorType, dtypes
from requant.ir.text import INLINE_LIMIT, parse_graph, print_graph

F32 = dtypes.float32


def roundtrip(g: Graph) -> Graph:
    """Print, parse, and check the text is a fixed point."""
    text = print_graph(g)
    back = parse_graph(text)
    assert print_graph(back) == text
    return back


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def sample_payload(dt: ir.DType, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dt.kind == "bool":
        return rng.integers(0, 2, size=shape).astype(bool)
    if dt.is_integer:
        lo, hi = dt.int_range
        return rng.integers(max(lo, -100), min(hi, 100) + 1, size=shape).astype(dt.np)
    return rng.uniform(-3, 3, size=shape).astype(np.float32).astype(dt.np)


ALL_DTYPES = list(dtypes.all_dtypes()) + [ir.dtype("ff_e2m1_b1.5"), ir.FloatFormat(3, 2, -1.0), ir.FloatFormat(4, 3, 1e-05)]


# -- round trips ---------------------------------------------------------------------------
@pytest.mark.parametrize("dt", ALL_DTYPES, ids=lambda d: d.short)
@pytest.mark.parametrize("numel", [0, 1, 5, INLINE_LIMIT, INLINE_LIMIT + 1, 300])
def test_every_dtype_roundtrips_inputs_and_constants(dt: ir.DType, numel: int) -> None:
    g = Graph()
    x = g.add_input("x", TensorType(("batch", None, 3), dt))
    c = g.add_constant(sample_payload(dt, (numel,), seed=numel), name="c", dtype=dt)
    m = g.add_constant(sample_payload(dt, (2, 3), seed=7), name="m", dtype=dt)
    s = g.add_constant(sample_payload(dt, (), seed=9), name="s", dtype=dt)
    g.outputs = [x, c, m, s]
    back = roundtrip(g)
    assert back.inputs[0].type == x.type
    for old, new in zip(g.constants, back.constants):
        assert new.name == old.name and new.type == old.type
        assert new.type.dtype == dt
        assert same_bits(old.const, new.const)
        assert not new.const.flags.writeable
    assert [v.name for v in back.outputs] == ["x", "c", "m", "s"]


def test_small_payloads_are_readable_numbers_large_ones_base64() -> None:
    g = ir.parse(
        """
        graph main() -> (%a, %b) {
          const %a: f32[2,2] = [[1.5, -2.0], [0.1, 3.0]]
          const %b: i32[20] = 7
        }
        """
    )
    text = g.to_text()
    assert "const %a: f32[2,2] = [[1.5, -2.0], [0.1, 3.0]]" in text
    assert 'const %b: i32[20] = base64"' in text
    np.testing.assert_array_equal(list(g.constants)[1].const, np.full(20, 7, np.int32))


def test_special_floats_survive_bit_exactly_inline_and_base64() -> None:
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, 3.4028235e38, 0.1], np.float32)
    g = Graph()
    small = g.add_constant(specials, name="small")
    big = g.add_constant(np.tile(specials, 4), name="big")
    g.outputs = [small, big]
    text = g.to_text()
    assert "[0.0, -0.0, inf, -inf, nan, 1e-45, 3.4028235e+38, 0.1]" in text
    back = roundtrip(g)
    for old, new in zip(g.constants, back.constants):
        assert same_bits(old.const, new.const)
    assert math.copysign(1.0, float(list(back.constants)[0].const[1])) == -1.0


def test_nan_with_a_payload_falls_back_to_base64() -> None:
    odd_nan = np.array([0xFFC00001], np.uint32).view(np.float32)  # negative NaN, payload bit set
    g = Graph()
    g.outputs = [g.add_constant(np.concatenate([odd_nan, np.ones(2, np.float32)]), name="n")]
    assert 'base64"' in g.to_text()
    assert same_bits(list(roundtrip(g).constants)[0].const, list(g.constants)[0].const)


@pytest.mark.parametrize("dt", ["bf16", "f16", "fp8_e4m3", "fp8_e5m2", "fp4_e2m1", "ff_e2m1_b1.5"])
def test_low_precision_floats_print_shortest_decimal(dt: str) -> None:
    g = ir.parse(f"graph main() -> (%c) {{\n  const %c: {dt}[3] = [0.5, 1.0, -1.5]\n}}\n")
    assert f"const %c: {dt}[3] = [0.5, 1.0, -1.5]" in g.to_text()
    g2 = ir.parse("graph main() -> (%c) {\n  const %c: bf16[1] = [0.1]\n}\n")
    assert "[0.1]" in g2.to_text()  # bf16(0.1) is 0.10009765625; 0.1 reads back to it


def test_every_attribute_kind_roundtrips() -> None:
    attrs = {
        "i": 3,
        "neg": -7,
        "big": 2**62,
        "f": 0.1,
        "whole": 2.0,
        "nz": -0.0,
        "pinf": float("inf"),
        "ninf": float("-inf"),
        "nan": float("nan"),
        "tiny": 5e-324,
        "s": 'quote " backslash \\ newline \n tab \t unicode é ✓ \u0001',
        "empty": "",
        "li": [1, -2, 3],
        "lf": [0.5, -0.0, float("inf")],
        "ls": ["a", "b c", ""],
        "lempty": [],
        "nested": [[1, 2], [3]],
        "yes": True,
        "no": False,
        "none": None,
        "arr_f32": np.array([[1.0, -0.0], [np.inf, 0.25]], np.float32),
        "arr_i64": np.arange(40, dtype=np.int64).reshape(5, 8),
        "arr_bool": np.array([True, False]),
        "arr_scalar": np.array(2.5, np.float16),
        "dt": dtypes.fp8_e4m3,
        "ff": ir.FloatFormat(2, 1, 1.5),
        "ty": TensorType(("batch", None), dtypes.int4),
        "ty_rank": TensorType(None, F32),
        "odd key": 1,
    }
    g = Graph()
    x = g.add_input("x", TensorType((2,), F32))
    n = g.create_node("Custom", [x], attrs, output_types=[x.type])
    g.outputs = [n.output]
    back = roundtrip(g)
    got = back.nodes[0].attrs
    assert list(got) == list(attrs)
    for key, want in attrs.items():
        have = got[key]
        if isinstance(want, np.ndarray):
            assert same_bits(want, have), key
        elif isinstance(want, float):
            assert type(have) is float and (have == want or (math.isnan(want) and math.isnan(have))), key
            assert math.copysign(1, have) == math.copysign(1, want), key
        else:
            assert type(have) is type(want) and have == want, key
    assert type(got["i"]) is int and type(got["whole"]) is float


def test_meta_and_names_roundtrip() -> None:
    g = Graph("my model")
    g.meta = {"opset": 17, "producer": "test"}
    x = g.add_input("onnx::input 0", TensorType(("batch", 4), F32))
    x.meta = {"source": "encoder.layer.0", "range": [-1.0, 1.0]}
    w = g.add_constant(np.eye(4, dtype=np.float32), name="w")
    w.meta = {"quant": {"scheme": "per_channel", "axis": 0}}
    n = g.create_node("MatMul", [x, w], name="/encoder/layer.0/MatMul",
                      meta={"created_by": "rule_x", "source": "encoder.layer.0"}, output_names=["y.0"])
    n.output.meta = {"calib": {"min": -2.5, "max": float("inf")}}
    g.outputs = [n.output]
    back = roundtrip(g)
    bn = back.nodes[0]
    assert back.name == "my model" and back.meta == g.meta
    assert back.inputs[0].name == "onnx::input 0" and back.inputs[0].meta == x.meta
    assert list(back.constants)[0].meta == w.meta
    assert bn.name == "/encoder/layer.0/MatMul" and bn.meta == n.meta
    assert bn.output.name == "y.0" and bn.output.meta == n.output.meta
    text = g.to_text()
    assert '#meta {"created_by": "rule_x", "source": "encoder.layer.0"}' in text
    assert '@"/encoder/layer.0/MatMul"' in text


def test_meta_that_json_cannot_hold_is_converted_or_left_out() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((2,), F32))
    x.meta = {"scale": np.float32(0.5), "hist": np.array([1, 2]), "dt": dtypes.int8, "obj": object()}
    g.outputs = [x]
    back = roundtrip(g)
    assert back.inputs[0].meta == {"scale": 0.5, "hist": [1, 2], "dt": "i8"}


def test_symbolic_unknown_dims_and_unknown_rank() -> None:
    text = """graph main(%a: f32[batch,?,4], %b: i8[...], %c: bool[], %d: f32["batch size","nan",0]) -> (%a, %b, %c, %d) {
}
"""
    g = ir.parse(text)
    assert g.inputs[0].type == TensorType(("batch", None, 4), F32)
    assert g.inputs[1].type.shape is None
    assert g.inputs[2].type.shape == ()
    assert g.inputs[3].type.shape == ("batch size", "nan", 0)
    assert g.to_text() == text


def test_multi_output_omitted_inputs_and_zero_output_nodes() -> None:
    text = """graph main(%x: f32[4,6]) -> (%b, %a) {
  %a: f32[4,3], %b: f32[4,3] = Split(%x, _) {axis=1, num_outputs=2}
  %c: f32[4,3] = Gemm(%x, %x, _, _)
  Print(%a, %b) @sink
}
"""
    g = ir.parse(text)
    split, gemm, sink = g.nodes
    assert [o.name for o in split.outputs] == ["a", "b"] and split.inputs[1] is None
    assert split.outputs[1].index == 1 and split.outputs[1].producer is split
    assert gemm.inputs[2:] == (None, None)
    assert sink.outputs == [] and sink.name == "sink"
    assert [v.name for v in g.outputs] == ["b", "a"]
    assert g.to_text() == text


def test_omitted_result_types_are_inferred() -> None:
    g = ir.parse(
        """
        graph main(%x: f32[batch,4], %w: f32[4,3]) -> (%y) {
          %t = MatMul(%x, %w)
          %y = Add(%t, %t)
        }
        """
    )
    assert g.outputs[0].type == TensorType(("batch", 3), F32)
    g.verify()
    assert "%y: f32[batch,3] = Add(%t, %t)" in g.to_text()


def test_declared_types_are_kept_even_when_wrong() -> None:
    g = ir.parse("graph main(%x: f32[2]) -> (%y) {\n  %y: i32[7] = Add(%x, %x)\n}\n")
    assert g.outputs[0].type == TensorType((7,), dtypes.int32)
    with pytest.raises(VerifyError, match="declared i32"):
        g.verify()


def test_use_lists_are_right_after_parsing() -> None:
    g = ir.parse(
        """
        graph main(%x: f32[3]) -> (%z) {
          const %c: f32[3] = [1.0, 2.0, 3.0]
          %y = Add(%x, %c)
          %z = Mul(%y, %y)
        }
        """
    )
    x, (c,) = g.inputs[0], list(g.constants)
    add, mul = g.nodes
    assert x.uses == [(add, 0)] and c.uses == [(add, 1)]
    assert add.output.uses == [(mul, 0), (mul, 1)]
    g.verify()
    np.testing.assert_array_equal(ir.run(g, {"x": np.ones(3, np.float32)})[0], [4.0, 9.0, 16.0])


def test_hand_written_payload_forms() -> None:
    g = ir.parse(
        """
        graph main() -> (%a, %b, %c, %d) {
          const %a: f32[2,3] = [1, 2, 3, 4, 5, 6]     // flat, in C order
          const %b: i4[2,2] = [[-8, 7], [0, 1]]       # nested
          const %c: bool[3] = [true, false, true]
          const %d: u8[2,2] = 255                     // a scalar fills the shape
        }
        """
    )
    a, b, c, d = (v.const for v in g.constants)
    np.testing.assert_array_equal(a, np.arange(1, 7, dtype=np.float32).reshape(2, 3))
    assert b.dtype == np.int8 and b.tolist() == [[-8, 7], [0, 1]]
    assert c.tolist() == [True, False, True]
    assert d.tolist() == [[255, 255], [255, 255]]
    assert list(g.constants)[1].type.dtype == dtypes.int4


def test_out_of_order_graph_roundtrips() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((2,), F32))
    a = g.create_node("Add", [x, x])
    b = g.create_node("Mul", [a.output, x])
    g.outputs = [b.output]
    g.insert_before(a, b)  # b now reads a value defined below it
    text = g.to_text()
    back = ir.parse(text)
    assert back.to_text() == text
    back.topological_sort()
    back.verify()


def test_comments_are_ignored_but_meta_is_not() -> None:
    g = ir.parse(
        """// leading comment
        # hash comment with #meta inside it
        graph main(%x: f32[2]) -> (%y) {  // trailing
          #not meta: a comment
          %y = Add(%x, %x) #meta {"created_by": "me"}  // after meta
          #meta %y {"k": [1, 2]}
        }  # done
        """
    )
    assert g.nodes[0].meta == {"created_by": "me"}
    assert g.outputs[0].meta == {"k": [1, 2]}


def test_graph_methods_use_the_text_form() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((2,), F32))
    g.outputs = [g.create_node("Add", [x, x]).output]
    assert g.to_text() == print_graph(g)
    assert ir.parse(g.to_text()).to_text() == g.to_text()


def test_printing_is_stable_for_a_mixed_graph() -> None:
    text = """graph main(%x: f32[batch,4], %mask: bool[batch,?]) -> (%y) #meta {"v": 1} {
  #meta %x {"source": "in"}
  const %w: f32[4,3] = [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 8.0], [9.0, 10.0, 11.0]]
  const %b: f32[3] = [0.0, -0.0, nan]
  %t: f32[batch,3] = MatMul(%x, %w) @mm
  %y: f32[batch,3] = Add(%t, %b) {k=1} #meta {"created_by": "rule_x"}
  #meta %y {"scale": 0.5}
}
"""
    g = ir.parse(text)
    assert g.to_text() == text
    assert ir.parse(g.to_text()).to_text() == text


# -- errors --------------------------------------------------------------------------------
HEADER = "graph main(%x: f32[2]) -> (%y) {\n"

# (id, text, line, the token the column points at (first occurrence on that line),
#  a fragment of the message)
ERROR_CASES = [
    ("unknown dtype", "graph main(%x: f33[2]) -> (%x) {\n}\n", 1, "f33", "unknown dtype 'f33'"),
    ("unknown dtype in const", HEADER + "  const %c: q7[2] = [1, 2]\n}\n", 2, "q7", "unknown dtype"),
    ("unterminated string", HEADER + '  %y = Foo(%x) {s="abc}\n}\n', 2, '"abc', "unterminated string"),
    ("bad escape", HEADER + '  %y: f32[2] = Foo(%x) {s="a\\qb"}\n}\n', 2, "\\q", "bad escape"),
    ("unexpected token", HEADER + "  %y = Add(%x %x)\n}\n", 2, "%x)", "expected ')' or ','"),
    ("unexpected statement", HEADER + "  = Add(%x, %x)\n}\n", 2, "=", "expected a statement"),
    ("undefined value", HEADER + "  %y = Add(%x, %z)\n}\n", 2, "%z", "undefined value %z"),
    ("undefined output", "graph main(%x: f32[2]) -> (%x, %q) {\n}\n", 1, "%q", "undefined value %q"),
    ("defined twice", HEADER + "  %y = Add(%x, %x)\n  %y = Mul(%x, %x)\n}\n", 3, "%y", "defined twice"),
    ("input defined twice", "graph main(%x: f32[2], %x: f32[3]) -> (%x) {\n}\n", 1, "%x: f32[3]", "defined twice"),
    ("wrong number of types", HEADER + "  %a: f32[1], %b = Split(%x) {num_outputs=2}\n}\n", 2, "%b", "wrong number of types"),
    ("bad number", HEADER + "  const %c: f32[3] = [1.0, 1.2.3, 4]\n}\n", 2, "1.2.3", "bad number '1.2.3'"),
    ("bad number suffix", HEADER + "  %y: f32[2] = Foo(%x) {k=12abc}\n}\n", 2, "12abc", "bad number"),
    ("int out of range", HEADER + "  const %c: i8[2] = [1, 300]\n}\n", 2, "300", "out of range for i8"),
    ("float in int payload", HEADER + "  const %c: i32[2] = [1, 2.5]\n}\n", 2, "2.5", "expected an integer"),
    ("float overflow", HEADER + "  const %c: f16[1] = [1e10]\n}\n", 2, "1e10", "does not fit f16"),
    ("payload count", HEADER + "  const %c: f32[2,2] = [1.0, 2.0, 3.0]\n}\n", 2, "[1.0", "payload has 3 values"),
    ("payload nesting", HEADER + "  const %c: f32[2,2] = [[1.0, 2.0], [3.0]]\n}\n", 2, "[[", "expected 2 entries"),
    ("bad base64", HEADER + '  const %c: f32[1] = base64"***"\n}\n', 2, '"***"', "bad base64"),
    ("base64 length", HEADER + '  const %c: f32[2] = base64"AAAAAA=="\n}\n', 2, '"AAAA', "needs 8"),
    ("non-static const", HEADER + "  const %c: f32[batch] = 1.0\n}\n", 2, "f32[batch]", "static shape"),
    ("bad meta json", HEADER + '  %y = Add(%x, %x) #meta {"a": }\n}\n', 2, '}', "bad meta JSON"),
    ("inference fails", HEADER + "  %y = MatMul(%x, %x, %x)\n}\n", 2, "MatMul", "cannot infer"),
    ("unknown op untyped", HEADER + "  %y = NoSuchOp(%x)\n}\n", 2, "NoSuchOp", "unknown op"),
    ("forward ref to untyped", HEADER + "  %y = Add(%t, %x)\n  %t = Add(%x, %x)\n}\n", 2, "%t", "used before its definition"),
    ("missing close", HEADER + "  %y = Add(%x, %x)\n", 3, "", "expected '}'"),
    ("text after graph", HEADER + "  %y = Add(%x, %x)\n}\nextra\n", 4, "extra", "after the end of the graph"),
    ("unexpected char", HEADER + "  %y = Add(%x, %x) ~\n}\n", 2, "~", "unexpected character"),
    ("bad dim", "graph main(%x: f32[2,-1]) -> (%x) {\n}\n", 1, "-1", "bad dim"),
    ("missing graph", "grph main() -> () {\n}\n", 1, "grph", "expected 'graph'"),
    ("meta on unknown value", HEADER + "  %y = Add(%x, %x)\n  #meta %nope {}\n}\n", 3, "%nope", "undefined value %nope"),
]


@pytest.mark.parametrize("text,line,needle,fragment", [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_parse_errors_point_at_the_offending_token(text: str, line: int, needle: str, fragment: str) -> None:
    source_line = text.split("\n")[line - 1]
    column = source_line.index(needle) + 1 if needle else 1
    with pytest.raises(ParseError) as info:
        ir.parse(text)
    err = info.value
    assert fragment in err.reason
    assert (err.line, err.column) == (line, column), str(err)
    assert err.line >= 1 and str(err).startswith(f"line {line}, column {column}: ")


def test_parse_error_message_shows_the_line_and_a_caret() -> None:
    with pytest.raises(ParseError) as info:
        ir.parse(HEADER + "  %y = Add(%x, %zz)\n}\n")
    lines = str(info.value).split("\n")
    assert lines[1] == "    %y = Add(%x, %zz)"
    assert lines[2].index("^") == lines[1].index("%zz")
