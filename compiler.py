"""`requant.compile`, `CompiledModel` and `requant.load`: model in, runnable and saveable
compiled model out.

What this module owns:
- turning the accepted model forms (torch Module / ExportedProgram / fx.GraphModule,
  onnx.ModelProto, a path to an .onnx file or its bytes, a requant `Graph`, which is
  cloned and never mutated) into a graph through `requant.frontends`;
- running a target's pipeline (`requant.targets`): passes through the `PassManager`
  (verified after each pass when asked), the calibrate step through
  `requant.passes.calibration.collect_stats`, whose statistics reach the quantize pass
  as its `stats` option; calibration batches may be tuples, dicts or single arrays of
  numpy arrays or torch tensors; the last `holdout` fraction is kept back to measure
  accuracy against the float model;
- building the runtime (ONNX Runtime for the "onnx" backend, a TVM build through
  `requant.backends.tvm` for "tvm") and calling it;
- the saved directory: model.onnx (+ model.onnx.data when external), pipeline.json,
  for TVM targets also the runtime's files (model.so; model.cu and model.fatbin for
  CUDA) with model.onnx holding the compiled graph (so `.graph` reads back), and
  manifest.json (format version, target, options, input/output signature, sha256 and
  size of every file, and a MAC under this user's key: requant/trust.py). `save`
  writes through `requant.atomic_save` (a staging directory renamed into place; never
  over the user's files or the source model without `overwrite=True`); `load` reads
  through `requant.manifest.read_saved`, which checks every file and field and loads
  native code only from builds this user made or with `trust_code=True`. Saving is
  deterministic: same model, options and user -> byte-identical files.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from requant.backends.onnx.runtime import MODEL_FILE
from requant.errors import InputError, PassError, RequantError, SavedModelError, UnsupportedOpError
from requant.manifest import FORMAT, FORMAT_VERSION, MANIFEST, PIPELINE_FILE
from requant.report import Accuracy, StepRecord, constant_bytes, nonfinite_note, render_report
from requant.targets import BATCHES, CALIBRATE, INPUT_DIMS, STATS, Scheme, Step, Target, get_target

__all__ = ["compile", "load", "read_saved_graph", "CompiledModel", "FORMAT", "FORMAT_VERSION", "MANIFEST",
           "MODEL_FILE", "PIPELINE_FILE"]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- inputs


def _is_torch(x: Any) -> bool:
    return "torch" in sys.modules and type(x).__module__.split(".")[0] == "torch"


def to_numpy(x: Any) -> np.ndarray:
    """A numpy array from a numpy array, a torch tensor or anything `np.asarray` takes."""
    if isinstance(x, np.ndarray):
        return x
    if _is_torch(x) and hasattr(x, "detach"):
        t = x.detach().cpu()
        import torch

        if t.dtype == torch.bfloat16:
            import ml_dtypes

            return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()
    return np.asarray(x)


def _input_array(x: Any, what: str, name: str) -> np.ndarray:
    """`to_numpy(x)`, refusing what is not a rectangular array of numbers (a ragged
    list, strings, objects) with an `InputError` naming the input."""
    try:
        arr = to_numpy(x)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InputError(f"{what}: input '{name}' is not an array ({type(x).__name__}: {exc}); "
                         f"give a numpy array or torch tensor") from exc
    if arr.dtype == object or arr.dtype.kind in "USV":
        raise InputError(f"{what}: input '{name}' is not a rectangular array of numbers (numpy made a "
                         f"{arr.dtype} array of it, e.g. from a ragged list); give a numpy array or torch tensor")
    return arr


def _as_feeds(names: Sequence[str], batch: Any, what: str) -> dict[str, np.ndarray]:
    """One batch (a tuple/list in input order, a dict by name, or one array for a
    one-input model) as {input name: numpy array}."""
    if isinstance(batch, Mapping):
        unknown = [k for k in batch if k not in names]
        if unknown:
            raise InputError(f"{what}: unknown input(s) {', '.join(map(repr, unknown))}; inputs: {', '.join(names)}")
        feeds = {k: _input_array(v, what, k) for k, v in batch.items()}
    elif isinstance(batch, (tuple, list)):
        if len(batch) != len(names):
            raise InputError(f"{what}: {len(batch)} arrays for {len(names)} input(s) ({', '.join(names)})")
        feeds = {n: _input_array(v, what, n) for n, v in zip(names, batch)}
    else:
        if len(names) != 1:
            raise InputError(f"{what}: one array for a model with {len(names)} inputs ({', '.join(names)}); "
                             f"give a tuple in input order or a dict by name")
        feeds = {names[0]: _input_array(batch, what, names[0])}
    missing = [n for n in names if n not in feeds]
    if missing:
        raise InputError(f"{what}: missing input(s) {', '.join(missing)}")
    return {n: feeds[n] for n in names}


def _torch_inputs(example_inputs: Any) -> Any:
    """Example inputs with numpy arrays turned into torch tensors (torch.export needs them)."""
    import torch

    def conv(x: Any) -> Any:
        return torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x

    if isinstance(example_inputs, Mapping):
        return {k: conv(v) for k, v in example_inputs.items()}
    if isinstance(example_inputs, (tuple, list)):
        return tuple(conv(v) for v in example_inputs)
    return conv(example_inputs)


def _graph_from_model(model: Any, example_inputs: Any, first_batch: Any, options: Mapping[str, Any]) -> tuple[Any, bool]:
    """(graph, owned): `owned` is False when the graph is the caller's (must be cloned)."""
    from requant.ir.graph import Graph

    if isinstance(model, Graph):
        return model, False
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if path.is_dir():
            hint = " (a saved requant model: use requant.load)" if (path / MANIFEST).exists() else ""
            raise RequantError(f"{path} is a directory, not an .onnx file{hint}")
        if not path.is_file():
            raise RequantError(f"no such ONNX file: {path}")
        from requant.frontends import from_onnx

        return from_onnx(path), True
    if isinstance(model, (bytes, bytearray)) or (
            "onnx" in sys.modules and type(model).__name__ == "ModelProto"):
        from requant.frontends import from_onnx

        return from_onnx(model), True
    if _is_torch_model(model):
        from requant.frontends import from_torch

        inputs = example_inputs if example_inputs is not None else first_batch
        if inputs is None and type(model).__name__ != "ExportedProgram":
            raise RequantError(
                f"compiling a torch {type(model).__name__} needs example_inputs=(tensor, ...) (positional) "
                f"or {{name: tensor}} (keyword), or calibration batches to take the first from")
        return from_torch(model, None if inputs is None else _torch_inputs(inputs),
                          dynamic_dims=options.get("dynamic_dims")), True
    raise RequantError(
        f"requant.compile takes a torch.nn.Module, torch.export.ExportedProgram, torch.fx.GraphModule, "
        f"onnx.ModelProto, a path to an .onnx file or a requant.ir.Graph; got {type(model).__name__}")


def _is_torch_model(model: Any) -> bool:
    if "torch" not in sys.modules:
        return False
    import torch

    return isinstance(model, (torch.nn.Module, torch.export.ExportedProgram))


# ----------------------------------------------------------------------------- pipeline


def _steps_from_passes(passes: Sequence[Any]) -> list[Step | Any]:
    """`passes=` items: a pass name, "calibrate", (name, {options}) or a Pass object."""
    from requant.passes.manager import Pass

    if isinstance(passes, (str, Pass)):
        raise RequantError("passes= takes a list, e.g. passes=['canonicalize', 'dce']")
    steps: list[Step | Any] = []
    for item in passes:
        if isinstance(item, str):
            steps.append(Step(item))
        elif isinstance(item, Pass):
            steps.append(item)
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], Mapping):
            steps.append(Step(item[0], dict(item[1])))
        else:
            raise RequantError(f"passes=: {item!r} is not a pass name, (name, options) or a Pass object")
    return steps


def _make_pass(step: Step, graph: Any, stats: Any, batches: list[dict[str, np.ndarray]],
               sized: Callable[[], Mapping[str, np.ndarray] | None], target: str) -> Any:
    from requant.passes.manager import get_pass

    options = {}
    for key, value in step.options.items():
        if value is STATS:
            value = stats
        elif value is BATCHES:
            value = batches
        elif value is INPUT_DIMS:
            from requant.passes.bind_dims import dims_from_feeds

            arrays = sized()
            value = {} if arrays is None else dims_from_feeds(graph, arrays)
        elif isinstance(value, Scheme):
            value = value.build()
        options[key] = value
    try:
        return get_pass(step.name, **options)
    except RequantError as exc:
        raise RequantError(f"target '{target}': cannot make pass '{step.name}': {exc}") from exc


def _pipeline_inputs(name: str, calibrated: bool) -> dict[str, Any]:
    """The options a named pass declares it takes from the pipeline (`graph_pass(...,
    pipeline_inputs=)`): the calibration statistics once a calibrate step ran, the batches."""
    from requant.passes.manager import get_factory

    wanted = get_factory(name).pipeline_inputs
    sentinels = {"stats": STATS, "batches": BATCHES}
    return {k: sentinels[k] for k in wanted if k != "stats" or calibrated}


class _Pipeline:
    """Runs a target's steps over a graph: the calibrate step through
    `collect_stats`, each pass through the `PassManager` (verified when asked), and
    records both for the report."""

    def __init__(self, target: Target, steps: list[Step | Any], verify: bool,
                 sized: Callable[[], Mapping[str, np.ndarray] | None] = lambda: None) -> None:
        self.target = target
        self.steps = steps
        self.verify = verify
        self.sized = sized  # the inputs whose sizes INPUT_DIMS reads
        self.records: list[StepRecord] = []
        self.calibration_seconds = 0.0
        self.warnings: list[str] = []  # about the calibration statistics, for the report

    def run(self, graph: Any, batches: list[dict[str, np.ndarray]]) -> Any:
        stats = None
        for position, step in enumerate(self.steps, start=1):
            if isinstance(step, Step) and step.name == CALIBRATE:
                stats = self._calibrate(graph, batches, step, position)
                continue
            if isinstance(step, Step):
                if not step.options:  # a bare name in passes=: hand it what it declares it takes
                    step = Step(step.name, _pipeline_inputs(step.name, stats is not None))
                p = _make_pass(step, graph, stats, batches, self.sized, self.target.name)
            else:
                p = step
            graph = self._run_pass(p, graph, position)
        return graph

    def _where(self, name: str, position: int) -> str:
        ran = ", ".join(r.name for r in self.records) or "none"
        return f"target '{self.target.name}': step {position} of {len(self.steps)} ('{name}', after: {ran})"

    def _calibrate(self, graph: Any, batches: list[dict[str, np.ndarray]], step: Step, position: int) -> Any:
        from requant.passes.calibration import collect_stats, stats_warnings

        start = time.perf_counter()
        try:
            stats = collect_stats(graph, batches, **step.options)
        except Exception as exc:
            raise PassError(f"{self._where(CALIBRATE, position)}: {exc}") from exc
        self.warnings += stats_warnings(stats)
        seconds = time.perf_counter() - start
        self.calibration_seconds += seconds
        n = len(graph)
        self.records.append(StepRecord(CALIBRATE, False, n, n, 0, 0, seconds,
                                       {"batches": len(batches), "tensors": len(stats)}))
        return stats

    def _run_pass(self, p: Any, graph: Any, position: int) -> Any:
        from requant.passes.manager import PassManager

        before = set(graph)
        try:
            result = PassManager([p], verify=self.verify).run(graph)
        except PassError as exc:
            raise PassError(f"{self._where(p.name, position)}: {exc}") from exc
        (record,) = result.records
        after = set(result.graph)
        self.records.append(StepRecord(p.name, record.changed, record.nodes_before, record.nodes_after,
                                       len(after - before), len(before - after), record.seconds, dict(record.stats)))
        return result.graph


def _split_batches(batches: list[Any] | None, static: bool, holdout: float) -> tuple[list[Any], list[Any], str]:
    """(calibrate on, measure accuracy on, how the report names the latter)."""
    if not batches:
        return [], [], ""
    n = len(batches)
    if not static:
        return [], batches, "of calibration data (this pipeline does not calibrate)"
    if holdout <= 0:
        return batches, [], ""
    if n == 1:
        return batches, batches, "= the only calibration batch (give >= 2 to hold one back)"
    k = min(n - 1, max(1, round(holdout * n)))
    return batches[:-k], batches[-k:], "held back from calibration"


# ----------------------------------------------------------------------------- compile


def compile(  # noqa: A001  (requant.compile is the public name)
    model: Any,
    target: str = "cpu-fp32",
    example_inputs: Any = None,
    calibration: Iterable[Any] | None = None,
    passes: Sequence[Any] | None = None,
    **options: Any,
) -> CompiledModel:
    """Compile `model` for `target` (see `requant.targets()`).

    model: torch.nn.Module | torch.export.ExportedProgram | torch.fx.GraphModule (these
        need `example_inputs`: a tuple of positional inputs or a dict of keyword inputs)
        | onnx.ModelProto | path to an .onnx file | requant.ir.Graph (cloned, never mutated).
    calibration: batches in the same form (tuples, dicts or single arrays; numpy or
        torch); static targets need them; the last `holdout` fraction measures accuracy.
    passes: replaces the target's pipeline: pass names, "calibrate", (name, {options})
        or Pass objects (a named pass given without options gets what it declares with
        `graph_pass(..., pipeline_inputs=...)`: the calibration statistics, the batches).
    options: the target's options (`requant.targets.get_target(name).option_schema()`);
        an unknown option or a value of the wrong type is an error listing them.
    """
    from requant.passes.manager import verify_enabled

    started = time.perf_counter()
    spec = get_target(target)
    opts = spec.resolve_options(options)
    steps: list[Step | Any] = spec.resolve_steps(opts) if passes is None else _steps_from_passes(passes)
    named = [s for s in steps if isinstance(s, Step)]
    static = any(s.needs_batches for s in named)
    batches = None if calibration is None else _calibration_batches(calibration)
    if batches is not None and not batches:
        raise RequantError("calibration=[] is empty: give at least one batch of inputs")
    if static and not batches:
        raise RequantError(f"{spec.name} is static: pass calibration=[...] batches (inputs in the same form as "
                           f"example_inputs) to compute activation ranges; or use a target that does not calibrate, "
                           f"e.g. cpu-fp32 or cpu-int4 (weight-only)")
    missing = spec.missing(None if passes is None else named)
    if missing:
        raise RequantError(f"target '{spec.name}' is not available yet: it needs " + "; ".join(missing))

    graph, owned = _graph_from_model(model, example_inputs, batches[0] if batches else None, opts)
    frontend_done = time.perf_counter()
    names = [v.name for v in graph.inputs]
    feeds = [_as_feeds(names, b, f"calibration batch {i}") for i, b in enumerate(batches or [])]
    calib, held, note = _split_batches(feeds, static, opts["holdout"])
    warnings = _calibration_warnings(calib, held) if static else []
    reference = graph if not owned else (graph.clone() if held else None)
    work = graph.clone() if not owned else graph
    constants_before = constant_bytes(work)

    def sized() -> Mapping[str, np.ndarray] | None:
        # the example inputs show the deployment shape better than a calibration batch
        if example_inputs is not None:
            return _as_feeds(names, example_inputs, "example_inputs")
        return feeds[0] if feeds else None

    pipeline = _Pipeline(spec, steps, verify_enabled(opts["verify"]), sized)
    work = pipeline.run(work, calib)
    pipeline_done = time.perf_counter()
    runtime = _build_runtime(spec, work, opts)
    backend_done = time.perf_counter()

    cm = CompiledModel(work, spec, opts, runtime, _steps_json(steps, spec, passes is not None))
    cm._protected = _source_files(model)
    if _is_torch_model(model):
        from requant.frontends.torch_shared import SharedWeights, state_names

        cm._shared = SharedWeights(work.constants, state_names(model))
    warnings += pipeline.warnings
    for warning in warnings:
        logger.warning("%s", warning)
    accuracy = None
    if held:
        reason = runtime.cannot_run()  # e.g. a CUDA build on a machine without a GPU
        if reason:
            logger.warning("accuracy not measured: %s", reason)
            accuracy = {"not_measured": reason}
        else:
            accuracy = _measure_accuracy(reference, cm, held, note)
    done = time.perf_counter()
    cm._stats.update({
        "passes": [r.to_dict() for r in pipeline.records],
        "sizes": {"constants_before": constants_before, "constants_after": constant_bytes(work),
                  "artifact": runtime.artifact_bytes(), "artifact_kind": runtime.artifact_kind,
                  "saved": None},
        "times": {"frontend": frontend_done - started, "pipeline": pipeline_done - frontend_done,
                  "calibration": pipeline.calibration_seconds, "backend": backend_done - pipeline_done,
                  "accuracy": done - backend_done, "total": done - started},
        "accuracy": accuracy,
        "warnings": warnings,
        "nonfinite": nonfinite_note(work),
    })
    logger.info("compiled for %s in %.2f s", spec.name, done - started)
    return cm


def _calibration_batches(calibration: Any) -> list[Any]:
    """`calibration=` as a list of batches; one batch given bare (an array, a tensor, a
    dict) is refused before anything iterates it (iterating an array would make each
    row a batch)."""
    single = ("dict" if isinstance(calibration, Mapping) else
              "array" if isinstance(calibration, np.ndarray) or (_is_torch(calibration) and hasattr(calibration, "shape"))
              else "string" if isinstance(calibration, (str, bytes)) else None)
    if single:
        raise InputError(f"calibration= takes a list of batches, got a single {single}: wrap it in a list, "
                         f"calibration=[batch] (several batches give better ranges)")
    try:
        return list(calibration)
    except TypeError:
        raise InputError(f"calibration= takes a list of batches (tuples, dicts or arrays), got "
                         f"{type(calibration).__name__}") from None


def _calibration_warnings(calib: list[dict[str, np.ndarray]], held: list[dict[str, np.ndarray]]) -> list[str]:
    from requant.passes.calibration import calibration_warnings

    return calibration_warnings(calib, held)


def _source_files(model: Any) -> tuple[Path, ...]:
    """The model file compiled (a path), which no save may replace."""
    if isinstance(model, (str, os.PathLike)):
        return (Path(model),)
    return ()


def _in_context(exc: RequantError, message: str) -> RequantError:
    """A RequantError saying `message`, an UnsupportedOpError when `exc` is one."""
    return (UnsupportedOpError if isinstance(exc, UnsupportedOpError) else RequantError)(message)


def _build_runtime(spec: Target, graph: Any, opts: Mapping[str, Any]) -> Any:
    from requant.backends import runtime_backend

    try:
        return runtime_backend(spec.backend).build_runtime(graph, spec.device, threads=opts["threads"] or None,
                                                           opset=opts["opset"])
    except RequantError as exc:
        raise _in_context(exc, f"target '{spec.name}': the compiled graph does not run on the {spec.backend} "
                               f"backend: {exc}") from exc


def _measure_accuracy(reference: Any, cm: CompiledModel, held: list[dict[str, np.ndarray]], note: str) -> dict[str, Any]:
    from requant.ir.runners import make_runner

    run_reference = make_runner(reference, "auto")  # the float model
    acc = Accuracy([v.name for v in reference.outputs])
    sliced = False
    for feeds in held:
        parts, why = _slices_the_build_takes(reference, cm.inputs, feeds)
        if why:
            logger.warning("accuracy not measured: %s", why)
            return {"not_measured": why}
        sliced = sliced or len(parts) != 1 or any(parts[0][k] is not a for k, a in feeds.items())
        for part in parts:
            acc.add(cm(**part), run_reference(part))
    if sliced:
        note += " (each cut along its leading axis into batches of the size the build is specialised to)"
    return {"batches": acc.batches, "note": note, "outputs": acc.result()}


def _slices_the_build_takes(reference: Any, signature: Sequence[Mapping[str, Any]],
                            feeds: Mapping[str, np.ndarray]) -> tuple[list[dict[str, np.ndarray]], str]:
    """(`feeds` as batches the build accepts, "") or ([], why not). A build specialised
    to a smaller leading (batch) size than the held-back batches have, e.g. calibrated in
    batches of 8 and built with dims={"batch": 1}, takes them in whole slices of its size
    along that dim (a partial last slice is left out; every input whose leading dim is
    that symbol is cut alike), and the float model is compared on the same slices. Any
    other difference (a non-leading dim, a batch smaller than the build's) cannot be."""
    cut: tuple[str, int] | None = None
    for value, sig in zip(reference.inputs, signature):
        arr, built = feeds[sig["name"]], sig["shape"]
        if built is None or value.type.shape is None or arr.ndim != len(built):
            continue
        for axis, (dim, size, want) in enumerate(zip(value.type.shape, arr.shape, built)):
            if not isinstance(want, int) or size == want:
                continue
            if axis != 0 or not isinstance(dim, str) or size < want or cut not in (None, (dim, want)):
                return [], (f"input '{sig['name']}' has shape {list(arr.shape)} in the held-back batches and the "
                            f"build takes {built}: compile with dims= matching them, or example_inputs=")
            cut = (dim, want)
    if cut is None:
        return [dict(feeds)], ""
    symbol, step = cut
    leading = {v.name for v in reference.inputs if v.type.shape and v.type.shape[0] == symbol}
    rows = min(int(feeds[name].shape[0]) for name in leading)
    return [{k: a[start:start + step] if k in leading else a for k, a in feeds.items()}
            for start in range(0, rows - step + 1, step)], ""


# ----------------------------------------------------------------------------- JSON


def _jsonable(value: Any) -> Any:
    """A JSON-able, deterministic summary of an option value (statistics and arrays are
    summarised, never dumped; no reprs that could carry memory addresses)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if np.isfinite(value) else str(value)
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if value is STATS:
        return "<statistics from the calibrate step>"
    if value is BATCHES:
        return "<the calibration batches>"
    if value is INPUT_DIMS:
        return "<the sizes of the example inputs or first calibration batch>"
    if isinstance(value, Scheme):
        return value.to_json()
    if isinstance(value, np.ndarray):
        return {"array": {"dtype": str(value.dtype), "shape": list(value.shape)}}
    if isinstance(value, Mapping):
        if value and all(type(v).__name__ == "TensorStats" for v in value.values()):
            return f"<statistics of {len(value)} tensors>"
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [_jsonable(v) for v in items]
    for method in ("to_attrs", "describe"):
        fn = getattr(value, method, None)
        if callable(fn):
            try:
                return _jsonable(fn())
            except Exception:  # a summary is best effort
                pass
    return f"<{type(value).__name__}>"


def _steps_json(steps: Sequence[Any], spec: Target, custom: bool) -> dict[str, Any]:
    out = []
    for s in steps:
        if isinstance(s, Step):
            out.append({"name": s.name, "options": _jsonable(dict(s.options))})
        else:  # a Pass object given in passes=
            out.append({"name": s.name, "options": _jsonable(getattr(s, "options", {})), "object": type(s).__name__})
    return {"target": spec.name, "backend": spec.backend, "custom": custom, "steps": out}


def _dump(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=True, allow_nan=False) + "\n").encode()


def _signature(values: Sequence[Any]) -> list[dict[str, Any]]:
    return [{"name": v.name, "dtype": v.dtype.name,
             "shape": None if v.type.shape is None else list(v.type.shape)} for v in values]


# ----------------------------------------------------------------------------- CompiledModel


class CompiledModel:
    """A compiled model: call it (`cm(*arrays)` / `cm(**named)`, numpy or torch in, a
    tuple of numpy out), read `.graph` (the IR after the pipeline), `.report()` and
    `.stats`, and `.save(dir)` it; `requant.load(dir)` gives it back."""

    def __init__(self, graph: Any, spec: Target, options: Mapping[str, Any], runtime: Any,
                 pipeline: Mapping[str, Any], *, inputs: list[dict[str, Any]] | None = None,
                 outputs: list[dict[str, Any]] | None = None, graph_loader: Any = None) -> None:
        self._graph = graph
        self._graph_loader = graph_loader
        self._shared: Any = None  # SharedWeights: the torch tensors the graph's constants view
        self.target = spec.name
        self.options = dict(options)
        self._runtime = runtime
        self.pipeline = dict(pipeline)
        self.inputs = inputs if inputs is not None else _signature(graph.inputs)
        self.outputs = outputs if outputs is not None else _signature(graph.outputs)
        self.input_names = [i["name"] for i in self.inputs]
        self.output_names = [o["name"] for o in self.outputs]
        from requant.ir import dtypes

        # (signature, numpy dtype) per input: what __call__ checks, resolved once here
        self._input_checks = [(sig, dtypes.dtype(sig["dtype"]).np) for sig in self.inputs]
        self._stats: dict[str, Any] = {"target": spec.name, "description": spec.description,
                                       "backend": spec.backend, "simulated": spec.simulated,
                                       "custom_pipeline": bool(pipeline.get("custom"))}

    @property
    def graph(self) -> Any:
        """The IR after the pipeline (for a loaded model: read back from model.onnx)."""
        if self._graph is None and self._graph_loader is not None:
            self._graph = self._graph_loader()
        return self._graph

    @property
    def onnx_model(self) -> Any:
        """The exported `onnx.ModelProto` the runtime runs (ONNX targets only). A model
        with more weights than `BY_REFERENCE_BYTES` was exported by reference; this gives
        a copy with its weights written in, made on each access, or past protobuf's 2 GB
        the model without them (their initializers point outside it: `.save()` writes
        them to model.onnx.data)."""
        if self._runtime.kind != "onnx":
            raise RequantError(f"{self.target} runs on the {self._runtime.kind} backend, not ONNX Runtime: "
                               f"its IR is .graph, its build is written by .save()")
        return self._runtime.whole_proto()

    @property
    def stats(self) -> dict[str, Any]:
        """Per-step records, sizes, times and accuracy, as plain values, plus the graph's
        `quant_skipped` list when the quantize pass left ops in float."""
        out = dict(self._stats)
        if self._graph is not None:
            out["quant_skipped"] = list(self._graph.meta.get("quant_skipped", []))
        return out

    def report(self) -> str:
        """The plain-text report: steps and what they changed, sizes, times, accuracy."""
        return render_report(self.stats)

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        if len(args) == 1 and isinstance(args[0], Mapping) and not kwargs:
            kwargs, args = dict(args[0]), ()
        if len(args) > len(self.input_names):
            raise RequantError(f"the model takes {len(self.input_names)} input(s) ({', '.join(self.input_names)}), "
                               f"got {len(args)} positional")
        feeds: dict[str, Any] = dict(zip(self.input_names, args))
        for k, v in kwargs.items():
            if k in feeds:
                raise RequantError(f"input '{k}' is given twice (by position and by name)")
            feeds[k] = v
        feeds = _as_feeds(self.input_names, feeds, "model call")
        symbols: dict[str, tuple[int, str]] = {}
        for sig, want in self._input_checks:
            _check_input(sig, want, feeds[sig["name"]], self._shape_hint, symbols)
        return self._runtime(feeds)

    def _shape_hint(self) -> str:
        """What a wrong-shape error adds when the bind_dims step fixed symbolic dims."""
        for record in self._stats.get("passes", []):
            bound = record.get("stats", {}).get("bound") if record["name"] == "bind_dims" else None
            if bound:
                return (f" (this build is specialised to {bound}: compile with dims={{...}} for other sizes, "
                        f"or static_shapes=False)")
        return ""

    def save(self, directory: str | os.PathLike, *, external_data: bool | None = None,
             overwrite: bool = False) -> Path:
        """Write model.onnx (weights in model.onnx.data when `external_data`, or when too
        large for one protobuf), pipeline.json and manifest.json into `directory`; for a
        TVM target also its library (model.so; model.cu and model.fatbin for CUDA),
        model.onnx then holding the compiled graph. The same ONNX model gives
        byte-identical files for the same user (the manifest's MAC is under their key).

        The files are written into a staging directory beside `directory`, which then
        replaces it in one rename (`requant.atomic_save`): an interrupted save leaves an
        earlier save intact. A `directory` that is a symlink, holds the model compiled,
        or holds anything but an earlier save is refused (`SavedModelError`); with
        `overwrite=True` the last is replaced, whatever it holds."""
        from requant.atomic_save import staged_directory, write_new_file
        from requant.trust import MAC_FIELD, sign_manifest

        changed = self._shared.changed() if self._shared is not None else []
        if changed:
            raise RequantError(
                f"cannot save: the torch model's {', '.join(changed[:3])}{' ...' if len(changed) > 3 else ''} "
                f"changed in place after compile ({len(changed)} tensor(s)); the compiled graph shares the model's "
                f"weights (the runtime keeps the values compiled), so a save now would mix the two: compile again")
        out = Path(directory)
        with staged_directory(out, overwrite=overwrite, protected=getattr(self, "_protected", ())) as staging:
            files = self._runtime.write(staging, external_data)
            if MODEL_FILE not in files:  # a TVM build: model.onnx holds the compiled graph
                from requant.backends.onnx import to_onnx
                from requant.backends.onnx.runtime import write_model

                files += write_model(to_onnx(self.graph), staging, external_data)
            pipeline = dict(self.pipeline)
            pipeline["ran"] = [StepRecord.from_dict(r).to_dict(with_time=False) for r in self._stats.get("passes", [])]
            write_new_file(staging / PIPELINE_FILE, _dump(pipeline))
            files.append(PIPELINE_FILE)
            manifest = self._manifest(staging, files)
            manifest[MAC_FIELD] = sign_manifest(manifest)
            write_new_file(staging / MANIFEST, _dump(manifest))
        sizes = self._stats.setdefault("sizes", {})
        sizes["saved"] = _saved_bytes(out, manifest)
        sizes["saved_to"] = str(out)
        logger.info("saved %s model to %s (%d bytes)", self.target, out, sizes["saved"])
        return out

    def _manifest(self, staging: Path, files: list[str]) -> dict[str, Any]:
        from requant import __version__
        from requant.manifest import sha256_file

        where = f"cannot save into {staging}"
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "requant_version": __version__,
            "target": self.target,
            "backend": self._runtime.kind,
            "device": self._runtime.device,
            "simulated": bool(self._stats.get("simulated")),
            "options": _jsonable(self.options),
            "inputs": self.inputs,
            "outputs": self.outputs,
            "sizes": {k: self._stats.get("sizes", {}).get(k) for k in ("constants_before", "constants_after")},
            "files": {name: {"sha256": sha256_file(staging / name, where), "bytes": (staging / name).stat().st_size}
                      for name in sorted(files)},
        }

    def __repr__(self) -> str:
        return f"<CompiledModel target={self.target} inputs={self.input_names} outputs={self.output_names}>"


def _check_input(sig: Mapping[str, Any], want: np.dtype, arr: np.ndarray, hint: Callable[[], str],
                 symbols: dict[str, tuple[int, str]]) -> None:
    """`arr` has the dtype `want` (numpy's for `sig["dtype"]`) and a shape `sig` allows;
    a named dim has one size across the inputs of a call (`symbols`: name -> (size,
    input that set it)), which a runtime would otherwise refuse in its own words."""
    if arr.dtype != want:
        raise InputError(f"input '{sig['name']}' must be {sig['dtype']} (numpy {want}), got {arr.dtype}; "
                         f"convert it, e.g. x.astype(np.{want})")
    shape = sig["shape"]
    if shape is None:
        return
    if arr.ndim != len(shape) or any(isinstance(d, int) and d != n for d, n in zip(shape, arr.shape)):
        shown = ",".join("?" if d is None else str(d) for d in shape)
        raise InputError(f"input '{sig['name']}' must have shape [{shown}], got {list(arr.shape)}{hint()}")
    for axis, (d, n) in enumerate(zip(shape, arr.shape)):
        if isinstance(d, str):
            size, first = symbols.setdefault(d, (n, sig["name"]))
            if size != n:
                raise InputError(f"input '{sig['name']}' has {d} = {n} (dim {axis}), but input '{first}' "
                                 f"has {d} = {size}; inputs sharing a dim name must agree")


def _saved_bytes(root: Path, manifest: Mapping[str, Any]) -> int:
    """Bytes of a saved directory: the files its manifest lists, and the manifest."""
    return sum(int(f["bytes"]) for f in manifest["files"].values()) + (root / MANIFEST).stat().st_size


# ----------------------------------------------------------------------------- load


def _load_onnx(root: Path, listed: Iterable[str], *, weights: bool = True) -> Any:
    """The model, its external data restricted to files the manifest lists (read only
    with `weights`: the structure alone is enough to check the locations)."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    try:
        proto = onnx.load(str(root / MODEL_FILE), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends: the file passed its hash
        raise SavedModelError(f"cannot load {root}: {MODEL_FILE} is not a readable ONNX model: {exc}") from exc
    listed = set(listed)
    for tensor in proto.graph.initializer:
        if uses_external_data(tensor):
            location = next((e.value for e in tensor.external_data if e.key == "location"), None)
            if location not in listed:
                raise SavedModelError(f"cannot load {root}: {MODEL_FILE} reads weights from {location!r}, "
                                      f"which {MANIFEST} does not list")
    if not weights:
        return proto
    try:
        load_external_data_for_model(proto, str(root))
    except Exception as exc:
        raise SavedModelError(f"cannot load {root}: the weights in {MODEL_FILE}'s external data do not "
                              f"read back: {exc}") from exc
    return proto


def read_saved_graph(directory: str | os.PathLike) -> tuple[Any, Any]:
    """(the checked `requant.manifest.SavedDirectory`, its graph read back from
    model.onnx) without making a runtime: nothing of the save runs, so a TVM save needs
    no `trust_code` to be inspected or drawn."""
    from requant.frontends import from_onnx
    from requant.manifest import read_saved

    root = Path(directory)
    saved = read_saved(root, run_code=False)
    return saved, from_onnx(_load_onnx(root, saved.manifest["files"]), base_dir=root)


def load(directory: str | os.PathLike, *, trust_code: bool = False, threads: int | None = None) -> CompiledModel:
    """A model saved by `CompiledModel.save`, after `requant.manifest.read_saved`
    checked it: every file listed, regular (no symlinks) and matching its size and
    sha256, exactly the backend's file set, every manifest field well-formed.

    trust_code: a TVM/CUDA save holds native code, which runs when loaded; it loads
        without this only when its manifest's MAC verifies under this user's key (this
        user's requant built it). Pass True only for a save whose origin you trust.
    threads: runtime threads, instead of the manifest's (0: the physical cores).
    Refusals raise `SavedModelError` (`TrustError` for untrusted code) naming the file."""
    from requant.manifest import read_saved
    from requant.targets import threads_problem

    root = Path(directory)
    if threads is not None and threads_problem(threads):
        raise RequantError(f"requant.load: threads {threads_problem(threads)}")
    saved = read_saved(root, trust_code=trust_code)
    manifest = saved.manifest
    from requant.backends import runtime_backend

    pipeline = dict(saved.pipeline)
    ran = pipeline.pop("ran", [])
    _load_onnx(root, manifest["files"], weights=False)  # its external-data locations checked now
    proto: list[Any] = []  # the model with its weights, read when first asked for (held once)

    def read_proto() -> Any:
        if not proto:
            proto.append(_load_onnx(root, manifest["files"]))
        return proto[0]

    if threads is None:
        threads = manifest.get("options", {}).get("threads") or None
    spec = _loaded_target(manifest)
    runtime = runtime_backend(manifest["backend"]).load_runtime(root, manifest, threads=threads or None,
                                                                files=saved.code_files, proto_loader=read_proto)

    def read_graph() -> Any:
        from requant.frontends import from_onnx

        return from_onnx(read_proto(), base_dir=root)

    cm = CompiledModel(None, spec, manifest.get("options", {}), runtime, pipeline,
                       inputs=manifest["inputs"], outputs=manifest["outputs"], graph_loader=read_graph)
    cm._saved = saved  # keeps the checked copies of code files alive while the runtime uses them
    cm._stats.update({
        "loaded_from": str(root),
        "built_here": saved.provenance.built_here,
        "passes": ran,
        "sizes": {**manifest.get("sizes", {}), "artifact": runtime.artifact_bytes(), "artifact_kind": runtime.artifact_kind,
                  "saved": _saved_bytes(root, manifest), "saved_to": str(root)},
        "times": {},
        "accuracy": None,
    })
    return cm


def _loaded_target(manifest: Mapping[str, Any]) -> Target:
    from requant.targets import TARGETS

    name = manifest.get("target", "?")
    known = TARGETS.get(name)
    if known is not None:
        return known
    return Target(name, "(a target this requant does not know)", (), backend=manifest.get("backend", "onnx"),
                  device=manifest.get("device", "cpu"), simulated=bool(manifest.get("simulated")))
