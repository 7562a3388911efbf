"""Tests of the target table (requant/targets.py): every name the design promises is
listed with a one-line description, every pipeline names registered passes or is
marked unavailable, every `Opt` names an option of its target, and option schemas
validate their own defaults."""

from __future__ import annotations

import subprocess
import sys

import pytest

import requant
from requant.compiler import _jsonable
from requant.errors import RequantError
from requant.passes.manager import available_passes
from requant.targets import (
    BATCHES,
    CALIBRATE,
    COMMON_OPTIONS,
    STATS,
    TARGETS,
    Opt,
    OptionSpec,
    PassDefault,
    Scheme,
    Step,
    Target,
    get_target,
)

DESIGN_TARGETS = ("cpu-fp32", "cpu-int8", "cpu-int4", "cpu-fp8", "cpu-intonly", "cuda-int8", "cuda-fp8", "cuda-fp4")


def test_targets_lists_every_name_with_a_one_line_description() -> None:
    listed = requant.targets()
    assert list(listed) == list(TARGETS)
    for name in DESIGN_TARGETS + ("cpu-fp4", "tvm-cpu-fp32", "tvm-cpu-int8"):
        assert name in listed
    for name, description in listed.items():
        assert description and "\n" not in description, name
        assert description.startswith(TARGETS[name].description)


def test_cpu_fp32_is_available_and_unavailable_targets_say_so() -> None:
    assert TARGETS["cpu-fp32"].available
    assert not requant.targets()["cpu-fp32"].endswith("(not available yet)")
    for name, target in TARGETS.items():
        marked = requant.targets()[name].endswith("(not available yet)")
        assert marked == bool(target.missing()), name


@pytest.mark.parametrize("name", list(TARGETS))
def test_pipeline_names_registered_passes_or_is_marked_unavailable(name: str) -> None:
    target = TARGETS[name]
    missing = target.missing()
    registered = set(available_passes())  # with the passes other packages declare
    unregistered = [s.name for s in target.steps if s.name != CALIBRATE and s.name not in registered]
    if unregistered:
        assert missing and not target.available
        for step in unregistered:
            assert any(f"pass '{step}'" in m for m in missing), (step, missing)
    assert target.backend in ("onnx", "tvm")


def _walk(value):
    if isinstance(value, (Opt, Scheme)) or value is STATS:
        yield value
    if isinstance(value, Scheme):
        for field in (value.dtype, value.granularity, value.axis, value.group_size, value.symmetric):
            yield from _walk(field)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _walk(v)


@pytest.mark.parametrize("name", list(TARGETS))
def test_every_opt_names_an_option_and_defaults_resolve(name: str) -> None:
    target = TARGETS[name]
    options = target.all_options
    for step in target.steps:
        assert isinstance(step, Step)
        for value in step.options.values():
            for ref in _walk(value):
                if isinstance(ref, Opt):
                    assert ref.name in options, (step.name, ref.name)
                    if ref.mapping is not None and options[ref.name].choices is not None:
                        assert set(options[ref.name].choices) <= set(ref.mapping)
    resolved = target.resolve_steps(target.resolve_options({}))
    for step in resolved:
        for value in step.options.values():
            assert not any(isinstance(r, Opt) for r in _walk(value))
    _jsonable({s.name: dict(s.options) for s in resolved})  # the pipeline.json form exists


@pytest.mark.parametrize("name", list(TARGETS))
def test_option_schemas_validate_their_own_defaults(name: str) -> None:
    target = TARGETS[name]
    schema = target.option_schema()
    assert set(COMMON_OPTIONS) <= set(schema)
    for option, (typ, default, help_text) in schema.items():
        assert help_text and "\n" not in help_text
        target.all_options[option].check(name, option, default)


def test_static_targets_calibrate_before_they_quantize() -> None:
    for name in ("cpu-int8", "cpu-fp8", "cpu-fp4", "cpu-intonly", "cuda-int8"):
        steps = [s.name for s in TARGETS[name].steps]
        assert TARGETS[name].static and steps.index(CALIBRATE) < steps.index("quantize")
        quantize = next(s for s in TARGETS[name].steps if s.name == "quantize")
        assert quantize.options["stats"] is STATS
    for name in ("cpu-fp32", "cpu-int4", "tvm-cpu-fp32"):
        assert not TARGETS[name].static


def test_quantize_options_follow_the_contract() -> None:
    int8 = get_target("cpu-int8")
    steps = {s.name: s for s in int8.resolve_steps(int8.resolve_options({}))}
    q = steps["quantize"].options
    assert set(q) == {"weight_scheme", "activation_scheme", "ops", "method", "stats", "exclude",
                      "quantize_embeddings", "weight_only", "feature_maps",
                      "min_conv_reduction", "float_depthwise_entry", "weight_method", "batches", "runner"}
    assert q["weight_method"] == "rtn" and q["batches"] is BATCHES  # GPTQ reads the batches
    assert q["feature_maps"] is True  # convolutional networks run on integer conv / add / pool kernels
    assert q["min_conv_reduction"] == 32  # 3 x 3 x 3 image stems stay float on ONNX Runtime
    assert q["float_depthwise_entry"] is True  # so does a depthwise conv after them
    tvm = get_target("tvm-cpu-int8")
    tq = {s.name: s for s in tvm.resolve_steps(tvm.resolve_options({}))}["quantize"].options
    assert tq["min_conv_reduction"] == 0 and tq["float_depthwise_entry"] is False  # TVM: every conv integer
    assert q["weight_scheme"] == Scheme("int8", "channel", axis=1, group_size=None, symmetric=True)
    assert q["activation_scheme"] == Scheme("uint8", "tensor", symmetric=False)
    assert q["method"] == "minmax" and q["weight_only"] is False and q["quantize_embeddings"] is True
    assert [s.name for s in int8.steps][-3:] == ["lower_quant", "cse", "dce"]
    q = {s.name: s for s in int8.resolve_steps(int8.resolve_options({"per_channel": False, "activations": "int8"}))}
    assert q["quantize"].options["weight_scheme"].granularity == "tensor"
    assert q["quantize"].options["activation_scheme"] == Scheme("int8", "tensor", symmetric=True)


def test_smoothquant_is_its_own_step_with_the_pass_default_alpha() -> None:
    from requant.passes.smoothquant import DEFAULT_ALPHA

    int8 = get_target("cpu-int8")
    names = [s.name for s in int8.resolve_steps(int8.resolve_options({}))]
    # it measures its channel ranges on the batches; the calibration after it sees x / s
    assert names[:5] == ["canonicalize", "fold_batchnorm", "smoothquant", CALIBRATE, "quantize"]
    smooth = {s.name: s for s in int8.resolve_steps(int8.resolve_options({}))}["smoothquant"].options
    assert smooth["alpha"] == DEFAULT_ALPHA and smooth["scope"] == "norm" and smooth["calibration"] is BATCHES
    assert isinstance(int8.options["smooth_alpha"].default, PassDefault)  # stated once, in the pass
    off = [s.name for s in int8.resolve_steps(int8.resolve_options({"smooth_alpha": None}))]
    assert "smoothquant" not in off and CALIBRATE in off
    every = {s.name: s for s in int8.resolve_steps(int8.resolve_options({"smooth_scope": "all"}))}
    assert every["smoothquant"].options["scope"] == "all"
    # TVM fuses the smoothing multiply into its quantize kernels: every linear input there
    for name in ("tvm-cpu-int8", "cuda-int8"):
        tvm = get_target(name)
        assert {s.name: s for s in tvm.resolve_steps(tvm.resolve_options({}))}["smoothquant"].options["scope"] == "all"

    int4 = get_target("cpu-int4")
    q = {s.name: s for s in int4.resolve_steps(int4.resolve_options({"group_size": 64}))}["quantize"].options
    assert q["weight_scheme"] == Scheme("int4", "group", axis=0, group_size=64, symmetric=True)
    assert q["weight_only"] is True and q["stats"] is None and q["activation_scheme"] is None

    fp4 = get_target("cpu-fp4")
    q = {s.name: s for s in fp4.resolve_steps(fp4.resolve_options({"block": "mx"}))}["quantize"].options
    assert q["weight_scheme"].group_size == 32 and q["activation_scheme"].granularity == "mx"


def test_get_target_and_option_errors() -> None:
    with pytest.raises(RequantError, match="unknown target 'x'"):
        get_target("x")
    spec = OptionSpec(tuple, (), "names")
    assert spec.check("t", "exclude", ["a", "b"]) == ("a", "b")
    with pytest.raises(RequantError, match="must be tuple"):
        spec.check("t", "exclude", "a")


def test_import_requant_is_cheap() -> None:
    code = ("import sys, requant; requant.targets; "
            "print(','.join(m for m in ('torch', 'onnx', 'onnxruntime', 'tvm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_ops_the_backend_must_run_are_checked() -> None:
    fake = Target("cpu-test", "test target", (Step("dce"),), backend_ops=("NoSuchOpXyz", "Relu"))
    missing = fake.missing()
    assert missing == ["op 'NoSuchOpXyz' (not in the op registry yet)"]
    assert fake.summary().endswith("(not available yet)")


@pytest.mark.parametrize("name", [n for n, t in TARGETS.items() if any(s.name == "quantize" for s in t.steps)])
def test_no_constant_folding_after_quantize(name: str) -> None:
    """fold_constants would turn DequantizeLinear(constant codes) back into float weights."""
    steps = [s.name for s in TARGETS[name].steps]
    assert "fold_constants" not in steps[steps.index("quantize"):]


@pytest.mark.parametrize("name", list(TARGETS))
def test_every_pipeline_folds_batchnorm_after_canonicalize(name: str) -> None:
    """BatchNorm folding is exact in float, so every target runs it, before anything
    calibrates or quantizes (a BatchNorm between DQ -> Conv -> Q blocks the integer conv)."""
    target = TARGETS[name]
    steps = [s.name for s in target.resolve_steps(target.resolve_options({}))]
    assert steps[:2] == ["canonicalize", "fold_batchnorm"]
