"""Running ONNX models in ONNX Runtime.

- `OnnxRuntimeSession` wraps an `onnxruntime.InferenceSession` with requant's thread and
  optimisation settings and a numpy-in, tuple-of-numpy-out call;
- `OnnxRuntimeRunner`: the graph runner passes use (entry point "onnxruntime" of
  requant.ir.runners): a requant graph exported with `to_onnx` and run in a session;
- `OnnxRuntime`, `build_runtime`, `load_runtime`: the "onnx" backend as `requant.compile`
  and `requant.load` see it (backends/__init__.py's registry): the exported model, its
  session, and the files it writes into a saved directory (model.onnx, and
  model.onnx.data when the weights go to external data).

Large graphs (weights above `BY_REFERENCE_BYTES`, 256 MiB) are exported by reference (`export.to_onnx(..., by_reference=)`): the proto holds no weights;
the session is made from a temporary model.onnx whose model.onnx.data the graph's
arrays are written into one at a time (a transposed weight is a view in the graph and
is laid out only as it is written), which ONNX Runtime maps and packs; a save writes
the arrays the same way. The model is then held by the graph and by the session, never
also as protobuf bytes nor as arrays handed to ORT (`add_external_initializers` copies
them all into the session before packing them: twice the weights at its peak).

Settings (`make_session_options`): intra-op threads = the physical cores this process may
use, inter-op threads = 1 with sequential execution (the graphs requant emits are chains;
a second pool only adds contention), every graph optimisation on (ORT_ENABLE_ALL) except
those in `SLOW_ORT_FUSIONS`, warnings off unless asked (ORT logs routine initializer
clean-ups as warnings), and `SPINNING_CONFIG`: the intra-op workers spin while a run is
in progress (between its parallel loops, where waking a sleeping thread costs more than
the work of a small op) and stop spinning as soon as the run returns. ORT's default
keeps them spinning for a while after each run, so two sessions called alternately in
one process (any round-robin benchmark, an application serving two models) each find
the other's workers busy-waiting on the cores they need: each run slowed by the one
before it. `python -m requant.tools.bench.vision --sessions` measures alone vs
interleaved under ORT's default, this setting and spinning off altogether.

Subnormal floats (magnitudes below 2^-126, 1.2e-38) are flushed to zero in
`OnnxRuntimeSession`s (`DENORMAL_CONFIG`, ORT's "set_denormal_as_zero": the x86
FTZ/DAZ flags on its threads). ORT also sets them on the thread that makes the
session, where they would change every later float computation of the caller (numpy
included): the session saves the caller's floating-point environment and restores it
once the session exists (C's fegetenv / fesetenv; where libm cannot be reached the
flush is not asked for), and runs leave the caller's flags alone. x86 cores take a
microcode assist for every subnormal operand, and masked attention makes them in
bulk: a window mask of -100 gives softmax probabilities of e^-100 = 3.7e-44, and the
product with V is then several times slower than the same product without them
(README, "Vision models"). The values flushed are below float32's normal range, so an
output changes by at most that much; the interpreter keeps subnormals.
`flush_denormals=False` keeps ORT's default (the benchmarks' ONNX Runtime anchors).

`SLOW_ORT_FUSIONS`: ORT fusions whose fused kernel is slower than the ops it replaces, so
requant's sessions turn them off (`disabled_optimizers`): "SkipLayerNormFusion" rewrites
Add + LayerNormalization into com.microsoft SkipLayerNormalization, whose CPU kernel in
ONNX Runtime 1.32 is slower than the two ops on every shape measured by `python -m
requant.tools.bench.ort_fusions` (README, "ONNX Runtime's slow fusion"). The saved
model.onnx is plain ONNX either way; only ONNX Runtime sessions made outside requant
keep ORT's defaults.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from requant.errors import RequantError

__all__ = [
    "OnnxRuntimeSession",
    "OnnxRuntimeRunner",
    "OnnxRuntime",
    "build_runtime",
    "load_runtime",
    "SLOW_ORT_FUSIONS",
    "SPINNING_CONFIG",
    "DENORMAL_CONFIG",
    "caller_float_environment_kept",
    "MODEL_FILE",
    "EXTERNAL_DATA_FILE",
    "make_session_options",
    "BY_REFERENCE_BYTES",
    "saved_files",
    "SAVED_FILES",
    "physical_cores",
    "run_onnx",
    "optimized_ops",
]

logger = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
EXTERNAL_DATA_FILE = MODEL_FILE + ".data"  # the name `save_onnx` gives the weights file

BY_REFERENCE_BYTES = 1 << 28
"""Weights above which a graph is exported by reference (module docstring). Inline, the
weights would be held three more times while the session is made (the proto, its
serialized bytes, ORT's parse of them): past a few hundred MB that, not the model,
decides whether a compile fits in memory; and past 2 GB protobuf cannot hold them."""


def _saved_files() -> Any:
    from requant.backends import SavedFiles

    return SavedFiles(frozenset({MODEL_FILE}), frozenset({EXTERNAL_DATA_FILE}))


SAVED_FILES = _saved_files()
"""model.onnx, and model.onnx.data when the weights went to external data: data, no code."""

SPINNING_CONFIG: dict[str, str] = {"session.force_spinning_stop": "1"}
DENORMAL_CONFIG: dict[str, str] = {"session.set_denormal_as_zero": "1"}
"""Session config entries for thread spinning (module docstring): spin within a run only."""

SLOW_ORT_FUSIONS: tuple[str, ...] = ("SkipLayerNormFusion",)
"""ONNX Runtime graph optimizers requant's sessions disable (module docstring)."""


def physical_cores() -> int:
    """Physical cores available to this process (hyper-threads share a core's FPUs, so
    more threads than cores slows GEMM-heavy graphs down)."""
    logical = _affinity_count()
    physical = _physical_core_count()
    if physical is None:
        return logical
    # affinity masks count logical CPUs; scale by threads per core
    total_logical = os.cpu_count() or logical
    per_core = max(1, total_logical // physical)
    return max(1, min(physical, logical // per_core or 1))


def _affinity_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _physical_core_count() -> int | None:
    try:
        import psutil  # type: ignore[import-not-found]

        n = psutil.cpu_count(logical=False)
        if n:
            return int(n)
    except ImportError:
        pass
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    cores: set[tuple[str, str]] = set()
    phys = core = None
    for line in text.splitlines() + [""]:
        if not line.strip():
            if core is not None:
                cores.add((phys or "0", core))
            phys = core = None
            continue
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            phys = value.strip()
        elif key == "core id":
            core = value.strip()
    return len(cores) or None


def make_session_options(
    *,
    intra_op_threads: int | None = None,
    inter_op_threads: int = 1,
    log_severity: int = 3,
    flush_denormals: bool = False,
) -> Any:
    """requant's `onnxruntime.SessionOptions` (see the module docstring).
    `flush_denormals` asks ORT to flush subnormals, on the creating thread too: make the
    session in `caller_float_environment_kept()` (OnnxRuntimeSession does)."""
    import onnxruntime as ort

    from requant.targets import threads_problem

    problem = None if intra_op_threads is None else threads_problem(intra_op_threads)
    if problem:  # ONNX Runtime crashes (no exception) on absurd counts
        raise RequantError(f"ONNX Runtime session: intra_op_threads {problem}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(intra_op_threads or physical_cores())
    opts.inter_op_num_threads = int(inter_op_threads)
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = int(log_severity)
    for key, value in {**SPINNING_CONFIG, **(DENORMAL_CONFIG if flush_denormals else {})}.items():
        opts.add_session_config_entry(key, value)
    return opts


@cache
def _libm() -> Any | None:
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("m")
    try:
        libm = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libm if libm is not None and hasattr(libm, "fegetenv") and hasattr(libm, "fesetenv") else None


@contextlib.contextmanager
def caller_float_environment_kept() -> Iterator[None]:
    """The calling thread's floating-point environment (rounding, exception masks, x86's
    FTZ/DAZ) as it was before the block, whatever the block set."""
    import ctypes

    libm = _libm()
    env = ctypes.create_string_buffer(256)  # larger than any platform's fenv_t
    saved = libm is not None and libm.fegetenv(env) == 0
    try:
        yield
    finally:
        if saved:
            libm.fesetenv(env)


class OnnxRuntimeSession:
    """An ONNX Runtime session on a model given as a path, a ModelProto, its bytes or a
    requant `Graph` (exported with `to_onnx`). Call it with numpy arrays by position
    or by input name; it returns a tuple of numpy arrays, one per graph output.
    `disabled_optimizers`: ORT optimizers to turn off (default `SLOW_ORT_FUSIONS`; `()`
    runs ORT's graph optimisations as its defaults do, as the benchmarks' ONNX Runtime
    anchors do, with `flush_denormals=False`)."""

    def __init__(
        self,
        model: Any,
        *,
        providers: Sequence[str] | None = None,
        intra_op_threads: int | None = None,
        inter_op_threads: int = 1,
        log_severity: int = 3,
        session_options: Any | None = None,
        disabled_optimizers: Sequence[str] | None = None,
        arrays: Mapping[str, np.ndarray] | None = None,
        flush_denormals: bool = True,
    ) -> None:
        import onnxruntime as ort

        self.options = session_options or make_session_options(
            intra_op_threads=intra_op_threads, inter_op_threads=inter_op_threads, log_severity=log_severity,
            flush_denormals=flush_denormals and _libm() is not None)
        self.providers = list(providers or ["CPUExecutionProvider"])
        self.disabled_optimizers = tuple(SLOW_ORT_FUSIONS if disabled_optimizers is None else disabled_optimizers)
        self.arrays: dict[str, np.ndarray] = dict(arrays or {})  # initializers exported by reference
        source, tmp = self._source(model)
        try:
            with caller_float_environment_kept():
                self.session = ort.InferenceSession(source, sess_options=self.options, providers=self.providers,
                                                    disabled_optimizers=list(self.disabled_optimizers))
        except Exception as exc:
            raise RequantError(f"ONNX Runtime cannot load the model: {exc}") from exc
        finally:
            if tmp is not None:
                # the session has read or mapped what it keeps (a mapping outlives its
                # file's name); where the temporary directory is memory (tmpfs) the
                # packed weights' source pages are then freed now, not with the session
                tmp.cleanup()
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._input_types = {i.name: i.type for i in self.session.get_inputs()}
        io_types = list(self._input_types.values()) + [o.type for o in self.session.get_outputs()]
        unsupported = sorted({t for t in io_types if t in _PACKED_TYPES})
        if unsupported:
            raise RequantError(
                f"model inputs/outputs of type {', '.join(unsupported)} cannot be passed through ONNX Runtime's "
                f"Python API; Cast them to a byte-sized type (i8, u8, f16, f32) inside the graph"
            )
        self._byte_io = any(t in _BYTE_TYPES for t in io_types)

    def _source(self, model: Any) -> tuple[str | bytes, tempfile.TemporaryDirectory | None]:
        """What the session is made from, and the temporary directory holding it, if any."""
        from requant.backends.onnx.export import AUTO_EXTERNAL_DATA_BYTES, initializer_bytes, save_onnx, to_onnx
        from requant.ir.graph import Graph

        if isinstance(model, Graph):
            if initializer_bytes(model) > BY_REFERENCE_BYTES:
                model = to_onnx(model, by_reference=self.arrays)
            else:
                model = to_onnx(model)
        if isinstance(model, (str, os.PathLike)):
            return str(model), None
        if isinstance(model, (bytes, bytearray)):
            return bytes(model), None
        if self.arrays or initializer_bytes(model) > AUTO_EXTERNAL_DATA_BYTES:
            # too large to serialize in one piece, or exported by reference: ORT reads the
            # weights from a file (mapped, not copied, until it packs them), where handing
            # it the arrays would have it copy them all and then pack them
            tmp = tempfile.TemporaryDirectory(prefix="requant_ort_", ignore_cleanup_errors=True)
            path = Path(tmp.name) / "model.onnx"
            save_onnx(model, path, external_data=True, arrays=self.arrays)
            return str(path), tmp
        return model.SerializeToString(), None

    def feeds(self, *args: Any, **kwargs: Any) -> dict[str, np.ndarray]:
        """The input dict for `args` (positional, or one mapping) and `kwargs` (by name)."""
        if len(args) == 1 and isinstance(args[0], Mapping) and not kwargs:
            kwargs, args = dict(args[0]), ()
        if len(args) > len(self.input_names):
            raise RequantError(f"the model takes {len(self.input_names)} inputs, got {len(args)} positional")
        feeds = dict(zip(self.input_names, args))
        for key, value in kwargs.items():
            if key not in self.input_names:
                raise RequantError(f"the model has no input '{key}'; inputs: {', '.join(self.input_names)}")
            if key in feeds:
                raise RequantError(f"input '{key}' is given twice (by position and by name)")
            feeds[key] = value
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise RequantError(f"missing model input(s): {', '.join(missing)}")
        return {k: np.asarray(v) for k, v in feeds.items()}

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        return self.run_feeds(self.feeds(*args, **kwargs))

    def run_feeds(self, feeds: Mapping[str, np.ndarray]) -> tuple[np.ndarray, ...]:
        """Run on {input name: numpy array} holding every input, as `feeds` returns it
        (callers that checked their inputs already, e.g. `CompiledModel`, skip `feeds`)."""
        try:
            if not self._byte_io:
                return tuple(self.session.run(self.output_names, feeds))
            return self._run_with_ort_values(feeds)
        except RequantError:
            raise
        except Exception as exc:
            raise RequantError(f"ONNX Runtime failed running the model: {exc}") from exc

    def _run_with_ort_values(self, feeds: Mapping[str, np.ndarray]) -> tuple[np.ndarray, ...]:
        """ORT's numpy bridge has no bf16/fp8: pass those tensors as raw bytes."""
        import onnxruntime as ort

        values = {}
        for name, arr in feeds.items():
            kind = self._input_types[name]
            if kind in _BYTE_TYPES:
                code, np_type = _BYTE_TYPES[kind]
                arr = np.ascontiguousarray(np.asarray(arr).astype(np_type))
                bits = np.uint8 if arr.itemsize == 1 else np.uint16
                values[name] = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(arr.view(bits), code)
            else:
                values[name] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr))
        outs = self.session.run_with_ort_values(self.output_names, values)
        return tuple(_to_numpy(v) for v in outs)

    def run(self, inputs: Mapping[str, Any] | Sequence[Any]) -> list[np.ndarray]:
        """Like `requant.ir.run`: inputs as a mapping or a sequence, outputs as a list."""
        if isinstance(inputs, Mapping):
            return list(self(**inputs))
        return list(self(*inputs))

    def __repr__(self) -> str:
        return (f"<OnnxRuntimeSession inputs={self.input_names} outputs={self.output_names} "
                f"threads={self.options.intra_op_num_threads}>")


def _byte_types() -> dict[str, tuple[int, Any]]:
    import ml_dtypes

    return {
        "tensor(bfloat16)": (16, ml_dtypes.bfloat16),
        "tensor(float8e4m3fn)": (17, ml_dtypes.float8_e4m3fn),
        "tensor(float8e5m2)": (19, ml_dtypes.float8_e5m2),
    }


_BYTE_TYPES = _byte_types()
_PACKED_TYPES = {"tensor(int4)", "tensor(uint4)", "tensor(float4e2m1)"}


def _to_numpy(value: Any) -> np.ndarray:
    kind = value.data_type()
    if kind not in _BYTE_TYPES:
        return value.numpy()
    import ctypes

    _, np_type = _BYTE_TYPES[kind]
    raw = ctypes.string_at(value.data_ptr(), value.tensor_size_in_bytes())
    return np.frombuffer(raw, dtype=np_type).reshape(value.shape()).copy()


def run_onnx(model: Any, inputs: Mapping[str, Any] | Sequence[Any], **session_kwargs: Any) -> list[np.ndarray]:
    """One-shot: build a session on `model` and run it on `inputs`."""
    return OnnxRuntimeSession(model, **session_kwargs).run(inputs)


def optimized_ops(model: Any, *, disabled_optimizers: Sequence[str] | None = None) -> dict[str, int]:
    """{op type: count} of the graph ONNX Runtime runs after its own graph optimisations,
    in a session with requant's settings (e.g. how many DQ -> Conv -> Q patterns it fused
    into QLinearConv, and how many Convs stayed float). ORT writes the optimised graph
    to a temporary file, read back here; the op types are ORT's own (com.microsoft and
    layout ops unqualified: QLinearAdd, NhwcMaxPool, ReorderInput, ...)."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="requant_ort_opt_") as tmp:
        opts = make_session_options()
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        OnnxRuntimeSession(model, session_options=opts, disabled_optimizers=disabled_optimizers)
        optimized = onnx.load(opts.optimized_model_filepath, load_external_data=False)
    counts: dict[str, int] = {}
    for node in optimized.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


# -- the runner passes use, and the "onnx" backend of requant.compile ---------------------------


class OnnxRuntimeRunner:
    """A requant graph run in ONNX Runtime (`requant.ir.runners`): feeds by input name in,
    one array per graph output out."""

    name = "onnxruntime"

    def __init__(self, graph: Any) -> None:
        self.session = OnnxRuntimeSession(graph)

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return list(self.session.run_feeds(feeds))


class OnnxRuntime:
    """The "onnx" backend of a compiled model: the exported ModelProto and an ONNX Runtime
    session on it."""

    kind = "onnx"
    device = "cpu"
    artifact_kind = "ONNX"

    def __init__(self, proto: Any, session: OnnxRuntimeSession, arrays: Mapping[str, np.ndarray] | None = None,
                 proto_loader: Any = None) -> None:
        self._proto = proto
        self._proto_loader = proto_loader  # a loaded model reads its weights on first use
        self.session = session
        self.arrays = dict(arrays or {})  # initializers the proto holds by reference
        self.saved_bytes: int | None = None  # a loaded model: the size of its files

    @property
    def proto(self) -> Any:
        """The exported model (a large one's initializers by reference: `arrays`)."""
        if self._proto is None:
            self._proto = self._proto_loader()
        return self._proto

    def whole_proto(self) -> Any:
        """The exported model with its weights in it: `proto`, or for one exported by
        reference a copy with the arrays written in, when they fit in one protobuf (a
        larger one stays by reference: `save` writes it whole)."""
        from requant.backends.onnx.export import AUTO_EXTERNAL_DATA_BYTES, with_arrays_inline

        if self.arrays and sum(int(a.nbytes) for a in self.arrays.values()) <= AUTO_EXTERNAL_DATA_BYTES:
            return with_arrays_inline(self.proto, self.arrays)
        return self.proto

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> tuple[np.ndarray, ...]:
        return self.session.run_feeds(feeds)  # CompiledModel checked the feeds already

    def cannot_run(self) -> str | None:
        return None

    def artifact_bytes(self) -> int:
        """The size of the model as written: protobuf cannot size a model past its 2 GB
        limit (ByteSize fails), so a larger one counts its weights and its nodes."""
        from requant.backends.onnx.export import AUTO_EXTERNAL_DATA_BYTES, initializer_bytes

        if self.saved_bytes is not None:
            return self.saved_bytes
        weights = initializer_bytes(self.proto) + sum(int(a.nbytes) for a in self.arrays.values())
        if weights <= AUTO_EXTERNAL_DATA_BYTES and not self.arrays:
            return int(self.proto.ByteSize())
        return weights + sum(int(node.ByteSize()) for node in self.proto.graph.node)

    def write(self, out: Path, external_data: bool | None) -> list[str]:
        """Write model.onnx (weights in model.onnx.data when `external_data`, or when too
        large for one protobuf); the names of the files written."""
        return write_model(self.proto, out, external_data, self.arrays)


def write_model(proto: Any, out: Path, external_data: bool | None,
                arrays: Mapping[str, np.ndarray] | None = None) -> list[str]:
    """model.onnx (+ model.onnx.data) into `out`, deterministically; the file names.
    `arrays`: the initializers a by-reference export left out of `proto`."""
    from requant.backends.onnx.export import AUTO_EXTERNAL_DATA_BYTES, initializer_bytes, save_onnx

    data = out / EXTERNAL_DATA_FILE
    data.unlink(missing_ok=True)
    if external_data is None:
        external_data = initializer_bytes(proto) > AUTO_EXTERNAL_DATA_BYTES or bool(arrays)
    if external_data:
        save_onnx(proto, out / MODEL_FILE, external_data=True, arrays=arrays)
        return [MODEL_FILE] + ([EXTERNAL_DATA_FILE] if data.exists() else [])
    # deterministic serialization: protobuf's default order is not guaranteed stable
    (out / MODEL_FILE).write_bytes(proto.SerializeToString(deterministic=True))
    return [MODEL_FILE]


def saved_files(device: str = "cpu") -> Any:
    """The files of an ONNX artifact (`requant.backends.SavedFiles`): data only."""
    del device
    return SAVED_FILES


def build_runtime(graph: Any, device: str = "cpu", *, threads: int | None = None, opset: int | None = None) -> OnnxRuntime:
    """`graph` exported to ONNX (`opset`: None = the newest the installed ONNX Runtime
    runs every op at) and loaded in a session with `threads` intra-op threads."""
    from requant.backends.onnx.export import to_onnx

    from requant.backends.onnx.export import initializer_bytes

    del device  # ONNX Runtime's CPU provider
    if initializer_bytes(graph) > BY_REFERENCE_BYTES:
        arrays: dict[str, np.ndarray] = {}
        proto = to_onnx(graph, opset=opset, by_reference=arrays)
        return OnnxRuntime(proto, OnnxRuntimeSession(proto, intra_op_threads=threads, arrays=arrays), arrays)
    proto = to_onnx(graph, opset=opset)
    return OnnxRuntime(proto, OnnxRuntimeSession(proto, intra_op_threads=threads))


def load_runtime(root: Path, manifest: Mapping[str, Any], *, proto: Any = None, threads: int | None = None,
                 files: Mapping[str, Path] | None = None, proto_loader: Any = None) -> OnnxRuntime:
    """The runtime of a saved directory (its files checked against the manifest by
    `requant.load`): a session on model.onnx (ONNX Runtime reads the weights itself);
    the ModelProto is `proto`, or read by `proto_loader` when first asked for, so a
    large model is not held a second time as protobuf. `files` (private copies of code
    files) is empty for ONNX: the artifact is data."""
    del manifest, files
    runtime = OnnxRuntime(proto, OnnxRuntimeSession(str(root / MODEL_FILE), intra_op_threads=threads),
                          proto_loader=proto_loader)
    runtime.saved_bytes = sum(p.stat().st_size for p in (root / MODEL_FILE, root / EXTERNAL_DATA_FILE) if p.is_file())
    return runtime
