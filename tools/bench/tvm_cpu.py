"""TVM on this CPU next to ONNX Runtime, in one run: all-MiniLM-L6-v2 fp32 (64 real
sentences x 64 tokens in one batch) built by `requant.backends.tvm.pipeline.build_cpu`,
timed round-robin against ONNX Runtime fp32 on the same float ONNX file, plus the
per-op-kind time breakdown of the TVM build, and (`--shapes`) GFLOP/s of MiniLM's
matmul shapes: TVM default build, requant's schedules, ONNX Runtime.

The TVM model comes from `to_relax(graph)` of requant's float graph of the model
(`--source graph`, the default when it lowers); `--source handbuilt` builds the same
BERT encoder directly with relax.BlockBuilder from the torch weights (`bert_relax`),
which is what this benchmark ran before `to_relax` existed. Both read the same trained
weights, so outputs are compared (cosine of mean-pooled embeddings to ORT fp32).

    python -m requant.tools.bench.tvm_cpu [--seconds 20] [--shapes] [--source graph|handbuilt]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["bert_relax", "main"]

logger = logging.getLogger(__name__)

BATCH, SEQ = 64, 64
MATMUL_SHAPES = ((384, 384), (384, 1536), (1536, 384))


# ----------------------------------------------------------------------------- models


def bert_relax(torch_model: Any, batch: int = BATCH, seq: int = SEQ) -> Any:
    """A HF BERT encoder (`load_minilm()`'s model) as a Relax module
    `(input_ids i64[b, s], attention_mask i64[b, s]) -> last_hidden_state`, written with
    relax.BlockBuilder and relax.op.* (the ops `to_relax` emits)."""
    from tvm import relax
    from tvm.relax import op as R

    bert = getattr(torch_model, "inner", torch_model)
    cfg = bert.config
    sd = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in bert.state_dict().items()}
    hidden, heads = cfg.hidden_size, cfg.num_attention_heads
    d, eps = hidden // heads, float(cfg.layer_norm_eps)

    def c(name: str) -> Any:
        return relax.const(sd[name])

    bb = relax.BlockBuilder()
    ids = relax.Var("input_ids", relax.TensorType((batch, seq), "int64"))
    mask = relax.Var("attention_mask", relax.TensorType((batch, seq), "int64"))
    with bb.function("main", [ids, mask]):
        with bb.dataflow():
            pos_type = sd["embeddings.position_embeddings.weight"][:seq] + sd["embeddings.token_type_embeddings.weight"][0]
            h = bb.emit(R.add(R.take(c("embeddings.word_embeddings.weight"), ids, axis=0), relax.const(pos_type)))
            h = bb.emit(R.nn.layer_norm(h, c("embeddings.LayerNorm.weight"), c("embeddings.LayerNorm.bias"), [-1],
                                        epsilon=eps))
            m = bb.emit(R.multiply(R.subtract(relax.const(1.0), R.astype(mask, "float32")),
                                   relax.const(float(np.finfo(np.float32).min))))
            m = bb.emit(R.reshape(m, (batch, 1, 1, seq)))

            def linear(x: Any, prefix: str) -> Any:
                w = R.permute_dims(c(prefix + ".weight"))
                return bb.emit(R.add(R.matmul(x, w), c(prefix + ".bias")))

            def split_heads(x: Any) -> Any:
                return bb.emit(R.permute_dims(R.reshape(x, (batch, seq, heads, d)), [0, 2, 1, 3]))

            for i in range(cfg.num_hidden_layers):
                p = f"encoder.layer.{i}."
                q, k, v = (split_heads(linear(h, p + f"attention.self.{n}")) for n in ("query", "key", "value"))
                s = bb.emit(R.matmul(q, R.permute_dims(k, [0, 1, 3, 2])))
                s = bb.emit(R.add(R.multiply(s, relax.const(1.0 / np.sqrt(d), "float32")), m))
                ctx = bb.emit(R.matmul(R.nn.softmax(s, axis=-1), v))
                ctx = bb.emit(R.reshape(R.permute_dims(ctx, [0, 2, 1, 3]), (batch, seq, hidden)))
                a = linear(ctx, p + "attention.output.dense")
                h = bb.emit(R.nn.layer_norm(R.add(a, h), c(p + "attention.output.LayerNorm.weight"),
                                            c(p + "attention.output.LayerNorm.bias"), [-1], epsilon=eps))
                f = bb.emit(R.nn.gelu(linear(h, p + "intermediate.dense")))
                o = linear(f, p + "output.dense")
                h = bb.emit(R.nn.layer_norm(R.add(o, h), c(p + "output.LayerNorm.weight"),
                                            c(p + "output.LayerNorm.bias"), [-1], epsilon=eps))
            out = bb.emit_output(h)
        bb.emit_func_output(out)
    return bb.get()


def _graph_relax(float_path: Path) -> Any:
    """requant's graph of the float ONNX file, lowered by `to_relax` (batch bound)."""
    from requant.backends.tvm.emit import to_relax
    from requant.frontends import from_onnx

    graph = from_onnx(str(float_path))
    return to_relax(graph, bind_dims={"batch": BATCH})


def _vm_runner(ex: Any, names: list[str]) -> Any:
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(ex, tvm.cpu())

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        out = vm["main"](*(tvm.runtime.tensor(np.ascontiguousarray(feeds[n])) for n in names))
        while not hasattr(out, "numpy"):  # to_relax returns a tuple of outputs
            out = out[0]
        return out.numpy()

    return run


# ----------------------------------------------------------------------------- matmul shapes


def _gflops(m: int, k: int, n: int, seconds: float) -> float:
    return 2.0 * m * k * n / seconds / 1e9


def matmul_shapes_table(seconds: float, default: bool = True) -> list[str]:
    """GFLOP/s of x[64, 64, K] @ W[K, N] + b: TVM default, requant's schedule, ORT."""
    import tvm
    from tvm import relax
    from tvm.relax import op as R

    from requant.backends.tvm import pipeline
    from requant.tools.bench import matmul_kernels as mk

    lines = ["| M x K x N | TVM default GFLOP/s | TVM requant GFLOP/s | ONNX Runtime GFLOP/s |", "|---|---:|---:|---:|"]
    for k, n in MATMUL_SHAPES:
        case = mk.Case.make(k, n)
        bb = relax.BlockBuilder()
        x = relax.Var("x", relax.TensorType(case.x.shape, "float32"))
        with bb.function("main", [x]):
            with bb.dataflow():
                y = bb.emit_output(R.add(R.matmul(x, relax.const(case.w)), relax.const(case.b)))
            bb.emit_func_output(y)
        mod = bb.get()
        ours = pipeline.build_cpu(mod)
        sess = mk._session(mk.build_fp32(case))
        vm = relax.VirtualMachine(ours, tvm.cpu())
        xt = tvm.runtime.tensor(case.x)
        np.testing.assert_allclose(vm["main"](xt).numpy(), sess.run(None, {"x": case.x})[0], rtol=1e-3, atol=1e-3)
        t_ours, t_ort = [], []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or len(t_ours) < 5:
            t0 = time.perf_counter()
            vm["main"](xt)
            t_ours.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            sess.run(None, {"x": case.x})
            t_ort.append(time.perf_counter() - t0)
        t_def = float("nan")
        if default:  # untuned TVM is ~100x slower: one timed call
            dvm = relax.VirtualMachine(pipeline.build_cpu(mod, schedule=False), tvm.cpu())
            dvm["main"](xt)
            t0 = time.perf_counter()
            dvm["main"](xt)
            t_def = time.perf_counter() - t0
        m = BATCH * SEQ
        lines.append(f"| {m} x {k} x {n} | {_gflops(m, k, n, t_def):.1f} | "
                     f"{_gflops(m, k, n, statistics.median(t_ours)):.1f} | {_gflops(m, k, n, statistics.median(t_ort)):.1f} |")
    return lines


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="timing budget for the models together")
    ap.add_argument("--shapes", action="store_true", help="also time MiniLM's matmul shapes alone")
    ap.add_argument("--source", choices=("auto", "graph", "handbuilt"), default="auto",
                    help="TVM model from to_relax(requant graph) or the hand-built Relax BERT")
    ap.add_argument("--threads", type=int, default=None, help="TVM threads (default: one per core)")
    args = ap.parse_args(argv)

    from requant.backends.tvm import pipeline
    from requant.tools import demo

    with demo._silenced_transformers(), tempfile.TemporaryDirectory(prefix="requant-bench-") as tmp_name:
        model, feeds, batches = demo._data()
        float_path = demo._export_float(model, batches[0], Path(tmp_name))
        rows = [demo._session_row("ONNX Runtime fp32", float_path)]
        names = list(demo.INPUTS)
        mod, source = None, args.source
        if source in ("auto", "graph"):
            try:
                mod, source = _graph_relax(float_path), "graph"
            except Exception as exc:  # noqa: BLE001  (auto: fall back to the hand-built encoder)
                if source == "graph":
                    raise
                logger.warning("to_relax failed (%s: %s); using the hand-built encoder", type(exc).__name__, exc)
        if mod is None:
            mod, source = bert_relax(model), "handbuilt"
        start = time.perf_counter()
        ex = pipeline.build_cpu(mod, threads=args.threads)
        build_s = time.perf_counter() - start
        rows.append(demo.Row(f"TVM cpu fp32 (requant schedules, {source})", _vm_runner(ex, names), 0))
        demo._accuracy(rows, feeds)
        rounds = demo._time(rows, feeds, args.seconds)
        inputs = [feeds[n] for n in names]
        kinds, kernels = pipeline.profile_by_kind(ex, inputs)

    base = rows[0]
    print(f"all-MiniLM-L6-v2 fp32, {BATCH} real sentences x {SEQ} tokens in one batch; median of {rounds} "
          f"round-robin runs; TVM build {build_s:.1f} s\n")
    print("| model | latency ms | vs ORT fp32 | cos mean | cos min |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r.name} | {r.ms:.1f} | {r.ms / base.ms:.2f}x | {r.cos_mean:.5f} | {r.cos_min:.5f} |")
    print("| TVM cpu int8 | n/a: needs the cpu-int8 graph through to_relax (not wired yet) | | | |")
    print()
    print(pipeline.format_breakdown(kinds, "TVM fp32 time by op kind (one call, instrumented):"))
    print("\nslowest kernels (ms):")
    for name, ms in sorted(kernels.items(), key=lambda kv: -kv[1])[:8]:
        print(f"  {ms:8.2f}  {name}")
    if args.shapes:
        print()
        print("\n".join(matmul_shapes_table(seconds=max(args.seconds / 6, 2.0))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
