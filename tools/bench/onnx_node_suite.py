"""ONNX's node test suite through requant: every one-node test case of the installed
`onnx` package (generated from its case modules, since the wheel ships no node data) at
default-domain opset 13 or newer, read with `from_onnx` and run by requant's
interpreter, and exported with `to_onnx` and run in ONNX Runtime; each output compared
with the case's expected output at the case's own tolerance (rtol 1e-3, atol 1e-7
unless the case says otherwise, bfloat16 at two ulps), as ONNX's backend test runner
compares.

Outcomes per case, for the interpreter:
- pass: read, run, every output equal within the tolerance;
- wrong: run, an output differs (value, shape or dtype);
- unsupported: `from_onnx` refuses an op requant does not know (UnsupportedOpError);
- refused: another requant error reading the model (a non-tensor type, an attribute
  requant does not take, ...) or running it (a RequantError naming the node);
- crash: any other exception (a requant bug: it should have been a clear refusal).

For the export, on the cases ONNX Runtime itself runs and gets right (the original
model, run as it is): pass, wrong, not read (the interpreter could not read it), refused
(`to_onnx` refuses or ONNX Runtime cannot load the export), crash.

    python -m requant.tools.bench.onnx_node_suite [--no-export] [--list wrong,crash] [--json out.json]

tests/tools/test_onnx_node_suite.py holds the counts to a committed floor.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "MIN_OPSET", "CaseOutcome", "NodeCase", "SuiteResult", "collect_cases", "main", "outputs_differ", "report",
    "run_export", "run_interpreter", "run_original_in_ort", "run_suite", "to_json",
]

logger = logging.getLogger(__name__)

MIN_OPSET = 13
"""Cases whose default-domain opset is older are left out (from_onnx version-converts
those models first, which tests the converter, not requant)."""

INTERPRETER_OUTCOMES = ("pass", "wrong", "unsupported", "refused", "crash")
EXPORT_OUTCOMES = ("pass", "wrong", "not read", "refused", "crash")


@dataclass
class NodeCase:
    """One node test case: its model, its (inputs, expected outputs) data sets and tolerance."""

    name: str
    model: Any
    data_sets: list[tuple[list[np.ndarray], list[np.ndarray]]]
    rtol: float
    atol: float

    @property
    def op(self) -> str:
        ops = sorted({n.op_type for n in self.model.graph.node})
        return ops[0] if len(ops) == 1 else "+".join(ops)


@dataclass
class CaseOutcome:
    name: str
    op: str
    interpreter: str
    interpreter_detail: str = ""
    ort_runs: bool | None = None  # None: not tried
    export: str | None = None  # None: not tried (ONNX Runtime does not run the original)
    export_detail: str = ""


@dataclass
class SuiteResult:
    outcomes: list[CaseOutcome] = field(default_factory=list)
    seconds: float = 0.0

    def interpreter_counts(self) -> Counter:
        return Counter(o.interpreter for o in self.outcomes)

    def export_counts(self) -> Counter:
        return Counter(o.export for o in self.outcomes if o.export is not None)

    @property
    def ort_runnable(self) -> int:
        return sum(1 for o in self.outcomes if o.ort_runs)


# ----------------------------------------------------------------------------- cases


def _default_opset(model: Any) -> int | None:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return None


def collect_cases(min_opset: int = MIN_OPSET, names: Iterable[str] | None = None) -> list[NodeCase]:
    """The node test cases of the installed onnx package, generated from its case
    modules: default-domain models only (no ai.onnx.preview / ml domains), at opset
    `min_opset` or newer, optionally only those named in `names`, sorted by name."""
    from onnx.backend.test.case import node

    wanted = None if names is None else set(names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the case generators divide by zero on purpose
        with np.errstate(all="ignore"):
            raw = node.collect_testcases(None)
    cases = []
    for c in raw:
        if wanted is not None and c.name not in wanted:
            continue
        domains = {imp.domain for imp in c.model.opset_import} - {"", "ai.onnx"}
        version = _default_opset(c.model)
        if domains or version is None or version < min_opset:
            continue
        sets = [([_as_array(x) for x in ins], [_as_array(x) for x in outs]) for ins, outs in c.data_sets]
        cases.append(NodeCase(c.name, c.model, sets, float(c.rtol), float(c.atol)))
    return sorted(cases, key=lambda c: c.name)


def _as_array(x: Any) -> Any:
    """A case's tensor (numpy array, numpy scalar or TensorProto) as a numpy array;
    sequences, optionals and maps stay as they are (requant has no value for them)."""
    from onnx import TensorProto, numpy_helper

    if isinstance(x, TensorProto):
        return numpy_helper.to_array(x)
    if isinstance(x, np.generic):
        return np.asarray(x)
    return x


# ----------------------------------------------------------------------------- comparison


def _as_comparable(arr: np.ndarray) -> np.ndarray:
    """int4/uint4 (ml_dtypes) as the int8/uint8 requant holds them; other arrays as they are."""
    arr = np.asarray(arr)
    if arr.dtype.name in ("int4", "uint4"):
        return arr.astype(np.int8 if arr.dtype.name == "int4" else np.uint8)
    return arr


def outputs_differ(got: Sequence[np.ndarray], want: Sequence[np.ndarray], rtol: float, atol: float) -> str | None:
    """Why `got` does not match `want` as ONNX's backend test runner compares (None when
    it does): count, shapes, dtypes exactly, values within rtol/atol, NaN where NaN."""
    if len(got) != len(want):
        return f"{len(got)} outputs, expected {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        if not isinstance(w, np.ndarray):
            return f"output {i}: expected a {type(w).__name__}, which requant has no value for"
        g, w = _as_comparable(g), _as_comparable(w)
        if g.shape != w.shape:
            return f"output {i}: shape {g.shape}, expected {w.shape}"
        if w.dtype == object:
            if not np.array_equal(g, w):
                return f"output {i}: strings differ"
            continue
        if g.dtype != w.dtype:
            return f"output {i}: dtype {g.dtype}, expected {w.dtype}"
        tol = max(rtol, 2.0**-6) if w.dtype.name == "bfloat16" else rtol
        if w.dtype.kind in "biu":
            if not np.array_equal(g, w):
                return f"output {i}: values differ at {int(np.sum(g != w))} of {w.size} positions"
            continue
        a, b = g.astype(np.float64), w.astype(np.float64)
        close = np.isclose(a, b, rtol=tol, atol=atol, equal_nan=True)
        if not close.all():
            worst = int(np.argmax(np.where(close, 0, np.abs(a - b))))
            return (f"output {i}: {int(np.sum(~close))} of {w.size} values differ (got {a.flat[worst]:.6g}, "
                    f"expected {b.flat[worst]:.6g})")
    return None


# ----------------------------------------------------------------------------- runners


def _feed(model: Any, inputs: list[np.ndarray]) -> dict[str, np.ndarray]:
    """The graph inputs (initializers excluded) by name, in the model's order."""
    inits = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    return dict(zip(names, inputs))


def run_interpreter(case: NodeCase) -> tuple[str, str, Any]:
    """(outcome, detail, graph or None): the case read by `from_onnx` and run by the
    interpreter on every data set."""
    from requant.errors import RequantError, UnsupportedOpError
    from requant.frontends import from_onnx
    from requant.ir import run

    try:
        graph = from_onnx(case.model)
    except UnsupportedOpError as exc:
        return "unsupported", _first_line(exc), None
    except RequantError as exc:
        return "refused", _first_line(exc), None
    except Exception as exc:  # noqa: BLE001 (a crash is an outcome here)
        return "crash", f"from_onnx: {type(exc).__name__}: {_first_line(exc)}", None
    for inputs, expected in case.data_sets:
        if any(not isinstance(x, np.ndarray) for x in inputs):
            return "refused", "a non-tensor input (sequence, optional or map)", graph
        try:
            with np.errstate(all="ignore"):
                got = run(graph, _feed(case.model, inputs))
        except RequantError as exc:
            return "refused", _first_line(exc), graph
        except Exception as exc:  # noqa: BLE001
            return "crash", f"run: {type(exc).__name__}: {_first_line(exc)}", graph
        why = outputs_differ(got, expected, case.rtol, case.atol)
        if why:
            return "wrong", why, graph
    return "pass", "", graph


def _ort_session(model: Any) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # the cases ONNX Runtime fails are counted, not logged
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])


def run_original_in_ort(case: NodeCase) -> bool:
    """ONNX Runtime runs the case's own model and gets every data set right."""
    try:
        session = _ort_session(case.model)
        for inputs, expected in case.data_sets:
            got = session.run(None, _feed(case.model, inputs))
            if outputs_differ(got, expected, case.rtol, case.atol):
                return False
    except Exception:  # noqa: BLE001 (ONNX Runtime lacks the kernel, or the type)
        return False
    return True


def run_export(case: NodeCase, graph: Any) -> tuple[str, str]:
    """(outcome, detail): requant's graph exported with `to_onnx` and run in ONNX Runtime."""
    from requant.backends.onnx import to_onnx
    from requant.errors import RequantError

    if graph is None:
        return "not read", ""
    try:
        model = to_onnx(graph)
        session = _ort_session(model)
    except RequantError as exc:
        return "refused", _first_line(exc)
    except Exception as exc:  # noqa: BLE001
        return "refused" if "onnxruntime" in type(exc).__module__ else "crash", f"{type(exc).__name__}: {_first_line(exc)}"
    for inputs, expected in case.data_sets:
        try:
            got = session.run(None, _feed(model, inputs))
        except Exception as exc:  # noqa: BLE001
            return "refused", f"ONNX Runtime: {_first_line(exc)}"
        why = outputs_differ(got, expected, case.rtol, case.atol)
        if why:
            return "wrong", why
    return "pass", ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def run_suite(cases: Sequence[NodeCase] | None = None, export: bool = True) -> SuiteResult:
    """Every case through the interpreter, and (with `export`) through the ONNX export on
    the cases ONNX Runtime itself runs."""
    logging.getLogger("requant").setLevel(logging.ERROR)  # models that are odd on purpose
    cases = collect_cases() if cases is None else cases
    result = SuiteResult()
    t0 = time.perf_counter()
    for case in cases:
        outcome, detail, graph = run_interpreter(case)
        record = CaseOutcome(case.name, case.op, outcome, detail)
        if export:
            record.ort_runs = run_original_in_ort(case)
            if record.ort_runs:
                record.export, record.export_detail = run_export(case, graph)
        result.outcomes.append(record)
    result.seconds = time.perf_counter() - t0
    return result


# ----------------------------------------------------------------------------- report


def _table(title: str, counts: Counter, keys: Sequence[str], total: int) -> list[str]:
    lines = [f"| {title} | cases | share |", "|---|---:|---:|"]
    for k in keys:
        lines.append(f"| {k} | {counts.get(k, 0)} | {100.0 * counts.get(k, 0) / max(total, 1):.1f}% |")
    lines.append(f"| total | {total} | |")
    return lines


def report(result: SuiteResult, show: Sequence[str] = ()) -> str:
    import onnx

    n = len(result.outcomes)
    lines = [(f"ONNX node test suite (onnx {onnx.__version__}, default domain, opset >= {MIN_OPSET}): {n} cases, "
              f"{result.seconds:.1f} s"), ""]
    lines += _table("interpreter", result.interpreter_counts(), INTERPRETER_OUTCOMES, n)
    if any(o.ort_runs is not None for o in result.outcomes):
        runnable = result.ort_runnable
        lines += ["", (f"ONNX Runtime runs {runnable} of the {n} cases' own models correctly; on those, "
                       "requant's export (from_onnx -> to_onnx) in ONNX Runtime:"), ""]
        lines += _table("export", result.export_counts(), EXPORT_OUTCOMES, runnable)
    by_op = Counter(o.op for o in result.outcomes if o.interpreter == "unsupported")
    if by_op:
        lines += ["", "unsupported, by op (cases): " + ", ".join(f"{op} {k}" for op, k in by_op.most_common())]
    for kind in show:
        hits = [o for o in result.outcomes if o.interpreter == kind or o.export == kind]
        lines += ["", f"{kind} ({len(hits)}):"]
        for o in hits:
            detail = o.interpreter_detail if o.interpreter == kind else f"export: {o.export_detail}"
            lines.append(f"  {o.name} [{o.op}]: {detail}")
    return "\n".join(lines)


def to_json(result: SuiteResult) -> dict[str, Any]:
    return {
        "cases": len(result.outcomes),
        "interpreter": dict(result.interpreter_counts()),
        "ort_runnable": result.ort_runnable,
        "export": dict(result.export_counts()),
        "outcomes": [o.__dict__ for o in result.outcomes],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-export", action="store_true", help="the interpreter only (no ONNX Runtime)")
    ap.add_argument("--list", default="", help="comma-separated outcomes whose cases to list (wrong,crash,...)")
    ap.add_argument("--json", default=None, help="write every case's outcome to this file")
    ap.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    args = ap.parse_args(argv)
    names = args.cases.split(",") if args.cases else None
    result = run_suite(collect_cases(names=names), export=not args.no_export)
    print(report(result, [k for k in args.list.split(",") if k]))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(to_json(result), fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
