"""Calibration: run the float graph over a calibration set and collect streaming
statistics of the activations that static quantization needs.

What it owns:
- `collect_stats(graph, batches, ...)`: one `TensorStats` (see `calibration_stats`) per
  requested value. A clone of the graph with the requested values added as outputs
  (`ObservedGraph`) runs batch by batch on a graph runner (`requant.ir.runners`): ONNX
  Runtime (the fast path, the default), the interpreter, or "auto" (ONNX Runtime, else
  the interpreter, with a warning, when the graph cannot be exported or loaded). The
  caller's graph is never changed. Batches are consumed once, in order (a generator is
  fine), and each batch's arrays are dropped once its statistics are updated, so memory
  does not grow with the number of batches.
- `calibration_values(graph)`: the default values to observe: every float activation
  (a value computed from a graph input, not from constants alone) that is an input of a
  MatMul / Gemm / Conv (Gemm's bias and Conv's bias excluded), every float output of
  a Gather (embedding lookups), and, in graphs with Convs, the feature maps the quantize
  pass's `feature_maps` option quantizes (outputs of convs and residual Adds:
  passes/quantize_feature_maps.py).
- `calibration_warnings(calibrated, held_out)` and `stats_warnings(stats)`: what makes a
  calibration set untrustworthy, as sentences for the log and the compile report: an
  input with zero range over the whole set or non-finite values, a batch whose every
  input is one constant, fewer than `MIN_DISTINCT_SAMPLES` distinct samples (rows of
  the leading axis), held-out batches that repeat calibration batches (accuracy then
  measured on the data the ranges were fitted to), and observed activations whose
  range is zero (a quantizer with nothing to cover).
- `validate_calibration(graph, batches)`: batches are dicts by input name, sequences in
  input order, or (one-input graphs) a bare array; numpy arrays or torch tensors. Each
  batch is checked against the graph inputs (dtype exactly; rank; static dims; symbolic
  dims consistent inside the batch, free to vary between batches) and a mismatch raises
  a `RequantError` naming the batch, the input, its expected type and what was given.
  An empty calibration set raises too.
- the progress bar: tqdm when installed, else a plain stderr counter; shown when
  `progress=True`, or with `progress=None` when stderr is a terminal and calibration
  takes longer than two seconds; `progress=False` silences it.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from requant.errors import RequantError
from requant.ir.graph import Graph
from requant.ir.runners import make_runner, runner_names
from requant.ir.types import dims_compatible
from requant.passes.calibration_grids import quant_grid
from requant.passes.calibration_stats import DEFAULT_BINS, RANGE_METHODS, TensorStats
from requant.passes.quantize_feature_maps import feature_map_calibration_values

__all__ = [
    "ObservedGraph",
    "ObservedRunner",
    "observed_batches",
    "TensorStats",
    "RANGE_METHODS",
    "DEFAULT_CALIBRATION_OPS",
    "collect_stats",
    "calibration_values",
    "validate_calibration",
    "normalize_batch",
    "calibration_warnings",
    "stats_warnings",
    "MIN_DISTINCT_SAMPLES",
    "quant_grid",
]

logger = logging.getLogger(__name__)

DEFAULT_CALIBRATION_OPS = ("MatMul", "Gemm", "Conv")
_QUANTIZED_INPUTS = {"Gemm": (0, 1), "Conv": (0, 1)}  # inputs that are quantized (not the bias)
_PROGRESS_DELAY_S = 2.0


# ----------------------------------------------------------------------------- values


def calibration_values(graph: Graph, ops: Sequence[str] = DEFAULT_CALIBRATION_OPS,
                       include_gather_outputs: bool = True) -> list[str]:
    """Names of the float activations to observe by default (module docstring), in
    graph order, each once."""
    live = _input_dependent(graph)
    names: dict[str, None] = {}
    for node in graph:
        if node.op in ops:
            positions = _QUANTIZED_INPUTS.get(node.op, range(len(node.inputs)))
            for i in positions:
                v = node.inputs[i] if i < len(node.inputs) else None
                if v is not None and id(v) in live and v.dtype.is_float:
                    names.setdefault(v.name)
        elif node.op == "Gather" and include_gather_outputs:
            for out in node.outputs:
                if out.dtype.is_float and id(out) in live:
                    names.setdefault(out.name)
    if "Conv" in ops:
        for name in feature_map_calibration_values(graph):
            names.setdefault(name)
    return list(names)


def _input_dependent(graph: Graph) -> set[int]:
    """ids of the values computed from at least one graph input."""
    live = {id(v) for v in graph.inputs}
    for node in graph:
        if any(v is not None and id(v) in live for v in node.inputs):
            live.update(id(o) for o in node.outputs)
    return live


# ----------------------------------------------------------------------------- batches


def validate_calibration(graph: Graph, batches: Iterable[Any]) -> Iterator[dict[str, np.ndarray]]:
    """Check the calibration set against the graph inputs and return an iterator of its
    batches as dicts of numpy arrays. The first batch is read and checked now (so an
    empty set or a wrong first batch raises here, before any export); later batches are
    checked as they are read. The iterator replays the batch read here: use it in place
    of `batches` (a generator can only be read once)."""
    if isinstance(batches, Mapping) or _is_array(batches):
        kind = "dict" if isinstance(batches, Mapping) else "array"
        raise RequantError(
            f"calibration must be an iterable of batches; got a single {kind}: wrap one batch in a list, "
            f"e.g. calibration=[batch]"
        )
    try:
        iterator = iter(batches)
    except TypeError:
        raise RequantError(
            f"calibration must be an iterable of batches (dicts by input name or sequences in input order), "
            f"got {type(batches).__name__}"
        ) from None
    try:
        first = next(iterator)
    except StopIteration:
        raise RequantError(
            "calibration set is empty: a static target needs at least one batch of inputs to measure activation "
            f"ranges (graph inputs: {_describe_inputs(graph)}); pass calibration=[batch, ...] or use a weight-only "
            "or dynamic target"
        ) from None
    checked = normalize_batch(graph, first, 0)
    return _checked_batches(graph, checked, iterator)


def _checked_batches(graph: Graph, first: dict[str, np.ndarray], rest: Iterator[Any]) -> Iterator[dict[str, np.ndarray]]:
    yield first
    for index, batch in enumerate(rest, start=1):
        yield normalize_batch(graph, batch, index)


def normalize_batch(graph: Graph, batch: Any, index: int = 0) -> dict[str, np.ndarray]:
    """One batch as {input name: numpy array}, checked against the graph inputs."""
    where = f"calibration batch {index}"
    if isinstance(batch, Mapping):
        given = {str(k): v for k, v in batch.items()}
        for v in graph.inputs:
            if v.name not in given:
                raise RequantError(
                    f"{where} has no input '{v.name}' (expected {v.type}); it has: {', '.join(given) or 'nothing'}"
                )
        extra = [k for k in given if k not in {v.name for v in graph.inputs}]
        if extra:
            raise RequantError(
                f"{where} has input(s) the graph does not take: {', '.join(extra)}; graph inputs: "
                f"{_describe_inputs(graph)}"
            )
        arrays = {v.name: given[v.name] for v in graph.inputs}
    else:
        items = [batch] if _is_array(batch) else _as_sequence(batch, where)
        if len(items) != len(graph.inputs):
            missing = graph.inputs[len(items):]
            what = (f"missing {', '.join(f'{v.name} ({v.type})' for v in missing)}" if missing
                    else f"{len(items) - len(graph.inputs)} too many")
            raise RequantError(
                f"{where} has {len(items)} array(s), the graph takes {len(graph.inputs)}: {what}; "
                f"graph inputs: {_describe_inputs(graph)}"
            )
        arrays = {v.name: a for v, a in zip(graph.inputs, items)}
    out = {v.name: _to_numpy(arrays[v.name], v.dtype) for v in graph.inputs}
    _check_types(graph, out, where)
    return out


def _check_types(graph: Graph, arrays: dict[str, np.ndarray], where: str) -> None:
    symbols: dict[str, tuple[int, str]] = {}
    for v in graph.inputs:
        arr, want = arrays[v.name], v.type

        def mismatch(reason: str) -> RequantError:
            return RequantError(
                f"{where}: input '{v.name}' expects {want} but got a {arr.dtype} array of shape "
                f"{tuple(arr.shape)} ({reason})"
            )

        if arr.dtype != want.dtype.np:
            raise mismatch(f"dtype {arr.dtype} is not {want.dtype.name}")
        if want.shape is None:
            continue
        if arr.ndim != len(want.shape):
            raise mismatch(f"rank {arr.ndim}, expected {len(want.shape)}")
        for axis, (dim, size) in enumerate(zip(want.shape, arr.shape)):
            if isinstance(dim, int) and not dims_compatible(dim, size):
                raise mismatch(f"dim {axis} is {size}, expected {dim}")
            if isinstance(dim, str):
                seen = symbols.setdefault(dim, (size, v.name))
                if seen[0] != size:
                    raise mismatch(f"dim {axis} '{dim}' is {size}, but input '{seen[1]}' gave '{dim}' = {seen[0]}")


def _describe_inputs(graph: Graph) -> str:
    return ", ".join(f"{v.name}: {v.type}" for v in graph.inputs) or "none"


def _is_array(x: Any) -> bool:
    return isinstance(x, np.ndarray) or (hasattr(x, "detach") and hasattr(x, "shape"))


def _as_sequence(batch: Any, where: str) -> list[Any]:
    if isinstance(batch, (list, tuple)):
        return list(batch)
    raise RequantError(
        f"{where} is a {type(batch).__name__}; expected a dict by input name, a sequence of arrays in input order, "
        f"or an array (one-input graphs)"
    )


def _to_numpy(x: Any, want: Any) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach"):  # a torch tensor, converted without importing torch
        t = x.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            return t.float().numpy().astype(want.np if want.name == "bfloat16" else np.float32)
        return t.numpy()
    return np.asarray(x)


# ----------------------------------------------------------------------------- runners


class ObservedGraph:
    """A clone of the graph whose outputs are the requested node outputs (graph inputs
    and constants need no run: they are read from the batch or the payload)."""

    def __init__(self, graph: Graph, names: Sequence[str]) -> None:
        self.graph = graph.clone()
        by_name = {v.name: v for v in self.graph.values()}
        self.from_inputs = [n for n in names if by_name[n] in self.graph.inputs]
        self.constants = {n: by_name[n].const for n in names if by_name[n].const is not None}
        self.positions: dict[str, int] = {}
        outputs = list(self.graph.outputs)
        for n in names:
            v = by_name[n]
            if n in self.from_inputs or n in self.constants:
                continue
            for i, o in enumerate(outputs):
                if o is v:
                    self.positions[n] = i
                    break
            else:
                self.positions[n] = len(outputs)
                outputs.append(v)
        self.graph.outputs = outputs


class ObservedRunner:
    """Runs an `ObservedGraph` with a graph runner (`requant.ir.runners`): {value name:
    array} of the observed node outputs."""

    def __init__(self, observed: ObservedGraph, runner: str) -> None:
        self.observed = observed
        self._run = make_runner(observed.graph, runner)
        self.name = self._run.name

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self._run(feeds)
        return {n: outs[i] for n, i in self.observed.positions.items()}


def observed_batches(graph: Graph, batches: Iterable[Any], names: Sequence[str], runner: str = "auto"
                     ) -> Iterator[dict[str, np.ndarray]]:
    """{name: array} of the values `names` for each batch in turn (checked by
    `validate_calibration`): graph inputs read from the batch, constants from their
    payload, the rest from one run of an `ObservedGraph` on `runner`."""
    observed = ObservedGraph(graph, names)
    run = ObservedRunner(observed, runner) if observed.positions else None
    for feeds in validate_calibration(graph, batches):
        yield {**observed.constants, **{n: feeds[n] for n in observed.from_inputs},
               **(run(feeds) if run is not None else {})}


# ----------------------------------------------------------------------------- progress


class _Progress:
    """tqdm if installed, else a stderr counter (module docstring says when it shows)."""

    def __init__(self, total: int | None, progress: bool | None, desc: str = "calibrating") -> None:
        self.total = total
        self.count = 0
        self.bar = None
        self.enabled = progress is True or (progress is None and _stderr_is_tty())
        self.delay = 0.0 if progress is True else _PROGRESS_DELAY_S
        self.start = time.monotonic()
        self.last_print = 0.0
        self.desc = desc
        if not self.enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        self.bar = tqdm(total=total, desc=desc, unit="batch", file=sys.stderr, delay=self.delay, leave=False)

    def update(self) -> None:
        self.count += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            return
        now = time.monotonic()
        if now - self.start >= self.delay and now - self.last_print >= 0.5:
            self.last_print = now
            of = f"/{self.total}" if self.total is not None else ""
            sys.stderr.write(f"\r{self.desc}: {self.count}{of} batches")
            sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.last_print:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


# ----------------------------------------------------------------------------- collect


def collect_stats(
    graph: Graph,
    batches: Iterable[Mapping[str, Any] | Sequence[Any]],
    values: Sequence[str] | None = None,
    runner: str = "onnxruntime",
    progress: bool | None = None,
    per_channel_axis: Mapping[str, int] | None = None,
    *,
    histogram: bool = True,
    bins: int = DEFAULT_BINS,
) -> dict[str, TensorStats]:
    """Run `graph` (float) over `batches` and return {value name: TensorStats}.

    `values`: names to observe (default `calibration_values(graph)`); graph inputs and
    constants may be named too. `runner`: a `requant.ir.runners` name: "onnxruntime"
    (default), "interpreter" or "auto" (ONNX Runtime, else the interpreter). `per_channel_axis`: {name: axis} for per-channel min/max (a name not in
    `values` is added). `histogram=False` keeps min/max only (minmax ranges);
    `bins` sets the histogram resolution (see `TensorStats`)."""
    if runner not in runner_names():
        raise RequantError(f"calibration: unknown runner '{runner}'; choose one of {', '.join(runner_names())}")
    axes = dict(per_channel_axis or {})
    names = list(dict.fromkeys(list(calibration_values(graph) if values is None else values) + list(axes)))
    _check_names(graph, names)
    total = _length(batches)
    checked = validate_calibration(graph, batches)
    stats = {n: TensorStats(n, axis=axes.get(n), bins=bins, histogram=histogram) for n in names}
    if not names:
        logger.warning("calibration: graph '%s' has no values to observe (no MatMul/Gemm/Conv/Gather activations)",
                       graph.name)
        return stats
    observed = ObservedGraph(graph, names)
    run = ObservedRunner(observed, runner) if observed.positions else None
    for n, payload in observed.constants.items():
        stats[n].update(payload)
    started = time.monotonic()
    bar = _Progress(total, progress)
    try:
        for feeds in checked:
            outs = run(feeds) if run is not None else {}
            for n in observed.from_inputs:
                stats[n].update(feeds[n])
            for n, arr in outs.items():
                stats[n].update(arr)
            del outs, feeds  # keep nothing of the batch alive
            bar.update()
    finally:
        bar.close()
    logger.info("calibration: %d values over %d batches with %s in %.2f s", len(names), bar.count,
                run.name if run is not None else "no runner", time.monotonic() - started)
    return stats


# ----------------------------------------------------------------------------- warnings

MIN_DISTINCT_SAMPLES = 8
"""Fewer distinct calibration samples than this give ranges that fit those samples, not
the data the model will see."""


def _batch_key(batch: Mapping[str, np.ndarray]) -> tuple[Any, ...]:
    return tuple((k, a.dtype.str, a.shape, np.ascontiguousarray(a).tobytes()) for k, a in sorted(batch.items()))


def _sample_keys(batch: Mapping[str, np.ndarray]) -> set[bytes]:
    """One key per sample (row of the leading axis) of a batch, all inputs together."""
    rows = {k: np.ascontiguousarray(a.reshape(a.shape[0], -1) if a.ndim else a.reshape(1, -1))
            for k, a in sorted(batch.items())}
    counts = {r.shape[0] for r in rows.values()}
    if len(counts) != 1:  # inputs without a shared leading axis: the batch is one sample
        return {b"".join(r.tobytes() for r in rows.values())}
    return {b"".join(r[i].tobytes() for r in rows.values()) for i in range(counts.pop())}


def calibration_warnings(calibrated: Sequence[Mapping[str, np.ndarray]],
                         held_out: Sequence[Mapping[str, np.ndarray]] = ()) -> list[str]:
    """Sentences about a calibration set (module docstring); [] when nothing is wrong."""
    warnings: list[str] = []
    if not calibrated:
        return warnings
    names = list(calibrated[0])
    for name in names:
        arrays = [b[name] for b in calibrated if name in b]
        if not arrays or not all(np.issubdtype(a.dtype, np.number) or a.dtype.kind == "V" for a in arrays):
            continue
        floats = [np.asarray(a, dtype=np.float64) for a in arrays if a.size]
        if not floats:
            continue
        bad = sum(int(np.size(f) - np.count_nonzero(np.isfinite(f))) for f in floats)
        if bad:
            warnings.append(f"calibration input '{name}' holds {bad} NaN/Inf value(s); they are left out of "
                            f"the ranges, and the quantized model saturates them")
        finite = [f[np.isfinite(f)] for f in floats]
        finite = [f for f in finite if f.size]
        if finite and min(float(f.min()) for f in finite) == max(float(f.max()) for f in finite):
            value = float(finite[0].flat[0])
            warnings.append(f"calibration input '{name}' is {value:g} everywhere (zero range): the ranges "
                            f"measured on it say nothing about real inputs; calibrate on representative data")
    constant = [i for i, b in enumerate(calibrated)
                if all(a.size and np.all(a == a.reshape(-1)[0]) for a in b.values())]
    if constant and len(constant) < len(calibrated):
        shown = ", ".join(map(str, constant[:8])) + (" ..." if len(constant) > 8 else "")
        warnings.append(f"calibration batch(es) {shown} hold one constant value in every input")
    distinct: set[bytes] = set()
    for b in calibrated:
        distinct |= _sample_keys(b)
    if len(distinct) < MIN_DISTINCT_SAMPLES:
        warnings.append(f"calibration has {len(distinct)} distinct sample(s), fewer than {MIN_DISTINCT_SAMPLES}: "
                        f"activation ranges fit these samples only; give more, varied batches")
    seen = {_batch_key(b) for b in calibrated}
    repeats = sum(_batch_key(b) in seen for b in held_out)
    if repeats:
        warnings.append(f"{repeats} of {len(held_out)} held-out batch(es) repeat calibration batches: the accuracy "
                        f"report is measured on data the ranges were fitted to")
    return warnings


def stats_warnings(stats: Mapping[str, TensorStats]) -> list[str]:
    """Sentences about calibration statistics: activations with zero range or no finite
    value (their quantizers cover a single point)."""
    flat = [n for n, s in stats.items() if s.min is not None and s.min == s.max]
    empty = [n for n, s in stats.items() if s.min is None and s.nonfinite]
    warnings = []
    if flat:
        shown = ", ".join(flat[:5]) + (f" and {len(flat) - 5} more" if len(flat) > 5 else "")
        warnings.append(f"{len(flat)} of {len(stats)} observed activation(s) have zero range over the calibration "
                        f"set ({shown}): their quantizers cannot represent other values")
    if empty:
        warnings.append(f"{len(empty)} observed activation(s) had no finite value during calibration "
                        f"({', '.join(empty[:5])})")
    return warnings


def _check_names(graph: Graph, names: Sequence[str]) -> None:
    known = {v.name for v in graph.values()}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise RequantError(f"calibration: graph '{graph.name}' has no value(s) {', '.join(unknown)}")


def _length(batches: Any) -> int | None:
    try:
        return len(batches)
    except TypeError:
        return None

