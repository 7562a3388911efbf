"""The target table: what `requant.compile(..., target=NAME)` does for each NAME.

A `Target` is data: a one-line description, a pipeline of `Step`s, a backend and an
option schema. A step names a registered pass (`requant.passes.get_pass`) or the
special `CALIBRATE` step; its options are literal values, `Opt("name")` (the value of
the target option `name`, optionally mapped through a dict), `Scheme(...)` (a
quantization scheme written as data, built into `requant.ir.quant_formats.QuantScheme`
only when the pass is made), `STATS` (the statistics the calibrate step collected) or
`BATCHES` (the calibration batches themselves, for passes that search on activations)
or `INPUT_DIMS` ({symbol: size} read off the example inputs, else the first
calibration batch).
A step with `when=(option, value)` is in the pipeline only when the target option has
that value (e.g. cpu-fp4's `search=True` swaps the block quantizer for LLM-FP4); one
with `unless=(option, value)` only when it has another (cpu-int8's `smooth_alpha=None`
drops SmoothQuant). An option whose default is a pass's own (`PassDefault`) states the
value once, in the pass.

Passes are referenced by name and resolved lazily (a backend's own pass, such as
"lower_quant", through the package metadata: `requant.passes.manager.get_factory`), and
a target whose passes, calibration function or backend are missing says so
(`Target.missing()`) instead of failing at import. This module imports only the standard library, so
`requant.targets()` is cheap to reach from `import requant`.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from requant.errors import RequantError

__all__ = [
    "CALIBRATE",
    "STATS",
    "BATCHES",
    "INPUT_DIMS",
    "Opt",
    "PassDefault",
    "Scheme",
    "Step",
    "OptionSpec",
    "Target",
    "TARGETS",
    "COMMON_OPTIONS",
    "targets",
    "get_target",
    "pass_status",
    "backend_status",
    "lowering_status",
    "calibration_status",
    "max_threads",
    "threads_problem",
]

logger = logging.getLogger(__name__)

CALIBRATE = "calibrate"
"""The pipeline step that runs `requant.passes.calibration.collect_stats` on the graph as
it is at that point; its result reaches later steps through `STATS`."""

CALIBRATION_FUNCTION = ("requant.passes.calibration", "collect_stats")

class _Stats:
    """Sentinel: "the statistics from the last calibrate step" (None when none ran)."""

    def __repr__(self) -> str:
        return "STATS"


STATS = _Stats()


class _Batches:
    """Sentinel: "the calibration batches" (a pass that searches on activation rows)."""

    def __repr__(self) -> str:
        return "BATCHES"


BATCHES = _Batches()


class _InputDims:
    """Sentinel: {symbolic dim: size} of the example inputs (else the first calibration
    batch); {} when neither is given."""

    def __repr__(self) -> str:
        return "INPUT_DIMS"


INPUT_DIMS = _InputDims()


@dataclass(frozen=True)
class Opt:
    """A step option taken from the target option `name`; with `mapping`, the option's
    value is looked up in it (e.g. `Opt("block", {"nv": 16, "mx": 32})`)."""

    name: str
    mapping: Mapping[Any, Any] | None = None

    def resolve(self, options: Mapping[str, Any]) -> Any:
        value = options[self.name]
        if self.mapping is None:
            return value
        if value not in self.mapping:
            raise RequantError(f"option '{self.name}'={value!r} has no mapping here; expected one of {list(self.mapping)}")
        return self.mapping[value]


@dataclass(frozen=True)
class Scheme:
    """A quantization scheme as data (the fields of `QuantScheme`): JSON-able for
    pipeline.json, built into a `QuantScheme` only when a pass is made. Fields may be
    `Opt`s until `resolve`d. For MatMul weights [K, N]: channel axis 1 (per output
    column), group/block axis 0 (groups along K); for activations, blocks along the
    last axis (-1)."""

    dtype: Any
    granularity: Any
    axis: Any = None
    group_size: Any = None
    symmetric: Any = True

    def resolve(self, options: Mapping[str, Any]) -> Scheme:
        fields = (self.dtype, self.granularity, self.axis, self.group_size, self.symmetric)
        return Scheme(*(_resolve(f, options) for f in fields))

    def to_json(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "granularity": self.granularity, "axis": self.axis,
                "group_size": self.group_size, "symmetric": self.symmetric}

    def build(self) -> Any:
        """The `requant.ir.quant_formats.QuantScheme` this describes."""
        from requant.ir import dtypes
        from requant.ir.quant_formats import QuantScheme

        return QuantScheme(dtype=dtypes.dtype(self.dtype), granularity=self.granularity, axis=self.axis,
                           group_size=self.group_size, symmetric=self.symmetric)

    def describe(self) -> str:
        where = f"(axis={self.axis})" if self.axis is not None else ""
        group = f" group {self.group_size}" if self.group_size else ""
        return f"{self.dtype} per-{self.granularity}{where}{group} {'sym' if self.symmetric else 'asym'}"


def _resolve(value: Any, options: Mapping[str, Any]) -> Any:
    if isinstance(value, Opt):
        return value.resolve(options)
    if isinstance(value, Scheme):
        return value.resolve(options)
    if isinstance(value, (list, tuple)):
        return type(value)(_resolve(v, options) for v in value)
    return value


@dataclass(frozen=True)
class Step:
    """One pipeline step: a registered pass name (or `CALIBRATE`) and its options; with
    `when=(option, value)`, only in pipelines where that target option has that value;
    with `unless=(option, value)`, only where it has another."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    when: tuple[str, Any] | None = None
    unless: tuple[str, Any] | None = None

    def applies(self, options: Mapping[str, Any]) -> bool:
        if self.unless is not None and options.get(self.unless[0]) == self.unless[1]:
            return False
        return self.when is None or options.get(self.when[0]) == self.when[1]

    @property
    def needs_batches(self) -> bool:
        """Whether the step reads calibration batches (calibrates, or searches on them)."""
        return self.name == CALIBRATE or any(v is BATCHES for v in self.options.values())

    def resolve(self, options: Mapping[str, Any]) -> Step:
        return Step(self.name, {k: _resolve(v, options) for k, v in self.options.items()})


@dataclass(frozen=True)
class PassDefault:
    """An option default taken from a registered pass's own default for `option`, so a
    value chosen by measurement is stated once, in the pass (read when first needed:
    this module imports no pass)."""

    pass_name: str
    option: str

    def value(self) -> Any:
        # a pass lives in the module named after it, whose attribute of that name is its factory
        factory = getattr(importlib.import_module(f"requant.passes.{self.pass_name}"), self.pass_name)
        return factory.options[self.option]

    def __repr__(self) -> str:
        return f"{self.value()!r} (pass {self.pass_name}'s {self.option})"


@dataclass(frozen=True)
class OptionSpec:
    """One target option: accepted type(s), default, one-line help and, optionally,
    the values it may take or a `rule` (value -> what is wrong with it, or None)."""

    type: type | tuple[type, ...]
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    rule: Callable[[Any], str | None] | None = None

    def default_value(self) -> Any:
        return self.default.value() if isinstance(self.default, PassDefault) else self.default

    def type_name(self) -> str:
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        return " | ".join("None" if t is type(None) else t.__name__ for t in types)

    def check(self, target: str, name: str, value: Any) -> Any:
        """`value` validated (and normalised: lists -> tuples, ints -> floats)."""
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        if isinstance(value, list) and tuple in types:
            value = tuple(value)
        if isinstance(value, int) and not isinstance(value, bool) and float in types and int not in types:
            value = float(value)
        ok = any(isinstance(value, t) and not (isinstance(value, bool) and t in (int, float)) for t in types)
        if not ok:
            raise RequantError(f"target '{target}': option '{name}' must be {self.type_name()}, "
                               f"got {type(value).__name__} {value!r}")
        if self.choices is not None and value not in self.choices:
            raise RequantError(f"target '{target}': option '{name}' must be one of "
                               f"{', '.join(repr(c) for c in self.choices)}; got {value!r}")
        problem = None if self.rule is None else self.rule(value)
        if problem:
            raise RequantError(f"target '{target}': option '{name}' {problem}")
        return value

    def describe(self, name: str) -> str:
        choices = f", one of {', '.join(repr(c) for c in self.choices)}" if self.choices else ""
        return f"{name} ({self.type_name()}, default {self.default!r}{choices}): {self.help}"


def max_threads() -> int:
    """The most runtime threads an option or a manifest may ask for: 4 per logical CPU
    (ONNX Runtime crashes on absurd counts rather than refusing them)."""
    return 4 * (os.cpu_count() or 1)


def threads_problem(value: Any) -> str | None:
    """What is wrong with `value` as a thread count (0 = the physical cores), or None."""
    if not isinstance(value, int) or isinstance(value, bool):
        return f"must be an int, got {type(value).__name__} {value!r}"
    if not 0 <= value <= max_threads():
        return f"must be 0 (the physical cores) or 1..{max_threads()} (4 per CPU here), got {value}"
    return None


COMMON_OPTIONS: dict[str, OptionSpec] = {
    "verify": OptionSpec((bool, type(None)), None, "verify the graph after every pass (None: env REQUANT_VERIFY=1)"),
    "threads": OptionSpec(int, 0, "runtime intra-op threads (0: the physical cores; at most 4 per CPU)",
                          rule=threads_problem),
    "opset": OptionSpec((int, type(None)), None, "ONNX opset (None: the newest ONNX Runtime runs every op at)"),
    "holdout": OptionSpec(float, 0.2, "fraction of calibration batches held back for the accuracy report "
                                      "(at least one when there are >= 2; 0 = no report)",
                          rule=lambda h: None if 0.0 <= h < 1.0 else f"must be in [0, 1), got {h!r}"),
    "dynamic_dims": OptionSpec((dict, type(None)), None, "torch models: symbolic dims per input, "
                                                         "e.g. {'x': {0: 'batch'}}"),
}

_METHODS = ("minmax", "percentile", "mse", "entropy")
_RUNNERS = ("auto", "onnxruntime", "interpreter")

_CALIBRATION_OPTIONS: dict[str, OptionSpec] = {
    "method": OptionSpec(str, "minmax", "activation range from calibration statistics (minmax measured best "
                                        "for int8 with SmoothQuant on MiniLM: tools/bench/quantize_minilm.py)",
                         _METHODS),
    "calibration_runner": OptionSpec(str, "auto", "what runs the float graph on calibration batches "
                                     "(auto: ONNX Runtime, else the interpreter)", _RUNNERS),
}
_QUANT_OPTIONS: dict[str, OptionSpec] = {
    "exclude": OptionSpec(tuple, (), "glob patterns (node name, source module path or output name) to keep in float"),
    "ops": OptionSpec(tuple, ("MatMul", "Gemm", "Conv"), "op types to quantize"),
}

_CLEANUP = (Step("fold_constants"), Step("cse"), Step("dce"))
# Every pipeline starts from canonical forms with inference BatchNorms folded into the
# Conv / linear before them (exact in float; a BatchNorm between DQ -> Conv -> Q would
# keep ONNX Runtime from fusing the integer convolution)
_CANONICAL = (Step("canonicalize"), Step("fold_batchnorm"))
# After quantize, no constant folding: it would turn DequantizeLinear(constant codes)
# back into float weights (the quantize pass already stores weights as codes).
_QUANT_CLEANUP = (Step("cse"), Step("dce"))

# -- static W8A8 ----------------------------------------------------------------------------
_INT8_OPTIONS = {
    **_CALIBRATION_OPTIONS,
    **_QUANT_OPTIONS,
    "per_channel": OptionSpec(bool, True, "int8 weights per output channel (False: per tensor)"),
    "activations": OptionSpec(str, "uint8", "activation codes: uint8 asymmetric or int8 symmetric", ("uint8", "int8")),
    "quantize_embeddings": OptionSpec(bool, True, "also quantize Gather tables (int8, one scale per row)"),
    "kernel": OptionSpec(str, "auto", "integer kernel for lower_quant ('auto': chosen by measurement)"),
    "feature_maps": OptionSpec(bool, True, "also quantize the outputs of integer convs, residual Adds and MaxPools "
                                           "(and conv biases to int32), so convolutional networks run on integer "
                                           "conv / add / pool kernels end to end"),
    "smooth_alpha": OptionSpec((float, type(None)), PassDefault("smoothquant", "alpha"),
                               "SmoothQuant migration strength (the smoothquant step before quantize); None: no "
                               "SmoothQuant"),
    # ONNX Runtime runs each smoothing multiply as its own pass over the tensor, so cpu-int8
    # smooths only LayerNorm outputs; TVM fuses the multiply into its quantize kernels, so its
    # targets smooth every input (README, "Quantizing all-MiniLM-L6-v2", measures both)
    "smooth_scope": OptionSpec(str, "norm", "SmoothQuant on LayerNorm / RMSNorm outputs only ('norm'), or on "
                                            "every linear input ('all': more accurate, slower on ONNX Runtime)"),
}
_INT8_WEIGHTS = Scheme("int8", Opt("per_channel", {True: "channel", False: "tensor"}),
                       axis=Opt("per_channel", {True: 1, False: None}), symmetric=True)
_INT8_ACTIVATIONS = Scheme(Opt("activations"), "tensor", symmetric=Opt("activations", {"uint8": False, "int8": True}))


def _quantize_step(weights: Scheme, activations: Scheme | None, *, stats: Any = STATS, weight_only: bool = False,
                   method: Any = Opt("method"), ops: Any = Opt("ops"), embeddings: Any = False,
                   feature_maps: Any = False) -> Step:
    return Step("quantize", {
        "weight_scheme": weights,
        "activation_scheme": activations,
        "ops": ops,
        "method": method,
        "stats": stats,
        "exclude": Opt("exclude"),
        "quantize_embeddings": embeddings,
        "weight_only": weight_only,
        "feature_maps": feature_maps,
    })


# SmoothQuant measures the per-channel ranges it needs on the calibration batches itself;
# the calibrate step after it then sees the smoothed activations the quantizers read
_SMOOTHQUANT = Step("smoothquant", {"alpha": Opt("smooth_alpha"), "scope": Opt("smooth_scope"), "calibration": BATCHES,
                                    "runner": Opt("calibration_runner")}, unless=("smooth_alpha", None))
_INT8_QUANTIZE = (
    *_CANONICAL,
    _SMOOTHQUANT,
    Step(CALIBRATE, {"runner": Opt("calibration_runner")}),
    _quantize_step(_INT8_WEIGHTS, _INT8_ACTIVATIONS, embeddings=Opt("quantize_embeddings"),
                   feature_maps=Opt("feature_maps")),
)
_INT8_STEPS = (*_INT8_QUANTIZE, Step("lower_quant", {"kernel": Opt("kernel")}), *_QUANT_CLEANUP)

# TVM schedules static loops: its targets specialise the graph to the input sizes last
# (calibration batches may be smaller than the batch the model is built for).
_TVM_OPTIONS = {
    "static_shapes": OptionSpec(bool, True, "specialise symbolic dims to the sizes of the example inputs (else "
                                            "the first calibration batch); False: keep them symbolic (one build "
                                            "runs every size; dims= may still fix some)"),
    "dims": OptionSpec((dict, type(None)), None, "sizes of symbolic dims to build for, over those of the inputs, "
                                                 "e.g. {'batch': 64}"),
}
# static_shapes=False binds only what dims= names; bind_dims then follows the shape
# computations of the dims left symbolic, so that TVM can build them
_BIND_DIMS = Step("bind_dims", {"dims": Opt("static_shapes", {True: INPUT_DIMS, False: None}), "overrides": Opt("dims")})
# TVM builds its own integer kernels from MatMulInteger (int32 accumulation); ONNX
# Runtime's com.microsoft fused forms mean nothing there. (No backend_ops for TVM targets:
# checking them would import tvm into requant.targets(); every op has a TVM lowering,
# tests/backends/test_lowering_coverage.py, and to_relax names any node it refuses.)
_TVM_INT8_OPTIONS = {k: v for k, v in _INT8_OPTIONS.items() if k != "kernel"} | _TVM_OPTIONS | {
    "smooth_scope": OptionSpec(str, "all", "SmoothQuant on every linear input ('all': the multiply fuses into "
                                           "TVM's quantize kernels), or on LayerNorm / RMSNorm outputs only ('norm')"),
}
_TVM_INT8_STEPS = (*_INT8_QUANTIZE, Step("lower_integer"), *_QUANT_CLEANUP, _BIND_DIMS)

# -- weight-only int4 ------------------------------------------------------------------------
_INT4_OPTIONS = {
    "exclude": _QUANT_OPTIONS["exclude"],
    "group_size": OptionSpec(int, 32, "weights per int4 group along K", (16, 32, 64, 128, 256)),
    "symmetric": OptionSpec(bool, True, "int4 symmetric (False: uint4 with zero points)"),
    "kernel": OptionSpec(str, "auto", "kernel for lower_quant ('auto': MatMulNBits)"),
}
_INT4_STEPS = (
    *_CANONICAL,
    _quantize_step(
        Scheme(Opt("symmetric", {True: "int4", False: "uint4"}), "group", axis=0, group_size=Opt("group_size"),
               symmetric=Opt("symmetric")),
        None, stats=None, weight_only=True, method="minmax", ops=("MatMul",)),
    Step("lower_quant", {"kernel": Opt("kernel")}),
    *_QUANT_CLEANUP,
)

# -- simulated low-bit floats ------------------------------------------------------------------
_FP8_OPTIONS = {
    **_CALIBRATION_OPTIONS,
    "method": OptionSpec(str, "minmax", "activation range from calibration statistics (fp8: amax)", _METHODS),
    **_QUANT_OPTIONS,
    "format": OptionSpec(str, "fp8_e4m3", "fp8 element format", ("fp8_e4m3", "fp8_e5m2")),
}
_FP8_STEPS = (
    *_CANONICAL,
    Step(CALIBRATE, {"runner": Opt("calibration_runner")}),
    _quantize_step(Scheme(Opt("format"), "channel", axis=1), Scheme(Opt("format"), "tensor")),
    *_QUANT_CLEANUP,
)
_FP4_OPTIONS = {
    **_CALIBRATION_OPTIONS,
    "method": OptionSpec(str, "minmax", "range of the NVFP4 per-tensor scale from calibration", _METHODS),
    **_QUANT_OPTIONS,
    "block": OptionSpec(str, "nv", "block scaling: nv (16, E4M3 scales + f32) or mx (32, E8M0 scales)", ("nv", "mx")),
    "search": OptionSpec(bool, False, "LLM-FP4 instead of blocks: a searched FP4 format per tensor with "
                                      "per-channel exponent biases folded into the next weights (ignores block, "
                                      "method, ops and exclude)"),
}
_FP4_BLOCK = Opt("block", {"nv": 16, "mx": 32})
_FP4_BLOCKS = ("search", False)
_FP4_STEPS = (
    *_CANONICAL,
    # block scales come from the data; NVFP4's float32 per-tensor scale of activations
    # comes from calibration (MXFP4 needs none, but calibrating keeps one pipeline)
    Step(CALIBRATE, {"runner": Opt("calibration_runner")}, when=_FP4_BLOCKS),
    replace(_quantize_step(Scheme("fp4_e2m1", Opt("block"), axis=0, group_size=_FP4_BLOCK),
                           Scheme("fp4_e2m1", Opt("block"), axis=-1, group_size=_FP4_BLOCK)), when=_FP4_BLOCKS),
    Step("llm_fp4", {"calibration": BATCHES, "runner": Opt("calibration_runner")},
         when=("search", True)),
    *_QUANT_CLEANUP,
)
_FP32_STEPS = (*_CANONICAL, *_CLEANUP)
_INTONLY_STEPS = (
    *_CANONICAL,
    Step(CALIBRATE, {"runner": Opt("calibration_runner")}),
    _quantize_step(Scheme("int8", "channel", axis=1), Scheme("int8", "tensor")),
    Step("intonly"),
    *_QUANT_CLEANUP,
)


@dataclass(frozen=True)
class Target:
    """One entry of the table (see the module docstring)."""

    name: str
    description: str
    steps: tuple[Step, ...]
    backend: str = "onnx"  # "onnx" | "tvm"
    device: str = "cpu"  # "cpu" (ONNX Runtime) | "llvm" | "cuda" (TVM)
    options: Mapping[str, OptionSpec] = field(default_factory=dict)
    simulated: bool = False  # quantize-dequantize simulation, not real low-bit kernels
    backend_ops: tuple[str, ...] = ()  # ops the pipeline emits that the backend must run

    @property
    def all_options(self) -> dict[str, OptionSpec]:
        return {**self.options, **COMMON_OPTIONS}

    @property
    def static(self) -> bool:
        """Whether the default pipeline calibrates (and so needs calibration batches)."""
        return any(s.needs_batches for s in self.resolve_steps(self.resolve_options({})))

    def option_schema(self) -> dict[str, tuple[Any, Any, str]]:
        """{option name: (type, default, help)}."""
        return {k: (s.type, s.default_value(), s.help) for k, s in self.all_options.items()}

    def describe_options(self) -> str:
        return "; ".join(s.describe(k) for k, s in self.all_options.items())

    def resolve_options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults filled in and `given` validated; an unknown option is an error that
        lists this target's options."""
        schema = self.all_options
        unknown = sorted(set(given) - set(schema))
        if unknown:
            raise RequantError(f"target '{self.name}' has no option(s) {', '.join(repr(u) for u in unknown)}; "
                               f"its options: {self.describe_options()}")
        return {k: spec.check(self.name, k, given[k]) if k in given else spec.default_value()
                for k, spec in schema.items()}

    def resolve_steps(self, options: Mapping[str, Any]) -> list[Step]:
        return [s.resolve(options) for s in self.steps if s.applies(options)]

    def missing(self, steps: tuple[Step, ...] | list[Step] | None = None) -> list[str]:
        """What this target needs that is not available: its passes, calibration, the
        quantization schemes, its backend and the backend's lowering of `backend_ops`.
        With `steps` (a pipeline given by `passes=`), those steps replace the target's
        and `backend_ops` (what the target's own pipeline emits) are not checked."""
        own = steps is None
        steps = self.steps if steps is None else steps
        missing: list[str] = []
        for step in steps:
            reason = calibration_status() if step.name == CALIBRATE else pass_status(step.name)
            if reason and reason not in missing:
                missing.append(reason)
        if any(isinstance(v, Scheme) for s in steps for v in s.options.values()):
            reason = _module_status("requant.ir.quant_formats", "QuantScheme", "quantization schemes")
            if reason and reason not in missing:
                missing.append(reason)
        reason = backend_status(self.backend, self.device)
        if reason:
            missing.append(reason)
        elif own:
            missing += [r for r in (lowering_status(self.backend, op) for op in self.backend_ops) if r]
        return missing

    @property
    def available(self) -> bool:
        return not self.missing()

    def summary(self) -> str:
        """The one-line description, marked when something it needs is missing."""
        return self.description if self.available else f"{self.description} (not available yet)"


# -- availability ------------------------------------------------------------------------------


def _import_reason(module: str) -> str | None:
    """None when `module` imports; else why not."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
            return "not written yet" if exc.name.startswith("requant") else f"needs the package '{exc.name}'"
        return f"{module} failed to import: {exc}"
    except Exception as exc:  # a module in progress may raise anything on import
        return f"{module} failed to import: {type(exc).__name__}: {exc}"
    return None


def _module_status(module: str, attr: str, what: str) -> str | None:
    reason = _import_reason(module)
    if reason is None and not hasattr(importlib.import_module(module), attr):
        reason = f"{module} has no {attr}"
    return None if reason is None else f"{what} ({module}.{attr}: {reason})"


def pass_status(name: str) -> str | None:
    """None when the pass `name` is registered (importing requant.passes, or the module
    another package declares it in); else a line saying what is missing."""
    from requant.passes.manager import get_factory

    try:
        importlib.import_module("requant.passes")
        get_factory(name)
    except ImportError as exc:
        return f"pass '{name}' (needs the package '{exc.name}')"
    except RequantError:
        return f"pass '{name}' (not written yet)"
    return None


def calibration_status() -> str | None:
    return _module_status(*CALIBRATION_FUNCTION, "calibration")


def lowering_status(backend: str, op: str) -> str | None:
    """None when `op` is a registered op that `backend` has a lowering for."""
    from requant.ir.registry import is_registered

    importlib.import_module("requant.ir.ops")
    if not is_registered(op):
        return f"op '{op}' (not in the op registry yet)"
    if backend == "onnx":
        from requant.backends.onnx.lowering import LOWERINGS, Unsupported

        entry = LOWERINGS.get(op)
        if entry is None:
            return f"ONNX lowering of op '{op}' (backends/onnx/lowering/: no entry yet)"
        if isinstance(entry, Unsupported):
            return f"ONNX lowering of op '{op}' (unsupported: {entry.reason})"
    return None


def _nvcc_reason() -> str | None:
    from requant.backends.tvm.cuda import nvcc_status

    reason = nvcc_status()
    return None if reason is None else f"CUDA builds ({reason})"


def backend_status(backend: str, device: str) -> str | None:
    if backend == "onnx":
        for package in ("onnx", "onnxruntime"):
            if importlib.util.find_spec(package) is None:
                return f"backend 'onnx' (needs the package '{package}': pip install 'requant[onnx]')"
        return None
    if backend == "tvm":
        if importlib.util.find_spec("requant.backends.tvm") is None:
            return f"backend 'tvm' for {device} (requant.backends.tvm: not written yet)"
        if importlib.util.find_spec("tvm") is None:
            return "backend 'tvm' (needs the package 'apache-tvm': pip install 'requant[tvm]')"
        if device == "cuda":
            return _module_status("requant.backends.tvm.cuda", "nvcc_status", "CUDA builds") or _nvcc_reason()
        return None
    return f"backend '{backend}' (unknown)"


# -- the table ---------------------------------------------------------------------------------


def _table(*entries: Target) -> dict[str, Target]:
    return {t.name: t for t in entries}


_QDQ = ("QuantizeLinear", "DequantizeLinear")

TARGETS: dict[str, Target] = _table(
    Target("cpu-fp32", "float32 on ONNX Runtime (CPU): canonical forms and cleanup only", _FP32_STEPS),
    Target("cpu-int8", "static W8A8 on ONNX Runtime (CPU): int8 per-channel weights, per-tensor activations "
           "from calibration, integer MatMul kernels", _INT8_STEPS, options=_INT8_OPTIONS, backend_ops=_QDQ),
    Target("cpu-int4", "weight-only int4 (groups of 32 along K) on ONNX Runtime (CPU) via MatMulNBits",
           _INT4_STEPS, options=_INT4_OPTIONS, backend_ops=("com.microsoft.MatMulNBits",)),
    Target("cpu-fp8", "fp8 (e4m3) weights and activations, simulated by quantize-dequantize on ONNX Runtime (CPU)",
           _FP8_STEPS, options=_FP8_OPTIONS, simulated=True, backend_ops=_QDQ),
    Target("cpu-fp4", "fp4 (e2m1) NVFP4/MXFP4 blocks, simulated by quantize-dequantize on ONNX Runtime (CPU)",
           _FP4_STEPS, options=_FP4_OPTIONS, simulated=True, backend_ops=("FakeQuantize",)),
    Target("cpu-intonly", "integer-only inference (I-ViT: Shiftmax, ShiftGELU, I-LayerNorm, dyadic requantization) "
           "on ONNX Runtime (CPU)", _INTONLY_STEPS, options=_CALIBRATION_OPTIONS | _QUANT_OPTIONS),
    Target("cuda-int8", "static W8A8 on NVIDIA GPUs through TVM (CUDA): int8 matmuls with int32 accumulation",
           _TVM_INT8_STEPS, backend="tvm", device="cuda", options=_TVM_INT8_OPTIONS),
    Target("cuda-fp8", "fp8 (e4m3) weights and activations on NVIDIA GPUs through TVM (CUDA), "
           "simulated by quantize-dequantize", (*_FP8_STEPS, _BIND_DIMS), backend="tvm", device="cuda",
           options=_FP8_OPTIONS | _TVM_OPTIONS,
           simulated=True),
    Target("cuda-fp4", "fp4 (e2m1) NVFP4/MXFP4 blocks on NVIDIA GPUs through TVM (CUDA), "
           "simulated by quantize-dequantize", (*_FP4_STEPS, _BIND_DIMS), backend="tvm", device="cuda",
           options=_FP4_OPTIONS | _TVM_OPTIONS, simulated=True),
    Target("tvm-cpu-fp32", "float32 compiled by TVM for the CPU (LLVM)", (*_FP32_STEPS, _BIND_DIMS), backend="tvm",
           device="llvm", options=_TVM_OPTIONS),
    Target("tvm-cpu-int8", "static W8A8 compiled by TVM for the CPU (LLVM): int8 matmuls with int32 accumulation",
           _TVM_INT8_STEPS, backend="tvm", device="llvm", options=_TVM_INT8_OPTIONS),
)


def targets() -> dict[str, str]:
    """Every target name with its one-line description, in table order; a target whose
    passes or backend are missing is marked "(not available yet)"."""
    return {name: t.summary() for name, t in TARGETS.items()}


def get_target(name: str) -> Target:
    """The table entry `name`; an unknown name is an error listing every target."""
    if not isinstance(name, str) or name not in TARGETS:
        listing = "\n".join(f"  {n}: {t.description}" for n, t in TARGETS.items())
        raise RequantError(f"unknown target {name!r}; targets:\n{listing}")
    return TARGETS[name]
