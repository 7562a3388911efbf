"""Tests of passes/residual_stream.py: the residual stream found from the graph alone.

Small graphs built here check every part of the result (the Adds in order, the stream
values, the writers and readers, the norms) and the cases that must not match or must
block (an Add of two independent values is not residual; a non-linear reader of the
stream, a post-norm LayerNorm and a stream value that is a graph output are blockers);
random-weight Llama, GPT-2, ViT and BERT from both frontends (torch.export, and the ONNX
file requant writes read back) check that no per-architecture knowledge is needed.
"""

from __future__ import annotations

import numpy as np
import pytest

from requant.ir import Builder, Graph, tensor_type
from requant.ir.graph import Value
from requant.passes.residual_stream import find_residual_streams, residual_adds

from quant_testing import block

D = 8
RNG = np.random.default_rng(3)


def _w(n_in: int, n_out: int, b: Builder) -> Value:
    return b.const(RNG.standard_normal((n_in, n_out)).astype(np.float32))


def pre_norm(blocks: int = 2, extra_reader: bool = False) -> Graph:
    """Embedding -> blocks of h + W_o(relu(W_i(rms(h)))) -> final norm -> head."""
    g = Graph("pre")
    b = Builder(g)
    ids = b.input("ids", tensor_type("int64", [2, 5]))
    h = b.Gather(b.const(RNG.standard_normal((32, D)).astype(np.float32), name="table"), ids, axis=0, _name="embed")
    for i in range(blocks):
        n = b.RMSNormalization(h, b.const(np.ones(D, np.float32)), _name=f"norm{i}")
        up = b.Relu(b.MatMul(n, _w(D, 16, b), _name=f"up{i}"))
        h = b.Add(h, b.MatMul(up, _w(16, D, b), _name=f"down{i}"), _name=f"residual{i}")
    n = b.RMSNormalization(h, b.const(np.ones(D, np.float32)), _name="final_norm")
    outs = [b.MatMul(n, _w(D, 32, b), _name="head")]
    if extra_reader:
        outs.append(b.Mul(h, h, _name="square"))
    g.outputs = outs
    return g


def test_pre_norm_stream_parts():
    (s,) = find_residual_streams(pre_norm())
    assert s.position == "pre-norm" and s.width == D and s.blockers == []
    assert [a.name for a in s.adds] == ["residual0", "residual1"]
    assert [v.producer.name for v in s.values] == ["embed", "residual0", "residual1"]
    assert [(w.kind, w.node.name) for w in s.writers] == [("embedding", "embed"), ("linear", "down0"),
                                                          ("linear", "down1")]
    assert [(r.linear.matmul.name, r.norm.name) for r in s.readers] == [("up0", "norm0"), ("up1", "norm1"),
                                                                       ("head", "final_norm")]
    assert [n.name for n in s.norms] == ["norm0", "norm1", "final_norm"]


def test_a_non_linear_reader_blocks_and_is_named():
    (s,) = find_residual_streams(pre_norm(extra_reader=True))
    (blocker,) = s.blockers
    assert blocker == f"stream value %{s.values[-1].name}: 'square' (Mul) is a Mul, not a linear"
    (block,) = s.blocks
    assert (block.role, block.node.name, block.where, block.value) == ("reader", "square", "end", s.values[-1])


def test_the_stream_runs_through_channel_keeping_reshapes():
    """OPT's FFN sees the stream as [tokens, d]: Reshape -> Add -> Reshape back."""
    g = Graph("flat")
    b = Builder(g)
    x = b.input("x", tensor_type("float32", [2, 3, D]))
    h = b.Add(x, b.MatMul(b.RMSNormalization(x, b.const(np.ones(D, np.float32))), _w(D, D, b)), _name="residual0")
    flat = b.Reshape(h, b.const(np.array([6, D], np.int64)), _name="flatten")
    n = b.RMSNormalization(flat, b.const(np.ones(D, np.float32)), _name="norm1")
    h = b.Add(flat, b.MatMul(b.Relu(b.MatMul(n, _w(D, 16, b))), _w(16, D, b), _name="down1"), _name="residual1")
    g.outputs = [b.MatMul(b.Reshape(h, b.const(np.array([2, 3, D], np.int64)), _name="unflatten"), _w(D, 5, b),
                          _name="head")]
    (s,) = find_residual_streams(g)
    assert [a.name for a in s.adds] == ["residual0", "residual1"]
    assert [v.producer.name for v in s.aliases[1:]] == ["residual0", "flatten", "residual1", "unflatten"]
    assert len(s.readers) == 3 and s.readers[-1].linear.matmul.name == "head"
    assert [b.reason for b in s.blocks] == ["the stream input %x is written by a graph input, not a linear or an "
                                            "embedding table"]


def test_an_add_of_independent_values_is_not_residual():
    g = Graph("two")
    b = Builder(g)
    x = b.input("x", tensor_type("float32", [2, D]))
    y = b.input("y", tensor_type("float32", [2, D]))
    g.outputs = [b.Add(b.MatMul(x, _w(D, D, b)), b.MatMul(y, _w(D, D, b)))]
    assert residual_adds(g) == [] and find_residual_streams(g) == []


def test_post_norm_stream_is_found_and_blocked():
    g, _ = block()  # BERT-style: LN(h + attn(h)), LN(h + ffn(h))
    (s,) = find_residual_streams(g)
    assert s.position == "post-norm" and [a.name for a in s.adds] == ["residual1", "residual2"]
    assert [n.name for n in s.norms] == ["ln1", "ln2"]
    assert [(w.kind, w.node.name) for w in s.writers] == [("linear", "attn.output"), ("linear", "ffn.down")]
    assert sorted(r.linear.matmul.name for r in s.readers) == ["attn.key", "attn.query", "attn.value", "ffn.up"]
    assert any(b.startswith("post-norm stream: it passes through 'ln1'") for b in s.blockers)
    assert any("is a graph output" in b for b in s.blockers)


# -- real architectures, both frontends ----------------------------------------------------------

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


def _graphs(name: str):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
    import zoo

    from requant.backends.onnx import to_onnx
    from requant.frontends import from_onnx, from_torch
    from requant.passes import get_pass

    case = getattr(zoo, name)()
    g = get_pass("canonicalize")(from_torch(case.module, case.example_inputs)).graph
    return {"torch": g, "onnx": get_pass("canonicalize")(from_onnx(to_onnx(g))).graph}


# (position, Adds, writers by kind, readers, blockers): per 2-layer model
EXPECTED = {
    "llama": ("pre-norm", 4, {"embedding": 1, "linear": 4}, 11, 0),  # q/k/v + gate/up per layer, the head
    # token embedding + the position embedding (folded to a constant at a static length);
    # fused qkv + fc per layer, the head
    "gpt2": ("pre-norm", 4, {"sum": 1, "embedding": 1, "linear": 4}, 5, 0),
    # OPT flattens the stream to [tokens, d] around its FFN: the chain runs through those Reshapes
    "opt": ("pre-norm", 4, {"sum": 1, "embedding": 1, "linear": 4}, 9, 0),  # q/k/v + fc1 per layer, the head
    # the patch embedding is a Conv; the final LayerNorm's output is the graph's
    "vit": ("pre-norm", 4, {"sum": 1, "concat": 1, "linear": 4}, 8, 2),
    "bert": ("post-norm", 4, {"linear": 4}, 8, 3),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_architectures_from_both_frontends(name):
    position, adds, writers, readers, blockers = EXPECTED[name]
    for frontend, g in _graphs(name).items():
        s = find_residual_streams(g)[0]
        kinds: dict[str, int] = {}
        for w in s.writers:
            kinds[w.kind] = kinds.get(w.kind, 0) + 1
        got = (s.position, len(s.adds), kinds, len(s.readers), len(s.blockers))
        assert got == (position, adds, writers, readers, blockers), f"{name} via {frontend}: {got}; {s.blockers}"
        assert s.width == 64
        assert [b.reason for b in s.blocks] == s.blockers
