"""Which ONNX form of a quantized linear layer ONNX Runtime runs fastest on this CPU.

What it measures
    One linear layer `y = x @ W + b`, x float32 [64, 64, K] (a MiniLM batch: 64 sentences
    x 64 tokens), W [K, N], at MiniLM's three shapes (K x N = 384x384, 384x1536,
    1536x384), written as standalone ONNX models (onnx.helper, no requant IR involved) in
    each candidate form `lower_quant` could emit:

      fp32        MatMul + Add                                   (the float baseline)
      qdq_u8/s8   QuantizeLinear -> DequantizeLinear -> MatMul(., DQ(W_i8)) + Add
                  (ORT's QDQ transformers decide what runs)
      i2f_u8/s8   QuantizeLinear -> com.microsoft MatMulIntegerToFloat(bias fused)
      int_u8/s8   QuantizeLinear -> MatMulInteger -> Cast -> Mul(sa*sw) -> Add
      qlinear_u8  QuantizeLinear -> QLinearMatMul -> DequantizeLinear -> Add
                  (requantizes the output: NOT exact w.r.t. the QDQ graph)
      dynamic     com.microsoft DynamicQuantizeMatMul (u8 activations quantized per call)
      dyn_ref     DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul -> Add
                  (what onnxruntime.quantization.quantize_dynamic writes)
      w8_qdq      x @ DequantizeLinear(W_i8) (int8 weight-only, float activations; ORT
                  rewrites it to MatMulNBits with accuracy_level 4: NOT exact)
      nbits8      com.microsoft MatMulNBits, bits=8, one block per column (int8 weight-only)
      nbits4      com.microsoft MatMulNBits, int4 weights, group 32, accuracy_level 0
      nbits4_a8   the same with accuracy_level 4 (int8 activations inside the kernel:
                  NOT exact w.r.t. the weight-only QDQ graph)

    Weights: int8 symmetric per output column (4-bit: per group of 32 along K);
    activations: per-tensor scale from the tensor's own min/max (u8 asymmetric, s8
    symmetric). Sessions use requant's settings (`OnnxRuntimeSession`: physical-core
    intra-op threads, sequential, ORT_ENABLE_ALL). Each model is warmed up; then all forms of a shape
    are timed round-robin (5 rounds sharing `--seconds` per form) and the median run is
    reported, so a burst of load elsewhere on the machine hits every form alike;
    `--cpu-time` runs one thread and reads the process CPU clock instead (robust when
    other jobs share the machine).

What it prints
    One markdown table per shape: form | ms | speed-up vs fp32 | max |err| vs the form's
    own QDQ reference (float64 numpy of the dequantized operands, i.e. what the QDQ
    graph computes) relative to max |ref| | max |err| vs fp32 relative to max |y| | the
    ops ORT actually ran after its graph optimisations.

How to run
    python -m requant.tools.bench.matmul_kernels              # all forms, 3 shapes
    python -m requant.tools.bench.matmul_kernels --seconds 0.5 --forms fp32 i2f_u8
Needs onnx and onnxruntime. Takes about a minute.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["SHAPES", "FORMS", "Case", "build", "bench_many", "round_robin", "main"]

logger = logging.getLogger(__name__)

BATCH, SEQ = 64, 64
SHAPES: tuple[tuple[int, int], ...] = ((384, 384), (384, 1536), (1536, 384))
GROUP = 32
SEED = 0


@dataclass
class Case:
    """One linear layer's data and its quantized operands."""

    x: np.ndarray  # [B, S, K] f32
    w: np.ndarray  # [K, N] f32
    b: np.ndarray  # [N] f32
    w_q: np.ndarray  # [K, N] i8, per-column symmetric
    w_scale: np.ndarray  # [N] f32

    @staticmethod
    def make(k: int, n: int, seed: int = SEED) -> Case:
        rng = np.random.default_rng(seed)
        # LayerNorm-like activations with a few outlier features, as in BERT
        x = rng.standard_normal((BATCH, SEQ, k)).astype(np.float32)
        x[..., rng.choice(k, 4, replace=False)] *= 6.0
        w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
        b = (0.1 * rng.standard_normal(n)).astype(np.float32)
        w_scale = (np.abs(w).max(axis=0) / 127.0).astype(np.float32)
        w_q = np.clip(np.rint(w / w_scale), -127, 127).astype(np.int8)
        return Case(x, w, b, w_q, w_scale)

    def act_qparams(self, signed: bool) -> tuple[np.float32, np.int8 | np.uint8]:
        lo, hi = min(float(self.x.min()), 0.0), max(float(self.x.max()), 0.0)
        if signed:
            return np.float32(max(-lo, hi) / 127.0), np.int8(0)
        scale = np.float32((hi - lo) / 255.0)
        return scale, np.uint8(np.clip(np.rint(-lo / scale), 0, 255))

    def act_codes(self, signed: bool) -> np.ndarray:
        scale, zp = self.act_qparams(signed)
        lo, hi = (-128, 127) if signed else (0, 255)
        return np.clip(np.rint(self.x / scale) + int(zp), lo, hi).astype(type(zp))

    def static_reference(self, signed: bool) -> np.ndarray:
        """What the QDQ graph computes, in float64: DQ(Q(x)) @ DQ(W_q) + b."""
        scale, zp = self.act_qparams(signed)
        a = (self.act_codes(signed).astype(np.float64) - int(zp)) * float(scale)
        return a @ (self.w_q.astype(np.float64) * self.w_scale.astype(np.float64)) + self.b

    def dynamic_reference(self) -> np.ndarray:
        """DynamicQuantizeLinear semantics (u8, range includes 0) in float64."""
        lo, hi = min(float(self.x.min()), 0.0), max(float(self.x.max()), 0.0)
        scale = np.float32((hi - lo) / 255.0)
        zp = np.clip(np.rint(-lo / scale), 0, 255)
        a = (np.clip(np.rint(self.x / scale) + zp, 0, 255) - zp) * float(scale)
        return a @ (self.w_q.astype(np.float64) * self.w_scale.astype(np.float64)) + self.b

    def int4(self) -> tuple[np.ndarray, np.ndarray]:
        """Symmetric int4 codes [K, N] (as int8 in [-8, 7]) and scales [K/G, N]."""
        k, n = self.w.shape
        g = self.w.reshape(k // GROUP, GROUP, n)
        scale = (np.abs(g).max(axis=1) / 7.0).astype(np.float32)
        scale[scale == 0] = 1.0
        q = np.clip(np.rint(g / scale[:, None, :]), -8, 7).astype(np.int8)
        return q.reshape(k, n), scale

    def nbits_reference(self) -> np.ndarray:
        q, scale = self.int4()
        k, n = q.shape
        w = (q.reshape(k // GROUP, GROUP, n).astype(np.float64) * scale[:, None, :]).reshape(k, n)
        return self.x.astype(np.float64) @ w + self.b


# -- model builders ------------------------------------------------------------------------


def _model(nodes: list, inits: list, k: int, n: int, ms_opset: bool = False):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, SEQ, k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [BATCH, SEQ, n])
    graph = helper.make_graph(nodes, "linear", [x], [y], initializer=inits)
    opsets = [helper.make_opsetid("", 21)] + ([helper.make_opsetid("com.microsoft", 1)] if ms_opset else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10
    return model


def _t(name: str, arr: np.ndarray):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(arr), name)


def _quantize_input(c: Case, signed: bool) -> tuple[list, list]:
    from onnx import helper

    scale, zp = c.act_qparams(signed)
    inits = [_t("x_scale", np.array(scale, np.float32)), _t("x_zp", np.array(zp))]
    return [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"])], inits


def _weights(c: Case) -> list:
    return [_t("w_q", c.w_q), _t("w_scale", c.w_scale), _t("w_zp", np.zeros(c.w_q.shape[1], np.int8)), _t("b", c.b)]


def build_fp32(c: Case):
    from onnx import helper

    nodes = [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])]
    return _model(nodes, [_t("w", c.w), _t("b", c.b)], *c.w.shape)


def build_qdq(c: Case, signed: bool):
    from onnx import helper

    qn, qi = _quantize_input(c, signed)
    nodes = qn + [
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w_dq"], axis=1),
        helper.make_node("MatMul", ["x_dq", "w_dq"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["y"]),
    ]
    return _model(nodes, qi + _weights(c), *c.w.shape)


def build_i2f(c: Case, signed: bool):
    from onnx import helper

    qn, qi = _quantize_input(c, signed)
    nodes = qn + [helper.make_node(
        "MatMulIntegerToFloat", ["x_q", "w_q", "x_scale", "w_scale", "x_zp", "w_zp", "b"], ["y"],
        domain="com.microsoft")]
    return _model(nodes, qi + _weights(c), *c.w.shape, ms_opset=True)


def build_integer(c: Case, signed: bool):
    from onnx import TensorProto, helper

    qn, qi = _quantize_input(c, signed)
    scale, _ = c.act_qparams(signed)
    nodes = qn + [
        helper.make_node("MatMulInteger", ["x_q", "w_q", "x_zp", "w_zp"], ["acc"]),
        helper.make_node("Cast", ["acc"], ["acc_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["acc_f", "ab_scale"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["y"]),
    ]
    inits = qi + _weights(c) + [_t("ab_scale", (scale * c.w_scale).astype(np.float32))]
    return _model(nodes, inits, *c.w.shape)


def build_qlinear(c: Case, signed: bool):
    from onnx import helper

    qn, qi = _quantize_input(c, signed)
    y = np.asarray(c.static_reference(signed) - c.b, np.float32)
    y_scale = np.float32((y.max() - y.min()) / 255.0)
    y_zp = np.uint8(np.clip(np.rint(-y.min() / y_scale), 0, 255))
    nodes = qn + [
        helper.make_node("QLinearMatMul", ["x_q", "x_scale", "x_zp", "w_q", "w_scale", "w_zp", "y_scale", "y_zp"], ["y_q"]),
        helper.make_node("DequantizeLinear", ["y_q", "y_scale", "y_zp"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["y"]),
    ]
    inits = qi + _weights(c) + [_t("y_scale", np.array(y_scale)), _t("y_zp", np.array(y_zp))]
    return _model(nodes, inits, *c.w.shape)


def build_dynamic(c: Case):
    from onnx import helper

    nodes = [helper.make_node("DynamicQuantizeMatMul", ["x", "w_q", "w_scale", "w_zp", "b"], ["y"], domain="com.microsoft")]
    return _model(nodes, _weights(c), *c.w.shape, ms_opset=True)


def build_dynamic_reference(c: Case):
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["x_q", "x_scale", "x_zp"]),
        helper.make_node("MatMulInteger", ["x_q", "w_q", "x_zp", "w_zp"], ["acc"]),
        helper.make_node("Cast", ["acc"], ["acc_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x_scale", "w_scale"], ["ab_scale"]),
        helper.make_node("Mul", ["acc_f", "ab_scale"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["y"]),
    ]
    return _model(nodes, _weights(c), *c.w.shape)


def pack_nbits(q: np.ndarray, block: int = GROUP) -> np.ndarray:
    """ORT MatMulNBits packing of signed int4 codes q [K, N] (values -8..7, stored +8 as
    unsigned, default zero point 8): uint8 [N, K/block, block/2], element 2j in the low
    nibble and 2j+1 in the high nibble."""
    k, n = q.shape
    u = (q.astype(np.int16) + 8).astype(np.uint8).T.reshape(n, k // block, block)
    return (u[..., 0::2] | (u[..., 1::2] << 4)).astype(np.uint8)


def build_nbits(c: Case, accuracy_level: int = 0):
    from onnx import helper

    q, scale = c.int4()
    k, n = q.shape
    nodes = [
        helper.make_node("MatMulNBits", ["x", "w_packed", "w_scales", "", "", "b"], ["y"], domain="com.microsoft",
                         K=k, N=n, bits=4, block_size=GROUP, accuracy_level=accuracy_level),
    ]
    inits = [_t("w_packed", pack_nbits(q)), _t("w_scales", np.ascontiguousarray(scale.T).reshape(-1)), _t("b", c.b)]
    return _model(nodes, inits, k, n, ms_opset=True)


def build_weight_only_qdq(c: Case):
    from onnx import helper

    nodes = [
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w_dq"], axis=1),
        helper.make_node("MatMul", ["x", "w_dq"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["y"]),
    ]
    return _model(nodes, _weights(c), *c.w.shape)


def build_nbits8(c: Case):
    """int8 per-column weights as MatMulNBits(bits=8, block_size=K): one block per column."""
    from onnx import helper

    k, n = c.w_q.shape
    block = 1 << (k - 1).bit_length()  # a power of two >= K; the tail of the block is padding
    padded = np.zeros((block, n), np.int16)
    padded[:k] = c.w_q
    packed = (padded + 128).astype(np.uint8).T.reshape(n, 1, block)
    nodes = [helper.make_node("MatMulNBits", ["x", "w_packed", "w_scales", "", "", "b"], ["y"], domain="com.microsoft",
                              K=k, N=n, bits=8, block_size=block, accuracy_level=0)]
    inits = [_t("w_packed", packed), _t("w_scales", c.w_scale), _t("b", c.b)]
    return _model(nodes, inits, k, n, ms_opset=True)


def weight_only_reference(c: Case) -> np.ndarray:
    return c.x.astype(np.float64) @ (c.w_q.astype(np.float64) * c.w_scale) + c.b


# form -> (builder, reference, exact w.r.t. its QDQ form)
FORMS: dict[str, tuple[Callable, Callable[[Case], np.ndarray], bool]] = {
    "fp32": (build_fp32, lambda c: c.x.astype(np.float64) @ c.w.astype(np.float64) + c.b, True),
    "qdq_u8": (lambda c: build_qdq(c, False), lambda c: c.static_reference(False), True),
    "qdq_s8": (lambda c: build_qdq(c, True), lambda c: c.static_reference(True), True),
    "i2f_u8": (lambda c: build_i2f(c, False), lambda c: c.static_reference(False), True),
    "i2f_s8": (lambda c: build_i2f(c, True), lambda c: c.static_reference(True), True),
    "int_u8": (lambda c: build_integer(c, False), lambda c: c.static_reference(False), True),
    "int_s8": (lambda c: build_integer(c, True), lambda c: c.static_reference(True), True),
    "qlinear_u8": (lambda c: build_qlinear(c, False), lambda c: c.static_reference(False), False),
    "dynamic": (build_dynamic, Case.dynamic_reference, True),
    "dyn_ref": (build_dynamic_reference, Case.dynamic_reference, True),
    "w8_qdq": (build_weight_only_qdq, weight_only_reference, False),  # ORT fuses it to MatMulNBits, accuracy_level 4
    "nbits8": (build_nbits8, weight_only_reference, True),
    "nbits4": (lambda c: build_nbits(c, 0), Case.nbits_reference, True),
    "nbits4_a8": (lambda c: build_nbits(c, 4), Case.nbits_reference, False),
}


def build(form: str, case: Case):
    return FORMS[form][0](case)


# -- timing ----------------------------------------------------------------------------------


THREADS: int | None = None  # None: requant's default (the physical cores)


def _session(model, optimized_path: str | None = None):
    import onnxruntime as ort

    from requant.backends.onnx import make_session_options

    opts = make_session_options(intra_op_threads=THREADS)
    if optimized_path:
        opts.optimized_model_filepath = optimized_path
    return ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])


def _ran_ops(model) -> str:
    """The op histogram of the model after ORT's optimisations (what actually runs)."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "opt.onnx")
        _session(model, path)
        opt = onnx.load(path)
    hist = Counter(node.op_type for node in opt.graph.node)
    return " ".join(f"{op}" + (f"x{k}" if k > 1 else "") for op, k in sorted(hist.items()))


def round_robin(calls: Mapping[str, Callable[[], object]], seconds: float, rounds: int = 5,
                clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Per-run times (in `clock` seconds) of each call, timed round-robin: `rounds`
    slices of `seconds / rounds` per call (at least 2 runs each), so a burst of load on
    the machine hits every call alike rather than whichever happened to be running.
    No warm-up: the caller's."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            while len(times[name]) < 2 or time.perf_counter() - start < seconds / rounds:
                t0 = clock()
                call()
                times[name].append(clock() - t0)
    return times


def bench_many(models: dict[str, object], x: np.ndarray, seconds: float, rounds: int = 5,
               clock=time.perf_counter) -> dict[str, tuple[float, np.ndarray]]:
    """Median ms per run and the output of each model, timed with `round_robin`."""
    sessions, outputs = {}, {}
    for name, model in models.items():
        try:
            sessions[name] = _session(model)
            for _ in range(3):
                outputs[name] = sessions[name].run(None, {"x": x})[0]
        except Exception as exc:  # a form this ORT build cannot run: reported, not fatal
            outputs[name] = exc
            sessions.pop(name, None)
    times = round_robin({name: (lambda s=sess: s.run(None, {"x": x})) for name, sess in sessions.items()},
                        seconds, rounds, clock)
    return {name: (statistics.median(times[name]) * 1e3 if name in sessions else float("nan"), outputs[name])
            for name in models}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="timing budget per form and shape")
    parser.add_argument("--forms", nargs="*", default=list(FORMS), choices=list(FORMS))
    parser.add_argument("--cpu-time", action="store_true",
                        help="one thread, process CPU clock: robust when other jobs load the machine")
    args = parser.parse_args(argv)
    import onnxruntime as ort

    from requant.tools.demo import error_line

    global THREADS
    THREADS = 1 if args.cpu_time else None
    clock = time.process_time if args.cpu_time else time.perf_counter

    from requant.backends.onnx import physical_cores

    threads = 1 if args.cpu_time else physical_cores()
    print(f"onnxruntime {ort.__version__}, {threads} intra-op threads, {'CPU' if args.cpu_time else 'wall'} clock, "
          f"x [{BATCH}, {SEQ}, K]")
    for k, n in SHAPES:
        case = Case.make(k, n)
        y32 = FORMS["fp32"][1](case)
        print(f"\n### [{BATCH * SEQ}, {k}] x [{k}, {n}]\n")
        print("| form | ms | vs fp32 | err vs own QDQ ref | err vs fp32 | exact | ORT ran |")
        print("|---|---:|---:|---:|---:|---|---|")
        models = {form: build(form, case) for form in args.forms}
        results = bench_many(models, case.x, args.seconds, clock=clock)
        base = results.get("fp32", (None,))[0]
        for form, (ms, y) in results.items():
            _, reference, exact = FORMS[form]
            if isinstance(y, Exception):
                print(f"| {form} | - | - | - | - | - | failed: {error_line(y)[:80]} |")
                continue
            ref = reference(case)
            err_ref = float(np.abs(y - ref).max() / np.abs(ref).max())
            err_32 = float(np.abs(y - y32).max() / np.abs(y32).max())
            speed = f"{base / ms:.2f}x" if base else "-"
            print(f"| {form} | {ms:.2f} | {speed} | {err_ref:.1e} | {err_32:.1e} | {'yes' if exact else 'no'} "
                  f"| {_ran_ops(models[form])} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
