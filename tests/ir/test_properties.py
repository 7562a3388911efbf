"""Property tests of the IR: random well-typed graphs (tests/strategies.py) survive the
text round trip and clone() unchanged, in text, in use lists and in interpreter results
bit for bit; random attributes and payloads of every dtype survive the text form."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import requant.ir as ir
from requant.ir import Graph, TensorType, dtypes
from requant.ir.text import parse_graph, print_graph
from strategies import graphs, random_inputs

# Derandomized: CI sees the same examples every run; failures reproduce exactly.
DETERMINISTIC = settings(max_examples=100, deadline=None, derandomize=True, print_blob=True)


def outputs_bits(g: Graph, seed: int = 0) -> list[bytes]:
    return [a.tobytes() + str((a.dtype, a.shape)).encode() for a in ir.run(g, random_inputs(g, seed))]


def use_structure(g: Graph) -> dict[str, list[tuple[int, int]]]:
    """Each value's uses as (node position, input index), by value name."""
    position = {id(n): i for i, n in enumerate(g)}
    return {v.name: sorted((position[id(n)], i) for n, i in v.uses) for v in g.values()}


@DETERMINISTIC
@given(graphs())
def test_generated_graphs_verify_and_run(g: Graph) -> None:
    g.verify()
    for out in ir.run(g, random_inputs(g, 1)):
        assert out.dtype == np.float32 and np.all(np.isfinite(out))
    assert 1 <= len(g.outputs) <= 3


@DETERMINISTIC
@given(graphs())
def test_text_roundtrip_is_exact(g: Graph) -> None:
    text = print_graph(g)
    back = parse_graph(text)
    assert print_graph(back) == text
    back.verify()
    assert use_structure(back) == use_structure(g)
    assert [v.name for v in back.inputs] == [v.name for v in g.inputs]
    assert [v.name for v in back.outputs] == [v.name for v in g.outputs]
    assert outputs_bits(back) == outputs_bits(g)


@DETERMINISTIC
@given(graphs())
def test_clone_is_identical_and_independent(g: Graph) -> None:
    text = g.to_text()
    h = g.clone()
    assert h.to_text() == text
    h.verify()
    assert use_structure(h) == use_structure(g)
    assert outputs_bits(h) == outputs_bits(g)
    # wreck the clone; the original must not notice
    for node in h.reversed():
        for i in range(len(node.inputs)):
            node.set_input(i, None)
        h.remove_node(node, safe=False)
    h.outputs.clear()
    h.meta["touched"] = True
    assert g.to_text() == text
    g.verify()


# -- attributes and payloads of every kind ----------------------------------------------
_scalars = (
    st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.booleans()
    | st.none()
)
_attr_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4), max_leaves=12)


def same_attr(a: Any, b: Any) -> bool:
    if isinstance(a, float):
        return type(b) is float and (a == b and math.copysign(1, a) == math.copysign(1, b) or math.isnan(a) and math.isnan(b))
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same_attr(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


@DETERMINISTIC
@given(st.dictionaries(st.text(min_size=1, max_size=8), _attr_values, max_size=6),
       st.text(max_size=10), st.text(max_size=10), st.one_of(st.none(), st.text(max_size=10)))
def test_random_attributes_and_names_roundtrip(attrs: dict[str, Any], in_name: str, out_name: str,
                                               node_name: str | None) -> None:
    g = Graph("g")
    x = g.add_input(in_name, TensorType((1,), dtypes.float32))
    n = g.create_node("Custom", [x, None], attrs, output_types=[x.type],
                      output_names=[out_name + "_o"], name=node_name, meta={"attrs": len(attrs)})
    g.outputs = [n.output]
    back = parse_graph(print_graph(g))
    assert print_graph(back) == print_graph(g)
    bn = back.nodes[0]
    assert list(bn.attrs) == list(attrs)
    assert all(same_attr(attrs[k], bn.attrs[k]) for k in attrs)
    assert bn.name == node_name and back.inputs[0].name == in_name and bn.output.name == out_name + "_o"


_PAYLOAD_DTYPES = list(dtypes.all_dtypes()) + [ir.FloatFormat(2, 1, 1.5)]


@st.composite
def payloads(draw: Any) -> tuple[ir.DType, np.ndarray]:
    """Arrays of any dtype from raw bytes: every bit pattern, NaN payloads included."""
    dt = draw(st.sampled_from(_PAYLOAD_DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=3)))
    numel = int(np.prod(shape, dtype=np.int64))
    if dt.kind == "bool":
        arr = np.array(draw(st.lists(st.booleans(), min_size=numel, max_size=numel)), dtype=bool)
    elif dt in (dtypes.int4, dtypes.uint4):
        lo, hi = dt.int_range
        arr = np.array(draw(st.lists(st.integers(lo, hi), min_size=numel, max_size=numel)), dtype=dt.np)
    else:
        raw = draw(st.binary(min_size=numel * dt.np.itemsize, max_size=numel * dt.np.itemsize))
        arr = np.frombuffer(raw, dtype=dt.np).copy()
    return dt, arr.reshape(shape)


@DETERMINISTIC
@given(payloads())
def test_payloads_of_every_dtype_are_bit_exact(case: tuple[ir.DType, np.ndarray]) -> None:
    dt, arr = case
    g = Graph()
    c = g.add_constant(arr, name="c", dtype=dt)
    n = g.create_node("Custom", [c], {"a": arr}, output_types=[c.type])
    g.outputs = [n.output]
    back = parse_graph(print_graph(g))
    assert print_graph(back) == print_graph(g)
    (bc,) = back.constants
    assert bc.type == c.type and bc.const.tobytes() == arr.tobytes() and bc.const.dtype == arr.dtype
    battr = back.nodes[0].attrs["a"]
    assert battr.dtype == arr.dtype and battr.shape == arr.shape and battr.tobytes() == arr.tobytes()
