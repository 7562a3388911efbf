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

# -- rotations (QuaRot / SpinQuant; passes/rotate_*.py, each exact in float) -----------------
def _rotate_block_problem(block: int) -> str | None:
    from requant.ir.hadamard import block_option_problem

    return block_option_problem(block)


# A per-tensor int8 grid needs each outlier channel spread, not every channel mixed:
# `python -m requant.tools.bench.rotate` measures blocks of 32 as accurate as the whole
# width on MiniLM (W8A8 and W4A8) at a fraction of the online Hadamards' cost.
_ROTATE_BLOCK_INT8 = 32
_ROTATE_OPTIONS = {
    "rotate": OptionSpec(bool, False, "Hadamard rotations before quantizing: the residual stream (pre-norm "
                                      "models, free), each attention head (free), and online Hadamards on the "
                                      "other linear inputs (rotate_online)"),
    "rotate_online": OptionSpec(str, "all", "the linear inputs rotate=True rotates at run time: 'all', 'writers' "
                                            "(QuaRot's: the inputs of the linears writing the residual stream), "
                                            "'norms' (LayerNorm / RMSNorm outputs), 'none'",
                                ("all", "writers", "norms", "none")),
    "rotate_block": OptionSpec(int, 0, "online Hadamards block-diagonal with blocks of (at most) this many "
                                       "channels, cheaper than mixing the whole width (0: the whole width)",
                               rule=_rotate_block_problem),
}
# The stream rotation needs the norms' affine folded into the linears and LayerNorm streams
# centred first; post-norm graphs (BERT, MiniLM) are refused by the two stream passes (named
# in the report) and take the per-head and online rotations only.
_ROTATE = (
    Step("fold_norm_affine", when=("rotate", True)),
    Step("layernorm_to_rmsnorm", when=("rotate", True)),
    Step("rotate_residual", when=("rotate", True)),
    Step("rotate_heads", when=("rotate", True)),
    Step("rotate_online", {"scope": Opt("rotate_online"), "block": Opt("rotate_block")}, when=("rotate", True),
         unless=("rotate_online", "none")),
)
_WEIGHT_METHODS = ("rtn", "gptq")
_WEIGHT_METHOD = OptionSpec(str, "rtn", "weight codes: round to nearest ('rtn') or GPTQ ('gptq', MatMul weights, "
                                        "Hessians from the calibration batches)", _WEIGHT_METHODS)

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
    # measured by `python -m requant.tools.bench.vision --convs`: ONNX Runtime's uint8 conv
    # is slower than its float one on a 3 x 3 x 3 image stem, faster on 7 x 7 x 3
    "min_conv_reduction": OptionSpec(int, 32, "dense convs with a spatial kernel whose outputs each sum fewer "
                                              "products than this (an image stem's 3 x 3 x 3) stay float"),
    # measured by `python -m requant.tools.bench.vision`: on ONNX Runtime, quantizing the float
    # map in front of a depthwise conv (MobileNetV3's stem output) costs more than its uint8
    # depthwise kernel saves
    "float_depthwise_entry": OptionSpec(bool, True, "a depthwise conv reading a float map (not codes from an "
                                                    "integer conv) stays float; the integer region starts at the "
                                                    "next dense conv"),
    "smooth_alpha": OptionSpec((float, type(None)), PassDefault("smoothquant", "alpha"),
                               "SmoothQuant migration strength (the smoothquant step before quantize); None: no "
                               "SmoothQuant"),
    # ONNX Runtime runs each smoothing multiply as its own pass over the tensor, so cpu-int8
    # smooths only LayerNorm outputs; TVM fuses the multiply into its quantize kernels, so its
    # targets smooth every input (README, "Quantizing all-MiniLM-L6-v2", measures both)
    "smooth_scope": OptionSpec(str, "norm", "SmoothQuant on LayerNorm / RMSNorm outputs only ('norm'), or on "
                                            "every linear input ('all': more accurate, slower on ONNX Runtime)"),
    **_ROTATE_OPTIONS,
    "rotate_block": replace(_ROTATE_OPTIONS["rotate_block"], default=_ROTATE_BLOCK_INT8),
    "weight_method": _WEIGHT_METHOD,
}
_INT8_WEIGHTS = Scheme("int8", Opt("per_channel", {True: "channel", False: "tensor"}),
                       axis=Opt("per_channel", {True: 1, False: None}), symmetric=True)
_INT8_ACTIVATIONS = Scheme(Opt("activations"), "tensor", symmetric=Opt("activations", {"uint8": False, "int8": True}))


def _quantize_step(weights: Scheme, activations: Scheme | None, *, stats: Any = STATS, weight_only: bool = False,
                   method: Any = Opt("method"), ops: Any = Opt("ops"), embeddings: Any = False,
                   feature_maps: Any = False, weight_method: Any = None, min_conv_reduction: Any = 0,
                   float_depthwise_entry: Any = False) -> Step:
    gptq = {} if weight_method is None else {"weight_method": weight_method, "batches": BATCHES,
                                             "runner": Opt("calibration_runner")}
    return Step("quantize", {**gptq,
        "weight_scheme": weights,
        "activation_scheme": activations,
        "ops": ops,
        "method": method,
        "stats": stats,
        "exclude": Opt("exclude"),
        "quantize_embeddings": embeddings,
        "weight_only": weight_only,
        "feature_maps": feature_maps,
        "min_conv_reduction": min_conv_reduction,
        "float_depthwise_entry": float_depthwise_entry,
    })


# SmoothQuant measures the per-channel ranges it needs on the calibration batches itself;
# the calibrate step after it then sees the smoothed activations the quantizers read
_SMOOTHQUANT = Step("smoothquant", {"alpha": Opt("smooth_alpha"), "scope": Opt("smooth_scope"), "calibration": BATCHES,
                                    "runner": Opt("calibration_runner")}, unless=("smooth_alpha", None))
_INT8_QUANTIZE = (
    *_CANONICAL,
    *_ROTATE,
    _SMOOTHQUANT,
    Step(CALIBRATE, {"runner": Opt("calibration_runner")}),
    _quantize_step(_INT8_WEIGHTS, _INT8_ACTIVATIONS, embeddings=Opt("quantize_embeddings"),
                   feature_maps=Opt("feature_maps"), weight_method=Opt("weight_method"),
                   min_conv_reduction=Opt("min_conv_reduction"), float_depthwise_entry=Opt("float_depthwise_entry")),
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
    "min_conv_reduction": OptionSpec(int, 0, "dense convs with a spatial kernel whose outputs each sum fewer "
                                             "products than this stay float (0: every conv is quantized)"),
    "float_depthwise_entry": OptionSpec(bool, False, "a depthwise conv reading a float map (not codes from an "
                                                     "integer conv) stays float (False: every depthwise conv is "
                                                     "quantized)"),
}
_TVM_INT8_STEPS = (*_INT8_QUANTIZE, Step("lower_integer"), *_QUANT_CLEANUP, _BIND_DIMS)

# -- weight-only int4 ------------------------------------------------------------------------
_INT4_OPTIONS = {
    "exclude": _QUANT_OPTIONS["exclude"],
    "group_size": OptionSpec(int, 32, "weights per int4 group along K", (16, 32, 64, 128, 256)),
    "symmetric": OptionSpec(bool, True, "int4 symmetric (False: uint4 with zero points)"),
    "kernel": OptionSpec(str, "auto", "kernel for lower_quant ('auto': MatMulNBits)"),
    "calibration_runner": _CALIBRATION_OPTIONS["calibration_runner"],
    **_ROTATE_OPTIONS,
    "weight_method": _WEIGHT_METHOD,
}
_INT4_WEIGHTS = Scheme(Opt("symmetric", {True: "int4", False: "uint4"}), "group", axis=0, group_size=Opt("group_size"),
                       symmetric=Opt("symmetric"))
_INT4_STEPS = (
    *_CANONICAL,
    *_ROTATE,
    # GPTQ reads the calibration batches: only then does cpu-int4 need calibration
    replace(_quantize_step(_INT4_WEIGHTS, None, stats=None, weight_only=True, method="minmax", ops=("MatMul",)),
            when=("weight_method", "rtn")),
    replace(_quantize_step(_INT4_WEIGHTS, None, stats=None, weight_only=True, method="minmax", ops=("MatMul",),
                           weight_method="gptq"), when=("weight_method", "gptq")),
    Step("lower_quant", {"kernel": Opt("kernel")}),
    *_QUANT_CLEANUP,
)

# -- W4A8 ------------------------------------------------------------------------------------
# int4 GPTQ weights and int8 activations. Two kernels (lower_quant): "integer_to_float",
# int4 codes per output channel stored in the file and cast to int8 when ONNX Runtime loads
# it, static uint8 activations on the same MatMulIntegerToFloat / QAttention kernels as
# cpu-int8 (README, "Integer kernels on ONNX Runtime": the fastest exact form on x86); or
# "nbits", MatMulNBits with accuracy_level 4 (groups along K, int8 activations quantized
# inside the kernel per block), which the same table measures slower than float32 here.
_W4A8_OPTIONS = {
    **_CALIBRATION_OPTIONS,
    **_QUANT_OPTIONS,
    "kernel": OptionSpec(str, "integer_to_float", "integer_to_float (int4 per-channel codes, static uint8 "
                                                  "activations, ORT's int8 kernels) or nbits (MatMulNBits "
                                                  "accuracy_level 4, int4 groups, int8 activations inside the "
                                                  "kernel)", ("integer_to_float", "nbits")),
    "group_size": OptionSpec(int, 32, "int4 group along K for kernel='nbits'", (16, 32, 64, 128, 256)),
    "quantize_embeddings": OptionSpec(bool, True, "also quantize Gather tables (int8, one scale per row)"),
    "smooth_alpha": OptionSpec((float, type(None)), None, "SmoothQuant migration strength before quantizing (None: "
                                                          "no SmoothQuant; the rotations spread the outliers)"),
    "smooth_scope": _INT8_OPTIONS["smooth_scope"],
    **_ROTATE_OPTIONS,
    "rotate": OptionSpec(bool, True, _ROTATE_OPTIONS["rotate"].help),
    "rotate_block": replace(_ROTATE_OPTIONS["rotate_block"], default=_ROTATE_BLOCK_INT8),
    "weight_method": OptionSpec(str, "gptq", _WEIGHT_METHOD.help, _WEIGHT_METHODS),
}
_W4A8_INTEGER = ("kernel", "integer_to_float")
_W4A8_NBITS = ("kernel", "nbits")
_W4A8_STEPS = (
    *_CANONICAL,
    *_ROTATE,
    _SMOOTHQUANT,
    Step(CALIBRATE, {"runner": Opt("calibration_runner")}, when=_W4A8_INTEGER),
    replace(_quantize_step(Scheme("int4", "channel", axis=1), _INT8_ACTIVATIONS.resolve({"activations": "uint8"}),
                           embeddings=Opt("quantize_embeddings"), weight_method=Opt("weight_method")),
            when=_W4A8_INTEGER),
    replace(_quantize_step(Scheme("int4", "group", axis=0, group_size=Opt("group_size")), None, stats=None,
                           weight_only=True, ops=("MatMul",), weight_method=Opt("weight_method")),
            when=_W4A8_NBITS),
    Step("lower_quant", {"kernel": "auto", "accuracy_level": Opt("kernel", {"integer_to_float": 0, "nbits": 4})}),
    *_QUANT_CLEANUP,
)

# -- W4A4 INT4 (simulated: no int4 x int4 kernel on CPU) ------------------------------------------
_W4A4_OPTIONS = {
    **_CALIBRATION_OPTIONS,
    **_QUANT_OPTIONS,
    "activations": OptionSpec(str, "token", "int4 activations per token (dynamic: each row's own scale, QuaRot's "
                                            "form) or per tensor (static, from calibration)", ("token", "tensor")),
    "method": OptionSpec(str, "mse", "per token: 'mse' searches each activation's clip ratio on the calibration "
                                     "batches, 'minmax' clips nothing; per tensor: the range method", ("minmax", "mse")),
    **_ROTATE_OPTIONS,
    "rotate": OptionSpec(bool, True, _ROTATE_OPTIONS["rotate"].help),
    "weight_method": OptionSpec(str, "gptq", _WEIGHT_METHOD.help, _WEIGHT_METHODS),
}
_W4A4_STEPS = (
    *_CANONICAL,
    *_ROTATE,
    Step(CALIBRATE, {"runner": Opt("calibration_runner")}, when=("activations", "tensor")),
    _quantize_step(Scheme("int4", "channel", axis=1), Scheme("int4", Opt("activations")),
                   weight_method=Opt("weight_method")),
    *_QUANT_CLEANUP,
)

# -- simulated low-bit floats ------------------------------------------------------------------
_FP8_OPTIONS = {
    **_CALIBRATION_OPTIONS,
    "method": OptionSpec(str, "minmax", "activation range from calibration statistics (fp8: amax)", _METHODS),
    **_QUANT_OPTIONS,
    "format": OptionSpec(str, "fp8_e4m3", "fp8 element format", ("fp8_e4m3", "fp8_e5m2")),
    **_ROTATE_OPTIONS,
}
_FP8_STEPS = (
    *_CANONICAL,
    *_ROTATE,
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
                                      "method, ops, exclude, weight_method and SmoothQuant)"),
    # measured by `python -m requant.tools.bench.rotate` on MiniLM (NVFP4): GPTQ on the
    # blocks' grids and SmoothQuant on every linear input each lower the error
    "weight_method": OptionSpec(str, "gptq", "weight codes: round to nearest ('rtn') or GPTQ on the FP4 blocks' "
                                             "grids ('gptq', MatMul weights, Hessians from the calibration "
                                             "batches)", _WEIGHT_METHODS),
    "smooth_alpha": OptionSpec((float, type(None)), 0.5, "SmoothQuant migration strength before quantizing (None: "
                                                         "no SmoothQuant)"),
    "smooth_scope": replace(_INT8_OPTIONS["smooth_scope"], default="all", choices=("norm", "all")),
    **_ROTATE_OPTIONS,
}
_FP4_BLOCK = Opt("block", {"nv": 16, "mx": 32})
_FP4_BLOCKS = ("search", False)
_FP4_STEPS = (
    *_CANONICAL,
    *_ROTATE,
    # block scales come from the data; NVFP4's float32 per-tensor scale of activations
    # comes from calibration (MXFP4 needs none, but calibrating keeps one pipeline)
    replace(_SMOOTHQUANT, when=_FP4_BLOCKS),
    Step(CALIBRATE, {"runner": Opt("calibration_runner")}, when=_FP4_BLOCKS),
    replace(_quantize_step(Scheme("fp4_e2m1", Opt("block"), axis=0, group_size=_FP4_BLOCK),
                           Scheme("fp4_e2m1", Opt("block"), axis=-1, group_size=_FP4_BLOCK),
                           weight_method=Opt("weight_method")), when=_FP4_BLOCKS),
    Step("llm_fp4", {"calibration": BATCHES, "runner": Opt("calibration_runner")},
         when=("search", True)),
    *_QUANT_CLEANUP,
)
# Toeplitz products, relative-position kernelized attention and long depthwise convs in FFT
# form (passes/toeplitz_fft.py): its cost model decides per node from the backend's measured
# crossovers (passes/toeplitz_fft_crossovers.py); the option forces or forbids it
_FFT_OPTIONS = {
    "fft": OptionSpec(str, "cost", "Toeplitz / relative-position attention / long-conv products in FFT form: "
                                   "'cost' (where the backend's measured crossover says it pays), 'always', 'off'",
                      ("cost", "always", "off")),
}


def _toeplitz_fft_step(backend: str) -> Step:
    return Step("toeplitz_fft", {"backend": backend, "policy": Opt("fft")}, unless=("fft", "off"))


_FP32_STEPS = (*_CANONICAL, _toeplitz_fft_step("onnx"), *_CLEANUP)
_TVM_FP32_STEPS = (*_CANONICAL, _toeplitz_fft_step("tvm"), *_CLEANUP, _BIND_DIMS)
# -- integer-only (I-ViT) ------------------------------------------------------------------
# The int8 front half of cpu-int8 (SmoothQuant, calibrate, quantize: the weights' codes and
# the scales / zero points of the linear inputs), then intonly turns every other float op
# into its integer form, with ranges it calibrates itself, and picks the softmax/GELU
# approximation family on the calibration batches (approx="auto"). SmoothQuant is on every
# linear input: in an integer-only graph its multiply becomes part of a requantization's
# scale, so it costs no op (README, "Integer-only inference", measures the choices).
_INTONLY_OPTIONS = {
    **_CALIBRATION_OPTIONS,
    **_QUANT_OPTIONS,
    "activations": _INT8_OPTIONS["activations"],
    "smooth_alpha": _INT8_OPTIONS["smooth_alpha"],
    "smooth_scope": OptionSpec(str, "all", "SmoothQuant on every linear input ('all'), or on LayerNorm / RMSNorm "
                                           "outputs only ('norm')"),
    "approx": OptionSpec(str, "auto", "softmax/GELU approximations: 'shift' (I-ViT), 'poly' (I-BERT), 'fine' "
                                      "(requant's tanh-form GELU), or 'auto' (the one closest to the quantized "
                                      "float graph on the calibration batches)", ("shift", "poly", "fine", "auto")),
    "strict": OptionSpec(bool, False, "fail when any float op other than the input quantizers and output "
                                      "dequantizers remains (else they are named in the report)"),
}
_INTONLY_STEPS = (
    *_CANONICAL,
    _SMOOTHQUANT,
    Step(CALIBRATE, {"runner": Opt("calibration_runner")}),
    _quantize_step(Scheme("int8", "channel", axis=1), _INT8_ACTIVATIONS),
    Step("intonly", {"approx": Opt("approx"), "batches": BATCHES, "runner": Opt("calibration_runner"),
                     "strict": Opt("strict")}),
    *_QUANT_CLEANUP,
)
_INTONLY_OPS = ("Requantize", "DyadicAdd", "ILayerNorm", "Shiftmax", "ShiftGELU", "PolySoftmax", "PolyGELU",
                "TanhGELU", "MatMulInteger")


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
    Target("cpu-fp32", "float32 on ONNX Runtime (CPU): canonical forms, Toeplitz products in FFT form where they "
           "pay, cleanup", _FP32_STEPS, options=_FFT_OPTIONS),
    Target("cpu-int8", "static W8A8 on ONNX Runtime (CPU): int8 per-channel weights, per-tensor activations "
           "from calibration, integer MatMul kernels", _INT8_STEPS, options=_INT8_OPTIONS, backend_ops=_QDQ),
    Target("cpu-int4", "weight-only int4 (groups of 32 along K) on ONNX Runtime (CPU) via MatMulNBits",
           _INT4_STEPS, options=_INT4_OPTIONS, backend_ops=("com.microsoft.MatMulNBits",)),
    Target("cpu-w4a8", "int4 GPTQ weights (stored 4-bit) and int8 activations on ONNX Runtime (CPU), after "
           "Hadamard rotations: ORT's int8 kernels (or MatMulNBits accuracy_level 4)", _W4A8_STEPS,
           options=_W4A8_OPTIONS, backend_ops=_QDQ),
    Target("cpu-w4a4", "W4A4 INT4 simulated by quantize-dequantize on ONNX Runtime (CPU; no int4 x int4 kernel): "
           "Hadamard rotations, int4 GPTQ weights per channel, int4 activations per token",
           _W4A4_STEPS, options=_W4A4_OPTIONS, simulated=True, backend_ops=("FakeQuantize",)),
    Target("cpu-fp8", "fp8 (e4m3) weights and activations, simulated by quantize-dequantize on ONNX Runtime (CPU)",
           _FP8_STEPS, options=_FP8_OPTIONS, simulated=True, backend_ops=_QDQ),
    Target("cpu-fp4", "fp4 (e2m1) NVFP4/MXFP4 blocks, simulated by quantize-dequantize on ONNX Runtime (CPU)",
           _FP4_STEPS, options=_FP4_OPTIONS, simulated=True, backend_ops=("FakeQuantize",)),
    Target("cpu-intonly", "integer-only inference (I-ViT: Shiftmax, ShiftGELU, I-LayerNorm, dyadic requantization) "
           "on ONNX Runtime (CPU)", _INTONLY_STEPS, options=_INTONLY_OPTIONS, backend_ops=_INTONLY_OPS),
    Target("cuda-int8", "static W8A8 on NVIDIA GPUs through TVM (CUDA): int8 matmuls with int32 accumulation",
           _TVM_INT8_STEPS, backend="tvm", device="cuda", options=_TVM_INT8_OPTIONS),
    Target("cuda-fp8", "fp8 (e4m3) weights and activations on NVIDIA GPUs through TVM (CUDA), "
           "simulated by quantize-dequantize", (*_FP8_STEPS, _BIND_DIMS), backend="tvm", device="cuda",
           options=_FP8_OPTIONS | _TVM_OPTIONS,
           simulated=True),
    Target("cuda-fp4", "fp4 (e2m1) NVFP4/MXFP4 blocks on NVIDIA GPUs through TVM (CUDA), "
           "simulated by quantize-dequantize", (*_FP4_STEPS, _BIND_DIMS), backend="tvm", device="cuda",
           options=_FP4_OPTIONS | _TVM_OPTIONS, simulated=True),
    Target("tvm-cpu-fp32", "float32 compiled by TVM for the CPU (LLVM), Toeplitz products in FFT form where they "
           "pay", _TVM_FP32_STEPS, backend="tvm", device="llvm", options=_TVM_OPTIONS | _FFT_OPTIONS),
    Target("tvm-cpu-int8", "static W8A8 compiled by TVM for the CPU (LLVM): int8 matmuls with int32 accumulation",
           _TVM_INT8_STEPS, backend="tvm", device="llvm", options=_TVM_INT8_OPTIONS),
    Target("tvm-cpu-intonly", "integer-only inference (I-ViT) compiled by TVM for the CPU (LLVM): int8 matmuls "
           "with integer epilogues, integer softmax/GELU/LayerNorm", (*_INTONLY_STEPS, _BIND_DIMS), backend="tvm",
           device="llvm", options=_INTONLY_OPTIONS | _TVM_OPTIONS),
    Target("cuda-intonly", "integer-only inference (I-ViT) on NVIDIA GPUs through TVM (CUDA): dp4a int8 matmuls "
           "with integer epilogues", (*_INTONLY_STEPS, _BIND_DIMS), backend="tvm", device="cuda",
           options=_INTONLY_OPTIONS | _TVM_OPTIONS),
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
