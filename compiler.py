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
  for TVM targets also the runtime's files (model.so, model.cu) with model.onnx holding
  the compiled graph (so `.graph` reads back),
  manifest.json (format version, target, options, input/output signature, sha256 and
  size of every file); `load` refuses a directory whose manifest is missing, of an
  unknown format, or whose files are missing or differ from their hashes. Saving is
  deterministic: same model and options -> byte-identical files.
"""

from __future__ import annotations

import hashlib
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
from requant.errors import PassError, RequantError, UnsupportedOpError
from requant.report import Accuracy, StepRecord, constant_bytes, render_report
from requant.targets import BATCHES, CALIBRATE, INPUT_DIMS, STATS, Scheme, Step, Target, get_target

__all__ = ["compile", "load", "CompiledModel", "FORMAT", "FORMAT_VERSION", "MANIFEST", "MODEL_FILE", "PIPELINE_FILE"]

logger = logging.getLogger(__name__)

FORMAT = "requant-compiled-model"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PIPELINE_FILE = "pipeline.json"


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


def _as_feeds(names: Sequence[str], batch: Any, what: str) -> dict[str, np.ndarray]:
    """One batch (a tuple/list in input order, a dict by name, or one array for a
    one-input model) as {input name: numpy array}."""
    if isinstance(batch, Mapping):
        unknown = [k for k in batch if k not in names]
        if unknown:
            raise RequantError(f"{what}: unknown input(s) {', '.join(map(repr, unknown))}; inputs: {', '.join(names)}")
        feeds = {k: to_numpy(v) for k, v in batch.items()}
    elif isinstance(batch, (tuple, list)):
        if len(batch) != len(names):
            raise RequantError(f"{what}: {len(batch)} arrays for {len(names)} input(s) ({', '.join(names)})")
        feeds = {n: to_numpy(v) for n, v in zip(names, batch)}
    else:
        if len(names) != 1:
            raise RequantError(f"{what}: one array for a model with {len(names)} inputs ({', '.join(names)}); "
                               f"give a tuple in input order or a dict by name")
        feeds = {names[0]: to_numpy(batch)}
    missing = [n for n in names if n not in feeds]
    if missing:
        raise RequantError(f"{what}: missing input(s) {', '.join(missing)}")
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
        from requant.passes.calibration import collect_stats

        start = time.perf_counter()
        try:
            stats = collect_stats(graph, batches, **step.options)
        except Exception as exc:
            raise PassError(f"{self._where(CALIBRATE, position)}: {exc}") from exc
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
    batches = None if calibration is None else list(calibration)
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
    })
    logger.info("compiled for %s in %.2f s", spec.name, done - started)
    return cm


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
    for feeds in held:
        acc.add(cm(**feeds), run_reference(feeds))
    return {"batches": acc.batches, "note": note, "outputs": acc.result()}


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
        """The exported `onnx.ModelProto` the runtime runs (ONNX targets only)."""
        if self._runtime.kind != "onnx":
            raise RequantError(f"{self.target} runs on the {self._runtime.kind} backend, not ONNX Runtime: "
                               f"its IR is .graph, its build is written by .save()")
        return self._runtime.proto

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
        for sig, want in self._input_checks:
            _check_input(sig, want, feeds[sig["name"]], self._shape_hint)
        return self._runtime(feeds)

    def _shape_hint(self) -> str:
        """What a wrong-shape error adds when the bind_dims step fixed symbolic dims."""
        for record in self._stats.get("passes", []):
            bound = record.get("stats", {}).get("bound") if record["name"] == "bind_dims" else None
            if bound:
                return (f" (this build is specialised to {bound}: compile with dims={{...}} for other sizes, "
                        f"or static_shapes=False)")
        return ""

    def save(self, directory: str | os.PathLike, *, external_data: bool | None = None) -> Path:
        """Write model.onnx (weights in model.onnx.data when `external_data`, or when too
        large for one protobuf), pipeline.json and manifest.json (last) into `directory`;
        for a TVM target also its library (model.so; model.cu for CUDA), model.onnx then
        holding the compiled graph. The same ONNX model gives byte-identical files."""
        out = Path(directory)
        if out.exists() and not out.is_dir():
            raise RequantError(f"cannot save into {out}: it exists and is not a directory")
        out.mkdir(parents=True, exist_ok=True)
        (out / MANIFEST).unlink(missing_ok=True)  # an interrupted save must not look complete
        files = self._runtime.write(out, external_data)
        if MODEL_FILE not in files:  # a TVM build: model.onnx holds the compiled graph
            from requant.backends.onnx import to_onnx
            from requant.backends.onnx.runtime import write_model

            files += write_model(to_onnx(self.graph), out, external_data)
        pipeline = dict(self.pipeline)
        pipeline["ran"] = [StepRecord.from_dict(r).to_dict(with_time=False) for r in self._stats.get("passes", [])]
        (out / PIPELINE_FILE).write_bytes(_dump(pipeline))
        files.append(PIPELINE_FILE)
        from requant import __version__

        manifest = {
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
            "files": {name: {"sha256": _sha256(out / name), "bytes": (out / name).stat().st_size}
                      for name in sorted(files)},
        }
        (out / MANIFEST).write_bytes(_dump(manifest))
        sizes = self._stats.setdefault("sizes", {})
        sizes["saved"] = _saved_bytes(out, manifest)
        sizes["saved_to"] = str(out)
        logger.info("saved %s model to %s (%d bytes)", self.target, out, sizes["saved"])
        return out

    def __repr__(self) -> str:
        return f"<CompiledModel target={self.target} inputs={self.input_names} outputs={self.output_names}>"


def _check_input(sig: Mapping[str, Any], want: np.dtype, arr: np.ndarray, hint: Callable[[], str]) -> None:
    """`arr` has the dtype `want` (numpy's for `sig["dtype"]`) and a shape `sig` allows."""
    if arr.dtype != want:
        raise RequantError(f"input '{sig['name']}' must be {sig['dtype']} (numpy {want}), got {arr.dtype}; "
                           f"convert it, e.g. x.astype(np.{want})")
    shape = sig["shape"]
    if shape is None:
        return
    if arr.ndim != len(shape) or any(isinstance(d, int) and d != n for d, n in zip(shape, arr.shape)):
        shown = ",".join("?" if d is None else str(d) for d in shape)
        raise RequantError(f"input '{sig['name']}' must have shape [{shown}], got {list(arr.shape)}{hint()}")


def _saved_bytes(root: Path, manifest: Mapping[str, Any]) -> int:
    """Bytes of a saved directory: the files its manifest lists, and the manifest."""
    return sum(int(f["bytes"]) for f in manifest["files"].values()) + (root / MANIFEST).stat().st_size


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------- load


def _read_manifest(root: Path) -> dict[str, Any]:
    if not root.exists():
        raise RequantError(f"cannot load {root}: no such directory")
    if not root.is_dir():
        raise RequantError(f"cannot load {root}: not a directory "
                           f"(requant.load takes the directory CompiledModel.save wrote)")
    path = root / MANIFEST
    if not path.is_file():
        raise RequantError(f"cannot load {root}: {MANIFEST} is missing (not a saved requant model, or an incomplete save)")
    try:
        manifest = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequantError(f"cannot load {root}: {MANIFEST} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise RequantError(f"cannot load {root}: {MANIFEST} is not a {FORMAT} manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise RequantError(f"cannot load {root}: {MANIFEST} has format_version {version!r}; this requant reads "
                           f"version {FORMAT_VERSION} (saved by requant {manifest.get('requant_version', '?')})")
    return manifest


def _verify_files(root: Path, manifest: Mapping[str, Any]) -> None:
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise RequantError(f"cannot load {root}: {MANIFEST} lists no files")
    for required in (MODEL_FILE, PIPELINE_FILE):
        if required not in files:
            raise RequantError(f"cannot load {root}: {MANIFEST} does not list {required}")
    for name, entry in files.items():
        if not isinstance(name, str) or Path(name).name != name or name.startswith("."):
            raise RequantError(f"cannot load {root}: {MANIFEST} lists {name!r}, which is not a file in the directory")
        path = root / name
        if not path.is_file():
            raise RequantError(f"cannot load {root}: {name} is missing")
        if not isinstance(entry, dict) or _sha256(path) != entry.get("sha256"):
            raise RequantError(f"cannot load {root}: {name} does not match its sha256 in {MANIFEST} "
                               f"(modified or corrupted after saving)")


def _load_onnx(root: Path, listed: Iterable[str]) -> Any:
    """The model, its external data restricted to files the manifest lists."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    proto = onnx.load(str(root / MODEL_FILE), load_external_data=False)
    listed = set(listed)
    for tensor in proto.graph.initializer:
        if uses_external_data(tensor):
            location = next((e.value for e in tensor.external_data if e.key == "location"), None)
            if location not in listed:
                raise RequantError(f"cannot load {root}: {MODEL_FILE} reads weights from {location!r}, "
                                   f"which {MANIFEST} does not list")
    load_external_data_for_model(proto, str(root))
    return proto


def load(directory: str | os.PathLike) -> CompiledModel:
    """A model saved by `CompiledModel.save`, after checking every file against the
    manifest's sha256; refuses (RequantError naming the file) a directory that is not
    one, lacks its manifest or a file, has a modified file, or an unknown format."""
    root = Path(directory)
    manifest = _read_manifest(root)
    _verify_files(root, manifest)
    backend = manifest.get("backend")
    from requant.backends import RUNTIMES, runtime_backend

    if backend not in RUNTIMES:
        raise RequantError(f"cannot load {root}: backend {backend!r} is not supported by this requant")
    try:
        pipeline = json.loads((root / PIPELINE_FILE).read_bytes())
    except ValueError as exc:
        raise RequantError(f"cannot load {root}: {PIPELINE_FILE} is not valid JSON: {exc}") from exc
    ran = pipeline.pop("ran", [])
    proto = _load_onnx(root, manifest["files"])
    threads = manifest.get("options", {}).get("threads") or None
    spec = _loaded_target(manifest)
    runtime = runtime_backend(backend).load_runtime(root, manifest, proto=proto, threads=threads)

    def read_graph() -> Any:
        from requant.frontends import from_onnx

        return from_onnx(proto, base_dir=root)

    cm = CompiledModel(None, spec, manifest.get("options", {}), runtime, pipeline,
                       inputs=manifest["inputs"], outputs=manifest["outputs"], graph_loader=read_graph)
    cm._stats.update({
        "loaded_from": str(root),
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
