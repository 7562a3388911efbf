"""The rotation benchmark's pieces that need no trained model and no timing
(tools/bench/rotate.py, tools/bench/tiny_lm.py): the perplexity formula, the corpus split,
the W4A4 pipelines the tables name, the timing-only pass that turns every Hadamard
into an Identity or a Neg (outputs change; the other nodes stay), and the worker processes
that time each saved build alone (a requant save and a plain ONNX file), in rounds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from requant import ir
from requant.passes import PassManager
from requant.tools.bench import rotate, tiny_lm


def test_perplexity_of_uniform_and_of_certain_predictions():
    ids = np.random.default_rng(0).integers(0, 256, (2, 9))
    assert abs(tiny_lm.perplexity(np.zeros((2, 9, 256)), ids) - 256.0) < 1e-9
    certain = np.full((2, 9, 256), -1e4)
    certain[np.arange(2)[:, None], np.arange(8)[None, :], ids[:, 1:]] = 0.0
    assert abs(tiny_lm.perplexity(certain, ids) - 1.0) < 1e-9


def test_corpus_split_and_batches():
    train, held = tiny_lm.corpus()
    assert len(train) > 4 * len(held) > 0 and held[:4096] not in train
    batches = tiny_lm.batches(held, 20, seq=16, batch=8)
    assert [b.shape for b in batches] == [(8, 16), (8, 16), (4, 16)] and batches[0].dtype == np.int64
    assert np.array_equal(batches[0], tiny_lm.batches(held, 20, seq=16, batch=8)[0])  # seeded


def test_w4a4_pipelines_name_their_rotations_and_weight_method():
    plain = rotate.w4a4_int4(False, "rtn")
    rotated = rotate.w4a4_int4(True, "gptq")
    assert "rotate_residual" not in plain and rotated[1:6] == rotate._ROTATIONS
    (quantize,) = [opts for item in rotated if isinstance(item, tuple) and item[0] == "quantize" for opts in [item[1]]]
    assert quantize["weight_method"] == "gptq" and quantize["activation_scheme"].dtype.name == "int4"
    assert "W4A4 INT4 rotated + GPTQ (simulated)" in [row[0] for row in rotate.W4A4_ROWS]
    assert [item for item in rotate.w4a4_int4(True, "gptq", "mse") if isinstance(item, tuple)][-1][1]["method"] == "mse"
    token = [item for item in rotate.w4a4_int4(True, "gptq", "mse", "token") if isinstance(item, tuple)][-1][1]
    assert token["activation_scheme"].granularity == "token" and token["method"] == "mse"
    assert {row[4] for row in rotate.W4A4_ROWS} == {"tensor", "token"}


def test_hadamards_replaced_for_timing_only():
    source = """
    graph main(%x: f32[2,8]) -> (%y) {
      const %w: f32[8,2] = 0.5
      %h: f32[2,8] = Hadamard(%x)
      %y: f32[2,2] = MatMul(%h, %w)
    }"""
    steps = rotate._with_hadamards_as("Identity", "cpu-int8", {"rotate": True, "smooth_alpha": None})
    assert [s[0] for s in steps[:3]] == ["canonicalize", "fold_batchnorm", "fold_norm_affine"]
    g = ir.parse(source)
    result = PassManager([steps[-1]], verify=True).run(g)
    assert result.records[0].stats == {"hadamards_replaced": 1} and g.op_histogram() == {"MatMul": 1}
    g = ir.parse(source)
    PassManager([rotate._hadamards_replaced("Neg")], verify=True).run(g)
    assert g.op_histogram() == {"Neg": 1, "MatMul": 1}
    (neg,) = [n for n in g if n.op == "Neg"]
    assert neg.inputs[0] is g.inputs[0] and neg.outputs[0].users[0].op == "MatMul"


def test_each_saved_build_is_timed_in_its_own_process(tmp_path):
    import requant
    from requant.ir import Builder, Graph, tensor_type

    g = Graph("tiny")
    b = Builder(g)
    x = b.input("x", tensor_type("float32", [2, 8]))
    g.outputs = [b.Relu(b.MatMul(x, b.const(np.eye(8, dtype=np.float32))))]
    saved = requant.compile(g, target="cpu-fp32").save(tmp_path / "tiny")
    feeds = {"x": np.ones((2, 8), np.float32)}
    ms = rotate._time_in_own_processes({"requant": ("requant", saved), "onnx": ("onnx", saved / "model.onnx"),
                                        "missing": ("requant", tmp_path / "nothing")}, feeds, tmp_path, 0.05)
    assert ms["requant"] > 0 and ms["onnx"] > 0  # medians of at least 5 runs each
    assert np.isnan(ms["missing"])  # a build that does not load is a gap in the table, not a crash


def test_timing_rounds_give_the_median_of_each_builds_rounds(tmp_path, monkeypatch, capsys):
    import subprocess

    order = []
    times = iter([10.0, 50.0, 30.0, 20.0, 40.0, 60.0])  # a: 10, 30, 40 -> 30; b: 50, 20, 60 -> 50

    def fake_run(cmd, **kwargs):
        order.append(json.loads(cmd[-1])["path"])
        return subprocess.CompletedProcess(cmd, 0, stdout=json.dumps({"ms": next(times), "runs": 5}), stderr="")

    monkeypatch.setattr(subprocess, "run", fake_run)
    ms = rotate._time_in_own_processes({"a": ("onnx", tmp_path / "a"), "b": ("onnx", tmp_path / "b")},
                                       {"x": np.ones(2, np.float32)}, tmp_path, 0.05, rounds=3)
    assert ms == {"a": 30.0, "b": 50.0}
    assert [Path(p).name for p in order] == ["a", "b"] * 3  # every build once per round, in turn
    assert "round 3 of 3" in capsys.readouterr().err
