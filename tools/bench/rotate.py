"""Hadamard rotations (QuaRot / SpinQuant: passes/rotate_*.py) and GPTQ (passes/gptq.py)
next to their anchors, in one run: all-MiniLM-L6-v2 (trained), a small pre-norm decoder LM
trained here (tools/bench/tiny_lm.py), and the online Hadamard op's own cost.

MiniLM: the quantize benchmark's data and metrics (tools/bench/quantize_minilm.py: 64
standard-library sentences x 64 tokens in one batch; mean and min cosine of mean-pooled
embeddings to fp32, Spearman of all pairwise similarities, file size, median latency),
with `--calibration` other sentences for calibration (GPTQ's Hessians need more rows than
ranges do; every row, anchors included, sees the same batches). Rows, each beside its row
without rotation and with RTN weights:
- W8A8 per-tensor static: cpu-int8 (SmoothQuant, today's default), without SmoothQuant,
  rotated without SmoothQuant (online Hadamards in blocks of 32, the int8 targets'
  default, and across the whole width), and rotated with GPTQ weights and MSE activation
  ranges;
- W4A8 (cpu-w4a8): rotated + GPTQ on ORT's int8 kernels (int4 codes cast to int8 at
  load; Hadamard blocks of 32 and the whole width) and on MatMulNBits accuracy_level 4;
  GPTQ without rotation; rotated with RTN;
- W4A4 INT4 (simulated: FakeQuantize; int4 per-channel weights; int4 activations per
  tensor, static, minmax: RTN, rotated RTN, GPTQ, rotated GPTQ, and rotated GPTQ with MSE
  activation ranges; and per token, dynamic: RTN, rotated RTN, GPTQ with MSE-searched
  clip ratios, the same rotated);
- W4A4 NVFP4 (simulated, cpu-fp4): RTN, rotated RTN, GPTQ, rotated GPTQ, SmoothQuant +
  GPTQ (the target's default); MXFP4: RTN and the default;
- TVM (tvm-cpu-int8, built for batch 64): SmoothQuant on every input vs rotated (blocks
  of 32, and the whole width; and with GPTQ weights and MSE activation ranges);
- the rotated W8A8 models again with every Hadamard replaced by Identity (outputs wrong,
  timing only): the online rotations' share of latency on ONNX Runtime and TVM; and on
  ONNX Runtime with every Hadamard replaced by a Neg, one elementwise pass over the same
  tensor: what any kernel ORT cannot fuse with its neighbours costs there at least.
Each timed row (and the ORT fp32 anchor) is saved, then loaded and timed alone in its own
process, one after another, in `--rounds` rounds (`--seconds` shared among them, at
least 3 s a timing; each figure the median of its rounds): ONNX Runtime sessions that
share a process slow each other down. Simulated rows are not timed.

Tiny LM (byte-level Llama, RMSNorm, 4 layers): perplexity per byte on held-out standard
library text for fp32, W8A8 (cpu-int8), W4A4 RTN, W4A4 rotated RTN, W4A4 rotated GPTQ
(and GPTQ alone), and how much of RTN's perplexity gap to fp32 rotated GPTQ closes.

Hadamard forms: the op's ONNX lowering (Kronecker factors, ir/hadamard.py
`kronecker_factors`) against one dense constant MatMul, and the block-diagonal form (blocks
of 32) along the last axis, on MiniLM's shapes, each timed alone in its own process.

    python -m requant.tools.bench.rotate [--seconds 60] [--rounds 3] [--calibration 256] [--only minilm,lm,hadamard]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from requant.tools import demo
from requant.tools.bench.timing import timed_calls

__all__ = ["main", "MINILM_ROWS", "LM_ROWS"]

_W8 = {"smooth_alpha": None}
_ROT = {"rotate": True}
_FP4_RTN = {"weight_method": "rtn", "smooth_alpha": None}  # cpu-fp4 before GPTQ and SmoothQuant were its defaults
# the rows the Hadamard-share lines of the MiniLM table subtract
_ROTATED_W8 = "W8A8 rotated, no SmoothQuant"
_ROTATED_TVM = "TVM tvm-cpu-int8 rotated, no SmoothQuant"
_AS_IDENTITY = "W8A8 rotated, Hadamards as Identity (timing only)"
_TVM_AS_IDENTITY = "TVM rotated, Hadamards as Identity (timing only)"
_AS_NEG = "W8A8 rotated, Hadamards as Neg: one elementwise pass (timing only)"
# (row name, target, compile options, timed)
MINILM_ROWS: tuple[tuple[str, str, dict, bool], ...] = (
    ("cpu-int8 (SmoothQuant: today's default)", "cpu-int8", {}, True),
    ("W8A8, no SmoothQuant, no rotation", "cpu-int8", _W8, True),
    (_ROTATED_W8, "cpu-int8", {**_W8, **_ROT}, True),
    ("W8A8 rotated + GPTQ, MSE activation ranges, no SmoothQuant", "cpu-int8",
     {**_W8, **_ROT, "weight_method": "gptq", "method": "mse"}, True),
    ("W8A8 rotated, whole-width Hadamards (rotate_block=0), no SmoothQuant", "cpu-int8",
     {**_W8, **_ROT, "rotate_block": 0}, True),
    ("W4A8 rotated + GPTQ (cpu-w4a8)", "cpu-w4a8", {}, True),
    ("W4A8 rotated + GPTQ, whole-width Hadamards (rotate_block=0)", "cpu-w4a8", {"rotate_block": 0}, True),
    ("W4A8 rotated + GPTQ, MatMulNBits acc. 4 (cpu-w4a8 kernel=nbits)", "cpu-w4a8", {"kernel": "nbits"}, True),
    ("W4A8 GPTQ, no rotation", "cpu-w4a8", {"rotate": False}, True),
    ("W4A8 rotated, RTN", "cpu-w4a8", {"weight_method": "rtn"}, True),
    ("W4A4 INT4 target (cpu-w4a4: rotated + GPTQ, per-token MSE clip; simulated)", "cpu-w4a4", {}, False),
    ("W4A4 NVFP4 RTN (simulated)", "cpu-fp4", _FP4_RTN, False),
    ("W4A4 NVFP4 rotated, RTN (simulated)", "cpu-fp4", {**_FP4_RTN, **_ROT}, False),
    ("W4A4 NVFP4 GPTQ, no SmoothQuant (simulated)", "cpu-fp4", {"smooth_alpha": None}, False),
    ("W4A4 NVFP4 rotated + GPTQ (simulated)", "cpu-fp4", {"smooth_alpha": None, **_ROT}, False),
    ("W4A4 NVFP4 SmoothQuant + GPTQ (cpu-fp4, simulated)", "cpu-fp4", {}, False),
    ("W4A4 MXFP4 RTN (simulated)", "cpu-fp4", {**_FP4_RTN, "block": "mx"}, False),
    ("W4A4 MXFP4 SmoothQuant + GPTQ (cpu-fp4 block=mx, simulated)", "cpu-fp4", {"block": "mx"}, False),
    ("TVM tvm-cpu-int8 (SmoothQuant on every input)", "tvm-cpu-int8", {}, True),
    (_ROTATED_TVM, "tvm-cpu-int8", {**_W8, **_ROT}, True),
    ("TVM tvm-cpu-int8 rotated + GPTQ, MSE activation ranges, no SmoothQuant", "tvm-cpu-int8",
     {**_W8, **_ROT, "weight_method": "gptq", "method": "mse"}, True),
    ("TVM tvm-cpu-int8 rotated, whole-width Hadamards (rotate_block=0), no SmoothQuant", "tvm-cpu-int8",
     {**_W8, **_ROT, "rotate_block": 0}, True),
)

_ROTATIONS = ["fold_norm_affine", "layernorm_to_rmsnorm", "rotate_residual", "rotate_heads",
              ("rotate_online", {"scope": "all"})]


def w4a4_int4(rotate: bool, weight_method: str, method: str = "minmax", activations: str = "tensor") -> list:
    """W4A4 INT4 simulated: int4 weights per output channel (RTN or GPTQ), int4
    activations, FakeQuantize (no int4 x int4 kernel on CPU): per tensor, static, ranges
    by `method`; or (`activations="token"`) per token, dynamic, with `method` "mse" each
    activation's clip ratio searched on the calibration batches."""
    from requant.ir import dtype as dt
    from requant.ir.quant_formats import QuantScheme
    from requant.targets import BATCHES, STATS

    quantize = {"weight_scheme": QuantScheme(dt("int4"), "channel", axis=1),
                "activation_scheme": QuantScheme(dt("int4"), activations), "method": method, "stats": STATS,
                "quantize_embeddings": False, "weight_method": weight_method, "batches": BATCHES}
    return ["canonicalize", *(_ROTATIONS if rotate else []), "calibrate", ("quantize", quantize), "cse", "dce"]


# (row name, rotated, weight method, activation range method, activation granularity)
W4A4_ROWS = (
    ("W4A4 INT4 RTN (simulated)", False, "rtn", "minmax", "tensor"),
    ("W4A4 INT4 rotated, RTN (simulated)", True, "rtn", "minmax", "tensor"),
    ("W4A4 INT4 GPTQ, no rotation (simulated)", False, "gptq", "minmax", "tensor"),
    ("W4A4 INT4 rotated + GPTQ (simulated)", True, "gptq", "minmax", "tensor"),
    ("W4A4 INT4 rotated + GPTQ, MSE activation ranges (simulated)", True, "gptq", "mse", "tensor"),
    ("W4A4 INT4 per-token activations, RTN (simulated)", False, "rtn", "minmax", "token"),
    ("W4A4 INT4 per-token, rotated, RTN (simulated)", True, "rtn", "minmax", "token"),
    ("W4A4 INT4 per-token, GPTQ + MSE clip, no rotation (simulated)", False, "gptq", "mse", "token"),
    ("W4A4 INT4 per-token, rotated + GPTQ + MSE clip (simulated)", True, "gptq", "mse", "token"),
)
LM_ROWS = (
    ("fp32", "cpu-fp32", {}),
    ("W8A8 (cpu-int8)", "cpu-int8", {}),
    (_ROTATED_W8, "cpu-int8", {**_W8, **_ROT}),
    ("W4A8 rotated + GPTQ (cpu-w4a8)", "cpu-w4a8", {}),
    ("W4A4 INT4 target (cpu-w4a4: rotated + GPTQ, per-token MSE clip; simulated)", "cpu-w4a4", {}),
    *((name, "cpu-fp4", {"passes": w4a4_int4(rot, method, ranges, acts)})
      for name, rot, method, ranges, acts in W4A4_ROWS),
)


def _hadamards_replaced(op: str) -> Any:
    """A pass for timing only: every Hadamard removed (`op` "Identity") or made a Neg, one
    elementwise pass over the same tensor, the least any separate kernel in its place
    costs (the outputs are wrong)."""
    from requant.passes.manager import Pass, PassResult

    class HadamardReplaced(Pass):
        name = f"bench_hadamard_as_{op.lower()}"
        description = f"timing only: Hadamard -> {op}"

        def run(self, graph):
            n = 0
            for node in [x for x in graph if x.op == "Hadamard" and not graph.is_output(x.outputs[0])]:
                new = node.inputs[0]
                if op != "Identity":
                    new = graph.create_node(op, [new], after=node).outputs[0]
                node.outputs[0].replace_all_uses_with(new)
                graph.remove_node(node)
                n += 1
            return PassResult(graph, n > 0, {"hadamards_replaced": n})

    return HadamardReplaced()


def _with_hadamards_as(op: str, target: str, options: dict) -> list:
    """`target`'s pipeline for `options`, then every Hadamard replaced (`_hadamards_replaced`)."""
    from requant.targets import get_target

    t = get_target(target)
    steps = t.resolve_steps(t.resolve_options(options))
    return [(s.name, dict(s.options)) for s in steps] + [_hadamards_replaced(op)]


# -- MiniLM --------------------------------------------------------------------------------------


def _calibration(n: int) -> list[dict[str, np.ndarray]]:
    from requant.tools.bench.minilm import tokenize
    from requant.tools.bench.sentences import real_sentences

    ids, mask = tokenize(real_sentences(n, skip=demo.N_EVAL), demo.SEQ)
    return [{"input_ids": ids[i:i + 16], "attention_mask": mask[i:i + 16]} for i in range(0, n, 16)]


def _compiled_row(name: str, source: str, target: str, options: dict, batches: list, tmp: Path,
                  batch: int) -> tuple[demo.Row, float, Path | None]:
    """(the row, its compile seconds, the directory it is saved in)."""
    import requant

    extra = {"dims": {"batch": batch}} if target.startswith("tvm") else {}
    start = time.perf_counter()
    try:
        cm = requant.compile(source, target=target, calibration=batches, holdout=0, **options, **extra)
    except Exception as exc:  # noqa: BLE001  (a failed build is a table row, not a crash)
        return demo.Row(name, None, error=demo.error_line(exc)), float("nan"), None
    seconds = time.perf_counter() - start
    saved = cm.save(tmp / f"m{abs(hash(name))}")
    size = (saved / "model.so").stat().st_size if (saved / "model.so").exists() else demo._onnx_bytes(
        saved / "model.onnx")
    return demo.Row(name, lambda feeds: cm(**feeds)[0], size), seconds, saved


def _time_saved(spec: dict) -> int:
    """Worker: median ms of one saved build (a requant save directory, or an ONNX file run
    as the ONNX Runtime anchors are) on the saved feeds, printed as JSON."""
    feeds = dict(np.load(spec["feeds"]))
    if spec["kind"] == "onnx":
        run = demo._session_row("anchor", Path(spec["path"])).run
    else:
        import requant

        cm = requant.load(spec["path"], trust_code=True)  # built by this run, moments ago
        run = lambda f: cm(**f)[0]  # noqa: E731
    times = timed_calls(lambda: run(feeds), spec["seconds"], warmup=2)
    print(json.dumps({"ms": statistics.median(times) * 1e3, "runs": len(times)}))
    return 0


def _time_in_own_processes(builds: dict[str, tuple[str, Path]], feeds: dict[str, np.ndarray], tmp: Path,
                           seconds: float, rounds: int = 1) -> dict[str, float]:
    """Median ms of each build, each loaded and timed alone in a fresh process (ONNX Runtime
    sessions sharing a process slow each other down), one after another; with `rounds` > 1
    the whole sequence is repeated and each build's figure is the median of its rounds, so
    that a slow spell of the machine lands on every build rather than on one."""
    import subprocess

    feeds_path = tmp / "timing_feeds.npz"
    np.savez(feeds_path, **feeds)
    per_round: dict[str, list[float]] = {name: [] for name in builds}
    for r in range(rounds):
        for name, (kind, path) in builds.items():
            spec = {"kind": kind, "path": str(path), "feeds": str(feeds_path), "seconds": seconds}
            proc = subprocess.run([sys.executable, "-m", "requant.tools.bench.rotate", "--time-saved",
                                   json.dumps(spec)], capture_output=True, text=True)
            lines = proc.stdout.strip().splitlines()
            if proc.returncode == 0 and lines:
                ms = float(json.loads(lines[-1])["ms"])
            else:
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                print(f"  timing {name} failed: {tail}", file=sys.stderr, flush=True)
                ms = float("nan")
            per_round[name].append(ms)
            print(f"  timed {name} (round {r + 1} of {rounds}): {ms:.1f} ms", file=sys.stderr, flush=True)
    # a build that failed in any round has no figure, rather than the median of the rounds it ran
    return {name: float("nan") if any(math.isnan(t) for t in times) else statistics.median(times)
            for name, times in per_round.items()}


def _minilm(args: argparse.Namespace) -> None:
    from requant.tools.bench.minilm import mean_pool
    from requant.tools.bench.quantize_minilm import _pairwise, spearman

    with demo._silenced_transformers(), tempfile.TemporaryDirectory(prefix="requant-rotate-") as tmp_name:
        tmp = Path(tmp_name)
        model, feeds, _ = demo._data()
        batches = _calibration(args.calibration)
        float_path = demo._export_float(model, batches[0], tmp)
        batch = feeds["input_ids"].shape[0]
        rows = [demo._session_row("ONNX Runtime fp32", float_path)]
        compile_s = {rows[0].name: 0.0}
        specs = [(n, t, o, tm) for n, t, o, tm in MINILM_ROWS]
        specs += [(name, "cpu-fp4", {"passes": w4a4_int4(rot, method, ranges, acts)}, False)
                  for name, rot, method, ranges, acts in W4A4_ROWS]
        specs += [(_AS_IDENTITY, "cpu-int8",
                   {"passes": _with_hadamards_as("Identity", "cpu-int8", {**_W8, **_ROT})}, True),
                  (_AS_NEG, "cpu-int8", {"passes": _with_hadamards_as("Neg", "cpu-int8", {**_W8, **_ROT})}, True),
                  (_TVM_AS_IDENTITY, "tvm-cpu-int8",
                   {"passes": _with_hadamards_as("Identity", "tvm-cpu-int8",
                                                 {**_W8, **_ROT, "dims": {"batch": batch}})}, True)]
        builds = {rows[0].name: ("onnx", float_path)}
        for name, target, options, is_timed in specs:
            row, seconds, saved = _compiled_row(name, str(float_path), target, options, batches, tmp, batch)
            print(f"  built {name} ({seconds:.1f} s){' FAILED: ' + row.error if row.run is None else ''}",
                  file=sys.stderr, flush=True)
            rows.append(row)
            compile_s[name] = seconds
            if is_timed and saved is not None:
                builds[name] = ("requant", saved)
        outputs = demo._accuracy(rows, feeds)
        mask = feeds["attention_mask"]
        ref_pairs = _pairwise(mean_pool(outputs[rows[0].name], mask))
        rho = {n: spearman(ref_pairs, _pairwise(mean_pool(out, mask))) for n, out in outputs.items()}
        per_build = max(args.seconds / (len(builds) * args.rounds), 3.0)
        for name, ms in _time_in_own_processes(builds, feeds, tmp, per_build, args.rounds).items():
            next(r for r in rows if r.name == name).ms = ms
    _minilm_table(rows, rho, compile_s, list(builds), per_build, args.rounds, len(batches) * 16, batch)


def _minilm_table(rows, rho, compile_s, timed, per_build, rounds, n_calib, n_eval) -> None:
    print(f"\nall-MiniLM-L6-v2 (trained), {n_eval} real sentences x {demo.SEQ} tokens in one batch; calibration: "
          f"{n_calib} other sentences; latency: median of {rounds} rounds, each the median over {per_build:.1f} s of "
          f"runs of each build loaded and timed alone in its own process (simulated rows untimed)\n")
    print("| model | cos mean | cos min | Spearman | size MB | latency ms | vs fp32 | vs cpu-int8 | compile s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = rows[0]
    int8 = next(r for r in rows if r.name.startswith("cpu-int8"))
    for r in rows:
        if r.run is None:
            print(f"| {r.name} | FAILED: {r.error} | | | | | | | |")
            continue
        ms = f"{r.ms:.1f}" if r.name in timed else "-"
        vs = f"{base.ms / r.ms:.2f}x" if r.name in timed else "-"
        vs8 = f"{int8.ms / r.ms:.2f}x" if r.name in timed and int8.run is not None else "-"
        acc = "-" if "timing only" in r.name else None
        print(f"| {r.name} | {acc or f'{r.cos_mean:.4f}'} | {acc or f'{r.cos_min:.4f}'} | "
              f"{acc or f'{rho[r.name]:.4f}'} | {r.size_bytes / 1e6:.1f} | {ms} | {vs} | {vs8} | "
              f"{compile_s[r.name]:.1f} |")
    by = {r.name: r for r in rows}
    print()
    for rotated, identity, where in ((_ROTATED_W8, _AS_IDENTITY, "ONNX Runtime"),
                                     (_ROTATED_TVM, _TVM_AS_IDENTITY, "TVM")):
        a, b = by.get(rotated), by.get(identity)
        if a is not None and b is not None and a.run is not None and b.run is not None:
            print(f"- online Hadamards on {where}: {a.ms - b.ms:.1f} ms of {a.ms:.1f} ms "
                  f"({(a.ms - b.ms) / a.ms:.1%} of the rotated model's latency)")
    neg, a, b = (by.get(n) for n in (_AS_NEG, _ROTATED_W8, _AS_IDENTITY))
    if all(r is not None and r.run is not None for r in (neg, a, b)):
        print(f"- one elementwise pass (Neg) in each Hadamard's place on ONNX Runtime, the least a kernel ORT "
              f"cannot fuse there costs: {neg.ms - b.ms:.1f} ms ({(neg.ms - b.ms) / a.ms:.1%} of the rotated "
              f"model's latency)")


# -- the tiny LM -----------------------------------------------------------------------------------


def _lm(args: argparse.Namespace) -> None:
    import requant
    from requant.backends.onnx import to_onnx
    from requant.frontends import from_torch
    from requant.tools.bench import tiny_lm

    import torch

    module = tiny_lm.load()
    train, held = tiny_lm.corpus()
    evaluation = tiny_lm.batches(held, 64, seed=1)
    calibration = tiny_lm.batches(train, args.lm_calibration, seed=2)
    with demo._silenced_transformers(), tempfile.TemporaryDirectory(prefix="requant-lm-") as tmp_name:
        path = Path(tmp_name) / "tiny_lm.onnx"
        graph = from_torch(module, (torch.from_numpy(evaluation[0]),))
        import onnx

        onnx.save(to_onnx(graph), str(path))
        feeds_of = lambda ids: {graph.inputs[0].name: ids}  # noqa: E731
        results = []
        for name, target, options in LM_ROWS:
            start = time.perf_counter()
            try:
                cm = requant.compile(str(path), target=target, holdout=0,
                                     calibration=[feeds_of(c) for c in calibration], **options)
                logits = np.concatenate([cm(**feeds_of(ids))[0] for ids in evaluation])
                ppl = tiny_lm.perplexity(logits, np.concatenate(evaluation))
                results.append((name, ppl, time.perf_counter() - start, ""))
            except Exception as exc:  # noqa: BLE001
                results.append((name, float("nan"), float("nan"), demo.error_line(exc)))
            print(f"  {name}: {results[-1][1]:.3f}", file=sys.stderr, flush=True)
    rows = len(evaluation) * evaluation[0].shape[0]
    print(f"\ntiny LM (tools/bench/tiny_lm.py: byte-level Llama, width {tiny_lm.CONFIG['hidden_size']}, "
          f"{tiny_lm.CONFIG['num_hidden_layers']} layers), perplexity per byte on {rows} held-out sequences of "
          f"{tiny_lm.SEQ} bytes; calibration: {args.lm_calibration} training sequences\n")
    print("| model | perplexity | compile + eval s |")
    print("|---|---:|---:|")
    for name, ppl, seconds, error in results:
        print(f"| {name} | {ppl:.3f} | {seconds:.1f} |" if not error else f"| {name} | FAILED: {error} | |")
    by = {name: ppl for name, ppl, _, _ in results}
    fp32 = by.get("fp32")
    print()
    for rtn_row, best_row, what in (("W4A4 INT4 RTN (simulated)", "W4A4 INT4 rotated + GPTQ (simulated)",
                                     "per-tensor activations"),
                                    ("W4A4 INT4 per-token activations, RTN (simulated)",
                                     "W4A4 INT4 per-token, rotated + GPTQ + MSE clip (simulated)",
                                     "per-token activations")):
        rtn, best = by.get(rtn_row), by.get(best_row)
        if fp32 is not None and rtn is not None and best is not None and rtn > fp32:
            print(f"- {what}: rotated GPTQ closes {(rtn - best) / (rtn - fp32):.1%} of W4A4 RTN's perplexity gap "
                  f"to fp32 ({rtn:.3f} -> {best:.3f}, fp32 {fp32:.3f})")


# -- the Hadamard op's forms ---------------------------------------------------------------------------


def _hadamard_forms(args: argparse.Namespace) -> None:
    import onnx

    from requant.backends.onnx import to_onnx
    from requant.ir import Builder, Graph, tensor_type
    from requant.ir.hadamard import kronecker_factors, normalized_hadamard

    cases = (((4096, 384), -1), ((4096, 1536), -1), ((64, 12, 64, 32), 1))
    rng = np.random.default_rng(0)
    medians: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="requant-hadamard-") as tmp_name:
        tmp = Path(tmp_name)
        for c, (shape, axis) in enumerate(cases):
            x = rng.standard_normal(shape).astype(np.float32)
            n = shape[axis]
            builds: dict[str, tuple[str, Path]] = {}
            for form in ("factored", "dense") + (("blocks of 32",) if axis == -1 else ()):
                g = Graph("h")
                b = Builder(g)
                v = b.input("x", tensor_type("float32", list(shape)))
                if form == "factored":
                    g.outputs = [b.Hadamard(v, axis=axis)]
                elif form == "blocks of 32":
                    g.outputs = [b.Hadamard(v, axis=axis, block=32)]
                else:
                    moved = v if axis == -1 else b.Transpose(v, perm=[0, 2, 3, 1])
                    y = b.MatMul(moved, b.const(normalized_hadamard(n).astype(np.float32)))
                    g.outputs = [y if axis == -1 else b.Transpose(y, perm=[0, 3, 1, 2])]
                label = f"{'x'.join(map(str, shape))} axis {axis}: {form}" + (
                    f" {kronecker_factors(n)}" if form == "factored" else "" if form == "blocks of 32" else f" [{n}]")
                path = tmp / f"case{c}_{len(builds)}.onnx"
                onnx.save(to_onnx(g), str(path))
                builds[label] = ("onnx", path)
            medians |= _time_in_own_processes(builds, {"x": x}, tmp, max(args.seconds / 8, 3.0))
    print("\nThe Hadamard op on ONNX Runtime: its lowering (Kronecker factors) vs one dense constant MatMul and "
          "the block-diagonal form with blocks of 32 (median per call, each form timed alone in its own process)\n")
    print("| shape, form (factors) | median ms |")
    print("|---|---:|")
    for label, ms in medians.items():
        print(f"| {label} | {ms:.2f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="timing budget of the MiniLM rows together "
                                                                   "(at least 3 s each)")
    ap.add_argument("--rounds", type=int, default=3, help="MiniLM timing rounds: every timed build in its own "
                                                          "process once per round; the median of the rounds")
    ap.add_argument("--calibration", type=int, default=256, help="MiniLM calibration sentences (GPTQ's Hessians)")
    ap.add_argument("--lm-calibration", type=int, default=64, help="tiny LM calibration sequences")
    ap.add_argument("--only", default="minilm,lm,hadamard", help="sections, comma-separated: minilm, lm, hadamard")
    ap.add_argument("--time-saved", help=argparse.SUPPRESS)  # worker: time one saved build
    args = ap.parse_args(argv)
    if args.time_saved:
        return _time_saved(json.loads(args.time_saved))
    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = sections - {"minilm", "lm", "hadamard"}
    if unknown:
        ap.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    if "minilm" in sections:
        _minilm(args)
    if "lm" in sections:
        _lm(args)
    if "hadamard" in sections:
        _hadamard_forms(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
