"""Vision models on every CPU target, each build compiled and timed in its own process.

The models are the vision zoo of tests/models/vision.py (ResNet-18-, MobileNetV3-Small-,
EfficientNet-B0-, ConvNeXt-Atto-, Swin-T-, MobileViT-XXS- and ViT-B/16-style torch
modules, random weights with settled BatchNorm statistics; ViT-B/16 at 224 x 224 runs
197 tokens), batch 2 x 3 x 224 x 224 by default. Per
model, one row per build:

- `cpu-fp32`: requant's float build on ONNX Runtime (the ORT fp32 baseline);
- `cpu-int8`: requant's static int8 build on ONNX Runtime;
- `ort-static`: ONNX Runtime's own `quantize_static` (QDQ, uint8 activations, int8
  per-channel weights, MinMax, after its recommended `quant_pre_process`) applied to
  the `cpu-fp32` build's model, exported at opset 21 (the quantizer's Q/DQ at opset 28
  do not load), run with ORT's default optimisations; where the pre-processing's
  symbolic shape inference raises (MobileViT), it runs without that step and a note
  under the table says so;
- `tvm-cpu-fp32`, `tvm-cpu-int8`: requant's TVM builds for this CPU.
The int8 builds calibrate on 8 batches of seeded random images; every build is measured
on 4 other batches against torch's float outputs: the float error (max |y - torch| /
max |torch|), the cosine of each image's logits (mean, min) and top-1 agreement. Latency
is the median (and min) of calls on one batch over `--seconds`, after 3 warm-up calls,
alone in its process; "convs int8 / float" counts the convolutions ONNX Runtime runs as
QLinearConv vs in float, read off its optimised graph (`optimized_ops`). A model the
frontend cannot capture yet is one row with the refusal. After the table, each goal
of issue 17 as a PASS / FAIL line: cpu-int8 faster than cpu-fp32 on every CNN (>= 1.5x
on ResNet), at least as fast as `ort-static`, int8 mean cosine >= 0.99, tvm-cpu-fp32 no
slower than ORT fp32 (ViT at 197 tokens included).

    python -m requant.tools.bench.vision [--models resnet,mobilenet_v3] [--rows cpu-fp32,cpu-int8]
        [--seconds 10] [--batch 2] [--scale bench|tiny] [--threads N]
    python -m requant.tools.bench.vision --convs [--seconds 3]
    python -m requant.tools.bench.vision --sessions [--seconds 10]

`--convs`: single convolutions of the zoo's shapes (stems, 3x3, 1x1, depthwise) in three
forms, each in its own process: float `Conv`, the QDQ pattern ONNX Runtime fuses
(`DQ -> Conv(DQ(int8 W), DQ(int32 bias)) -> Q`, what cpu-int8 emits) and an explicit
`QLinearConv`, uint8 codes in and out; the two integer forms must agree code for code.
`--sessions`: the ResNet-style cpu-fp32 and cpu-int8 builds, each timed alone and then
called alternately in one process, under ORT's default thread spinning, requant's
(`backends/onnx/runtime.SPINNING_CONFIG`: spin only during a run) and spinning off.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from requant.tools.bench.timing import timed_calls

__all__ = ["main", "ROWS", "CONV_SHAPES", "run_build", "run_conv"]

logger = logging.getLogger(__name__)

ROWS = ("cpu-fp32", "cpu-int8", "ort-static", "tvm-cpu-fp32", "tvm-cpu-int8")
MODELS = ("resnet", "mobilenet_v3", "efficientnet", "convnext", "swin", "mobilevit", "vit")
CNNS = ("resnet", "mobilenet_v3", "efficientnet")
CALIB_BATCHES, EVAL_BATCHES, WARMUP = 8, 4, 3
CALIB_SEED, EVAL_SEED = 100, 200
ANCHOR_OPSET = 21
INT8_COSINE_GOAL = 0.99
RESNET_SPEEDUP_GOAL = 1.5
RESULT_PREFIX = "VISION_BENCH_RESULT "
_INT8 = ("cpu-int8", "ort-static", "tvm-cpu-int8")


def _vision_zoo() -> Any:
    """tests/models/vision.py (the zoo lives with the tests that use it)."""
    import requant

    models = Path(requant.__file__).resolve().parent / "tests" / "models"
    if str(models) not in sys.path:
        sys.path.insert(0, str(models))
    import vision

    return vision


# -- one build, in a worker process -------------------------------------------------------------


def _conv_census(model: Any) -> dict[str, int]:
    from requant.backends.onnx.runtime import optimized_ops

    ops = optimized_ops(model)
    return {"int8": ops.get("QLinearConv", 0),
            "float": sum(ops.get(k, 0) for k in ("Conv", "FusedConv", "NchwcConv") if k in ops)}


def _ort_static(case: Any, calibration: list[np.ndarray], tmp: Path, threads: int) -> tuple[Callable, Any, str]:
    """ONNX Runtime's quantize_static on requant's cpu-fp32 model (module docstring); the
    third item notes how the pre-processing ran when it could not run whole."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    import requant
    from requant.backends.onnx.runtime import OnnxRuntimeSession

    fp32 = requant.compile(case.module, "cpu-fp32", example_inputs=case.example_inputs, opset=ANCHOR_OPSET)
    src, pre, dst = tmp / "fp32.onnx", tmp / "pre.onnx", tmp / "ort_static.onnx"
    onnx.save(fp32.onnx_model, str(src))
    name = fp32.input_names[0]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter({name: x} for x in calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    note = ""
    try:
        quant_pre_process(str(src), str(pre))
    except Exception as exc:  # noqa: BLE001  (ORT's symbolic shape inference asserts on some graphs)
        # its other steps (ORT's graph optimisation, ONNX shape inference) still run
        note = (f"quant_pre_process without its symbolic shape inference, which raised "
                f"{type(exc).__name__} on this graph")
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    session = OnnxRuntimeSession(str(dst), disabled_optimizers=(), intra_op_threads=threads or None,
                                 flush_denormals=False)
    return (lambda x: session(x)[0]), str(dst), note


def _requant_build(case: Any, row: str, calibration: list[np.ndarray], threads: int) -> tuple[Callable, Any]:
    import requant

    options: dict[str, Any] = {"threads": threads} if threads else {}
    if row not in ("cpu-fp32", "tvm-cpu-fp32"):
        options.update(calibration=[(x,) for x in calibration], holdout=0.0)
    cm = requant.compile(case.module, row, example_inputs=case.example_inputs, **options)
    model = cm.onnx_model if row.startswith("cpu-") else None
    return (lambda x: cm(x)[0]), model


def _accuracy(outputs: list[np.ndarray], refs: list[np.ndarray]) -> dict[str, float]:
    out, ref = np.concatenate(outputs), np.concatenate(refs)
    flat_o, flat_r = out.reshape(out.shape[0], -1).astype(np.float64), ref.reshape(ref.shape[0], -1).astype(np.float64)
    cos = (flat_o * flat_r).sum(1) / (np.linalg.norm(flat_o, axis=1) * np.linalg.norm(flat_r, axis=1))
    return {"max_err": float(np.abs(out - ref).max() / np.abs(ref).max()), "cos_mean": float(cos.mean()),
            "cos_min": float(cos.min()), "top1": float(np.mean(flat_o.argmax(1) == flat_r.argmax(1)))}


def run_build(model: str, row: str, scale: str, batch: int, seconds: float, threads: int) -> dict[str, Any]:
    """Compile `model` for `row`, measure accuracy against torch and latency (module docstring)."""
    import torch

    vision = _vision_zoo()
    case = vision.build(model, scale, batch)
    calibration = [vision.images(case.image_shape, CALIB_SEED + i).numpy() for i in range(CALIB_BATCHES)]
    evaluation = [vision.images(case.image_shape, EVAL_SEED + i) for i in range(EVAL_BATCHES)]
    with torch.no_grad():
        refs = [case.module(x).numpy() for x in evaluation]
    with tempfile.TemporaryDirectory(prefix="requant-vision-") as tmp:
        start = time.perf_counter()
        note = ""
        if row == "ort-static":
            call, onnx_model, note = _ort_static(case, calibration, Path(tmp), threads)
        else:
            call, onnx_model = _requant_build(case, row, calibration, threads)
        compile_s = time.perf_counter() - start
        result: dict[str, Any] = {"compile_s": compile_s, "image_shape": list(case.image_shape),
                                  **_accuracy([call(x.numpy()) for x in evaluation], refs)}
        if note:
            result["note"] = note
        x0 = evaluation[0].numpy()
        times = timed_calls(lambda: call(x0), seconds, WARMUP)
        result.update(ms=1e3 * statistics.median(times), ms_min=1e3 * min(times), runs=len(times))
        if onnx_model is not None:
            result["convs"] = _conv_census(onnx_model)
    return result


# -- single convolutions ------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvShape:
    name: str
    c_in: int
    c_out: int
    side: int
    kernel: int
    stride: int = 1
    group: int = 1
    batch: int = 2

    @property
    def out_side(self) -> int:
        return (self.side + 2 * (self.kernel // 2) - self.kernel) // self.stride + 1

    def label(self) -> str:
        kind = "depthwise " if self.group == self.c_in == self.c_out and self.group > 1 else ""
        return (f"{self.name}: {kind}{self.kernel}x{self.kernel}/{self.stride} {self.c_in}->{self.c_out} "
                f"at {self.side}x{self.side}")


CONV_SHAPES = (
    ConvShape("ResNet stem", 3, 64, 224, 7, 2),
    ConvShape("MobileNet stem", 3, 16, 224, 3, 2),
    ConvShape("EfficientNet stem", 3, 32, 224, 3, 2),
    ConvShape("ResNet 3x3", 64, 64, 56, 3),
    ConvShape("ResNet 3x3 deep", 256, 256, 14, 3),
    ConvShape("pointwise", 40, 240, 14, 1),
    ConvShape("depthwise 3x3", 144, 144, 56, 3, group=144),
    ConvShape("depthwise 5x5", 240, 240, 14, 5, group=240),
)
CONV_FORMS = ("fp32", "qdq", "qlinearconv")


def _conv_model(shape: ConvShape, form: str) -> tuple[bytes, np.ndarray]:
    """One convolution as an ONNX model in `form` (module docstring) and its input."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    s = shape
    w_q = rng.integers(-127, 128, (s.c_out, s.c_in // s.group, s.kernel, s.kernel)).astype(np.int8)
    w_s = (rng.uniform(0.5, 1.5, s.c_out) / 127 / np.sqrt(s.c_in // s.group * s.kernel ** 2)).astype(np.float32)
    x_s, x_z = np.float32(4.0 / 255), np.uint8(128)
    b_s = (x_s * w_s).astype(np.float32)
    b_q = rng.integers(-1000, 1000, s.c_out).astype(np.int32)
    y_s, y_z = np.float32(6.0 / 255), np.uint8(0)
    attrs = {"kernel_shape": [s.kernel] * 2, "strides": [s.stride] * 2, "pads": [s.kernel // 2] * 4, "group": s.group}
    x_shape, y_shape = [s.batch, s.c_in, s.side, s.side], [s.batch, s.c_out, s.out_side, s.out_side]
    codes = rng.integers(0, 256, x_shape).astype(np.uint8)
    t = numpy_helper.from_array
    if form == "fp32":
        inits = [t((w_q * w_s[:, None, None, None]).astype(np.float32), "w"), t((b_q * b_s).astype(np.float32), "b")]
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], **attrs)]
        x = ((codes.astype(np.float32) - x_z) * x_s).astype(np.float32)
        io = (TensorProto.FLOAT, TensorProto.FLOAT)
    else:
        inits = [t(x_s, "x_s"), t(x_z, "x_z"), t(w_q, "w_q"), t(w_s, "w_s"), t(b_q, "b_q"), t(b_s, "b_s"),
                 t(y_s, "y_s"), t(y_z, "y_z")]
        if form == "qdq":
            nodes = [helper.make_node("DequantizeLinear", ["x", "x_s", "x_z"], ["x_f"]),
                     helper.make_node("DequantizeLinear", ["w_q", "w_s"], ["w_f"], axis=0),
                     helper.make_node("DequantizeLinear", ["b_q", "b_s"], ["b_f"], axis=0),
                     helper.make_node("Conv", ["x_f", "w_f", "b_f"], ["c"], **attrs),
                     helper.make_node("QuantizeLinear", ["c", "y_s", "y_z"], ["y"])]
        else:
            inits.append(t(np.zeros(s.c_out, np.int8), "w_z"))
            nodes = [helper.make_node("QLinearConv", ["x", "x_s", "x_z", "w_q", "w_s", "w_z", "y_s", "y_z", "b_q"],
                                      ["y"], **attrs)]
        x = codes
        io = (TensorProto.UINT8, TensorProto.UINT8)
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", io[0], x_shape)],
                              [helper.make_tensor_value_info("y", io[1], y_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ANCHOR_OPSET)], ir_version=10)
    return model.SerializeToString(), x


def run_conv(index: int, form: str, seconds: float, threads: int, out_dir: str) -> dict[str, Any]:
    """Time one convolution form (module docstring); its output goes to `out_dir`."""
    from requant.backends.onnx.runtime import OnnxRuntimeSession, optimized_ops

    shape = CONV_SHAPES[index]
    model, x = _conv_model(shape, form)
    session = OnnxRuntimeSession(model, intra_op_threads=threads or None)
    y = session(x)[0]
    np.save(Path(out_dir) / f"conv{index}_{form}.npy", y)
    times = timed_calls(lambda: session(x), seconds, WARMUP)
    ops = optimized_ops(model)
    flops = 2.0 * shape.batch * shape.c_out * shape.out_side ** 2 * (shape.c_in // shape.group) * shape.kernel ** 2
    ms = 1e3 * statistics.median(times)
    return {"ms": ms, "ms_min": 1e3 * min(times), "gops": flops / (ms * 1e-3) / 1e9,
            "ops": ",".join(sorted(k for k in ops if k not in ("Transpose",)))}


# -- the parent: one process per build ----------------------------------------------------------


def _in_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run `spec` in a fresh Python process; its result, or {"error": first line}."""
    cmd = [sys.executable, "-m", "requant.tools.bench.vision", "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    tail = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
    return {"error": f"worker exited {proc.returncode}: {tail[-1] if tail else 'no output'}"}


def _worker(spec: dict[str, Any]) -> int:
    logging.basicConfig(level=logging.ERROR)
    try:
        if spec["mode"] == "conv":
            result = run_conv(spec["index"], spec["form"], spec["seconds"], spec["threads"], spec["out_dir"])
        else:
            result = run_build(spec["model"], spec["row"], spec["scale"], spec["batch"], spec["seconds"],
                               spec["threads"])
    except Exception as exc:  # noqa: BLE001  (a refused build is a table row, not a crash)
        logger.debug("worker failed", exc_info=True)
        lines = str(exc).strip().splitlines()
        where = traceback.extract_tb(exc.__traceback__)[-1]
        what = lines[0] if lines else f"raised in {Path(where.filename).name}:{where.lineno}"
        result = {"error": f"{type(exc).__name__}: {what}"}
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


@dataclass
class _Table:
    results: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def cell_ms(self, r: dict[str, Any]) -> str:
        return f"{r['ms']:.2f} ({r['ms_min']:.2f})"

    def ratio(self, model: str, row: str, base: str = "cpu-fp32") -> float | None:
        a, b = self.results.get((model, row), {}), self.results.get((model, base), {})
        if "ms" not in a or "ms" not in b:
            return None
        return b["ms"] / a["ms"]


def _print_table(models: Sequence[str], rows: Sequence[str], table: _Table, args: argparse.Namespace) -> None:
    shapes = sorted({tuple(r["image_shape"]) for r in table.results.values() if "image_shape" in r})
    sizes = ", ".join(" x ".join(map(str, s)) for s in shapes) or f"batch {args.batch}"
    print(f"vision zoo ({args.scale}), images {sizes}, {EVAL_BATCHES} evaluation batches "
          f"against torch float; latency: median (min) ms over {args.seconds:g} s per build, each build in its "
          f"own process\n")
    print("| model | build | fp32 max err | cos mean | cos min | top-1 agree | latency ms | speed-up vs cpu-fp32 "
          "| convs int8 / float | compile s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for model in models:
        for row in rows:
            r = table.results[(model, row)]
            if "error" in r:
                print(f"| {model} | {row} | {r['error']} | | | | | | | |")
                continue
            ratio = table.ratio(model, row)
            convs = f"{r['convs']['int8']} / {r['convs']['float']}" if "convs" in r else "-"
            err = f"{r['max_err']:.1e}"
            print(f"| {model} | {row} | {err} | {r['cos_mean']:.5f} | {r['cos_min']:.5f} | {r['top1']:.2f} | "
                  f"{table.cell_ms(r)} | {'-' if ratio is None else f'{ratio:.2f}x'} | {convs} | "
                  f"{r['compile_s']:.1f} |")
    print()
    for (model, row), r in table.results.items():
        if r.get("note"):
            print(f"- {model} / {row}: {r['note']}")


def _goals(models: Sequence[str], table: _Table) -> list[str]:
    lines = []

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    for model in models:
        speed = table.ratio(model, "cpu-int8")
        if speed is not None and model in CNNS:
            goal = RESNET_SPEEDUP_GOAL if model == "resnet" else 1.0
            lines.append(f"{verdict(speed > goal if goal == 1.0 else speed >= goal)}: {model} cpu-int8 "
                         f"{speed:.2f}x cpu-fp32 (goal {'> 1' if goal == 1.0 else f'>= {goal}'})")
        vs_ort = table.ratio(model, "cpu-int8", base="ort-static")
        if vs_ort is not None:
            lines.append(f"{verdict(vs_ort >= 1.0)}: {model} cpu-int8 {vs_ort:.2f}x ORT quantize_static (goal >= 1)")
        for row in ("cpu-int8", "tvm-cpu-int8"):
            r = table.results.get((model, row), {})
            if "cos_mean" in r:
                lines.append(f"{verdict(r['cos_mean'] >= INT8_COSINE_GOAL)}: {model} {row} cosine mean "
                             f"{r['cos_mean']:.5f} (goal >= {INT8_COSINE_GOAL})")
        tvm = table.ratio(model, "tvm-cpu-fp32")
        if tvm is not None:
            lines.append(f"{verdict(tvm >= 1.0)}: {model} tvm-cpu-fp32 {tvm:.2f}x ORT fp32 (goal >= 1)")
    return lines


def _builds(args: argparse.Namespace) -> int:
    models = [m for m in args.models.split(",") if m]
    rows = [r for r in args.rows.split(",") if r]
    unknown = sorted(set(models) - set(MODELS)) + sorted(set(rows) - set(ROWS))
    if unknown:
        print(f"unknown model(s) / build(s): {', '.join(unknown)}; models: {', '.join(MODELS)}; builds: "
              f"{', '.join(ROWS)}", file=sys.stderr)
        return 2
    table = _Table()
    for model in models:
        for row in rows:
            spec = {"mode": "build", "model": model, "row": row, "scale": args.scale, "batch": args.batch,
                    "seconds": args.seconds, "threads": args.threads}
            print(f"  {model} / {row} ...", file=sys.stderr, flush=True)
            table.results[(model, row)] = _in_worker(spec)
    _print_table(models, rows, table, args)
    for line in _goals(models, table):
        print(line)
    return 0


def _convs(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="requant-convs-") as out_dir:
        print(f"single convolutions, batch 2, uint8 codes in and out for the integer forms; median (min) ms "
              f"over {args.seconds:g} s per form, each form in its own process\n")
        print("| convolution | fp32 Conv ms | QDQ (DQ -> Conv -> Q) ms | QLinearConv ms | QDQ vs fp32 | "
              "QDQ vs QLinearConv | QDQ runs as | QDQ = QLinearConv |")
        print("|---|---:|---:|---:|---:|---:|---|---|")
        for index, shape in enumerate(CONV_SHAPES):
            res = {form: _in_worker({"mode": "conv", "index": index, "form": form, "seconds": args.seconds,
                                     "threads": args.threads, "out_dir": out_dir}) for form in CONV_FORMS}
            if any("error" in r for r in res.values()):
                print(f"| {shape.label()} | " + " | ".join(r.get("error", "") for r in res.values()) + " | | | | |")
                continue
            qdq, qlc = (np.load(Path(out_dir) / f"conv{index}_{f}.npy") for f in ("qdq", "qlinearconv"))
            diff = int(np.abs(qdq.astype(np.int32) - qlc.astype(np.int32)).max())
            same = "code for code" if diff == 0 else f"max {diff} code(s) apart"
            cells = [f"{res[f]['ms']:.3f} ({res[f]['ms_min']:.3f})" for f in CONV_FORMS]
            print(f"| {shape.label()} | {' | '.join(cells)} | {res['fp32']['ms'] / res['qdq']['ms']:.2f}x | "
                  f"{res['qlinearconv']['ms'] / res['qdq']['ms']:.2f}x | {res['qdq']['ops']} | {same} |")
    return 0


def _sessions(args: argparse.Namespace) -> int:
    """Alone vs interleaved in one process, per spinning setting (module docstring)."""
    import onnxruntime as ort

    import requant
    from requant.backends.onnx.runtime import OnnxRuntimeSession, make_session_options

    vision = _vision_zoo()
    case = vision.build("resnet", args.scale, args.batch)
    calibration = [(vision.images(case.image_shape, CALIB_SEED + i).numpy(),) for i in range(CALIB_BATCHES)]
    models = {"fp32": requant.compile(case.module, "cpu-fp32", example_inputs=case.example_inputs).onnx_model,
              "int8": requant.compile(case.module, "cpu-int8", example_inputs=case.example_inputs,
                                      calibration=calibration, holdout=0.0).onnx_model}
    x = vision.images(case.image_shape, EVAL_SEED).numpy()
    settings = {
        "ORT default (workers spin on after a run)": {"session.force_spinning_stop": "0"},
        "requant (spin during a run only)": {},
        "spinning off": {"session.intra_op.allow_spinning": "0"},
    }
    ort.set_default_logger_severity(3)  # overwriting requant's spinning entry is what this mode does
    print(f"ResNet-style ({args.scale}), batch {args.batch}: requant cpu-fp32 and cpu-int8 in one process, median ms "
          f"over {args.seconds:g} s each: alone, then called alternately (fp32, int8, fp32, ...)\n")
    print("| spinning | fp32 alone | int8 alone | fp32 interleaved | int8 interleaved | fp32 slowdown | "
          "int8 slowdown |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, entries in settings.items():
        calls = {}
        for name, model in models.items():
            opts = make_session_options(intra_op_threads=args.threads or None)
            for key, value in entries.items():
                opts.add_session_config_entry(key, value)
            session = OnnxRuntimeSession(model, session_options=opts)
            calls[name] = (lambda s=session: s(x))
        alone = {name: statistics.median(timed_calls(call, args.seconds / 2, WARMUP)) for name, call in calls.items()}
        mixed: dict[str, list[float]] = {name: [] for name in calls}
        end = time.perf_counter() + args.seconds
        while time.perf_counter() < end or min(len(v) for v in mixed.values()) < 5:
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                mixed[name].append(time.perf_counter() - start)
        inter = {name: statistics.median(v) for name, v in mixed.items()}
        print(f"| {label} | {1e3 * alone['fp32']:.2f} | {1e3 * alone['int8']:.2f} | {1e3 * inter['fp32']:.2f} | "
              f"{1e3 * inter['int8']:.2f} | {inter['fp32'] / alone['fp32']:.2f}x | {inter['int8'] / alone['int8']:.2f}x |")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"builds, from {', '.join(ROWS)}")
    ap.add_argument("--seconds", type=float, default=10.0, help="timing budget per build (per form with --convs)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--scale", default="bench", choices=("bench", "tiny"), help="model size (tiny: test size)")
    ap.add_argument("--threads", type=int, default=0, help="runtime threads (0: requant's default, the cores)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--convs", action="store_true", help="single convolutions: fp32 vs QDQ vs QLinearConv")
    mode.add_argument("--sessions", action="store_true", help="two sessions in one process, per spinning setting")
    mode.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return _worker(json.loads(args.worker))
    if args.convs:
        return _convs(args)
    if args.sessions:
        return _sessions(args)
    return _builds(args)


if __name__ == "__main__":
    sys.exit(main())
