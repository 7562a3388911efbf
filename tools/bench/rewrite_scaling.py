"""How fast and how linearly requant's rewrite engine runs, next to onnxscript's rewriter.

What it measures
    A chain graph of N nodes made of N/2 blocks `x_{i+1} = Add(MatMul(x_i, W_i), b_i)`
    (x is 2-D [m, d], every W_i [d, d] and b_i [d] a distinct small constant) is rewritten
    with ONE rule, Add(MatMul(a, b), c) -> Gemm(a, b, c), checked for a, b 2-D and c 1-D
    or 2-D, by
      - requant:    `requant.ir.rewrite.rewrite(graph, [rule])` on a requant Graph built
                    with `requant.ir.Builder`;
      - onnxscript: `RewriteRuleSet([rule]).apply_to_model(model)` on an `onnx_ir` model
                    deserialized from the equivalent ONNX proto (initializers W_i, b_i,
                    value_info on every intermediate so rank checks can pass), with the
                    same rule and the same checks written with onnxscript's pattern API
                    (the built-in `matmul_add_to_gemm_rule` checks a and b only).
    Only the rewrite call is timed: building the graph, ONNX proto -> onnx_ir conversion
    and verification are outside the timer, and both graphs are rebuilt for every repeat.
    Each size is run `--repeat` times per system (default 3), the two systems
    interleaved, and the median is reported; `gc.collect()` runs before each timed call.

What it checks (exit 1 with an error when a rewrite was incomplete or wrong)
    requant: the graph verifies, holds exactly N/2 Gemm and no Add/MatMul, and (at the
    smallest size) `requant.ir.run` gives the original graph's output within fp32
    tolerance on a seeded input. onnxscript: exactly N/2 Gemm and no Add/MatMul (and, at
    the smallest size, onnxruntime on the rewritten model agrees with requant's output
    when onnxruntime is installed).

What it prints
    One markdown table (nodes | blocks | requant s | onnxscript s | speed-up
    (onnxscript/requant) | requant us/rewrite), then the bars, each PASS/FAIL (reported,
    not asserted): requant 100k/10k time ratio <= 12 (linear scaling), speed-up >= 3x at
    10k and at 100k. Exit status 0 after printing when every result was correct.

How to run
    python -m requant.tools.bench.rewrite_scaling                 # 1k, 10k, 100k nodes
    python -m requant.tools.bench.rewrite_scaling --quick         # 1k, 10k
    python tools/bench/rewrite_scaling.py --sizes 1000 10000 --repeat 5
    python -m requant.tools.bench.rewrite_scaling --profile       # + cProfile of requant
Needs onnx, onnx_ir and onnxscript (`pip install requant[dev]`). A full run takes a few
minutes, most of it building graphs.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import pstats
import statistics
import sys
import time
from dataclasses import dataclass, field

import numpy as np

D = 8  # feature size
M = 4  # rows of x
SEED = 0
RTOL, ATOL = 1e-4, 1e-5  # fp32 tolerance


# --------------------------------------------------------------------------------------
# Constants shared by both graph builds of one size (read-only; built once per size)


def make_constants(blocks: int, d: int = D, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """W [blocks, d, d] and b [blocks, d], float32, distinct per block. W = 0.9 I + noise
    keeps activations bounded through hundreds of blocks."""
    rng = np.random.default_rng(seed)
    w = (0.9 * np.eye(d, dtype=np.float32) + 0.02 * rng.standard_normal((blocks, d, d))).astype(np.float32)
    b = (0.1 * rng.standard_normal((blocks, d))).astype(np.float32)
    w.flags.writeable = False
    b.flags.writeable = False
    return w, b


# --------------------------------------------------------------------------------------
# requant side


def build_requant(w: np.ndarray, b: np.ndarray, m: int = M):
    from requant.ir import Builder, Graph, tensor_type

    g = Graph("chain")
    bld = Builder(g)
    x = bld.input("x", tensor_type("float32", (m, w.shape[1])))
    for i in range(w.shape[0]):
        wi = bld.const(w[i], name=f"W{i}")
        bi = bld.const(b[i], name=f"b{i}")
        x = bld.Add(bld.MatMul(x, wi), bi)
    g.outputs = [x]
    return g


def requant_rule():
    from requant.ir.pattern import op
    from requant.ir.rewrite import Rule

    def check(m):
        if m.a.type.rank != 2:
            return "a is not 2-D"
        if m.b.type.rank != 2:
            return "b is not 2-D"
        if m.c.type.rank not in (1, 2):
            return "c is not 1-D or 2-D"
        return None

    return Rule(
        "matmul_add_to_gemm",
        pattern=lambda a, b, c: op.Add(op.MatMul(a, b), c),
        check=check,
        replace=lambda op, m: op.Gemm(m.a, m.b, m.c),
    )


def check_requant(graph, blocks: int) -> list[str]:
    errors = []
    try:
        graph.verify()
    except Exception as exc:  # report, do not crash: the table still prints
        errors.append(f"requant: rewritten graph does not verify: {exc}")
    hist = graph.op_histogram()
    if hist.get("Gemm", 0) != blocks or hist.get("Add", 0) or hist.get("MatMul", 0):
        errors.append(f"requant: expected {blocks} Gemm and no Add/MatMul, got {hist}")
    return errors


# --------------------------------------------------------------------------------------
# onnxscript side


def build_onnx(w: np.ndarray, b: np.ndarray, m: int = M):
    """The same chain as an ONNX ModelProto, with value_info on every intermediate."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    d = w.shape[1]
    nodes, inits, infos = [], [], []
    x = "x"
    for i in range(w.shape[0]):
        inits.append(numpy_helper.from_array(w[i], f"W{i}"))
        inits.append(numpy_helper.from_array(b[i], f"b{i}"))
        mm, y = f"mm{i}", f"x{i + 1}"
        nodes.append(helper.make_node("MatMul", [x, f"W{i}"], [mm]))
        nodes.append(helper.make_node("Add", [mm, f"b{i}"], [y]))
        infos.append(helper.make_tensor_value_info(mm, TensorProto.FLOAT, [m, d]))
        infos.append(helper.make_tensor_value_info(y, TensorProto.FLOAT, [m, d]))
        x = y
    out = infos.pop()  # the last Add's output is the graph output
    graph = helper.make_graph(
        nodes, "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, d])],
        [out], initializer=inits, value_info=infos,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def onnxscript_rule():
    """Add(MatMul(a, b), c) -> Gemm(a, b, c), with requant's checks: a, b rank 2, c rank
    1 or 2 (onnxscript's built-in matmul_add_to_gemm_rule checks only a and b)."""
    from onnxscript.rewriter import pattern

    def target(op, a, b, c):
        return op.Add(op.MatMul(a, b), c)

    def replacement(op, a, b, c):
        return op.Gemm(a, b, c)

    def rank(v):
        shape = v.shape if v is not None else None
        return None if shape is None else shape.rank()

    def condition(context, a, b, c, **_):
        return rank(a) == 2 and rank(b) == 2 and rank(c) in (1, 2)

    return pattern.RewriteRule(target, replacement, condition, name="matmul_add_to_gemm")


def to_onnx_ir(proto):
    import onnx_ir

    return onnx_ir.serde.deserialize_model(proto)


def check_onnxscript(model_ir, blocks: int, count: int) -> list[str]:
    hist: dict[str, int] = {}
    for node in model_ir.graph:
        hist[node.op_type] = hist.get(node.op_type, 0) + 1
    errors = []
    if hist.get("Gemm", 0) != blocks or hist.get("Add", 0) or hist.get("MatMul", 0):
        errors.append(
            f"onnxscript: expected {blocks} Gemm and no Add/MatMul, got {dict(sorted(hist.items()))} "
            f"(apply_to_model reported {count} rewrites)"
        )
    return errors


# --------------------------------------------------------------------------------------
# Measurement


@dataclass
class Row:
    nodes: int
    blocks: int
    requant: list[float] = field(default_factory=list)
    onnxscript: list[float] = field(default_factory=list)

    @property
    def rq(self) -> float:
        return statistics.median(self.requant)

    @property
    def ox(self) -> float:
        return statistics.median(self.onnxscript)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def measure(nodes: int, repeat: int, check_numerics: bool, profile: bool) -> tuple[Row, list[str]]:
    """Time both rewriters `repeat` times, interleaved (requant, onnxscript, requant, ...)
    so that load from anything else on the machine hits both alike."""
    from onnxscript.rewriter.pattern import RewriteRuleSet

    from requant.ir import run
    from requant.ir.rewrite import rewrite

    blocks = nodes // 2
    row = Row(nodes, blocks)
    errors: list[str] = []
    w, b = make_constants(blocks)
    rq_rule = requant_rule()
    ox_rules = RewriteRuleSet([onnxscript_rule()])
    proto = build_onnx(w, b)
    x_in = np.random.default_rng(SEED + 1).standard_normal((M, D)).astype(np.float32)
    reference = None

    for r in range(repeat):
        t0 = time.perf_counter()
        graph = build_requant(w, b)
        build_s = time.perf_counter() - t0
        if check_numerics and r == 0:
            reference = run(graph, [x_in])[0]
        gc.collect()
        t0 = time.perf_counter()
        result = rewrite(graph, [rq_rule])
        dt = time.perf_counter() - t0
        row.requant.append(dt)
        log(f"  requant    {nodes:>7} nodes, repeat {r + 1}/{repeat}: rewrite {dt:.3f} s (build {build_s:.2f} s)")
        if result.rewrites != blocks:
            errors.append(f"requant: {result.rewrites} rewrites, expected {blocks}")
        if r == 0:
            errors += check_requant(graph, blocks)
            if reference is not None:
                got = run(graph, [x_in])[0]
                if not np.allclose(got, reference, rtol=RTOL, atol=ATOL):
                    err = float(np.max(np.abs(got - reference)))
                    errors.append(f"requant: rewritten graph's output differs from the original's (max abs err {err:g})")
        del graph, result

        t0 = time.perf_counter()
        model_ir = to_onnx_ir(proto)
        build_s = time.perf_counter() - t0
        gc.collect()
        t0 = time.perf_counter()
        count = ox_rules.apply_to_model(model_ir)
        dt = time.perf_counter() - t0
        row.onnxscript.append(dt)
        log(f"  onnxscript {nodes:>7} nodes, repeat {r + 1}/{repeat}: rewrite {dt:.3f} s (convert {build_s:.2f} s)")
        if r == 0:
            errors += check_onnxscript(model_ir, blocks, count)
            if reference is not None:
                errors += check_onnxscript_numerics(model_ir, x_in, reference)
        del model_ir

    if profile:
        graph = build_requant(w, b)
        gc.collect()
        prof = cProfile.Profile()
        prof.enable()
        rewrite(graph, [rq_rule])
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(15)
        log(f"cProfile of requant rewrite at {nodes} nodes (by tottime; profiler overhead inflates times):")
        log(out.getvalue())
        del graph, prof
    del proto
    gc.collect()
    return row, errors


def check_onnxscript_numerics(model_ir, x_in: np.ndarray, reference: np.ndarray) -> list[str]:
    try:
        import onnx_ir
        import onnxruntime as ort
    except ImportError:
        return []
    proto = onnx_ir.serde.serialize_model(model_ir)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x_in})[0]
    if not np.allclose(got, reference, rtol=RTOL, atol=ATOL):
        err = float(np.max(np.abs(got - reference)))
        return [f"onnxscript: rewritten model's output (onnxruntime) differs from requant's reference (max abs err {err:g})"]
    return []


# --------------------------------------------------------------------------------------
# Report


def fmt_nodes(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 and n >= 1000 else str(n)


def report(rows: list[Row]) -> None:
    print("| nodes | blocks | requant s | onnxscript s | speed-up (onnxscript/requant) | requant us/rewrite |")
    print("|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row.nodes} | {row.blocks} | {row.rq:.4f} | {row.ox:.4f} | {row.ox / row.rq:.2f}x "
            f"| {row.rq / row.blocks * 1e6:.1f} |"
        )
    print()
    by = {row.nodes: row for row in rows}
    if 10000 in by and 100000 in by:
        ratio = by[100000].rq / by[10000].rq
        print(f"- requant 100k/10k time ratio: {ratio:.2f} (bar <= 12, linear scaling): {'PASS' if ratio <= 12 else 'FAIL'}")
    else:
        print("- requant 100k/10k time ratio: n/a (needs sizes 10000 and 100000)")
    for n in (10000, 100000):
        if n in by:
            s = by[n].ox / by[n].rq
            print(f"- speed-up at {fmt_nodes(n)}: {s:.2f}x (bar >= 3x): {'PASS' if s >= 3 else 'FAIL'}")
        else:
            print(f"- speed-up at {fmt_nodes(n)}: n/a (size not run)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="node counts (even; default 1000 10000 100000)")
    ap.add_argument("--quick", action="store_true", help="sizes 1000 10000")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved runs per size and system (default 3)")
    ap.add_argument("--profile", action="store_true", help="cProfile requant's rewrite at the largest size (stderr)")
    args = ap.parse_args(argv)
    sizes = args.sizes or ([1000, 10000] if args.quick else [1000, 10000, 100000])
    if any(n < 2 or n % 2 for n in sizes):
        ap.error("--sizes: node counts must be even and >= 2")
    sizes = sorted(set(sizes))

    t_start = time.perf_counter()
    rows, errors = [], []
    for n in sizes:
        repeat = args.repeat
        log(f"size {n} nodes ({n // 2} blocks), {repeat} repeat(s)")
        row, errs = measure(n, repeat, check_numerics=(n == sizes[0]), profile=args.profile and n == sizes[-1])
        rows.append(row)
        errors += [f"[{n} nodes] {e}" for e in errs]
    report(rows)
    print(f"\ntotal wall time: {time.perf_counter() - t_start:.1f} s")
    if errors:
        for e in errors:
            print(f"ERROR: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
